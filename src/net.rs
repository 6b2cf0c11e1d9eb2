//! Connecting to a target: name resolution on every attempt, socket options set before
//! the handshake, and the classification of what ended a held connection.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::config::{Address, Keepalive};
use crate::resolve::{self, ResolveError};

pub mod phase;

/// Why a connect attempt failed, worded for `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("resolve {host}: {source}")]
    Resolve {
        host: String,
        #[source]
        source: ResolveError,
    },
    #[error("resolve {host}: no addresses")]
    NoAddresses { host: String },
    #[error("resolve {host}: timed out after {after:?}")]
    ResolveTimeout { host: String, after: Duration },
    #[error("connect {addr}: {}{}", describe(.source), and_others(*.others))]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
        /// How many other resolved addresses failed too.
        others: usize,
    },
    #[error("connect {addr}: timed out after {after:?}{}", and_others(*.others))]
    Timeout {
        addr: SocketAddr,
        after: Duration,
        others: usize,
    },
}

/// " (and N other addresses)" for an error that names only the last address tried.
pub(crate) fn and_others(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => " (and 1 other address)".to_owned(),
        n => format!(" (and {n} other addresses)"),
    }
}

impl ConnectError {
    /// The same error, saying that `others` more addresses failed as well.
    pub fn with_others(self, others: usize) -> ConnectError {
        match self {
            ConnectError::Connect { addr, source, .. } => ConnectError::Connect {
                addr,
                source,
                others,
            },
            ConnectError::Timeout { addr, after, .. } => ConnectError::Timeout {
                addr,
                after,
                others,
            },
            other => other,
        }
    }
}

/// Short, stable wording for the errors operators see most, without the
/// "(os error 111)" noise of `io::Error`'s own display.
pub fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        io::ErrorKind::ConnectionReset => "connection reset by peer".to_owned(),
        io::ErrorKind::ConnectionAborted => "connection aborted".to_owned(),
        io::ErrorKind::TimedOut => "timed out (keepalive or user timeout)".to_owned(),
        io::ErrorKind::HostUnreachable => "host unreachable".to_owned(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".to_owned(),
        io::ErrorKind::BrokenPipe => "broken pipe".to_owned(),
        _ => match e.raw_os_error() {
            Some(code) => format!("{} (errno {code})", strip_os_suffix(&e.to_string())),
            None => e.to_string(),
        },
    }
}

fn strip_os_suffix(s: &str) -> &str {
    s.find(" (os error").map_or(s, |i| &s[..i])
}

/// Resolves the target's host, freshly on every call so a moved dependency is followed:
/// `/etc/hosts`, then DNS as `resolv.conf` says (see [`crate::resolve`]), on the runtime
/// rather than on a thread of its own.
pub async fn resolve(address: &Address, limit: Duration) -> Result<Vec<SocketAddr>, ConnectError> {
    if let Some(ip) = address.ip() {
        return Ok(vec![SocketAddr::new(ip, address.port())]);
    }
    let host = address.host();
    // Boxed: the lookup's future is over a kilobyte, and inline it would be carried by
    // every connect attempt, of targets at an IP address too; after a mass outage
    // thousands of attempts are under way at once.
    match timeout(limit, Box::pin(resolve::system().lookup(host))).await {
        Err(_) => Err(ConnectError::ResolveTimeout {
            host: host.to_owned(),
            after: limit,
        }),
        Ok(Err(source)) => Err(ConnectError::Resolve {
            host: host.to_owned(),
            source,
        }),
        Ok(Ok(ips)) => Ok(ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, address.port()))
            .collect()),
    }
}

/// Connects to one address and sets keepalive, `TCP_USER_TIMEOUT` and no-delay as soon
/// as the handshake completes, before the first byte: the connection is protected
/// against silent peer death from its first byte, and a refused attempt (every attempt
/// of a long outage) costs no socket options. The handshake itself is bounded by
/// `connect_timeout`.
pub async fn connect_addr(
    addr: SocketAddr,
    connect_timeout: Duration,
    keepalive: &Keepalive,
) -> Result<TcpStream, ConnectError> {
    let io_err = |source| ConnectError::Connect {
        addr,
        source,
        others: 0,
    };
    match timeout(connect_timeout, handshake(addr)).await {
        Ok(Ok(stream)) => {
            tune(SockRef::from(&stream), keepalive).map_err(io_err)?;
            Ok(stream)
        }
        Ok(Err(source)) => Err(io_err(source)),
        Err(_) => Err(ConnectError::Timeout {
            addr,
            after: connect_timeout,
            others: 0,
        }),
    }
}

/// The TCP handshake with `addr`. A refusal the kernel already knows when `connect`
/// returns (on loopback the SYN is answered within the call) is reported before the
/// socket is registered with the runtime: each attempt of a local outage, a thousand
/// at once when a host's dependencies restart, then costs neither a registration nor
/// a wake-up.
async fn handshake(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            if let Some(refused) = socket.take_error()? {
                return Err(refused);
            }
        }
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    loop {
        std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        match stream.peer_addr() {
            Ok(_) => return Ok(stream),
            // Woken before the handshake ended: forget the readiness, wait again.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                let _ = stream.try_io(Interest::WRITABLE, || {
                    Err::<(), _>(io::ErrorKind::WouldBlock.into())
                });
            }
            Err(e) => return Err(e),
        }
    }
}

fn tune(sock: SockRef<'_>, keepalive: &Keepalive) -> io::Result<()> {
    sock.set_keepalive(true)?;
    sock.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(keepalive.idle.get())
            .with_interval(keepalive.interval.get())
            .with_retries(keepalive.count),
    )?;
    // Without it, data the peer never acknowledges is retransmitted for ~15 minutes
    // before the kernel gives up, whatever keepalive says.
    sock.set_tcp_user_timeout(Some(keepalive.dead_after()))?;
    sock.set_tcp_nodelay(true)?;
    Ok(())
}

/// Restarts the connection's keepalive: its next probe goes out `idle` from now, and
/// from then on every `idle` at that phase (see [`phase`]). Switching keepalive off and
/// on re-arms the kernel's timer from now; setting `TCP_KEEPIDLE` again would re-arm it
/// from the last packet received, which keeps the phase.
pub fn restart_keepalive(stream: &TcpStream) -> io::Result<()> {
    let sock = SockRef::from(stream);
    sock.set_keepalive(false)?;
    sock.set_keepalive(true)
}

/// What a read on a held connection told us.
#[derive(Debug)]
pub enum Readiness {
    /// The peer sent bytes (servers may greet or send notices); the connection lives.
    Data(usize),
    /// Nothing to read after all (a spurious wake-up).
    Nothing,
    /// The connection is over.
    Ended(Hangup),
}

/// How a held connection ended, as its socket told it. Kept typed so that the watch can
/// tell a silent peer from a closed connection without reading text.
#[derive(Debug)]
pub enum Hangup {
    /// An orderly close: a read returned no bytes.
    ClosedByPeer,
    /// The peer reset the connection.
    Reset,
    /// The kernel gave up on a silent peer (keepalive or `TCP_USER_TIMEOUT`).
    KeepaliveTimeout,
    /// Any other socket error, worded by [`describe`].
    Io(io::Error),
}

impl Hangup {
    /// Whether the peer went silent rather than closing: an outage, where a
    /// reconnect would only wait for the same silence again.
    pub fn is_silence(&self) -> bool {
        matches!(self, Hangup::KeepaliveTimeout)
    }
}

impl From<io::Error> for Hangup {
    fn from(e: io::Error) -> Hangup {
        match e.kind() {
            io::ErrorKind::ConnectionReset => Hangup::Reset,
            io::ErrorKind::TimedOut => Hangup::KeepaliveTimeout,
            _ => Hangup::Io(e),
        }
    }
}

impl fmt::Display for Hangup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Hangup::ClosedByPeer => f.write_str("connection closed by peer"),
            Hangup::Reset => f.write_str("connection reset by peer"),
            Hangup::KeepaliveTimeout => f.write_str("timed out (keepalive or user timeout)"),
            Hangup::Io(e) => f.write_str(&describe(e)),
        }
    }
}

/// Reads whatever is pending on a held connection without blocking. A scratch buffer
/// is used rather than `peek`, which would spin forever on a peer that sends data
/// (unless something else reads it: see [`peek`]).
pub fn drain(stream: &TcpStream) -> Readiness {
    read_or_peek(stream, false)
}

/// Like [`drain`], but leaves what is readable in the socket, for a protocol that reads
/// it whole: only a closed or failed connection is taken to be over. The caller must
/// then read the data, or the socket stays readable and its watch spins.
pub fn peek(stream: &TcpStream) -> Readiness {
    read_or_peek(stream, true)
}

fn read_or_peek(stream: &TcpStream, peek: bool) -> Readiness {
    let read = if peek {
        let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
        stream.try_io(tokio::io::Interest::READABLE, || {
            SockRef::from(stream).peek(&mut byte)
        })
    } else {
        let mut scratch = [0u8; 512];
        stream.try_read(&mut scratch)
    };
    match read {
        Ok(0) => Readiness::Ended(Hangup::ClosedByPeer),
        Ok(n) => Readiness::Data(n),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Readiness::Nothing,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Readiness::Nothing,
        Err(e) => Readiness::Ended(Hangup::from(e)),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::config::HumanDuration;

    /// Settings distinct enough to recognise on a socket; shared with other tests.
    pub(crate) fn keepalive() -> Keepalive {
        Keepalive {
            idle: HumanDuration(Duration::from_secs(7)),
            interval: HumanDuration(Duration::from_secs(3)),
            count: 4,
        }
    }

    #[tokio::test]
    async fn a_connection_carries_keepalive_and_user_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = connect_addr(addr, Duration::from_secs(1), &keepalive())
            .await
            .unwrap();
        let sock = SockRef::from(&stream);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(7));
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(3)
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(19))
        );
        assert!(sock.tcp_nodelay().unwrap());
    }

    #[tokio::test]
    async fn a_peek_leaves_the_data_for_the_protocol_and_still_sees_the_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut client = connect_addr(addr, Duration::from_secs(1), &keepalive())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server.write_all(b"S\0\0\0\x04").await.unwrap();
        client.readable().await.unwrap();
        assert!(matches!(peek(&client), Readiness::Data(_)));
        assert!(
            matches!(peek(&client), Readiness::Data(_)),
            "nothing consumed"
        );
        let mut message = [0u8; 5];
        client.read_exact(&mut message).await.unwrap();
        assert_eq!(&message, b"S\0\0\0\x04");
        drop(server);
        client.readable().await.unwrap();
        assert!(matches!(
            peek(&client),
            Readiness::Ended(Hangup::ClosedByPeer)
        ));
    }

    #[test]
    fn each_hangup_reads_as_the_socket_error_it_stands_for() {
        use io::ErrorKind::{BrokenPipe, ConnectionReset, TimedOut};
        assert_eq!(
            Hangup::ClosedByPeer.to_string(),
            "connection closed by peer"
        );
        for kind in [ConnectionReset, TimedOut, BrokenPipe] {
            let e = io::Error::from(kind);
            assert_eq!(
                Hangup::from(io::Error::from(kind)).to_string(),
                describe(&e)
            );
        }
        assert_eq!(Hangup::Reset.to_string(), "connection reset by peer");
        assert_eq!(
            Hangup::KeepaliveTimeout.to_string(),
            "timed out (keepalive or user timeout)"
        );
        assert_eq!(
            Hangup::from(io::Error::from(BrokenPipe)).to_string(),
            "broken pipe"
        );
        assert!(Hangup::from(io::Error::from(TimedOut)).is_silence());
        assert!(!Hangup::Reset.is_silence());
    }
}
