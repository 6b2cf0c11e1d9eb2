//! Webhook hooks: a POST of the event's JSON, signed when a secret is configured, and
//! retried with backoff until the hook timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::time::{Instant, sleep};

use crate::backoff::ReconnectBackoff;
use crate::config::{self, HumanDuration};
use crate::observe::HookResult;

/// How much of a receiver's answer is kept for the log.
const BODY_CAP: usize = 1024;

/// Retries start quickly: a receiver restarting alongside the dependency is common.
const RETRY: config::Backoff = config::Backoff {
    initial: HumanDuration(Duration::from_millis(100)),
    max: HumanDuration(Duration::from_secs(5)),
    multiplier: 2.0,
    jitter: 0.2,
};

/// An HMAC key read from the environment. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, the value of `X-Tether-Signature`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How a delivery ended.
#[derive(Debug)]
pub struct Outcome {
    pub result: HookResult,
    pub status: String,
    pub body: String,
    pub attempts: u32,
}

/// Delivers `body` to `url`, retrying transient failures until `limit` has passed.
pub async fn deliver(
    client: &reqwest::Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    secret: Option<&Secret>,
    event_id: &str,
    body: Vec<u8>,
    limit: Duration,
) -> Outcome {
    let deadline = Instant::now() + limit;
    let mut backoff = ReconnectBackoff::new(&RETRY);
    let signature = secret.map(|s| signature(s, &body));
    let mut attempts = 0;
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now());
        let mut req = client
            .post(url)
            .timeout(left)
            .header("content-type", "application/json")
            .header("x-tether-event-id", event_id);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        if let Some(sig) = &signature {
            req = req.header("x-tether-signature", sig);
        }
        let (result, status, body_text, transient) = match req.body(body.clone()).send().await {
            Ok(resp) => {
                let code = resp.status();
                let text = read_capped(resp).await;
                if code.is_success() {
                    return Outcome {
                        result: HookResult::Ok,
                        status: format!("HTTP {}", code.as_u16()),
                        body: text,
                        attempts,
                    };
                }
                // A receiver that rejects the request itself will not change its mind.
                let transient =
                    code.is_server_error() || code.as_u16() == 408 || code.as_u16() == 429;
                (
                    HookResult::Failed,
                    format!("HTTP {}", code.as_u16()),
                    text,
                    transient,
                )
            }
            Err(e) if e.is_timeout() => (
                HookResult::Timeout,
                "no answer before the hook timeout".to_owned(),
                String::new(),
                true,
            ),
            Err(e) => (HookResult::Error, error_chain(&e), String::new(), true),
        };
        // Out of retries or out of time: the last attempt's failure stands.
        let delay = backoff.next_delay();
        if !transient || Instant::now() + delay >= deadline {
            return Outcome {
                result,
                status,
                body: body_text,
                attempts,
            };
        }
        tracing::debug!(url, attempt = attempts, status = %status, retry_in = ?delay, "webhook delivery failed; retrying");
        sleep(delay).await;
    }
}

async fn read_capped(mut resp: reqwest::Response) -> String {
    let mut kept = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        let room = BODY_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= BODY_CAP {
            break;
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_owned()
}

/// reqwest's top-level message ("error sending request") hides the cause.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(
            &Secret::new(b"Jefe".to_vec()),
            b"what do ya want for nothing?",
        );
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        assert_eq!(
            format!("{:?}", Secret::new(b"hunter2".to_vec())),
            "Secret(<redacted>)"
        );
    }
}
