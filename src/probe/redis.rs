//! The `redis` probe: `PING` answered by `+PONG`, on the held connection at every
//! interval (Redis answers any number of commands on one connection).
//!
//! With `password_env`, each new connection first sends `AUTH <password>` (the password
//! read from that variable when the target's actor starts, and never logged). Without
//! it, nothing that needs credentials or changes state is sent.
//!
//! - `-NOAUTH` is healthy: the server parsed and answered the command, and refuses only
//!   because it wants a password, which the application has and tether need not.
//! - `-LOADING` is unhealthy: the server is up but serves nothing until its dataset is in
//!   memory. So are `-BUSY` (a script is running), `-MASTERDOWN` and any other error.

use std::fmt;

use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Afterwards, ProbeError, Protocol, quote, read_line};

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
/// Simple-string and error replies are short; a longer line is not an answer to PING.
const MAX_LINE: usize = 4096;

#[derive(Debug)]
pub struct Redis {
    password: Password,
}

/// The `AUTH` password as configured.
enum Password {
    /// No `password_env`: nothing is sent but `PING`.
    None,
    Set(String),
    /// `password_env` names a variable that is unset or empty: every check fails saying
    /// so, instead of silently probing without the password the user asked for.
    Missing(String),
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Password::None => f.write_str("None"),
            Password::Set(_) => f.write_str("Set([redacted])"),
            Password::Missing(var) => write!(f, "Missing({var})"),
        }
    }
}

impl Redis {
    /// Reads the password from the variable named `password_env`, if any.
    pub fn from_env(password_env: Option<&str>) -> Redis {
        let password = match password_env {
            None => Password::None,
            Some(var) => match std::env::var(var) {
                Ok(value) if !value.is_empty() => {
                    crate::secrets::remember(&value);
                    Password::Set(value)
                }
                _ => {
                    tracing::warn!(
                        variable = var,
                        "the redis password variable is unset or empty; every check will fail"
                    );
                    Password::Missing(var.to_owned())
                }
            },
        };
        Redis { password }
    }
}

impl Protocol for Redis {
    async fn check(&self, stream: &mut TcpStream, fresh: bool) -> Result<Afterwards, ProbeError> {
        let mut reader = BufReader::new(stream);
        if fresh {
            match &self.password {
                Password::None => {}
                Password::Missing(var) => {
                    return Err(ProbeError::Unhealthy(format!(
                        "password_env {var} is unset or empty"
                    )));
                }
                Password::Set(password) => {
                    reader.get_mut().write_all(&auth_command(password)).await?;
                    let reply = read_line(&mut reader, MAX_LINE, "Redis").await?;
                    if reply != b"+OK" {
                        return Err(auth_refused(&reply));
                    }
                }
            }
        }
        reader.get_mut().write_all(PING).await?;
        let reply = read_line(&mut reader, MAX_LINE, "Redis").await?;
        classify_reply("PING", &reply)?;
        // Anything beyond the one reply would desynchronise the next check.
        Ok(if reader.buffer().is_empty() {
            Afterwards::Reuse
        } else {
            Afterwards::Hold
        })
    }
}

/// `AUTH` as a RESP array, so the password needs no quoting whatever it contains.
fn auth_command(password: &str) -> Vec<u8> {
    let mut cmd = b"*2\r\n$4\r\nAUTH\r\n".to_vec();
    cmd.extend_from_slice(format!("${}\r\n", password.len()).as_bytes());
    cmd.extend_from_slice(password.as_bytes());
    cmd.extend_from_slice(b"\r\n");
    cmd
}

/// A reply to `AUTH` other than `+OK`, worded by its error code alone: the rest of the
/// text may echo the password (`-ERR unknown command 'AUTH', with args beginning with:
/// '<password>'` where `AUTH` is renamed away).
fn auth_refused(reply: &[u8]) -> ProbeError {
    let code: String = match reply.strip_prefix(b"-") {
        Some(error) => error
            .iter()
            .take_while(|b| b.is_ascii_uppercase())
            .take(32)
            .map(|&b| char::from(b))
            .collect(),
        None => String::new(),
    };
    if code.is_empty() {
        ProbeError::Unhealthy("AUTH refused (reply withheld: it may echo the password)".to_owned())
    } else {
        ProbeError::Unhealthy(format!(
            "AUTH refused: -{code} (reply text withheld: it may echo the password)"
        ))
    }
}

/// Decides on the reply line to `command`.
fn classify_reply(command: &str, reply: &[u8]) -> Result<(), ProbeError> {
    match reply.first() {
        Some(b'+') if command != "PING" || reply == b"+PONG" => Ok(()),
        Some(b'-') if reply.starts_with(b"-NOAUTH") => Ok(()),
        Some(b'-') => Err(ProbeError::Unhealthy(format!(
            "{command} answered {}",
            quote(reply)
        ))),
        _ => Err(ProbeError::Garbled {
            protocol: "Redis",
            detail: format!("{command} answered {}", quote(reply)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_and_noauth_are_healthy() {
        classify_reply("PING", b"+PONG").unwrap();
        classify_reply("PING", b"-NOAUTH Authentication required.").unwrap();
    }

    #[test]
    fn loading_busy_and_other_errors_are_unhealthy_with_the_servers_words() {
        let e = classify_reply("PING", b"-LOADING Redis is loading the dataset in memory");
        assert_eq!(
            e.unwrap_err().to_string(),
            "PING answered -LOADING Redis is loading the dataset in memory"
        );
        assert!(classify_reply("PING", b"-BUSY Redis is busy running a script").is_err());
        assert!(classify_reply("PING", b"-MASTERDOWN Link with MASTER is down").is_err());
    }

    #[test]
    fn a_refused_auth_keeps_only_its_error_code() {
        let e = auth_refused(b"-WRONGPASS invalid username-password pair").to_string();
        assert_eq!(
            e,
            "AUTH refused: -WRONGPASS (reply text withheld: it may echo the password)"
        );
        let e = auth_refused(b"-ERR unknown command 'AUTH', with args beginning with: 'hunter2' ")
            .to_string();
        assert!(e.starts_with("AUTH refused: -ERR "), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = auth_refused(b"hunter2").to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn another_protocol_is_garbled() {
        assert_eq!(
            classify_reply("PING", b"HTTP/1.1 400 Bad Request")
                .unwrap_err()
                .to_string(),
            "not a Redis answer: PING answered HTTP/1.1 400 Bad Request"
        );
        assert!(classify_reply("PING", b"+OK").is_err());
    }

    #[test]
    fn auth_is_a_resp_array_so_any_password_survives() {
        assert_eq!(
            auth_command("p a\r\ns"),
            b"*2\r\n$4\r\nAUTH\r\n$6\r\np a\r\ns\r\n".to_vec()
        );
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let r = Redis {
            password: Password::Set("hunter2".into()),
        };
        assert!(!format!("{r:?}").contains("hunter2"));
    }
}
