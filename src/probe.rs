//! Protocol probes: what "healthy" means on the wire for each kind of target. The
//! connect path that runs them (resolve, handshake, first probe) is in
//! [`crate::connect`].
//!
//! A TCP handshake only proves that a kernel accepts connections: a frozen or wedged
//! server still completes it from its listen backlog. A probe makes the server itself
//! answer. Each protocol lives in its own module behind [`Protocol`]; [`Prober`] picks
//! one for a target's settings.

mod amqp;
pub(crate) mod expect;
pub(crate) mod grpc;
mod http;
mod memcached;
mod mqtt;
mod mysql;
mod nats;
mod postgres;
mod redis;
pub mod role;
pub(crate) mod tcp;

use std::future::Future;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{self, Address, kinds::Kind};
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
    /// With `tls`, the application protocols offered by ALPN (none: the server picks
    /// by port, as most do).
    const ALPN: &'static [&'static [u8]] = &[];

    /// Asks the server on `stream` whether it is healthy. `stream` is either `fresh` (the
    /// TCP handshake just completed) or the connection this protocol said it could reuse.
    /// The caller bounds the time; a check only needs to read until it can decide.
    fn check(
        &self,
        stream: &mut Stream,
        fresh: bool,
    ) -> impl Future<Output = Result<Healthy, ProbeError>> + Send;

    /// With `tls`, what a fresh connection says in plain text before the TLS handshake:
    /// nothing for protocols that start TLS on the first byte; PostgreSQL's
    /// `SSLRequest`, MySQL's greeting and `SSLRequest` packet, NATS's `INFO` for those
    /// that negotiate it. An error fails the attempt (a server that offers no TLS is not
    /// talked to in plain text).
    fn start_tls(
        &self,
        _tcp: &mut TcpStream,
    ) -> impl Future<Output = Result<(), ProbeError>> + Send {
        async { Ok(()) }
    }

    /// What carries the checks of a new connection, once it is open (and through TLS):
    /// the stream itself for most protocols; an HTTP/2 session over it for gRPC, whose
    /// state must outlive each check.
    fn session(&self, stream: Stream) -> impl Future<Output = Result<Stream, ProbeError>> + Send {
        async { Ok(stream) }
    }
}

/// The probe of one target, ready to run: settings resolved (a password's source, a
/// request built) once, when the target's actor starts.
///
/// Every actor holds one for its life, so the check with its settings and the TLS
/// handshake are boxed: a probe costs the actor two words whatever its kind.
#[derive(Debug)]
pub struct Prober {
    check: Box<Check>,
    /// `None`: plain TCP.
    tls: Option<Box<Handshake>>,
}

/// Registers the protocols: each line names the variant and the module's type, whose
/// module declares its `KIND` (name, settings, builder). Adding a protocol is its module
/// and one line here.
macro_rules! protocols {
    ($($variant:ident($module:ident::$ty:ident)),* $(,)?) => {
        /// One protocol's check with its settings resolved (a password's source, a
        /// request built), as a kind's builder makes it.
        #[derive(Debug)]
        pub enum Check {
            $($variant($module::$ty),)*
        }

        /// Every kind, in the order the docs and the command line list them.
        pub const KINDS: &[&Kind] = &[$(&$module::KIND,)*];

        impl Check {
            /// The kind's registered name.
            fn name(&self) -> &'static str {
                match self {
                    $(Check::$variant(_) => $module::KIND.name,)*
                }
            }

            fn alpn(&self) -> &'static [&'static [u8]] {
                match self {
                    $(Check::$variant(_) => <$module::$ty as Protocol>::ALPN,)*
                }
            }

            async fn start_tls(&self, tcp: &mut TcpStream) -> Result<(), ProbeError> {
                match self {
                    $(Check::$variant(p) => Box::pin(p.start_tls(tcp)).await,)*
                }
            }

            async fn session(&self, stream: Stream) -> Result<Stream, ProbeError> {
                match self {
                    $(Check::$variant(p) => Box::pin(p.session(stream)).await,)*
                }
            }

            /// Each protocol's check is boxed at its own size: inline, every connect
            /// attempt would carry the largest protocol's future (over a kilobyte),
            /// a `tcp` target's included.
            async fn run(&self, stream: &mut Stream, fresh: bool) -> Result<Healthy, ProbeError> {
                match self {
                    $(Check::$variant(p) => Box::pin(p.check(stream, fresh)).await,)*
                }
            }
        }
    };
}

protocols! {
    Tcp(tcp::Tcp),
    Redis(redis::Redis),
    Postgres(postgres::Postgres),
    Mysql(mysql::Mysql),
    Http(http::Http),
    Memcached(memcached::Memcached),
    Nats(nats::Nats),
    Expect(expect::Expect),
    Mqtt(mqtt::Mqtt),
    Amqp(amqp::Amqp),
    Grpc(grpc::Grpc),
}

impl Prober {
    /// Builds the probe for `probe`; `address` is the target's, for the HTTP `Host` header.
    /// `tls`: the handshake every new connection goes through first.
    pub fn new(probe: &config::Probe, address: &Address, tls: Option<&config::Tls>) -> Prober {
        let check = (probe.kind.build)(&probe.settings, address);
        // The server name was validated with the config; one that rustls still refuses
        // leaves the probe plain rather than the actor dead, and says so.
        let tls = tls.and_then(
            |t| match Handshake::new(&t.client, &t.server_name, check.alpn()) {
                Ok(h) => Some(Box::new(h)),
                Err(e) => {
                    tracing::error!(error = %e, "TLS settings unusable; probing without TLS");
                    None
                }
            },
        );
        Prober {
            check: Box::new(check),
            tls,
        }
    }

    /// The kind's registered name, for `last_error` ("redis probe 10.0.0.7:6379: ...").
    pub fn kind(&self) -> &'static str {
        self.check.name()
    }

    /// Makes a new connection ready for its first check: as it is without TLS; else
    /// through the handshake, after what the protocol says first in plain text (see
    /// [`Protocol::start_tls`]); then in the protocol's session, if it keeps one (see
    /// [`Protocol::session`]).
    /// The handshake has `limit` to finish, as an answer does.
    pub async fn open(&self, tcp: TcpStream, limit: Duration) -> Result<Stream, ProbeError> {
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some(handshake) => {
                let mut tcp = tcp;
                timeout(limit, self.check.start_tls(&mut tcp))
                    .await
                    .unwrap_or(Err(ProbeError::Timeout(limit)))?;
                Box::pin(handshake.run(tcp, limit)).await?
            }
        };
        timeout(limit, self.check.session(stream))
            .await
            .unwrap_or(Err(ProbeError::Timeout(limit)))
    }

    /// Whether the server may speak on the held connection between checks, in messages
    /// the probe must read whole (a PostgreSQL session's parameter reports, notices and
    /// `FATAL` goodbye) or answer (a NATS server's `PING`): the checker then runs a check
    /// when bytes arrive instead of draining them, which would cut a message in two or
    /// leave it unanswered.
    pub fn hears_between_checks(&self) -> bool {
        matches!(&*self.check, Check::Postgres(p) if p.is_session())
            || matches!(*self.check, Check::Nats(_))
    }

    /// Runs the check on `stream` (`fresh` if nothing was sent on it yet), giving the
    /// server `limit` to answer.
    pub async fn check(
        &self,
        stream: &mut Stream,
        fresh: bool,
        limit: Duration,
    ) -> Result<Healthy, ProbeError> {
        timeout(limit, self.check.run(stream, fresh))
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
