//! The connect path the sidecar, `tether probe` and `tether wait` share: resolve the
//! target's name, open a TCP connection to the first address that accepts, and run the
//! first probe on it, each step within its own limit; and the recheck of a held
//! connection. An attempt succeeds only when the server itself has answered.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use crate::config::{self, Address, Keepalive};
use crate::net::{self, ConnectError};
use crate::probe::{Afterwards, Healthy, ProbeError, Prober, Role};
use crate::tls::Stream;

/// The time each step of an attempt may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Name resolution, and then the TCP handshake with each address.
    pub connect: Duration,
    /// Every probe answer, the first one on a new connection included.
    pub check: Duration,
}

impl Limits {
    /// The limits of a target's attempts and checks.
    pub fn of(target: &config::Target) -> Limits {
        Limits {
            connect: target.connect_timeout.get(),
            // `tcp` has no answer to wait for; its check returns at once.
            check: target
                .check
                .map_or(target.connect_timeout.get(), |c| c.timeout.get()),
        }
    }
}

/// Why a connect attempt (handshake and first probe) failed, worded for `last_error`.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("{kind} probe {addr}: {source}{}", net::and_others(*.others))]
    Probe {
        kind: &'static str,
        addr: SocketAddr,
        #[source]
        source: ProbeError,
        /// How many other resolved addresses failed too.
        others: usize,
    },
}

/// A connection whose server passed its first probe.
#[derive(Debug)]
pub struct Connection {
    /// `None` when the server closes the connection after its answer (see
    /// [`Afterwards::Drop`]): there is nothing to hold, and checks use fresh connections.
    pub stream: Option<Stream>,
    /// The address that answered; later checks and moves compare against it.
    pub peer: SocketAddr,
    /// Whether `stream` can carry the next check.
    pub reusable: bool,
    /// The role the server reported at the last check.
    pub role: Option<Role>,
    /// The notAfter of the server's certificate, over TLS; kept when the stream is not.
    pub not_after: Option<SystemTime>,
}

impl Connection {
    fn new(stream: Stream, peer: SocketAddr, healthy: Healthy) -> Connection {
        let after = healthy.afterwards;
        Connection {
            not_after: stream.not_after(),
            stream: (after != Afterwards::Drop).then_some(stream),
            peer,
            reusable: after == Afterwards::Reuse,
            role: healthy.role,
        }
    }

    /// Makes the close of a connection whose server closed its end a reset instead of
    /// a FIN: the server's kernel would answer the FIN with a reset anyway, and on
    /// loopback both are handled inline in the close, which doubled the cost of every
    /// close in a mass outage.
    pub fn reset_on_close(&self) {
        if let Some(tcp) = self.stream.as_ref().and_then(Stream::tcp) {
            // Only a cheaper close is lost if this fails.
            let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
        }
    }
}

/// Resolves `address` and connects to the first of its addresses whose server passes the
/// probe, each address within `limits.connect` for the handshake and `limits.check` for
/// the probe's answer.
pub async fn connect(
    address: &Address,
    prober: &Prober,
    limits: Limits,
    keepalive: &Keepalive,
) -> Result<Connection, AttemptError> {
    let addrs = net::resolve(address, limits.connect).await?;
    connect_any(address, &addrs, prober, limits, keepalive).await
}

/// Connects to the first of `addrs` (resolved from `address`) whose server passes the
/// probe; the error is the last address's, with a count of the others that failed.
pub async fn connect_any(
    address: &Address,
    addrs: &[SocketAddr],
    prober: &Prober,
    limits: Limits,
    keepalive: &Keepalive,
) -> Result<Connection, AttemptError> {
    let mut last = None;
    for &addr in addrs {
        match connect_one(addr, prober, limits, keepalive).await {
            Ok(connection) => return Ok(connection),
            Err(e) => last = Some(e),
        }
    }
    let others = addrs.len().saturating_sub(1);
    Err(match last {
        None => AttemptError::Connect(ConnectError::NoAddresses {
            host: address.host().to_owned(),
        }),
        Some(AttemptError::Probe {
            kind, addr, source, ..
        }) => AttemptError::Probe {
            kind,
            addr,
            source,
            others,
        },
        Some(AttemptError::Connect(e)) => AttemptError::Connect(e.with_others(others)),
    })
}

/// Connects to one address and runs the first probe on the new connection.
pub async fn connect_one(
    addr: SocketAddr,
    prober: &Prober,
    limits: Limits,
    keepalive: &Keepalive,
) -> Result<Connection, AttemptError> {
    let failed = |source| AttemptError::Probe {
        kind: prober.kind(),
        addr,
        source,
        others: 0,
    };
    let tcp = net::connect_addr(addr, limits.connect, keepalive).await?;
    let mut stream = prober.open(tcp, limits.check).await.map_err(failed)?;
    match prober.check(&mut stream, true, limits.check).await {
        Ok(healthy) => Ok(Connection::new(stream, addr, healthy)),
        Err(source) => Err(failed(source)),
    }
}

/// Checks the server of `conn` again: on its held stream if that can carry another
/// exchange, else on a fresh connection to the same address, which then replaces the held
/// one (so an unauthenticated session is never held for longer than an interval).
pub async fn recheck(
    conn: &mut Connection,
    prober: &Prober,
    limits: Limits,
    keepalive: &Keepalive,
) -> Result<(), AttemptError> {
    match conn.stream.as_mut() {
        Some(stream) if conn.reusable => {
            let healthy = prober
                .check(stream, false, limits.check)
                .await
                .map_err(|source| AttemptError::Probe {
                    kind: prober.kind(),
                    addr: conn.peer,
                    source,
                    others: 0,
                })?;
            let after = healthy.afterwards;
            conn.reusable = after == Afterwards::Reuse;
            conn.role = healthy.role;
            if after == Afterwards::Drop {
                conn.stream = None;
            }
        }
        _ => *conn = connect_one(conn.peer, prober, limits, keepalive).await?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::tests::keepalive;

    const LIMITS: Limits = Limits {
        connect: Duration::from_secs(1),
        check: Duration::from_secs(1),
    };

    /// After a mass outage every target's attempt is under way at once, each boxed on
    /// the heap: 10,000 of them at 2 KiB were 20 MB of the peak. Protocol checks, TLS
    /// and DNS lookups are boxed at their own size, inside, when they run.
    #[test]
    fn a_connect_attempt_in_flight_stays_within_its_memory_budget() {
        const BUDGET: usize = 1024;
        let address = Address::new("127.0.0.1", 1);
        let redis = config::Probe::new(
            config::kinds::find("redis").unwrap(),
            config::ProbeSettings::default(),
        );
        for probe in [config::Probe::tcp(), redis] {
            let prober = Prober::new(&probe, &address, None);
            let keepalive = keepalive();
            let attempt = connect(&address, &prober, LIMITS, &keepalive);
            let size = std::mem::size_of_val(&attempt);
            eprintln!(
                "a {} attempt: {size} bytes (budget {BUDGET})",
                prober.kind()
            );
            assert!(size <= BUDGET, "a connect attempt is {size} bytes");
        }
    }

    #[tokio::test]
    async fn a_refused_connection_is_reported_plainly() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let address = Address::new("127.0.0.1", port);
        let tcp = Prober::new(&config::Probe::tcp(), &address, None);
        let Err(e) = connect(&address, &tcp, LIMITS, &keepalive()).await else {
            panic!("nothing listens on port {port}");
        };
        assert_eq!(
            e.to_string(),
            format!("connect 127.0.0.1:{port}: connection refused")
        );
    }

    /// What the server reads once tether has let go of its connection.
    async fn server_reads_after(let_go: impl FnOnce(Connection)) -> std::io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = Address::new("127.0.0.1", listener.local_addr().unwrap().port());
        let tcp = Prober::new(&config::Probe::tcp(), &address, None);
        let conn = connect(&address, &tcp, LIMITS, &keepalive()).await.unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        let_go(conn);
        server.read(&mut [0; 16]).await
    }

    #[tokio::test]
    async fn a_lost_connection_is_let_go_with_a_reset_and_a_failed_one_with_a_fin() {
        use crate::watch::closer::{self, Close};
        let lost = server_reads_after(|c| closer::close(c, Close::Reset)).await;
        assert_eq!(
            lost.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset),
            "a reset leaves nothing behind to retransmit a FIN"
        );
        let failed = server_reads_after(|c| closer::close(c, Close::Orderly)).await;
        assert_eq!(failed.unwrap(), 0, "an orderly close is a FIN");
        // The connections went through the closer thread, which yields its core to
        // any thread that wakes on it.
        let closer = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| task.ok())
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim() == "tether-closer")
            })
            .expect("the closer thread runs");
        let tid: libc::pid_t = closer.file_name().to_str().unwrap().parse().unwrap();
        // SAFETY: a plain system call about a thread of this process.
        let policy = unsafe { libc::sched_getscheduler(tid) };
        assert_eq!(policy, libc::SCHED_IDLE, "the closer runs under SCHED_IDLE");
    }

    #[tokio::test]
    async fn names_are_resolved_on_each_attempt_and_every_address_is_tried() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let address = Address::new("localhost", port);
        let addrs = net::resolve(&address, Duration::from_secs(2))
            .await
            .unwrap();
        assert!(addrs.iter().any(|a| a.ip().is_loopback()));
        // localhost may resolve to ::1 first where nothing listens: the next address is tried.
        let tcp = Prober::new(&config::Probe::tcp(), &address, None);
        connect(&address, &tcp, LIMITS, &keepalive())
            .await
            .expect("127.0.0.1 answers");
    }
}
