//! `tether failback GROUP`: returns a group with `failback = "manual"` to its most
//! preferred eligible member. An admin action, so it goes over the unix socket only:
//! who may write the socket file may move the application's writes; nobody on the
//! network can.

use std::process::ExitCode;
use std::time::Duration;

use super::client::{self, Endpoint, Url};
use crate::cli::ConfigArg;
use crate::exit;

/// The group switched.
pub const EXIT_DONE: u8 = exit::OK;
/// tether refused: not a manual group, a conflict, no better member eligible, no such
/// group.
pub const EXIT_REFUSED: u8 = exit::FAILURE;
/// tether could not be asked.
pub const EXIT_UNREACHABLE: u8 = exit::UNREACHABLE;

/// How long the action may take, connect included.
const TIMEOUT: Duration = Duration::from_secs(5);
/// An answer larger than this is not tether's.
const MAX_ANSWER: usize = 64 * 1024;

pub fn command(config: &ConfigArg, url: Option<Url>, group: &str) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => {
            let config = match super::load(config) {
                Ok(config) => config,
                Err(code) => return code,
            };
            match config.server.unix_socket {
                Some(socket) => Url::from_socket(socket),
                None => {
                    return super::usage_error(
                        "failback is served on the unix socket only, and the config has no \
                         server.unix_socket: set it, or give --url unix:/PATH",
                    );
                }
            }
        }
    };
    if !matches!(url.endpoint, Endpoint::Unix(_)) {
        return super::usage_error(
            "failback is served on the unix socket only: give --url unix:/PATH",
        );
    }
    let url = url.or_path(&format!("/groups/{group}/failback"));
    super::block_on(async move {
        let answer = tokio::time::timeout(TIMEOUT, client::post_body(&url, MAX_ANSWER)).await;
        let (status, body) = match answer {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                eprintln!("tether: cannot reach the sidecar at {url}: {e}");
                return Ok::<_, std::convert::Infallible>(ExitCode::from(EXIT_UNREACHABLE));
            }
            Err(_) => {
                eprintln!("tether: no answer from {url} within {TIMEOUT:?}");
                return Ok(ExitCode::from(EXIT_UNREACHABLE));
            }
        };
        let text = String::from_utf8_lossy(&body);
        if status.is_success() {
            let done: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            println!(
                "{group}: now on {} (was {}), event {}",
                done["active"].as_str().unwrap_or("?"),
                done["previous_active"].as_str().unwrap_or("?"),
                done["event_id"].as_str().unwrap_or("?"),
            );
            return Ok(ExitCode::from(EXIT_DONE));
        }
        eprintln!("tether: {}", text.trim_end());
        Ok(ExitCode::from(match status.as_u16() {
            404 | 409 => EXIT_REFUSED,
            _ => EXIT_UNREACHABLE,
        }))
    })
}
