//! The `nats` probe: the server greets every connection with `INFO {...}`; the probe
//! answers with `CONNECT {...}` and `PING`, and `PONG` is healthy. Later checks send
//! `PING` alone on the held connection.
//!
//! The server may interleave its own `PING` (its keepalive: unanswered, it closes the
//! connection), `INFO` (cluster changes) and `+OK` lines: a check answers the first
//! with `PONG`, skips the others and reads on, within [`MAX_LINES`], until its `PONG`.
//! A server `PING` arriving between checks starts a check at once (see
//! [`super::Prober::hears_between_checks`]), so it is answered in time.
//!
//! **With `tls`**, the `INFO` greeting is read in plain text and must offer TLS
//! (`tls_required` or `tls_available`, as a server with a `tls` block says); the TLS
//! handshake follows at once, as NATS clients do it, and `CONNECT` and `PING` go through
//! TLS. A server that offers no TLS fails the attempt rather than being talked to in
//! plain text.
//!
//! With `user` (and `password_env` or `password_file`), `CONNECT` carries them; the
//! password is read at start or at the last reload and never logged. A refusal,
//! `-ERR 'Authorization Violation'`, is unhealthy, saying so: unlike Redis's `-NOAUTH`
//! it comes with the server closing the connection, and a NATS that wants credentials
//! tether lacks is one the application cannot use either if tether's are its own.

use crate::tls::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote, read_line};
use crate::config::kinds::{self, Kind};
use crate::secrets::{self, Source};

pub const KIND: Kind = Kind {
    name: "nats",
    summary: "INFO greeting, CONNECT and PING answered by PONG",
    healthy: "the `INFO` greeting, then `CONNECT` (with `user` and a password if set) and `PING` answered by `PONG` (one connection held, one `PING` per check, as any idle client sends)",
    repeats: "on the held connection",
    settings: &["user", "password_env", "password_file"],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |s, _| Check::Nats(Nats::new(s.user.clone(), s.password())),
};

/// `INFO` lists the cluster's URLs and can run to a few KiB; other lines are short.
const MAX_LINE: usize = 64 * 1024;
/// Lines read in one check before its `PONG`: a few server `PING`s, `INFO` updates.
const MAX_LINES: usize = 32;

#[derive(Debug)]
pub struct Nats {
    user: Option<String>,
    password: Option<Source>,
}

impl Nats {
    pub fn new(user: Option<String>, password: Option<Source>) -> Nats {
        Nats { user, password }
    }

    /// `CONNECT` with the credentials as last loaded, then `PING`, in one write; `tls`:
    /// whether it goes through TLS.
    fn connect_and_ping(&self, tls: bool) -> Result<Vec<u8>, ProbeError> {
        let mut options = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": tls,
            "name": "tether",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
        });
        if let Some(user) = &self.user {
            options["user"] = user.clone().into();
        }
        if let Some(source) = &self.password {
            let password = secrets::current(source).map_err(|e| {
                ProbeError::Unhealthy(format!("no password: {e} (unset, empty or unreadable)"))
            })?;
            options["pass"] = String::from_utf8_lossy(&password).into_owned().into();
        }
        Ok(format!("CONNECT {options}\r\nPING\r\n").into_bytes())
    }
}

impl Protocol for Nats {
    async fn check(&self, stream: &mut Stream, fresh: bool) -> Result<Healthy, ProbeError> {
        let hello = match (fresh, stream.is_tls()) {
            (false, _) => Hello::Ping,
            (true, false) => Hello::Greeted(self.connect_and_ping(false)?),
            // The INFO was read in plain text before the handshake ([`start_tls`]).
            (true, true) => Hello::Connect(self.connect_and_ping(true)?),
        };
        check(stream, hello).await
    }

    async fn start_tls(&self, tcp: &mut TcpStream) -> Result<(), ProbeError> {
        start_tls(tcp).await
    }
}

/// Reads the `INFO` greeting of a fresh connection in plain text and checks that it
/// offers TLS: the handshake may begin on `tcp` once this returns. The server says
/// nothing more until the client's handshake, so nothing past the line is lost.
async fn start_tls(tcp: &mut TcpStream) -> Result<(), ProbeError> {
    let mut reader = BufReader::new(tcp);
    let info = greeting(&mut reader).await?;
    if !reader.buffer().is_empty() {
        return Err(ProbeError::Garbled {
            protocol: "NATS",
            detail: "more than INFO before the TLS handshake".to_owned(),
        });
    }
    if offers_tls(&info) {
        Ok(())
    } else {
        Err(ProbeError::Unhealthy(
            "the server does not offer TLS (its INFO has neither tls_required nor \
             tls_available; is a tls block configured?)"
                .to_owned(),
        ))
    }
}

/// Whether an `INFO` line's JSON says the server takes a TLS handshake now.
fn offers_tls(info: &[u8]) -> bool {
    let json = info.strip_prefix(b"INFO ").unwrap_or(info);
    let Ok(info) = serde_json::from_slice::<serde_json::Value>(json) else {
        return false;
    };
    ["tls_required", "tls_available"]
        .iter()
        .any(|key| info.get(key).and_then(serde_json::Value::as_bool) == Some(true))
}

/// Reads the server's `INFO` greeting.
async fn greeting<R>(reader: &mut BufReader<R>) -> Result<Vec<u8>, ProbeError>
where
    R: AsyncRead + Unpin,
{
    let greeting = read_line(reader, MAX_LINE, "NATS").await?;
    if !greeting.starts_with(b"INFO ") {
        return Err(ProbeError::Garbled {
            protocol: "NATS",
            detail: format!("greeted with {}", quote(&greeting)),
        });
    }
    Ok(greeting)
}

/// What a check sends first.
pub enum Hello {
    /// On a fresh connection: read the `INFO` greeting, then send `CONNECT` and `PING`.
    Greeted(Vec<u8>),
    /// On a fresh connection whose greeting was read before TLS: `CONNECT` and `PING`.
    Connect(Vec<u8>),
    /// On a held connection: `PING` alone.
    Ping,
}

/// One check on `stream`, starting with `hello`.
pub async fn check<S>(stream: &mut S, hello: Hello) -> Result<Healthy, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut reader = BufReader::new(stream);
    match hello {
        Hello::Greeted(hello) => {
            greeting(&mut reader).await?;
            reader.get_mut().write_all(&hello).await?;
        }
        Hello::Connect(hello) => reader.get_mut().write_all(&hello).await?,
        Hello::Ping => reader.get_mut().write_all(b"PING\r\n").await?,
    }
    await_pong(&mut reader).await?;
    Ok(if reader.buffer().is_empty() {
        Afterwards::Reuse
    } else {
        Afterwards::Hold
    }
    .into())
}

/// Reads until `PONG`, answering the server's `PING`s and skipping what it may say
/// unasked.
async fn await_pong<R>(reader: &mut BufReader<R>) -> Result<(), ProbeError>
where
    R: AsyncRead + AsyncWrite + Unpin,
{
    for _ in 0..MAX_LINES {
        let line = read_line(reader, MAX_LINE, "NATS").await?;
        match Line::of(&line) {
            Line::Pong => return Ok(()),
            Line::Ping => reader.get_mut().write_all(b"PONG\r\n").await?,
            Line::Aside => {}
            Line::Error => return Err(refused(&line)),
            Line::Other => {
                return Err(ProbeError::Garbled {
                    protocol: "NATS",
                    detail: format!("PING answered {}", quote(&line)),
                });
            }
        }
    }
    Err(ProbeError::Garbled {
        protocol: "NATS",
        detail: format!("no PONG within {MAX_LINES} lines"),
    })
}

/// What one line from the server is to a check waiting for `PONG`.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    Pong,
    Ping,
    /// `+OK`, `INFO` updates: said unasked, skipped.
    Aside,
    Error,
    Other,
}

impl Line {
    fn of(line: &[u8]) -> Line {
        match line {
            b"PONG" => Line::Pong,
            b"PING" => Line::Ping,
            b"+OK" => Line::Aside,
            l if l.starts_with(b"INFO ") => Line::Aside,
            l if l.starts_with(b"-ERR") => Line::Error,
            _ => Line::Other,
        }
    }
}

/// The server's `-ERR`, worded for `last_error`: an authorization failure says so.
fn refused(line: &[u8]) -> ProbeError {
    let text = quote(line);
    if text
        .to_ascii_lowercase()
        .contains("authorization violation")
    {
        ProbeError::Unhealthy(format!(
            "the server refused the credentials (or their absence): {text}"
        ))
    } else {
        ProbeError::Unhealthy(format!("the server answered {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_told_apart() {
        assert_eq!(Line::of(b"PONG"), Line::Pong);
        assert_eq!(Line::of(b"PING"), Line::Ping);
        assert_eq!(Line::of(b"+OK"), Line::Aside);
        assert_eq!(Line::of(b"INFO {\"server_id\":\"x\"}"), Line::Aside);
        assert_eq!(Line::of(b"-ERR 'Authorization Violation'"), Line::Error);
        assert_eq!(Line::of(b"+PONG"), Line::Other);
    }

    #[test]
    fn an_authorization_violation_is_named() {
        let e = refused(b"-ERR 'Authorization Violation'").to_string();
        assert!(e.starts_with("the server refused the credentials"), "{e}");
        let e = refused(b"-ERR 'Maximum Connections Exceeded'").to_string();
        assert_eq!(e, "the server answered -ERR 'Maximum Connections Exceeded'");
    }

    #[tokio::test]
    async fn a_server_ping_is_answered_and_unasked_lines_skipped_before_the_pong() {
        use tokio::io::AsyncReadExt;
        let (mut client, mut server) = tokio::io::duplex(4096);
        server
            .write_all(b"PING\r\n+OK\r\nINFO {\"ldm\":true}\r\nPONG\r\n")
            .await
            .unwrap();
        let healthy = check(&mut client, Hello::Ping).await.unwrap();
        assert_eq!(healthy.afterwards, Afterwards::Reuse);
        let mut sent = [0u8; 12];
        server.read_exact(&mut sent).await.unwrap();
        assert_eq!(
            &sent, b"PING\r\nPONG\r\n",
            "the check's PING, then the answer"
        );
    }

    #[test]
    fn connect_carries_the_user_and_quotes_it_as_json() {
        let nats = Nats::new(Some("a\"b".into()), None);
        let hello = String::from_utf8(nats.connect_and_ping(false).unwrap()).unwrap();
        assert!(hello.starts_with("CONNECT {"), "{hello}");
        assert!(hello.ends_with("}\r\nPING\r\n"), "{hello}");
        assert!(hello.contains(r#""user":"a\"b""#), "{hello}");
        assert!(hello.contains(r#""verbose":false"#), "{hello}");
        assert!(!hello.contains("pass"), "{hello}");
    }

    #[test]
    fn only_an_info_that_offers_tls_lets_the_handshake_start() {
        assert!(offers_tls(br#"INFO {"server_id":"x","tls_required":true}"#));
        assert!(offers_tls(br#"INFO {"tls_available":true}"#));
        assert!(!offers_tls(br#"INFO {"server_id":"x"}"#));
        assert!(!offers_tls(br#"INFO {"tls_required":false}"#));
        assert!(!offers_tls(b"INFO not json"));
    }
}
