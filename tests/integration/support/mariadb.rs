//! A throwaway MariaDB server on loopback, for tests that need a real MariaDB (MySQL protocol)
//! to watch, freeze and kill.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{ServerProcess, StartError};
use super::server::TestServer;
use super::{Exchange, START_TIMEOUT, find_binary, running_as_root, workdir};

/// The protocol version byte that opens every MySQL/MariaDB initial handshake packet.
const PROTOCOL_VERSION: u8 = 10;
/// The first payload byte of an ERR packet, which a server sends instead of a handshake when it
/// turns a client away (too many connections, host blocked).
const ERR_PACKET: u8 = 0xff;

/// Options for both the bootstrap run and the server. Native AIO (io_uring/libaio) is often
/// blocked by container seccomp profiles, and a test server gains nothing from it; resolving
/// client addresses can stall connections on CI machines without working DNS.
const COMMON_OPTIONS: &[&str] = &["--innodb-use-native-aio=0", "--skip-name-resolve"];

/// A `mariadbd` child process with a fresh data directory and no authentication.
#[derive(Debug)]
pub struct MariadbServer {
    // Declared before `dir`: fields drop in order, so the server is dead before its directory
    // is removed.
    process: ServerProcess,
    port: u16,
    mariadbd: PathBuf,
    options: Vec<String>,
    dir: TempDir,
}

impl MariadbServer {
    /// Creates a fresh data directory, starts the server on a free port, and returns once it
    /// sends its handshake.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra server options passed as `--key=value`, e.g.
    /// `("connect_timeout", "2")`. They come last, so they override the defaults.
    pub fn start_with(options: &[(&str, &str)]) -> Self {
        let mariadbd = require_either("mariadbd", "mysqld");
        let install_db = require_either("mariadb-install-db", "mysql_install_db");
        let dir = workdir("mariadb");
        let process = ServerProcess::new("mariadbd", dir.path().join("server.log"), None);
        let mut server = Self {
            process,
            port: 0,
            mariadbd,
            options: options
                .iter()
                .map(|(key, value)| format!("--{key}={value}"))
                .collect(),
            dir,
        };
        server.install(&install_db);

        let (mariadbd, options, dir) = (&server.mariadbd, &server.options, server.dir.path());
        server.port = server
            .process
            .start_on_free_port(|process, port| launch(process, mariadbd, options, dir, port));
        server
    }

    /// Creates the system tables the server needs to start, without a test database.
    fn install(&self, install_db: &Path) {
        let tmp = tmp_dir(self.dir.path());
        fs::create_dir(&tmp).unwrap_or_else(|err| panic!("create {}: {err}", tmp.display()));
        let mut command = Command::new(install_db);
        // --no-defaults is only honoured as the very first option.
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data_dir(self.dir.path()).display()))
            .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
            .arg(format!("--tmpdir={}", tmp.display()))
            .args(COMMON_OPTIONS)
            .args(root_user_option());
        self.process.run_to_completion(command, START_TIMEOUT);
    }

    /// The server's Unix socket, for clients that connect that way.
    pub fn socket_path(&self) -> PathBuf {
        socket_path(self.dir.path())
    }
}

impl TestServer for MariadbServer {
    fn process(&self) -> &ServerProcess {
        &self.process
    }

    fn process_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// Holds `data/`, the socket and `server.log`.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Reuses the data directory, so after a kill InnoDB runs crash recovery first.
    fn launch(&mut self) -> Result<(), StartError> {
        launch(
            &mut self.process,
            &self.mariadbd,
            &self.options,
            self.dir.path(),
            self.port,
        )
    }

    /// Reads the initial handshake.
    fn probe(&self, timeout: Duration) -> io::Result<()> {
        handshake(self.port, timeout).map(drop)
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn tmp_dir(dir: &Path) -> PathBuf {
    dir.join("tmp")
}

fn socket_path(dir: &Path) -> PathBuf {
    dir.join("mariadbd.sock")
}

/// mariadbd refuses to run as root unless told that root is the intended user.
fn root_user_option() -> Option<&'static str> {
    running_as_root().then_some("--user=root")
}

/// Debian 12 ships the `mariadb*` names; older packagings only the `mysql*` ones.
fn require_either(name: &str, old_name: &str) -> PathBuf {
    find_binary(name).or_else(|| find_binary(old_name)).unwrap_or_else(|| {
        panic!("neither `{name}` nor `{old_name}` was found on PATH or in sbin; install it with `apt-get install -y mariadb-server`")
    })
}

fn launch(
    process: &mut ServerProcess,
    mariadbd: &Path,
    options: &[String],
    dir: &Path,
    port: u16,
) -> Result<(), StartError> {
    let mut command = Command::new(mariadbd);
    // --no-defaults is only honoured as the very first option.
    command
        .arg("--no-defaults")
        .arg(format!("--datadir={}", data_dir(dir).display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--socket={}", socket_path(dir).display()))
        .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
        .arg(format!("--tmpdir={}", tmp_dir(dir).display()))
        .args(root_user_option())
        .args([
            "--skip-grant-tables",
            "--skip-log-bin",
            "--innodb-buffer-pool-size=16M",
        ])
        .args(COMMON_OPTIONS)
        .args(options);
    process.spawn(command);
    process.wait_ready(START_TIMEOUT, || {
        handshake(port, Duration::from_secs(1)).map(drop)
    })
}

/// Reads the server's initial handshake packet and returns the server version it announces.
/// An ERR packet in its place (too many connections, host blocked) is returned as the error.
pub fn handshake(port: u16, timeout: Duration) -> io::Result<String> {
    let mut exchange = Exchange::connect(port, timeout)?;
    // Packet header: 3-byte little-endian payload length, then a sequence number.
    let mut header = [0u8; 4];
    exchange.receive_exact(&mut header)?;
    let length = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
    if length == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty first packet",
        ));
    }
    let mut payload = vec![0u8; length];
    exchange.receive_exact(&mut payload)?;
    match payload[0] {
        PROTOCOL_VERSION => {
            let version = payload[1..]
                .split(|&byte| byte == 0)
                .next()
                .unwrap_or_default();
            Ok(String::from_utf8_lossy(version).into_owned())
        }
        ERR_PACKET => {
            // 2-byte error code, then the message.
            let code = payload
                .get(1..3)
                .map_or(0, |code| u16::from_le_bytes([code[0], code[1]]));
            let message = String::from_utf8_lossy(payload.get(3..).unwrap_or_default());
            Err(io::Error::other(format!(
                "server refused the connection: {code} {message}"
            )))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected protocol version {other}"),
        )),
    }
}
