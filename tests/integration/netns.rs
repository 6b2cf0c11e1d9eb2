//! Silent peer death across a real (virtual) network: a server in a network namespace
//! made by the test, reached over a veth pair, whose traffic is then dropped. No FIN or
//! RST ever arrives; only keepalive and TCP_USER_TIMEOUT can notice.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tether::watch::machine::Event;

use crate::support::harness::{Record, Recorder, watch};
use crate::support::poll;

/// A network namespace with one veth link to the host, removed on drop.
struct Namespace {
    name: String,
    host_ip: String,
    peer_ip: String,
    servers: Vec<Child>,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespace {
    fn create() -> Namespace {
        let id = std::process::id() % 10_000;
        let name = format!("tether-t{id}");
        let (host_if, peer_if) = (format!("tth{id}a"), format!("tth{id}b"));
        // A link-local /30 of its own per test process.
        let net = 100 + id % 100;
        let (host_ip, peer_ip) = (format!("169.254.{net}.1"), format!("169.254.{net}.2"));
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Namespace {
            name: name.clone(),
            host_ip,
            peer_ip,
            servers: Vec::new(),
        };
        run(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ]);
        run(&["ip", "link", "set", &peer_if, "netns", &name]);
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/30", ns.host_ip),
            "dev",
            &host_if,
        ]);
        run(&["ip", "link", "set", &host_if, "up"]);
        run(&[
            "ip",
            "-n",
            &name,
            "addr",
            "add",
            &format!("{}/30", ns.peer_ip),
            "dev",
            &peer_if,
        ]);
        run(&["ip", "-n", &name, "link", "set", &peer_if, "up"]);
        run(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        ns
    }

    /// Starts a real redis-server inside the namespace, listening on its veth address.
    fn start_redis(&mut self, port: u16) -> SocketAddr {
        let dir = tempfile::tempdir().unwrap();
        let redis = crate::support::require_binary("redis-server", "redis-server");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .arg(redis)
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                &self.peer_ip,
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            // Redis refuses non-loopback clients without a password unless told otherwise.
            .args(["--protected-mode", "no"])
            .arg("--dir")
            .arg(dir.keep())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.servers.push(child);
        let addr: SocketAddr = format!("{}:{port}", self.peer_ip).parse().unwrap();
        poll(Duration::from_secs(20), "redis in the namespace", || {
            TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
        });
        addr
    }

    /// Drops every packet in and out of the namespace: the peer goes silent.
    fn blackhole(&self) {
        let rules = "table inet blackhole {\n\
                     chain in { type filter hook input priority -300; policy drop; }\n\
                     chain out { type filter hook output priority -300; policy drop; }\n}\n";
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(nft.stdin.as_mut().unwrap(), rules.as_bytes()).unwrap();
        drop(nft.stdin.take());
        assert!(nft.wait().unwrap().success(), "nft rules applied");
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        for s in &mut self.servers {
            let _ = s.kill();
            let _ = s.wait();
        }
        // Deleting the namespace deletes its end of the veth pair, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn can_create_namespaces() -> bool {
    crate::support::running_as_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_that_goes_silent_is_detected_within_keepalive_idle_plus_interval_times_count() {
    if !can_create_namespaces() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to create network namespaces (run as root with iproute2)"
        );
        eprintln!("skipped: creating network namespaces needs root and iproute2");
        return;
    }
    let mut ns = Namespace::create();
    let addr = ns.start_redis(6399);
    let rec = Recorder::new();
    let sup = watch(
        &format!(
            r#"
            [[targets]]
            name = "remote"
            address = "{addr}"
            connect_timeout = "500ms"
            keepalive = {{ idle = "1s", interval = "1s", count = 2 }}
            "#
        ),
        &rec,
    );
    rec.nth_event("remote", Event::Connect, 1, Duration::from_secs(10))
        .await;
    assert!(
        !rec.of("remote")
            .iter()
            .any(|r| matches!(r, Record::Lost { .. })),
        "the connection across the link is stable before the silence"
    );

    let silenced = Instant::now();
    ns.blackhole();
    let (at, error) = rec
        .lost_since("remote", silenced, Duration::from_secs(15))
        .await;
    let after = at.duration_since(silenced);
    eprintln!("silent peer noticed after {after:?} ({error})");
    assert!(error.contains("timed out"), "{error}");
    // idle + interval * count = 3 s, plus a margin for timer granularity.
    assert!(after <= Duration::from_millis(4500), "took {after:?}");
    let (down, _) = rec
        .nth_event("remote", Event::Disconnect, 1, Duration::from_secs(10))
        .await;
    assert!(
        down.last_error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("timed out"),
        "{down:?}"
    );
    sup.shutdown().await;
}
