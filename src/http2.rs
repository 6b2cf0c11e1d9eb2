//! An HTTP/2 client session held on a probe's connection, for the `grpc` probe.
//!
//! An HTTP/2 session keeps state from one request to the next (stream ids, header
//! compression tables, flow-control windows, the server's settings), so it cannot be
//! rebuilt from a socket lent for one check: it owns the connection for as long as it is
//! held. The `h2` crate frames it; its connection driver is the only reader of the socket,
//! so the checker watches the driver instead of the socket. Polled, the driver also
//! answers what the server says between checks (`PING`, `SETTINGS`), and it completes
//! when the connection ends: a `GOAWAY`, an orderly close or a reset, which the watch
//! reports as it reports a plain socket's end.
//!
//! Nothing runs in a task of its own: the driver is polled by the actor that holds the
//! connection, while it waits and while a check waits for its answer.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use h2::client::{Connection, SendRequest};

use crate::net::{Hangup, Readiness};
use crate::tls::Stream;

/// One HTTP/2 session over a plain or TLS stream.
pub struct Session {
    send: SendRequest<Bytes>,
    driver: Connection<Stream, Bytes>,
    peer: SocketAddr,
    tls: bool,
    not_after: Option<SystemTime>,
    /// Set when the driver completed: it is not polled again.
    finished: bool,
    /// How the connection ended, until the watch takes it.
    ended: Option<Hangup>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("peer", &self.peer)
            .field("tls", &self.tls)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

/// Why a session did not open or a request on it did not complete.
#[derive(Debug)]
pub enum Driven {
    /// HTTP/2 itself failed (the preface could not be written, a reset stream, a
    /// protocol error in a request's frames).
    Exchange(h2::Error),
    /// The connection ended under it: `None` an orderly close, else the socket's error.
    Ended(Option<io::Error>),
}

impl Session {
    /// Opens a session on `stream`: writes the client preface and settings. The server's
    /// settings are taken in by the first request.
    pub async fn open(stream: Stream) -> Result<Session, Driven> {
        let peer = stream.peer_addr().map_err(|e| Driven::Ended(Some(e)))?;
        let tls = stream.is_tls();
        let not_after = stream.not_after();
        let (send, driver) = h2::client::handshake(stream)
            .await
            .map_err(Driven::Exchange)?;
        Ok(Session {
            send,
            driver,
            peer,
            tls,
            not_after,
            finished: false,
            ended: None,
        })
    }

    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn not_after(&self) -> Option<SystemTime> {
        self.not_after
    }

    /// A handle to start requests on: the session's shared state, counted.
    pub fn sender(&self) -> SendRequest<Bytes> {
        self.send.clone()
    }

    /// Drives the session until `exchange` completes, as a request's answer can only
    /// arrive through the driver. If the connection ends first, the error says how.
    pub async fn drive<T>(
        &mut self,
        exchange: impl Future<Output = Result<T, h2::Error>>,
    ) -> Result<T, Driven> {
        let mut exchange = std::pin::pin!(exchange);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Driven::Exchange));
            }
            if self.poll_driver(cx).is_pending() {
                return Poll::Pending;
            }
            // The exchange may have completed with the driver's last frames.
            if let Poll::Ready(result) = exchange.as_mut().poll(cx) {
                return Poll::Ready(result.map_err(Driven::Exchange));
            }
            Poll::Ready(Err(Driven::Ended(self.ended.as_ref().and_then(as_io))))
        })
        .await
    }

    /// Ready once the connection has ended (then [`Session::drain`] says how); until
    /// then, polling takes in whatever the server sent and answers it.
    pub fn poll_ended(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_driver(cx).map(Ok)
    }

    /// What the watch makes of a wake-up: the end of the connection, or nothing.
    pub fn drain(&mut self) -> Readiness {
        match self.ended.take() {
            Some(hangup) => Readiness::Ended(hangup),
            None if self.finished => Readiness::Ended(Hangup::ClosedByPeer),
            None => Readiness::Nothing,
        }
    }

    fn poll_driver(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.finished {
            return Poll::Ready(());
        }
        let result = std::task::ready!(Pin::new(&mut self.driver).poll(cx));
        self.finished = true;
        self.ended = Some(match result {
            Ok(()) => Hangup::ClosedByPeer,
            Err(e) => hangup(e),
        });
        Poll::Ready(())
    }
}

/// How the driver's end maps onto a socket's: an I/O error keeps its kind (a reset, a
/// keepalive timeout), and a `GOAWAY` is the peer closing.
fn hangup(e: h2::Error) -> Hangup {
    if e.is_io() {
        return match e.into_io() {
            Some(io) if io.kind() == io::ErrorKind::UnexpectedEof => Hangup::ClosedByPeer,
            Some(io) => Hangup::from(io),
            None => Hangup::ClosedByPeer,
        };
    }
    if e.is_go_away() {
        return Hangup::ClosedByPeer;
    }
    Hangup::Io(io::Error::other(format!("HTTP/2: {e}")))
}

/// A hangup as the error a request under it met: `None` for an orderly close.
fn as_io(hangup: &Hangup) -> Option<io::Error> {
    match hangup {
        Hangup::ClosedByPeer => None,
        Hangup::Reset => Some(io::ErrorKind::ConnectionReset.into()),
        Hangup::KeepaliveTimeout => Some(io::ErrorKind::TimedOut.into()),
        Hangup::Io(e) => Some(io::Error::new(e.kind(), e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::{TcpListener, TcpStream};

    /// A session to an `h2` server on loopback; the server's connection is handed to
    /// `serve` once its handshake is done.
    async fn session_to<F, Fut>(serve: F) -> Session
    where
        F: FnOnce(h2::server::Connection<TcpStream, Bytes>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            let conn = h2::server::handshake(socket).await.unwrap();
            serve(conn).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        Session::open(Stream::Plain(tcp)).await.unwrap()
    }

    #[tokio::test]
    async fn a_goaway_between_checks_ends_the_held_session_at_once() {
        let mut session = session_to(|mut conn| async move {
            conn.graceful_shutdown();
            // Drive the shutdown to its end: GOAWAY, then the close.
            while let Some(request) = conn.accept().await {
                drop(request);
            }
        })
        .await;
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| session.poll_ended(cx)),
        )
        .await;
        assert!(ended.is_ok(), "the session did not notice the GOAWAY");
        assert!(matches!(
            session.drain(),
            Readiness::Ended(Hangup::ClosedByPeer)
        ));
        // Told once; a request on it fails saying the connection ended.
        let sender = session.sender();
        let call = async { sender.ready().await.map(|_| ()) };
        assert!(session.drive(call).await.is_err());
    }

    #[tokio::test]
    async fn a_ping_between_checks_is_answered_and_the_session_stays() {
        let (pong_tx, pong_rx) = tokio::sync::oneshot::channel();
        let mut session = session_to(|mut conn| async move {
            let mut ping_pong = conn.ping_pong().expect("the first taker");
            let ping = async { ping_pong.ping(h2::Ping::opaque()).await };
            // The server's connection must be driven for its PING to go out and the
            // PONG to come back.
            let answered = tokio::select! {
                pong = ping => pong.is_ok(),
                _ = conn.accept() => false,
            };
            let _ = pong_tx.send(answered);
            std::future::pending::<()>().await;
        })
        .await;
        let watch = std::future::poll_fn(|cx| session.poll_ended(cx));
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            tokio::select! {
                _ = watch => panic!("the session ended"),
                answered = pong_rx => answered.unwrap(),
            }
        })
        .await
        .expect("no PONG within 5 s: the watch does not drive the session");
        assert!(answered, "the server's PING got no PONG");
        assert!(matches!(session.drain(), Readiness::Nothing));
    }
}
