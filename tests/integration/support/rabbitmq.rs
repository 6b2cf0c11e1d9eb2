//! A throwaway RabbitMQ node on loopback: its own node name, AMQP port, Erlang
//! distribution port and epmd port, its data and logs in a scratch directory owned by the
//! `rabbitmq` user (whom it runs as when the tests run as root). RabbitMQ takes seconds
//! to boot, so a test binary should start one and keep it. A node may also serve AMQP
//! over TLS on a second port, with the test PKI's certificate.

use std::io;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{ServerProcess, StartError};
use super::server::TestServer;
use super::tls::Pki;
use super::{Exchange, free_port, require_binary, running_as_root, workdir};

/// Booting the Erlang VM and the broker on a crowded machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

#[derive(Debug)]
pub struct RabbitMq {
    // Declared before `dir`: the node is dead before its directory is removed.
    process: ServerProcess,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    owner: Option<(u32, u32)>,
    /// The AMQP-over-TLS port, if the node has one.
    tls_port: Option<u16>,
    dir: TempDir,
}

impl RabbitMq {
    /// Starts a node that also serves AMQP over TLS (`listeners.ssl`) with the good leaf
    /// of `pki`, on [`RabbitMq::tls_addr`].
    pub fn start_tls(pki: &Pki) -> RabbitMq {
        RabbitMq::start_with(Some(pki))
    }

    pub fn tls_addr(&self) -> String {
        let port = self.tls_port.expect("a node started with start_tls");
        format!("127.0.0.1:{port}")
    }

    fn start_with(pki: Option<&Pki>) -> RabbitMq {
        require_binary("epmd", "rabbitmq-server");
        assert!(
            Path::new(SERVER).exists(),
            "{SERVER} is missing: install it with `apt-get install -y rabbitmq-server`"
        );
        let dir = workdir("rabbitmq");
        let owner = running_as_root().then(rabbitmq_user);
        if let Some((uid, gid)) = owner {
            chown(dir.path(), Some(uid), Some(gid)).expect("chown the rabbitmq directory");
        }
        std::fs::write(dir.path().join("enabled_plugins"), "[].\n").expect("write enabled_plugins");
        let tls_port = pki.map(|pki| {
            let port = free_port();
            let mut conf = format!("listeners.ssl.local = 127.0.0.1:{port}\n");
            for (key, name) in [
                ("cacertfile", "ca.pem"),
                ("certfile", "good.crt"),
                ("keyfile", "good.key"),
            ] {
                let copy = dir.path().join(name);
                std::fs::copy(pki.path(name), &copy).expect("copy a PEM file for rabbitmq");
                if let Some((uid, gid)) = owner {
                    chown(&copy, Some(uid), Some(gid)).expect("chown a PEM file");
                }
                conf.push_str(&format!("ssl_options.{key} = {}\n", copy.display()));
            }
            conf.push_str(
                "ssl_options.verify = verify_none\nssl_options.fail_if_no_peer_cert = false\n",
            );
            std::fs::write(dir.path().join("rabbitmq.conf"), conf).expect("write rabbitmq.conf");
            port
        });
        let process = ServerProcess::new("rabbitmq", dir.path().join("server.log"), None);
        let mut node = RabbitMq {
            process,
            port: 0,
            dist_port: free_port(),
            epmd_port: free_port(),
            owner,
            tls_port,
            dir,
        };
        let (dir, dist, epmd) = (node.dir.path().to_owned(), node.dist_port, node.epmd_port);
        node.port = node
            .process
            .start_on_free_port(|process, port| launch(process, &dir, port, dist, epmd, owner));
        node
    }
}

fn launch(
    process: &mut ServerProcess,
    dir: &Path,
    port: u16,
    dist_port: u16,
    epmd_port: u16,
    owner: Option<(u32, u32)>,
) -> Result<(), StartError> {
    let mut command = Command::new(SERVER);
    command
        .current_dir(dir)
        .env("HOME", dir)
        .env("RABBITMQ_NODENAME", format!("tether-test-{port}@localhost"))
        .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env("RABBITMQ_DIST_PORT", dist_port.to_string())
        .env("ERL_EPMD_PORT", epmd_port.to_string())
        .env("ERL_EPMD_ADDRESS", "127.0.0.1")
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_LOGS", "-")
        .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
        .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins"))
        .env("RABBITMQ_PID_FILE", dir.join("rabbitmq.pid"));
    if let Some((uid, gid)) = owner {
        command.uid(uid).gid(gid);
    }
    process.spawn(command);
    process.wait_ready(BOOT_TIMEOUT, || {
        connection_start(port, Duration::from_secs(1))
    })
}

/// Sends the AMQP 0-9-1 header and expects a method frame back.
pub fn connection_start(port: u16, timeout: Duration) -> io::Result<()> {
    let mut exchange = Exchange::connect(port, timeout)?;
    exchange.send(b"AMQP\x00\x00\x09\x01")?;
    let mut frame = [0u8; 1];
    exchange.receive_exact(&mut frame)?;
    if frame[0] == 1 {
        Ok(())
    } else {
        Err(io::Error::other(format!("rabbitmq answered {frame:?}")))
    }
}

/// uid and gid of the `rabbitmq` system user, which the Debian package creates.
fn rabbitmq_user() -> (u32, u32) {
    let lookup = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "rabbitmq"])
            .output()
            .expect("run `id`");
        assert!(
            output.status.success(),
            "no `rabbitmq` user: install the Debian package `rabbitmq-server`"
        );
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .expect("`id` prints a number")
    };
    (lookup("-u"), lookup("-g"))
}

impl Drop for RabbitMq {
    /// The node started an epmd of its own on its port, outside its process group: it
    /// is stopped with the node.
    fn drop(&mut self) {
        self.process.kill();
        let _ = Command::new("epmd")
            .args(["-port", &self.epmd_port.to_string(), "-kill"])
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .output();
    }
}

impl TestServer for RabbitMq {
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
        let dir: PathBuf = self.dir.path().to_owned();
        launch(
            &mut self.process,
            &dir,
            self.port,
            self.dist_port,
            self.epmd_port,
            self.owner,
        )
    }

    fn probe(&self, timeout: Duration) -> io::Result<()> {
        connection_start(self.port, timeout)
    }
}
