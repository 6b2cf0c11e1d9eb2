//! What ended a held connection or a connect attempt, kept typed through the machine and
//! worded only where it leaves tether: the log, hook payloads, `/status`, the observers.

use std::fmt;
use std::sync::OnceLock;
use std::time::Duration;

use crate::connect::AttemptError;
use crate::net::Hangup;
use crate::secrets;

/// Why the target's connection ended or could not be made; its `Display` is the
/// `last_error` text.
///
/// The text is made once, at the first rendering: the status registry, the log line,
/// the event stream and the hooks all show the same reason, and making it (the system's
/// error message, the address, the masking of secrets) was done once for each.
#[derive(Debug)]
pub struct Loss {
    cause: Cause,
    text: OnceLock<Box<str>>,
}

#[derive(Debug)]
enum Cause {
    /// The held connection ended, as its socket told.
    Hangup(Hangup),
    /// A connect attempt, or a check of the held connection, failed.
    Attempt(AttemptError),
    /// The machine said to hold a connection the checker did not have.
    NoConnectionHeld,
    /// The supervisor stopped restarting the target's actor.
    GaveUp {
        crashes: usize,
        window: Duration,
        /// The last crash's panic message.
        panic: String,
    },
}

impl Loss {
    fn new(cause: Cause) -> Loss {
        Loss {
            cause,
            text: OnceLock::new(),
        }
    }

    /// The machine said to hold a connection the checker did not have.
    pub fn no_connection_held() -> Loss {
        Loss::new(Cause::NoConnectionHeld)
    }

    /// The supervisor stopped restarting the target's actor after `crashes` crashes
    /// within `window`, the last with `panic`.
    pub fn gave_up(crashes: usize, window: Duration, panic: String) -> Loss {
        Loss::new(Cause::GaveUp {
            crashes,
            window,
            panic,
        })
    }

    /// The `last_error` text, masked: a server's words may echo a credential it was
    /// sent, and no edge must be able to print the reason unmasked.
    pub fn text(&self) -> &str {
        self.text.get_or_init(|| {
            let text = match &self.cause {
                Cause::Hangup(h) => h.to_string(),
                Cause::Attempt(e) => e.to_string(),
                Cause::NoConnectionHeld => "no connection held".to_owned(),
                Cause::GaveUp {
                    crashes,
                    window,
                    panic,
                } => format!("checker crashed {crashes} times within {window:?}: {panic}"),
            };
            secrets::mask(&text).into()
        })
    }
}

impl From<Hangup> for Loss {
    fn from(h: Hangup) -> Loss {
        Loss::new(Cause::Hangup(h))
    }
}

impl From<AttemptError> for Loss {
    fn from(e: AttemptError) -> Loss {
        Loss::new(Cause::Attempt(e))
    }
}

impl fmt::Display for Loss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
impl Loss {
    /// A reason that reads `text`, for tests about what carries reasons rather than
    /// about any one reason.
    pub(crate) fn said(text: &str) -> std::sync::Arc<Loss> {
        std::sync::Arc::new(Loss::from(Hangup::Io(std::io::Error::other(text))))
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::net::SocketAddr;

    use super::*;
    use crate::net::ConnectError;
    use crate::probe::ProbeError;

    #[test]
    fn each_reason_reads_as_the_text_it_replaced() {
        let addr: SocketAddr = "10.0.0.1:5432".parse().unwrap();
        let refused = ConnectError::Connect {
            addr,
            source: io::Error::from(io::ErrorKind::ConnectionRefused),
            others: 1,
        };
        let cases = [
            (
                Loss::from(Hangup::ClosedByPeer),
                "connection closed by peer",
            ),
            (Loss::from(Hangup::Reset), "connection reset by peer"),
            (
                Loss::from(Hangup::KeepaliveTimeout),
                "timed out (keepalive or user timeout)",
            ),
            (
                Loss::from(Hangup::Io(io::Error::from(io::ErrorKind::BrokenPipe))),
                "broken pipe",
            ),
            (
                Loss::from(AttemptError::from(refused)),
                "connect 10.0.0.1:5432: connection refused (and 1 other address)",
            ),
            (
                Loss::from(AttemptError::Probe {
                    kind: "redis",
                    addr,
                    source: ProbeError::Closed,
                    others: 0,
                }),
                "redis probe 10.0.0.1:5432: connection closed before the answer",
            ),
            (Loss::no_connection_held(), "no connection held"),
            (
                Loss::gave_up(4, Duration::from_secs(60), "boom".to_owned()),
                "checker crashed 4 times within 60s: boom",
            ),
        ];
        for (loss, text) in cases {
            assert_eq!(loss.to_string(), text);
        }
    }

    #[test]
    fn a_secret_echoed_by_a_server_is_masked_wherever_the_reason_is_shown() {
        secrets::remember("loss-test-secret-value");
        let loss = Loss::from(Hangup::Io(io::Error::other(
            "AUTH loss-test-secret-value refused",
        )));
        assert_eq!(loss.to_string(), "AUTH [redacted] refused");
    }
}
