//! Shared test scaffolding: loopback ports, scratch directories, bounded polling, the sidecar
//! harness and webhook receiver, and the real Redis/PostgreSQL/MariaDB servers that tether is
//! tested against.

// Shared by every test module, and no single module uses all of it.
#![allow(dead_code)]

pub mod daemon;
pub mod harness;
pub mod http;
pub mod mariadb;
pub mod notify_socket;
pub mod postgres;
pub mod process;
pub mod python;
pub mod rabbitmq;
pub mod receiver;
pub mod redis;
pub mod server;
pub mod tether_process;
pub mod tls;

pub use server::TestServer;

use std::env;
use std::fs;
use std::future::Future;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How often bounded polls re-check their condition: short enough that tests do not idle, long
/// enough not to spin a CPU that the servers under test need.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// How long a server may take to become ready. Generous because CI machines are slow and
/// crowded, yet bounded so a broken server fails the test instead of hanging it.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs blocking work (a server start, a child process) from an async test without
/// stalling the runtime's other tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A finished command's standard output, as text.
pub fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port nobody is listening on, below the kernel's ephemeral range.
///
/// Below it, because the tests open thousands of outgoing connections, each on an
/// ephemeral port that a later bind of `0.0.0.0` on the same number would collide with.
/// The port is released before it is returned, so another process can take it in
/// between; server starts therefore retry on a fresh port when the bind fails (see
/// [`process::ServerProcess::start_on_free_port`]).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static TRIES: AtomicU64 = AtomicU64::new(0);
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_500));
    for _ in 0..1000 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(TRIES.fetch_add(1, Ordering::Relaxed));
        let port = from + (h.finish() % u64::from(to - from)) as u16;
        let free = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).is_ok()
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok();
        if free {
            return port;
        }
    }
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("bind 127.0.0.1:0 to find a free port")
        .port()
}

/// The loopback address of `port`, the only interface the test servers listen on.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A scratch directory that is removed when the test ends, whether it passes or panics.
///
/// The name says which server it belongs to so leftovers (from a killed test binary) can be
/// traced.
pub fn workdir(label: &str) -> TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tether-{label}-"))
        .tempdir()
        .unwrap_or_else(|err| panic!("create a temporary directory for {label}: {err}"))
}

/// Calls `attempt` every [`POLL_INTERVAL`] until it yields a value or `timeout` has passed.
///
/// `attempt` always runs at least once, and once more at the deadline, so a condition that
/// holds at the deadline is not reported as a timeout.
pub fn poll_until<T>(timeout: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

/// Polls `done` like [`poll_until`], failing the test with "no `what` within `limit`" if it
/// never holds.
pub fn poll(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    if poll_until(limit, || done().then_some(())).is_none() {
        panic!("no {what} within {limit:?}");
    }
}

/// The async [`poll_until`] for conditions that need `.await`: calls `attempt` every
/// [`POLL_INTERVAL`] (at least once, and once more at the deadline) until it yields a
/// value, failing the test with "no `what` within `limit`" otherwise.
pub async fn eventually<T, F>(limit: Duration, what: &str, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = attempt().await {
            return value;
        }
        let now = tokio::time::Instant::now();
        assert!(now < deadline, "no {what} within {limit:?}");
        tokio::time::sleep(POLL_INTERVAL.min(deadline - now)).await;
    }
}

/// Waits until something accepts TCP connections on 127.0.0.1:`port`, panicking after
/// `timeout`.
///
/// A completed connect only proves a listening socket exists; use a server's own probe when the
/// test needs the server to answer.
pub fn wait_for_port(port: u16, timeout: Duration) {
    let mut last_error = None;
    let connected = poll_until(timeout, || {
        match TcpStream::connect_timeout(
            &loopback(port),
            POLL_INTERVAL.max(Duration::from_millis(250)),
        ) {
            Ok(_) => Some(()),
            Err(err) => {
                last_error = Some(err);
                None
            }
        }
    });
    if connected.is_none() {
        panic!(
            "nothing accepted connections on 127.0.0.1:{port} within {timeout:?} (last error: {})",
            last_error.map_or_else(|| "none".to_owned(), |err| err.to_string())
        );
    }
}

/// Whether `err` means "no answer in time", which is how a frozen (SIGSTOPped) server looks:
/// the kernel still completes the TCP handshake from the listen backlog, but nothing replies.
///
/// Socket read timeouts surface as `WouldBlock` on Linux and `TimedOut` elsewhere.
pub fn is_timeout(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One request/response exchange with a server under a single deadline, so that a probe made of
/// several reads cannot take several timeouts' worth of time.
pub struct Exchange {
    stream: TcpStream,
    deadline: Instant,
}

impl Exchange {
    /// Connects to 127.0.0.1:`port`; everything done through the exchange must finish within
    /// `timeout` of now.
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Self> {
        let deadline = Instant::now() + timeout;
        let stream = TcpStream::connect_timeout(&loopback(port), timeout)?;
        stream.set_nodelay(true)?;
        Ok(Self { stream, deadline })
    }

    fn remaining(&self) -> io::Result<Duration> {
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "probe deadline passed",
            ))
        } else {
            Ok(remaining)
        }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.set_write_timeout(Some(self.remaining()?))?;
        self.stream.write_all(bytes)
    }

    /// Fills `buf` completely; a server closing the connection early is an `UnexpectedEof`.
    pub fn receive_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            self.stream.set_read_timeout(Some(self.remaining()?))?;
            match self.stream.read(&mut buf[filled..]) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("server closed the connection after {filled} bytes"),
                    ));
                }
                Ok(read) => filled += read,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Reads until `delimiter` has arrived, returning everything read; replies this is used on
    /// are tiny, so it gives up beyond `limit` bytes rather than trusting the server.
    pub fn receive_until(&mut self, delimiter: &[u8], limit: usize) -> io::Result<Vec<u8>> {
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while !reply.ends_with(delimiter) {
            if reply.len() >= limit {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "no {delimiter:?} within {limit} bytes: {:?}",
                        String::from_utf8_lossy(&reply)
                    ),
                ));
            }
            self.receive_exact(&mut byte)?;
            reply.push(byte[0]);
        }
        Ok(reply)
    }
}

/// Whether the tests run as root, in which case servers that refuse root (PostgreSQL) must be
/// run as their own system user, and those that merely warn (MariaDB) must be told explicitly.
pub fn running_as_root() -> bool {
    // /proc/self is owned by the effective uid; this avoids needing nix's "user" feature.
    fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

/// Directories searched after `PATH`: root-only daemons live in sbin, which a non-root `PATH`
/// often lacks, and Debian keeps PostgreSQL's server binaries out of `PATH` in versioned
/// directories (newest version first, so a leftover old cluster's binaries are not picked).
fn fallback_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = ["/usr/local/sbin", "/usr/sbin", "/sbin"]
        .iter()
        .map(PathBuf::from)
        .collect();
    let mut versions: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse)
                .collect::<Result<Vec<u32>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    dirs.extend(versions.into_iter().map(|(_, dir)| dir));
    dirs
}

/// Finds an executable named `name` on `PATH`, then in sbin and Debian's PostgreSQL directories.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path_dirs = env::var_os("PATH")
        .map(|path| env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    path_dirs
        .into_iter()
        .chain(fallback_dirs())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.mode() & 0o111 != 0)
}

/// Like [`find_binary`], but a missing server is a broken test environment, so it panics with
/// the Debian package that provides it.
pub fn require_binary(name: &str, debian_package: &str) -> PathBuf {
    find_binary(name).unwrap_or_else(|| {
        panic!(
            "`{name}` was not found on PATH, in sbin or in /usr/lib/postgresql/*/bin; \
             install it with `apt-get install -y {debian_package}`"
        )
    })
}

/// Reads a server log for a panic message, keeping only the tail: the end of a log is where a
/// server says why it died, and a whole log would bury the assertion that failed.
pub fn log_tail(path: &Path) -> String {
    const KEEP: usize = 16 * 1024;
    match fs::read(path) {
        Ok(bytes) if bytes.len() > KEEP => {
            format!(
                "[... first {} bytes omitted ...]\n{}",
                bytes.len() - KEEP,
                String::from_utf8_lossy(&bytes[bytes.len() - KEEP..])
            )
        }
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) => format!("[could not read {}: {err}]", path.display()),
    }
}
