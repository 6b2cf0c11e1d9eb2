//! A throwaway `redis-server` on loopback, for tests that need a real Redis to watch, freeze and
//! kill.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{ServerProcess, StartError};
use super::server::TestServer;
use super::{Exchange, START_TIMEOUT, require_binary, workdir};

/// A `redis-server` child process with nothing persisted to disk.
#[derive(Debug)]
pub struct RedisServer {
    // Declared before `dir`: fields drop in order, so the server is dead before its directory
    // is removed.
    process: ServerProcess,
    port: u16,
    binary: PathBuf,
    /// Extra command-line settings, given again on every restart.
    settings: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server on a free port and returns once it answers PING.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra `redis-server` arguments, e.g.
    /// `["--rename-command", "AUTH", ""]`.
    pub fn start_with(settings: &[&str]) -> Self {
        let binary = require_binary("redis-server", "redis-server");
        let dir = workdir("redis");
        let process = ServerProcess::new("redis-server", dir.path().join("server.log"), None);
        let mut server = Self {
            process,
            port: 0,
            binary,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
            dir,
        };
        let (binary, dir, settings) = (&server.binary, server.dir.path(), &server.settings);
        server.port = server
            .process
            .start_on_free_port(|process, port| launch(process, binary, dir, port, settings));
        server
    }
}

impl TestServer for RedisServer {
    fn process(&self) -> &ServerProcess {
        &self.process
    }

    fn process_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) -> Result<(), StartError> {
        launch(
            &mut self.process,
            &self.binary,
            self.dir.path(),
            self.port,
            &self.settings,
        )
    }

    /// One PING exchange.
    fn probe(&self, timeout: Duration) -> io::Result<()> {
        ping(self.port, timeout)
    }
}

fn launch(
    process: &mut ServerProcess,
    binary: &Path,
    dir: &Path,
    port: u16,
    settings: &[String],
) -> Result<(), StartError> {
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string()])
        .args(["--bind", "127.0.0.1"])
        .args(["--save", ""])
        .args(["--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no"])
        .args(settings);
    process.spawn(command);
    process.wait_ready(START_TIMEOUT, || ping(port, Duration::from_secs(1)))
}

/// A replica of `primary` (`--replicaof`), with extra `settings`: the role tests' and
/// the failover groups' second server.
pub fn replica_of(primary: &RedisServer, settings: &[&str]) -> RedisServer {
    let port = primary.port.to_string();
    let mut all = vec!["--replicaof", "127.0.0.1", port.as_str()];
    all.extend_from_slice(settings);
    RedisServer::start_with(&all)
}

/// Sends one command to a test Redis and returns the first line of its reply.
pub fn command(port: u16, args: &[&str]) -> String {
    let mut exchange = Exchange::connect(port, Duration::from_secs(5)).expect("connect to redis");
    let mut cmd = format!("*{}\r\n", args.len());
    for a in args {
        cmd.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    exchange.send(cmd.as_bytes()).expect("send to redis");
    let reply = exchange
        .receive_until(b"\r\n", 64 * 1024)
        .expect("redis reply");
    String::from_utf8_lossy(&reply).trim_end().to_owned()
}

/// The text of `INFO section`, e.g. `commandstats` to count the commands a probe sent.
pub fn info(port: u16, section: &str) -> String {
    let mut exchange = Exchange::connect(port, Duration::from_secs(5)).expect("connect to redis");
    let cmd = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
    exchange.send(cmd.as_bytes()).expect("send to redis");
    let head = exchange.receive_until(b"\r\n", 64).expect("INFO reply");
    let length: usize = String::from_utf8_lossy(&head[1..head.len() - 2])
        .parse()
        .expect("INFO answers a bulk string");
    let mut body = vec![0u8; length + 2];
    exchange.receive_exact(&mut body).expect("INFO body");
    String::from_utf8_lossy(&body).into_owned()
}

/// Sends PING in RESP and expects `+PONG`. A server still loading its dataset replies
/// `-LOADING`, which is an error here because it cannot serve yet.
pub fn ping(port: u16, timeout: Duration) -> io::Result<()> {
    let mut exchange = Exchange::connect(port, timeout)?;
    exchange.send(b"*1\r\n$4\r\nPING\r\n")?;
    let reply = exchange.receive_until(b"\r\n", 512)?;
    if reply.starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("PING answered {:?}", String::from_utf8_lossy(&reply)),
        ))
    }
}
