//! The probes of memcached, NATS, MQTT, AMQP, gRPC and the generic `expect`, against the
//! real servers: healthy when serving, a freeze noticed within `check_interval +
//! check_timeout`, a kill noticed from the socket, and the wrong kind of server refused
//! with the reason.
//!
//! Each failure is provoked once (the `probes` tests take medians for the older probes);
//! the figures are printed (`cargo test probes_more -- --nocapture`).

use std::io;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tether::watch::machine::Event;

use crate::support::TestServer;
use crate::support::daemon::{Daemon, Recipe};
use crate::support::harness::{Recorder, watch};
use crate::support::rabbitmq::RabbitMq;
use crate::support::redis::RedisServer;
use crate::support::tether_process;
use crate::support::tls::Pki;
use crate::support::{Exchange, eventually, running_as_root};
use crate::support::{blocking, stdout};
use crate::tls_probes::healthy_with_its_ca_and_refused_with_another;

/// Bound on any single wait for an event that must come.
const LIMIT: Duration = Duration::from_secs(30);

/// A check every second with 500 ms to answer, and quick retries.
const FAST: &str = r#"connect_timeout = "500ms"
failure_threshold = 3
check_interval = "1s"
check_timeout = "500ms"
keepalive = { idle = "1s", interval = "1s", count = 3 }
backoff = { initial = "50ms", max = "200ms", multiplier = 2.0, jitter = 0.1 }"#;

/// A freeze is noticed by the next check, due within 1 s and given 500 ms: 1.5 s, with
/// room for a loaded machine.
const FROZEN_WINDOW: Duration = Duration::from_secs(4);

/// A closed connection is noticed from the socket, without waiting for a check.
const KILL_BOUND: Duration = Duration::from_secs(1);

/// The scenario every probe must pass on its own server, `probe` being the TOML value
/// of the target's `probe` key: `tether probe` says healthy, a watched target comes up,
/// notices a freeze within the window and a kill at once.
async fn a_served_probe_notices_a_freeze_and_a_kill(
    name: &str,
    server: &mut (impl TestServer + Send),
    kind: &str,
    cli: &[&str],
    probe: &str,
) {
    let addr = server.addr();
    let mut args = vec![addr.as_str(), "--probe", kind];
    args.extend_from_slice(cli);
    let out = tether_process::probe(&args);
    assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
    assert!(stdout(&out).contains("is healthy"), "{name}: {out:?}");

    let rec = Recorder::new();
    let config = format!(
        "[[targets]]\nname = \"probe\"\naddress = \"{}\"\nprobe = {probe}\n{FAST}\n",
        server.addr()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("probe", Event::Connect, 1, LIMIT).await;

    let frozen = Instant::now();
    blocking(|| server.stop());
    let (at, error) = rec.lost_since("probe", frozen, LIMIT).await;
    let after = at.duration_since(frozen);
    eprintln!("DETECTION {name} SIGSTOP noticed by the {kind} probe: {after:?} ({error})");
    assert!(
        error.contains("no answer within 500ms"),
        "{name}: unexpected reason {error:?}"
    );
    assert!(
        after < FROZEN_WINDOW,
        "{name}: freeze noticed after {after:?}"
    );
    blocking(|| server.cont());
    rec.nth_event("probe", Event::Connect, 2, LIMIT).await;

    let killed = Instant::now();
    blocking(|| server.kill());
    let (at, error) = rec.lost_since("probe", killed, LIMIT).await;
    let after = at.duration_since(killed);
    eprintln!("DETECTION {name} SIGKILL noticed by the {kind} probe: {after:?} ({error})");
    assert!(after < KILL_BOUND, "{name}: kill noticed after {after:?}");
    sup.shutdown().await;
}

/// `tether probe --probe KIND` at a Redis: not healthy, and the reason names what came
/// back instead.
fn the_wrong_server_is_refused_saying_why(kind: &str, expected: &str) {
    let redis = blocking(RedisServer::start);
    let out = tether_process::probe(&[&redis.addr(), "--probe", kind, "--timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(1), "{kind} at redis: {out:?}");
    assert!(
        stdout(&out).contains(expected),
        "{kind} at redis: expected {expected:?} in {out:?}"
    );
}

// === memcached ===

/// memcached on loopback with 8 MiB; with `tls`, TLS on its one port (`-Z`) with the
/// good leaf copied into `dir`.
pub(crate) fn memcached_command(binary: &Path, port: u16, dir: &Path, tls: bool) -> Command {
    let mut c = Command::new(binary);
    c.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "8",
    ]);
    if tls {
        c.args(["-Z", "-o"]).arg(format!(
            "ssl_chain_cert={},ssl_key={}",
            dir.join("good.crt").display(),
            dir.join("good.key").display()
        ));
    }
    // memcached refuses to run as root unless told whom to run as.
    if running_as_root() {
        c.args(["-u", "root"]);
    }
    c
}

const MEMCACHED: Recipe = Recipe {
    name: "memcached",
    binary: "memcached",
    package: "memcached",
    command: |binary, port, dir| memcached_command(binary, port, dir, false),
    ready: |port, timeout| {
        let mut exchange = Exchange::connect(port, timeout)?;
        exchange.send(b"version\r\n")?;
        let reply = exchange.receive_until(b"\r\n", 256)?;
        if reply.starts_with(b"VERSION ") {
            Ok(())
        } else {
            Err(io::Error::other(format!("memcached answered {reply:?}")))
        }
    },
};

#[tokio::test(flavor = "multi_thread")]
async fn a_memcached_answers_version_and_its_freeze_and_death_are_noticed() {
    let mut server = blocking(|| Daemon::start(MEMCACHED));
    a_served_probe_notices_a_freeze_and_a_kill(
        "memcached",
        &mut server,
        "memcached",
        &[],
        "\"memcached\"",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_memcached_probe_at_a_redis_is_not_healthy_and_says_what_came_back() {
    the_wrong_server_is_refused_saying_why(
        "memcached",
        "not a memcached answer: version answered -ERR unknown command",
    );
}

/// A line server that greets every connection with `banner` and then holds it, as an
/// SMTP or FTP server does: the kind of server that speaks first, but not NATS.
async fn greeting_server(banner: &'static [u8]) -> (String, Arc<AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        // Bounded: a test makes a handful of connections.
        for _ in 0..64 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            if stream.write_all(banner).await.is_ok() {
                held.push(stream);
            }
        }
    });
    (addr, accepted)
}

// === NATS ===

fn nats_recipe(auth: &'static [&'static str]) -> Recipe {
    fn command(binary: &Path, port: u16, dir: &Path, auth: &[&str]) -> Command {
        let mut c = Command::new(binary);
        c.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .arg("-l")
            .arg(dir.join("nats.log"))
            .args(auth);
        c
    }
    Recipe {
        name: "nats",
        binary: "nats-server",
        package: "nats-server",
        command: match auth.len() {
            0 => |b, p, d| command(b, p, d, &[]),
            _ => |b, p, d| command(b, p, d, &["--user", "probe", "--pass", "s3cret"]),
        },
        ready: nats_ready,
    }
}

/// nats-server pinging its clients every second and closing one that leaves a ping
/// unanswered (`ping_max` 1).
const NATS_PINGING: Recipe = Recipe {
    name: "nats",
    binary: "nats-server",
    package: "nats-server",
    command: |binary, port, dir| {
        let config = dir.join("nats.conf");
        std::fs::write(
            &config,
            format!("listen: 127.0.0.1:{port}\nping_interval: \"1s\"\nping_max: 1\n"),
        )
        .expect("write nats.conf");
        let mut c = Command::new(binary);
        c.arg("-c").arg(config);
        c
    },
    ready: |port, timeout| nats_ready(port, timeout),
};

fn nats_ready(port: u16, timeout: Duration) -> io::Result<()> {
    let mut exchange = Exchange::connect(port, timeout)?;
    let info = exchange.receive_until(b"\r\n", 64 * 1024)?;
    if info.starts_with(b"INFO ") {
        Ok(())
    } else {
        Err(io::Error::other(format!("nats greeted with {info:?}")))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_pinging_between_checks_gets_its_pong_and_keeps_the_connection() {
    let server = blocking(|| Daemon::start(NATS_PINGING));
    let rec = Recorder::new();
    // Checks far apart: the server's pings come in between, and only answering them
    // keeps the connection (unanswered, the server closes it within two seconds).
    let config = format!(
        "[[targets]]\nname = \"bus\"\naddress = \"{}\"\nprobe = \"nats\"\ncheck_interval = \"30s\"\ncheck_timeout = \"500ms\"\n",
        server.addr()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("bus", Event::Connect, 1, LIMIT).await;
    // The scenario is time itself: four of the server's ping intervals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let lost = rec.losses("bus");
    assert!(
        lost.is_empty(),
        "the server closed the connection: {lost:?}\n{}",
        server.log()
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_answers_ping_with_pong_and_its_freeze_and_death_are_noticed() {
    let mut server = blocking(|| Daemon::start(nats_recipe(&[])));
    a_served_probe_notices_a_freeze_and_a_kill("nats", &mut server, "nats", &[], "\"nats\"").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_nats_probe_at_a_server_greeting_otherwise_is_not_healthy_and_says_with_what() {
    let (addr, _accepted) = greeting_server(b"220 mail.test ESMTP ready\r\n").await;
    let out = tether_process::probe(&[&addr, "--probe", "nats", "--timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("not a NATS answer: greeted with 220 mail.test ESMTP ready"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_requiring_credentials_is_healthy_with_them_and_refuses_others_saying_so() {
    let server = blocking(|| Daemon::start(nats_recipe(&["auth"])));
    let with = |user: &str, password: &str| {
        blocking(|| {
            tether_process::command()
                .args([
                    "probe",
                    &server.addr(),
                    "--probe",
                    "nats",
                    "--timeout",
                    "2s",
                ])
                .args([
                    "--user",
                    user,
                    "--password-env",
                    "TETHER_TEST_NATS_PASSWORD",
                ])
                .env("TETHER_TEST_NATS_PASSWORD", password)
                .output()
                .expect("run tether probe")
        })
    };
    let out = with("probe", "s3cret");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = with("probe", "wrong");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out)
            .contains("refused the credentials (or their absence): -ERR 'Authorization Violation'"),
        "{out:?}"
    );
    assert!(
        !stdout(&out).contains("wrong"),
        "the password leaked: {out:?}"
    );
    let out = tether_process::probe(&[&server.addr(), "--probe", "nats", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("Authorization Violation"), "{out:?}");
}

// === expect ===

#[tokio::test(flavor = "multi_thread")]
async fn expect_speaks_the_redis_inline_protocol_and_notices_its_freeze_and_death() {
    let mut server = blocking(RedisServer::start);
    a_served_probe_notices_a_freeze_and_a_kill(
        "redis (inline)",
        &mut server,
        "expect",
        &["--send", r"PING\r\n", "--expect", r"^\+PONG\r\n"],
        r#"{ kind = "expect", send = 'PING\r\n', expect = '^\+PONG\r\n' }"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_without_send_judges_the_greeting_of_a_fresh_connection_each_time() {
    let (addr, accepted) = greeting_server(b"220 mail.test ESMTP ready\r\n").await;
    let out = tether_process::probe(&[&addr, "--probe", "expect", "--expect", "^220 "]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = tether_process::probe(&[&addr, "--probe", "expect", "--expect", "^230 "]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out)
            .contains(r"answered 220 mail.test ESMTP ready\r\n, which does not match /^230 /"),
        "{out:?}"
    );

    // Watched, each check opens a connection of its own and reads its greeting.
    let rec = Recorder::new();
    let config = format!(
        "[[targets]]\nname = \"smtp\"\naddress = \"{addr}\"\nprobe = {{ kind = \"expect\", expect = '^220 ' }}\n{FAST}\n"
    );
    let sup = watch(&config, &rec);
    rec.nth_event("smtp", Event::Connect, 1, LIMIT).await;
    let before = accepted.load(Ordering::SeqCst);
    eventually(LIMIT, "a second check on a fresh connection", || async {
        (accepted.load(Ordering::SeqCst) >= before + 2).then_some(())
    })
    .await;
    assert_eq!(
        rec.events("smtp"),
        [Event::Connect],
        "{:#?}",
        rec.of("smtp")
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_at_the_wrong_server_is_not_healthy_and_shows_what_came_back() {
    let memcached = blocking(|| Daemon::start(MEMCACHED));
    let out = tether_process::probe(&[
        &memcached.addr(),
        "--probe",
        "expect",
        "--send",
        r"PING\r\n",
        "--expect",
        r"^\+PONG",
        "--timeout",
        "500ms",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains(r"answered ERROR\r\n, which does not match /^\+PONG/"),
        "{out:?}"
    );
}

// === MQTT ===

fn mosquitto_recipe(anonymous: bool) -> Recipe {
    fn command(binary: &Path, port: u16, dir: &Path, anonymous: bool) -> Command {
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous {anonymous}\npersistence false\nlog_dest stderr\n"
            ),
        )
        .expect("write mosquitto.conf");
        let mut c = Command::new(binary);
        c.arg("-c").arg(config);
        c
    }
    Recipe {
        name: "mosquitto",
        binary: "mosquitto",
        package: "mosquitto",
        command: if anonymous {
            |b, p, d| command(b, p, d, true)
        } else {
            |b, p, d| command(b, p, d, false)
        },
        ready: |port, timeout| {
            // PINGREQ before CONNECT is a protocol error: the broker answers by closing,
            // which proves it is accepting and reading.
            let mut exchange = Exchange::connect(port, timeout)?;
            exchange.send(&[
                0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'r',
            ])?;
            let mut ack = [0u8; 4];
            exchange.receive_exact(&mut ack)?;
            if ack[0] == 0x20 {
                Ok(())
            } else {
                Err(io::Error::other(format!("mosquitto answered {ack:?}")))
            }
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mosquitto_acknowledges_connect_and_ping_and_its_freeze_and_death_are_noticed() {
    let mut server = blocking(|| Daemon::start(mosquitto_recipe(true)));
    a_served_probe_notices_a_freeze_and_a_kill("mosquitto", &mut server, "mqtt", &[], "\"mqtt\"")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_refusing_anonymous_clients_is_healthy_but_refused_credentials_are_not() {
    let server = blocking(|| Daemon::start(mosquitto_recipe(false)));
    let out = tether_process::probe(&[&server.addr(), "--probe", "mqtt", "--timeout", "2s"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = blocking(|| {
        tether_process::command()
            .args([
                "probe",
                &server.addr(),
                "--probe",
                "mqtt",
                "--timeout",
                "2s",
            ])
            .args([
                "--user",
                "probe",
                "--password-env",
                "TETHER_TEST_MQTT_PASSWORD",
            ])
            .env("TETHER_TEST_MQTT_PASSWORD", "wrong")
            .output()
            .expect("run tether probe")
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("CONNACK refused the connection: not authorized (5)"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_mqtt_probe_at_a_server_of_another_protocol_is_not_healthy_and_says_what_came_back() {
    // Redis and memcached wait silently for a line end the binary CONNECT never sends
    // (a timeout); a server that speaks first shows the wrong answer.
    let (addr, _accepted) = greeting_server(b"220 mail.test ESMTP ready\r\n").await;
    let out = tether_process::probe(&[&addr, "--probe", "mqtt", "--timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("not a MQTT answer: CONNECT answered 220 "),
        "{out:?}"
    );
}

// === AMQP ===

/// RabbitMQ takes seconds to boot: one node serves every AMQP scenario of this binary,
/// over TLS first (healthy with its CA, refused with another), then in plain text, frozen
/// and killed last.
#[tokio::test(flavor = "multi_thread")]
async fn a_rabbitmq_answers_the_amqp_header_in_plain_text_and_over_tls_and_its_freeze_and_death_are_noticed()
 {
    let pki = Pki::new();
    let booting = Instant::now();
    let mut node = blocking(|| RabbitMq::start_tls(&pki));
    eprintln!("rabbitmq booted in {:?}", booting.elapsed());
    let tls_addr = node.tls_addr();
    healthy_with_its_ca_and_refused_with_another("rabbitmq", &tls_addr, &pki, &["--probe", "amqp"]);
    a_served_probe_notices_a_freeze_and_a_kill("rabbitmq", &mut node, "amqp", &[], "\"amqp\"")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_amqp_probe_at_a_server_of_another_protocol_is_not_healthy_and_says_what_came_back() {
    let (addr, _accepted) = greeting_server(b"220 mail.test ESMTP ready\r\n").await;
    let out = tether_process::probe(&[&addr, "--probe", "amqp", "--timeout", "500ms"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("not a AMQP answer: the header answered 220 mai"),
        "{out:?}"
    );
}

// === gRPC ===

/// A one-member etcd on loopback; with `tls`, its client URL serves HTTPS with the good
/// leaf copied into `dir`.
pub(crate) fn etcd_command(binary: &Path, port: u16, dir: &Path, tls: bool) -> Command {
    let scheme = if tls { "https" } else { "http" };
    let client = format!("{scheme}://127.0.0.1:{port}");
    let peer = format!("http://127.0.0.1:{}", crate::support::free_port());
    let mut c = Command::new(binary);
    c.arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client])
        .args(["--advertise-client-urls", &client]);
    if tls {
        c.arg("--cert-file")
            .arg(dir.join("good.crt"))
            .arg("--key-file")
            .arg(dir.join("good.key"));
    }
    c.args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &format!("default={peer}")]);
    c
}

/// etcd serves `grpc.health.v1` on its client port.
const ETCD: Recipe = Recipe {
    name: "etcd",
    binary: "etcd",
    package: "etcd-server",
    command: |binary, port, dir| etcd_command(binary, port, dir, false),
    ready: |port, timeout| {
        let mut exchange = Exchange::connect(port, timeout)?;
        exchange.send(b"GET /health HTTP/1.1\r\nHost: etcd\r\nConnection: close\r\n\r\n")?;
        let status = exchange.receive_until(b"\r\n", 256)?;
        if status.starts_with(b"HTTP/1.1 200") {
            Ok(())
        } else {
            Err(io::Error::other(format!("etcd answered {status:?}")))
        }
    },
};

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_reports_serving_over_grpc_and_its_freeze_and_death_are_noticed() {
    let mut server = blocking(|| Daemon::start(ETCD));
    let out = tether_process::probe(&[
        &server.addr(),
        "--probe",
        "grpc",
        "--service",
        "no.such.Service",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("service \"no.such.Service\" is SERVICE_UNKNOWN"),
        "{out:?}"
    );
    a_served_probe_notices_a_freeze_and_a_kill("etcd", &mut server, "grpc", &[], "\"grpc\"").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_grpc_probe_at_a_redis_is_not_healthy_and_says_why() {
    the_wrong_server_is_refused_saying_why("grpc", "not a gRPC answer: HTTP/2");
}

/// The established TCP connections of this process to 127.0.0.1:`port`, by local port:
/// its socket inodes (from `/proc/self/fd`) matched against the kernel's table.
fn own_connections_to(port: u16) -> Vec<u16> {
    let inodes: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|fd| {
            let link = std::fs::read_link(fd.ok()?.path()).ok()?;
            let link = link.to_str()?;
            Some(link.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let mut ports: Vec<u16> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, state, inode) = (fields[1], fields[2], fields[3], fields[9]);
            let remote_port = u16::from_str_radix(remote.rsplit(':').next()?, 16).ok()?;
            let established = state == "01";
            (established && remote_port == port && inodes.iter().any(|i| i == inode))
                .then(|| u16::from_str_radix(local.rsplit(':').next()?, 16).ok())
                .flatten()
        })
        .collect();
    ports.sort_unstable();
    ports
}

/// How many `grpc.health.v1.Health/Check` calls etcd has answered `OK`, from its own
/// Prometheus metrics: the server's count, not tether's.
fn etcd_health_checks(port: u16) -> u64 {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(crate::support::loopback(port)).expect("etcd");
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: etcd\r\n\r\n")
        .expect("ask etcd for its metrics");
    let mut page = String::new();
    conn.read_to_string(&mut page).expect("read etcd's metrics");
    let series = r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Check",grpc_service="grpc.health.v1.Health",grpc_type="unary"} "#;
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpc_target_is_checked_again_and_again_on_the_one_connection_it_holds() {
    let server = blocking(|| Daemon::start(ETCD));
    let port = server.port();
    let rec = Recorder::new();
    let config = format!(
        "[[targets]]\nname = \"etcd\"\naddress = \"{}\"\nprobe = \"grpc\"\n\
         check_interval = \"400ms\"\ncheck_timeout = \"300ms\"\n",
        server.addr()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("etcd", Event::Connect, 1, LIMIT).await;
    let held = blocking(|| own_connections_to(port));
    assert_eq!(held.len(), 1, "one connection to etcd: {held:?}");

    let before = blocking(|| etcd_health_checks(port));
    let answered = eventually(
        LIMIT,
        "five more health checks answered by etcd",
        || async {
            let now = blocking(|| etcd_health_checks(port));
            (now >= before + 5).then_some(now)
        },
    )
    .await;
    let still = blocking(|| own_connections_to(port));
    eprintln!(
        "etcd answered {} checks on local port {held:?}, still held: {still:?}",
        answered - before
    );
    assert_eq!(still, held, "the checks ran on other connections");
    assert!(rec.losses("etcd").is_empty(), "{:?}", rec.losses("etcd"));
    sup.shutdown().await;
}
