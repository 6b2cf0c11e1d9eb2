//! Protocol probes: what "healthy" means on the wire for each kind of target. The
//! connect path that runs them (resolve, handshake, first probe) is in
//! [`crate::connect`].
//!
//! A TCP handshake only proves that a kernel accepts connections: a frozen or wedged
//! server still completes it from its listen backlog. A probe makes the server itself
//! answer. Each protocol lives in its own module behind [`Protocol`]; [`Prober`] picks
//! one for a target's settings.

mod http;
mod mysql;
mod postgres;
mod redis;
pub mod role;
mod tcp;

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{self, Address, kinds};
use crate::net;
use crate::tls::{Handshake, Stream, TlsError};

pub use role::Role;

/// What a healthy answer leaves of the connection it was given on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Afterwards {
    /// The connection can carry the next check (Redis, HTTP keep-alive, TCP).
    Reuse,
    /// The connection stays open and is held to notice its closure, but cannot carry
    /// another check: the next one needs a fresh connection (PostgreSQL and MySQL, whose
    /// only unauthenticated exchange is the opening one).
    Hold,
    /// The server is closing the connection (HTTP `Connection: close`, a MySQL error
    /// packet): holding it would only produce a reconnect, so it is dropped and checks
    /// run on fresh connections.
    Drop,
}

/// What a healthy check learned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Healthy {
    pub afterwards: Afterwards,
    /// The replication role the server reported; `None` where the probe cannot ask or
    /// the server would not say.
    pub role: Option<Role>,
}

/// Probes that cannot learn a role answer with what the connection is good for alone.
impl From<Afterwards> for Healthy {
    fn from(afterwards: Afterwards) -> Healthy {
        Healthy {
            afterwards,
            role: None,
        }
    }
}

/// Why a probe found a server unhealthy, worded for `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{}", net::describe(.0))]
    Io(#[from] io::Error),
    #[error("connection closed before the answer")]
    Closed,
    /// The server ended an established session and said why (PostgreSQL's FATAL after
    /// `pg_terminate_backend` or a shutdown): a lost connection, not a sick server.
    #[error("server ended the session: {0}")]
    Ended(String),
    /// The server answered, but not with what healthy means for this protocol.
    #[error("{0}")]
    Unhealthy(String),
    /// The answer is not this protocol at all (a wrong port, a proxy's error page).
    #[error("not a {protocol} answer: {detail}")]
    Garbled {
        protocol: &'static str,
        detail: String,
    },
    #[error("TLS handshake: {0}")]
    Tls(#[from] TlsError),
}

/// One protocol's check.
pub trait Protocol {
    /// Asks the server on `stream` whether it is healthy. `stream` is either `fresh` (the
    /// TCP handshake just completed) or the connection this protocol said it could reuse.
    /// The caller bounds the time; a check only needs to read until it can decide.
    fn check(
        &self,
        stream: &mut Stream,
        fresh: bool,
    ) -> impl Future<Output = Result<Healthy, ProbeError>> + Send;
}

/// The probe of one target, ready to run: settings resolved (the Redis password read from
/// its environment variable) once, when the target's actor starts.
#[derive(Debug)]
///
/// Every actor holds one for its life, so the kinds that carry settings and the TLS
/// handshake are boxed: a plain `tcp` probe, the common case at scale, costs two words.
pub struct Prober {
    kind: Kind,
    /// `None`: plain TCP.
    tls: Option<Box<Handshake>>,
}

#[derive(Debug)]
enum Kind {
    Tcp(tcp::Tcp),
    Redis(Box<redis::Redis>),
    Postgres(Box<postgres::Postgres>),
    Mysql(mysql::Mysql),
    Http(Box<http::Http>),
}

impl Prober {
    /// Builds the probe for `probe`; `address` is the target's, for the HTTP `Host` header.
    /// `tls`: the handshake every new connection goes through first.
    pub fn new(probe: &config::Probe, address: &Address, tls: Option<&config::Tls>) -> Prober {
        let kind = match probe {
            config::Probe::Tcp => Kind::Tcp(tcp::Tcp),
            config::Probe::Redis { .. } => {
                Kind::Redis(Box::new(redis::Redis::new(probe.password())))
            }
            config::Probe::Postgres { user, database, .. } => Kind::Postgres(Box::new(
                postgres::Postgres::new(user.as_deref(), database.as_deref(), probe.password()),
            )),
            config::Probe::Mysql => Kind::Mysql(mysql::Mysql),
            config::Probe::Http {
                path,
                expect_status,
                host,
            } => Kind::Http(Box::new(http::Http::new(
                path,
                *expect_status,
                host.clone().unwrap_or_else(|| address.to_string()),
            ))),
        };
        // The server name was validated with the config; one that rustls still refuses
        // leaves the probe plain rather than the actor dead, and says so.
        let tls = tls.and_then(|t| match Handshake::new(&t.client, &t.server_name) {
            Ok(h) => Some(Box::new(h)),
            Err(e) => {
                tracing::error!(error = %e, "TLS settings unusable; probing without TLS");
                None
            }
        });
        Prober { kind, tls }
    }

    /// The kind's registered name, for `last_error` ("redis probe 10.0.0.7:6379: ...").
    pub fn kind(&self) -> &'static str {
        let kind = match &self.kind {
            Kind::Tcp(_) => &kinds::TCP,
            Kind::Redis(_) => &kinds::REDIS,
            Kind::Postgres(_) => &kinds::POSTGRES,
            Kind::Mysql(_) => &kinds::MYSQL,
            Kind::Http(_) => &kinds::HTTP,
        };
        kind.name
    }

    /// Makes a new connection ready for its first check: as it is without TLS; else
    /// through the handshake, after PostgreSQL's `SSLRequest` for a postgres target.
    /// The handshake has `limit` to finish, as an answer does.
    pub async fn open(&self, tcp: TcpStream, limit: Duration) -> Result<Stream, ProbeError> {
        let Some(handshake) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        if let Kind::Postgres(_) = self.kind {
            timeout(limit, postgres::start_tls(&mut tcp))
                .await
                .unwrap_or(Err(ProbeError::Timeout(limit)))?;
        }
        Ok(handshake.run(tcp, limit).await?)
    }

    /// Whether the server may speak on the held connection between checks, in messages
    /// the probe must read whole (a PostgreSQL session's parameter reports, notices and
    /// `FATAL` goodbye): the checker then runs a check when bytes arrive instead of
    /// draining them, which would cut a message in two.
    pub fn hears_between_checks(&self) -> bool {
        matches!(&self.kind, Kind::Postgres(p) if p.is_session())
    }

    /// Runs the check on `stream` (`fresh` if nothing was sent on it yet), giving the
    /// server `limit` to answer.
    pub async fn check(
        &self,
        stream: &mut Stream,
        fresh: bool,
        limit: Duration,
    ) -> Result<Healthy, ProbeError> {
        let check = async {
            match &self.kind {
                Kind::Tcp(p) => p.check(stream, fresh).await,
                Kind::Redis(p) => p.check(stream, fresh).await,
                Kind::Postgres(p) => p.check(stream, fresh).await,
                Kind::Mysql(p) => p.check(stream, fresh).await,
                Kind::Http(p) => p.check(stream, fresh).await,
            }
        };
        timeout(limit, check)
            .await
            .unwrap_or(Err(ProbeError::Timeout(limit)))
    }
}

/// Reads one line ending in CRLF (returned without it), refusing to read more than
/// `limit` bytes: a server's answer is trusted for nothing, not even its length.
async fn read_line(
    reader: &mut (impl AsyncBufRead + Unpin),
    limit: usize,
    protocol: &'static str,
) -> Result<Vec<u8>, ProbeError> {
    let mut line = Vec::new();
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Err(ProbeError::Closed);
        }
        let (taken, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        line.extend_from_slice(&available[..taken]);
        reader.consume(taken);
        if line.len() > limit {
            return Err(ProbeError::Garbled {
                protocol,
                detail: format!("a line longer than {limit} bytes"),
            });
        }
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            return Ok(line);
        }
    }
}

/// Shows a server's answer in an error message: lossy UTF-8, control characters escaped,
/// cut at a readable length.
fn quote(bytes: &[u8]) -> String {
    const SHOWN: usize = 120;
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(SHOWN)]);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    if bytes.len() > SHOWN {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lines_are_read_up_to_crlf_and_not_beyond_the_limit() {
        let mut input: &[u8] = b"+PONG\r\nrest";
        assert_eq!(read_line(&mut input, 64, "redis").await.unwrap(), b"+PONG");
        assert_eq!(input, b"rest");

        let mut long: &[u8] = &[b'a'; 100];
        assert!(matches!(
            read_line(&mut long, 10, "redis").await,
            Err(ProbeError::Garbled { .. })
        ));

        let mut cut: &[u8] = b"+PO";
        assert!(matches!(
            read_line(&mut cut, 64, "redis").await,
            Err(ProbeError::Closed)
        ));
    }

    #[test]
    fn answers_are_quoted_readably_and_briefly() {
        assert_eq!(quote(b"-ERR x\r\n"), "-ERR x\\r\\n");
        assert!(quote(&[b'x'; 500]).ends_with('…'));
    }
}
