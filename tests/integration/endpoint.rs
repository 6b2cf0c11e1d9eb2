//! A sidecar with its HTTP endpoints, in the test process or as the `tether` binary,
//! and a deliberately naive HTTP client (raw bytes on a socket, independent of the hyper
//! the server uses) to read them.

// Shared by several test modules, and no single module uses all of it.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether::config::Config;
use tether::observe::Observer;
use tether::supervisor::Supervisor;
use tether::telemetry::Telemetry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::tether;
use crate::harness::Recorder;

/// The library's sidecar, wired like `tether run` wires it, with a [`Recorder`] listening
/// after the endpoints (so when the recorder has seen a transition, so has `/status`).
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
        self.telemetry.http_addr()
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
    Ok(Reply {
        status,
        headers,
        body: body.to_owned(),
    })
}

/// Calls `attempt` every 5 ms until it yields a value, failing the test after `limit`.
pub async fn eventually<T, F>(limit: Duration, what: &str, mut attempt: impl FnMut() -> F) -> T
where
    F: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {what} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The `tether run` binary, with its log read line by line as it comes.
pub struct RunningTether {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    new_line: mpsc::Receiver<()>,
    /// Where its HTTP server listens, learnt from its "listening on" log line.
    pub addr: SocketAddr,
}

impl RunningTether {
    /// Starts `tether [global_args] run -c config` and waits for its HTTP server.
    pub fn start(config: &std::path::Path, global_args: &[&str]) -> RunningTether {
        let mut child = tether()
            .args(global_args)
            .arg("run")
            .arg("-c")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tether starts");
        let stderr = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, new_line) = mpsc::channel();
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                    let _ = tx.send(());
                }
            }
        });
        let mut me = RunningTether {
            child: Some(child),
            lines,
            new_line,
            addr: "0.0.0.0:0".parse().unwrap(),
        };
        let line = me.wait_for_line(Duration::from_secs(20), "listening on");
        me.addr = listening_addr(&line).unwrap_or_else(|| panic!("no address in {line:?}"));
        me
    }

    /// Everything logged so far.
    pub fn log(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Waits for a log line containing `needle`.
    pub fn wait_for_line(&self, limit: Duration, needle: &str) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(l) = self.log().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.new_line.recv_timeout(left) {
                Ok(()) => {}
                Err(_) => panic!(
                    "no log line with {needle:?} within {limit:?}; log:\n{}",
                    self.log().join("\n")
                ),
            }
        }
    }

    /// SIGTERM, then the exit status (SIGKILL and a failed test after 10 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tether did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for RunningTether {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address in a "listening on ADDR" log line, text or JSON.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

/// Lets this test process hold thousands of sockets: the soft limit of open files goes
/// up to the hard limit.
pub fn raise_open_files_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}
