//! The sidecar's telemetry and supervisor wired by hand in the test process, so tests
//! can reach each part (the status registry, `stopping()`, a supervisor shut down while
//! the endpoints still answer), and a deliberately naive HTTP client (raw bytes on a
//! socket, independent of the hyper the server uses) to read its endpoints.

// Shared by several test modules, and no single module uses all of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tether::config::Config;
use tether::telemetry::Telemetry;
use tether::watch::observe::Observer;
use tether::watch::supervisor::Supervisor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::harness::Recorder;

/// The library's sidecar, wired like `tether run` wires it, with a [`Recorder`] listening
/// after the endpoints (so when the recorder has seen a transition, so has `/status`).
///
/// [`crate::support::harness::Sidecar`] runs the whole `sidecar::run` (hooks, reloads) behind its
/// control channel; this one has no hooks and leaves each part in the test's hands.
pub struct Sidecar {
    pub telemetry: Telemetry,
    pub supervisor: Supervisor,
    pub recorder: Arc<Recorder>,
}

impl Sidecar {
    /// Starts a sidecar for `targets` (TOML), serving on a free loopback port unless the
    /// text has its own `[server]` table.
    pub async fn start(toml: &str) -> Sidecar {
        let text = if toml.contains("[server]") {
            toml.to_owned()
        } else {
            format!("[server]\nlisten = \"127.0.0.1:0\"\n{toml}")
        };
        let config = Config::parse(&text, "test.toml".as_ref()).expect("test config is valid");
        let telemetry = Telemetry::start(&config).await.expect("telemetry starts");
        let recorder = Recorder::new();
        let observers = telemetry
            .observers()
            .with(recorder.clone() as Arc<dyn Observer>);
        let supervisor = Supervisor::start(&config, Arc::new(observers));
        Sidecar {
            telemetry,
            supervisor,
            recorder,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.telemetry.http_addr().expect("listen is set")
    }

    pub async fn get(&self, path: &str) -> Reply {
        get(self.addr(), path).await
    }

    /// Stops like `tether run` on SIGTERM.
    pub async fn stop(self) {
        self.telemetry.stopping();
        self.supervisor.shutdown().await;
        self.telemetry.stop().await;
    }
}

/// An HTTP response, parsed just enough.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// The value of the sample written exactly as `series` (name and labels, labels in
    /// the encoder's order: sorted by name, `le` last).
    pub fn sample(&self, series: &str) -> Option<f64> {
        sample(&self.body, series)
    }
}

pub fn sample(exposition: &str, series: &str) -> Option<f64> {
    exposition.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().expect("a sample value is a number"))
    })
}

/// `GET path`, failing the test if no complete answer arrives within 5 s.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    request(addr, head.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"))
}

/// The `X-Tether-Index` a `/status` document at `index` settles on. A document may
/// already show a change its index does not count yet (the index is taken first, so
/// no change is ever missed): a long-poll from it would return as soon as that change
/// reaches the stream. The settled index is one a short long-poll leaves unchanged;
/// `unchanged` checks each document met on the way still shows what the caller saw.
pub async fn settled_index(
    addr: SocketAddr,
    mut index: String,
    unchanged: impl Fn(&Reply) -> bool,
) -> String {
    for _ in 0..20 {
        let r = get(addr, &format!("/status?index={index}&wait=300ms")).await;
        let now = r.header("x-tether-index").unwrap().to_owned();
        if now == index {
            return index;
        }
        assert!(unchanged(&r), "moved on meanwhile: {}", r.body);
        index = now;
    }
    panic!("the stream kept moving");
}

/// Sends `raw` and reads the answer until the server closes the connection.
pub async fn request(addr: SocketAddr, raw: &[u8]) -> std::io::Result<Reply> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(raw).await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, std::io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer in 5 s"))??;
    parse(&bytes)
}

fn parse(bytes: &[u8]) -> std::io::Result<Reply> {
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{what}: {:?}", String::from_utf8_lossy(bytes)),
        )
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| bad("no end of head"))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut reply = Reply {
        status,
        headers,
        body: body.to_owned(),
    };
    if reply
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        reply.body = dechunk(body).ok_or_else(|| bad("a broken chunked body"))?;
    }
    Ok(reply)
}

/// Lets this test process hold thousands of sockets: the soft limit of open files goes
/// up to the hard limit.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

/// The body of a `Transfer-Encoding: chunked` answer (a `/metrics` page goes out as it
/// is written): `None` unless it ends with the last, empty chunk.
fn dechunk(mut rest: &str) -> Option<String> {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(body);
        }
        body.push_str(after.get(..size)?);
        rest = after.get(size..)?.strip_prefix("\r\n")?;
    }
}
