//! What `tether run` writes to its log.

use std::time::Duration;

use crate::endpoint;
use crate::support::blocking;
use crate::support::harness::{Behaviour, Listener, target, write_config};
use crate::support::tether_process::TetherProcess;

const LIMIT: Duration = Duration::from_secs(15);

/// A transition's line is formatted once the burst it may belong to is over, but it
/// carries the time of the transition: the same instant `/status` gives as `since`.
#[tokio::test(flavor = "multi_thread")]
async fn a_transition_is_logged_with_the_time_it_happened() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(Behaviour::Hold).await;
    let config = write_config(dir.path(), "", &target("db", &listener.address(), ""));
    let tether = TetherProcess::run(&config, &["--log-format", "json"]);
    let addr = blocking(|| tether.http_addr(LIMIT));

    let up = blocking(|| tether.wait_for("db is up (connect)", LIMIT));
    assert_logged_at_since(&up, addr, "up").await;

    listener.kill().await;
    let down = blocking(|| tether.wait_for("db is down (disconnect)", LIMIT));
    assert_logged_at_since(&down, addr, "down").await;

    let (status, log) = blocking(|| tether.stop());
    assert!(status.success(), "{status:?}\n{log}");
}

/// The line's timestamp (microseconds) falls in the millisecond `/status` gives as the
/// time the target entered `state`, and the line names the same event.
async fn assert_logged_at_since(line: &str, addr: std::net::SocketAddr, state: &str) {
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    let logged = event["timestamp"]
        .as_str()
        .unwrap_or_else(|| panic!("{line}"));
    let status: serde_json::Value =
        serde_json::from_str(&endpoint::get(addr, "/status").await.body).unwrap();
    let db = &status["targets"][0];
    assert_eq!(db["state"], state, "{status}");
    assert_eq!(db["event_id"], event["event_id"], "{line}\n{status}");
    let since = db["since"].as_str().unwrap();
    // `2026-12-05T20:28:02.679750Z` against `2026-12-05T20:28:02.679Z`.
    assert_eq!(
        format!("{}Z", &logged[..logged.len() - 4]),
        since,
        "logged at {logged}, since {since}"
    );
}
