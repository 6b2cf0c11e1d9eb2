//! A throwaway PostgreSQL cluster on loopback, for tests that need a real PostgreSQL to watch,
//! freeze and kill.

use std::fs;
use std::io;
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::process::{ServerProcess, StartError};
use super::server::TestServer;
use super::{Exchange, START_TIMEOUT, require_binary, running_as_root, workdir};

/// The superuser and database initdb creates, which the readiness probe logs in as.
pub const USER: &str = "postgres";
pub const DATABASE: &str = "postgres";

/// The code an SSLRequest carries instead of a protocol version (PostgreSQL protocol docs).
const SSL_REQUEST_CODE: u32 = 80_877_103;
/// Protocol 3.0, the version every supported server speaks.
const PROTOCOL_3_0: u32 = 196_608;

/// A `postgres` postmaster run directly as a child (not via `pg_ctl`, which daemonizes), so the
/// test holds its pid and can signal it.
#[derive(Debug)]
pub struct PostgresServer {
    // Declared before `dir`: fields drop in order, so the server is dead before its directory
    // is removed.
    process: ServerProcess,
    port: u16,
    postgres: PathBuf,
    settings: Vec<(String, String)>,
    /// uid/gid to run as: PostgreSQL refuses to run as root, so root tests run it as `postgres`.
    owner: Option<(u32, u32)>,
    dir: TempDir,
}

impl PostgresServer {
    /// Creates a fresh cluster, starts it on a free port, and returns once it accepts a login.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Like [`start`](Self::start), with extra server settings passed as `-c key=value`, e.g.
    /// `("authentication_timeout", "1s")`. They come last, so they override the defaults.
    pub fn start_with(settings: &[(&str, &str)]) -> Self {
        let mut server = Self::unstarted(settings);
        let initdb = server.postgres.with_file_name("initdb");
        assert!(
            initdb.is_file(),
            "`initdb` is not next to `{}`; install the Debian package `postgresql`",
            server.postgres.display()
        );
        server.create_cluster(&initdb);
        server.launch_on_free_port();
        server
    }

    /// A server with `ssl = on`, presenting `cert_pem` (signed for the name clients
    /// expect) with `key_pem`; the files are put in the data directory, owned by the
    /// server's user and private, as the server insists for the key.
    pub fn start_with_tls(cert_pem: &str, key_pem: &str) -> Self {
        let mut server = Self::unstarted(&[
            ("ssl", "on"),
            ("ssl_cert_file", "server.crt"),
            ("ssl_key_file", "server.key"),
        ]);
        let initdb = server.postgres.with_file_name("initdb");
        server.create_cluster(&initdb);
        let data = data_dir(server.dir.path());
        for (name, pem) in [("server.crt", cert_pem), ("server.key", key_pem)] {
            let path = data.join(name);
            fs::write(&path, pem).unwrap_or_else(|err| panic!("write {}: {err}", path.display()));
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .expect("make the TLS file private");
            if let Some((uid, gid)) = server.owner {
                chown(&path, Some(uid), Some(gid))
                    .unwrap_or_else(|err| panic!("chown {} to postgres: {err}", path.display()));
            }
        }
        server.launch_on_free_port();
        server
    }

    /// A streaming replica of `primary` (`pg_basebackup -R`, so it follows the primary by
    /// itself), started on its own free port; returns once it accepts a login, as a hot
    /// standby does.
    pub fn replica_of(primary: &PostgresServer) -> Self {
        let mut server = Self::unstarted(&[]);
        server.make_dirs();
        let basebackup = server.postgres.with_file_name("pg_basebackup");
        let mut command = Command::new(&basebackup);
        command
            .arg("-D")
            .arg(data_dir(server.dir.path()))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                USER,
            ])
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"])
            .current_dir(server.dir.path());
        as_owner(&mut command, server.owner);
        server.process.run_to_completion(command, START_TIMEOUT);
        server.launch_on_free_port();
        server
    }

    /// Runs `sql` as the superuser through `psql` on the Unix socket and returns its
    /// unaligned, tuples-only output.
    pub fn sql(&self, sql: &str) -> String {
        let psql = self.postgres.with_file_name("psql");
        let output = Command::new(&psql)
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", USER, "-d", DATABASE])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .unwrap_or_else(|err| panic!("run {}: {err}", psql.display()));
        assert!(
            output.status.success(),
            "psql -c {sql:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Puts `lines` first in `pg_hba.conf` (before the cluster's trust-everything lines)
    /// and reloads it: how a test gives one user its own authentication method.
    pub fn hba_first(&self, lines: &[&str]) {
        // Tests sharing a server edit its file side by side.
        static EDITING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _editing = EDITING.lock().unwrap_or_else(|p| p.into_inner());
        let path = data_dir(self.dir.path()).join("pg_hba.conf");
        let old = fs::read_to_string(&path).expect("read pg_hba.conf");
        fs::write(&path, format!("{}\n{old}", lines.join("\n"))).expect("write pg_hba.conf");
        assert_eq!(self.sql("SELECT pg_reload_conf()"), "t");
    }

    /// Promotes a standby (`pg_promote()`, which returns once the server is out of
    /// recovery).
    pub fn promote(&self) {
        assert_eq!(self.sql("SELECT pg_promote()"), "t", "promotion");
    }

    /// The server, with its directory and owner set up but no cluster yet.
    fn unstarted(settings: &[(&str, &str)]) -> Self {
        // initdb must match the server's major version, so both come from the directory the
        // `postgres` found first really lives in (PATH entries are often symlinks into it).
        let found = require_binary("postgres", "postgresql");
        let postgres = fs::canonicalize(&found).unwrap_or(found);
        let dir = workdir("postgres");
        let owner = running_as_root().then(postgres_user);
        let process = ServerProcess::new(
            "postgres",
            dir.path().join("server.log"),
            Some(Signal::SIGQUIT),
        );
        Self {
            process,
            port: 0,
            postgres,
            settings: settings
                .iter()
                .map(|&(key, value)| (key.to_owned(), value.to_owned()))
                .collect(),
            owner,
            dir,
        }
    }

    fn launch_on_free_port(&mut self) {
        let (postgres, settings, dir, owner) =
            (&self.postgres, &self.settings, self.dir.path(), self.owner);
        self.port = self.process.start_on_free_port(|process, port| {
            launch(process, postgres, settings, owner, dir, port)
        });
    }

    /// Makes the data and socket directories, owned by whoever runs the server; the data
    /// directory private, as the server insists.
    fn make_dirs(&self) {
        let data = data_dir(self.dir.path());
        for path in [&data, &socket_dir(self.dir.path())] {
            fs::create_dir(path).unwrap_or_else(|err| panic!("create {}: {err}", path.display()));
            if let Some((uid, gid)) = self.owner {
                chown(path, Some(uid), Some(gid))
                    .unwrap_or_else(|err| panic!("chown {} to postgres: {err}", path.display()));
            }
        }
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))
            .expect("make the data directory private");
        if self.owner.is_some() {
            // The scratch directory is root's and private; the server's user must get through it.
            fs::set_permissions(self.dir.path(), fs::Permissions::from_mode(0o711))
                .expect("open up the scratch directory");
        }
    }

    /// Fills the data directory with a new cluster that trusts every local connection.
    fn create_cluster(&self, initdb: &Path) {
        self.make_dirs();
        let data = data_dir(self.dir.path());

        let mut command = Command::new(initdb);
        command
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                USER,
                "--no-sync",
                "--no-locale",
                "-E",
                "UTF8",
            ])
            .current_dir(&data);
        as_owner(&mut command, self.owner);
        self.process.run_to_completion(command, START_TIMEOUT);
    }

    /// The directory holding the server's Unix socket, for clients that connect that way.
    pub fn socket_dir(&self) -> PathBuf {
        socket_dir(self.dir.path())
    }
}

/// The postmaster's pid is the one [`TestServer::pid`] gives; its children (backends,
/// checkpointer, ...) have their own, and are signalled along with it. A restart stops a server
/// that still runs with an immediate shutdown (SIGQUIT), which needs crash recovery too but,
/// unlike [`TestServer::kill`], leaves no orphaned children behind.
impl TestServer for PostgresServer {
    fn process(&self) -> &ServerProcess {
        &self.process
    }

    fn process_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    fn port(&self) -> u16 {
        self.port
    }

    /// Holds `data/`, `sock/` and `server.log`.
    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Reuses the data directory, and returns once crash recovery is over and the server
    /// accepts a login.
    fn launch(&mut self) -> Result<(), StartError> {
        launch(
            &mut self.process,
            &self.postgres,
            &self.settings,
            self.owner,
            self.dir.path(),
            self.port,
        )
    }

    /// One SSLRequest exchange.
    fn probe(&self, timeout: Duration) -> io::Result<()> {
        ssl_request(self.port, timeout).map(drop)
    }
}

fn data_dir(dir: &Path) -> PathBuf {
    dir.join("data")
}

fn socket_dir(dir: &Path) -> PathBuf {
    dir.join("sock")
}

fn launch(
    process: &mut ServerProcess,
    postgres: &Path,
    settings: &[(String, String)],
    owner: Option<(u32, u32)>,
    dir: &Path,
    port: u16,
) -> Result<(), StartError> {
    let mut command = Command::new(postgres);
    command
        .arg("-D")
        .arg(data_dir(dir))
        .args(["-p", &port.to_string()])
        .arg("-k")
        .arg(socket_dir(dir))
        .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
        .current_dir(data_dir(dir));
    for (key, value) in settings {
        command.arg("-c").arg(format!("{key}={value}"));
    }
    as_owner(&mut command, owner);
    process.spawn(command);
    // The SSLRequest is answered even while the server is still starting up or recovering, so
    // readiness also needs a login to succeed.
    process.wait_ready(START_TIMEOUT, || {
        ssl_request(port, Duration::from_secs(1))?;
        login(port, Duration::from_secs(2))
    })
}

fn as_owner(command: &mut Command, owner: Option<(u32, u32)>) {
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
}

/// uid and gid of the `postgres` system user, which the Debian packages create. Asking `id`
/// avoids enabling nix's "user" feature for the sake of tests.
fn postgres_user() -> (u32, u32) {
    let lookup = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, USER])
            .output()
            .unwrap_or_else(|err| panic!("run `id {flag} {USER}`: {err}"));
        assert!(
            output.status.success(),
            "PostgreSQL refuses to run as root and there is no `{USER}` user to run it as \
             (`id {flag} {USER}`: {}); install the Debian package `postgresql`",
            String::from_utf8_lossy(&output.stderr).trim()
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("`id` prints a number")
    };
    (lookup("-u"), lookup("-g"))
}

/// Sends an SSLRequest and returns the server's one-byte answer, `S` or `N`. Any listening
/// postmaster answers it, before authentication and even during startup.
pub fn ssl_request(port: u16, timeout: Duration) -> io::Result<u8> {
    let mut exchange = Exchange::connect(port, timeout)?;
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    exchange.send(&request)?;
    let mut answer = [0u8; 1];
    exchange.receive_exact(&mut answer)?;
    match answer[0] {
        answer @ (b'S' | b'N') => Ok(answer),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("SSLRequest answered {other:#04x}"),
        )),
    }
}

/// Logs in as [`USER`] to [`DATABASE`] without a password (the cluster trusts loopback) and
/// succeeds once the server reports ReadyForQuery; an ErrorResponse such as "the database system
/// is starting up" is returned as the error.
pub fn login(port: u16, timeout: Duration) -> io::Result<()> {
    let mut exchange = Exchange::connect(port, timeout)?;
    let mut body = PROTOCOL_3_0.to_be_bytes().to_vec();
    for field in ["user", USER, "database", DATABASE] {
        body.extend_from_slice(field.as_bytes());
        body.push(0);
    }
    body.push(0);
    let length = u32::try_from(body.len() + 4).expect("startup message is small");
    let mut startup = length.to_be_bytes().to_vec();
    startup.extend_from_slice(&body);
    exchange.send(&startup)?;

    loop {
        let mut header = [0u8; 5];
        exchange.receive_exact(&mut header)?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if !(4..=1 << 20).contains(&length) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("implausible message length {length}"),
            ));
        }
        let mut payload = vec![0u8; length - 4];
        exchange.receive_exact(&mut payload)?;
        match header[0] {
            b'Z' => {
                // Terminate, so the server does not log an unexpected EOF.
                let _ = exchange.send(&[b'X', 0, 0, 0, 4]);
                return Ok(());
            }
            b'E' => {
                return Err(io::Error::other(format!(
                    "login refused: {}",
                    error_text(&payload)
                )));
            }
            b'R' if payload.get(..4) != Some(&[0, 0, 0, 0]) => {
                return Err(io::Error::other(
                    "server asks for a password; the test cluster should trust loopback",
                ));
            }
            _ => {}
        }
    }
}

/// The SQLSTATE and message of an ErrorResponse body (a list of code byte + C string fields).
fn error_text(payload: &[u8]) -> String {
    let mut code = "";
    let mut message = "";
    for field in payload
        .split(|&byte| byte == 0)
        .filter(|field| !field.is_empty())
    {
        let text = std::str::from_utf8(&field[1..]).unwrap_or("?");
        match field[0] {
            b'C' => code = text,
            b'M' => message = text,
            _ => {}
        }
    }
    format!("{message} (SQLSTATE {code})")
}

/// A primary and its streaming replica, for tests of roles and failover.
#[derive(Debug)]
pub struct Pair {
    pub primary: PostgresServer,
    pub replica: PostgresServer,
}

impl Pair {
    /// A fresh primary and a replica streaming from it.
    pub fn start() -> Pair {
        let primary = PostgresServer::start();
        let replica = PostgresServer::replica_of(&primary);
        Pair { primary, replica }
    }

    /// One pair for every test of this binary that runs while another still holds it:
    /// PostgreSQL is slow to create, and tests that only log in and read roles do not
    /// conflict. The pair is dropped (and its servers stopped) when its last user is done;
    /// tests that promote, freeze or kill a server must start their own.
    pub fn shared() -> std::sync::Arc<Pair> {
        use std::sync::{Arc, Mutex, Weak};
        static SHARED: Mutex<Weak<Pair>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pair) = shared.upgrade() {
            return pair;
        }
        let pair = Arc::new(Pair::start());
        *shared = Arc::downgrade(&pair);
        pair
    }
}
