//! TLS on the probes of memcached, NATS, MQTT, AMQP, gRPC and `expect`, against the real
//! servers serving the test PKI's certificate: healthy with its CA, refused with another
//! CA saying so. memcached (`-Z`), mosquitto (a `listener` with `certfile`), RabbitMQ
//! (`listeners.ssl`; its scenario is in `probes_more`, on the one node a binary starts),
//! etcd (`https://` client URLs) and `expect` start TLS on the first byte; nats-server 2.9 greets in plain text with `tls_required` and the client upgrades
//! after the `INFO`.
//!
//! The servers are ready when they accept connections; `tether wait` (itself a bounded
//! retry) then proves the healthy case, and `tether probe` the refused one. The time of
//! one healthy `tether probe` is printed (`cargo test tls_probes -- --nocapture`).

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use tether::watch::machine::Event;

use crate::probes_more::{etcd_command, memcached_command};
use crate::support::TestServer;
use crate::support::daemon::{Daemon, Recipe};
use crate::support::harness::{Recorder, watch};
use crate::support::tls::Pki;
use crate::support::{Exchange, tether_process};
use crate::support::{blocking, stdout};

/// Bound on any single wait for an event that must come.
const LIMIT: Duration = Duration::from_secs(30);

/// `tether ARGS...`, run to completion.
fn tether(args: &[&str]) -> Output {
    blocking(|| {
        tether_process::command()
            .args(args)
            .output()
            .expect("run tether")
    })
}

/// The files a server presents: the good leaf (localhost, 127.0.0.1) and its CA.
fn server_files(pki: &Pki) -> Vec<PathBuf> {
    ["good.crt", "good.key", "ca.pem"]
        .iter()
        .map(|name| pki.path(name))
        .collect()
}

/// Ready once the port accepts: what it then speaks is the test's to judge.
fn accepting(port: u16, timeout: Duration) -> io::Result<()> {
    Exchange::connect(port, timeout).map(|_| ())
}

/// The scenario every TLS-serving probe must pass: healthy through TLS when the
/// certificate is checked against the test CA, and refused, naming the cause, against
/// another CA. `args` are the probe's own (`--probe KIND` and its settings).
pub(crate) fn healthy_with_its_ca_and_refused_with_another(
    name: &str,
    addr: &str,
    pki: &Pki,
    args: &[&str],
) {
    let ca = pki.ca();
    let tls = ["--tls", "--ca-file", ca.as_str()];
    let wait: Vec<&str> = [&["wait", addr][..], args, &tls, &["--timeout", "20s"]].concat();
    let out = tether(&wait);
    assert_eq!(out.status.code(), Some(0), "{name}: tether wait {out:?}");

    let probe: Vec<&str> = [&["probe", addr][..], args, &tls, &["--timeout", "2s"]].concat();
    let started = Instant::now();
    let out = tether(&probe);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
    assert!(stdout(&out).contains("is healthy"), "{name}: {out:?}");
    eprintln!("TLS {name}: one healthy `tether probe` over TLS took {took:?}");

    let other_ca = pki.path("other-ca.pem").display().to_string();
    let wrong: Vec<&str> = [
        &["probe", addr][..],
        args,
        &["--tls", "--ca-file", &other_ca, "--timeout", "2s"],
    ]
    .concat();
    let out = tether(&wrong);
    assert_eq!(out.status.code(), Some(1), "{name}: {out:?}");
    assert!(
        stdout(&out).contains("TLS handshake: certificate is not trusted: unknown CA"),
        "{name}: {out:?}"
    );
}

// === memcached ===

/// memcached with TLS on its one port (`-Z`).
const MEMCACHED_TLS: Recipe = Recipe {
    name: "memcached",
    binary: "memcached",
    package: "memcached",
    command: |binary, port, dir| memcached_command(binary, port, dir, true),
    ready: accepting,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_memcached_serving_tls_is_healthy_with_its_ca_and_refused_with_another() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start_with_files(MEMCACHED_TLS, &server_files(&pki)));
    healthy_with_its_ca_and_refused_with_another(
        "memcached",
        &server.addr(),
        &pki,
        &["--probe", "memcached"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn expect_speaks_through_tls_to_a_memcached_and_judges_its_answer() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start_with_files(MEMCACHED_TLS, &server_files(&pki)));
    let expect = [
        "--probe",
        "expect",
        "--send",
        r"version\r\n",
        "--expect",
        "^VERSION 1\\.",
    ];
    healthy_with_its_ca_and_refused_with_another("expect", &server.addr(), &pki, &expect);
}

// === MQTT ===

/// mosquitto with one listener, TLS from the first byte.
const MOSQUITTO_TLS: Recipe = Recipe {
    name: "mosquitto",
    binary: "mosquitto",
    package: "mosquitto",
    command: |binary, port, dir| {
        let config = dir.join("mosquitto.conf");
        let file = |name: &str| dir.join(name).display().to_string();
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nlog_dest stderr\ncafile {}\ncertfile {}\nkeyfile {}\n",
                file("ca.pem"),
                file("good.crt"),
                file("good.key"),
            ),
        )
        .expect("write mosquitto.conf");
        let mut c = Command::new(binary);
        c.arg("-c").arg(config);
        c
    },
    ready: accepting,
};

#[tokio::test(flavor = "multi_thread")]
async fn a_mosquitto_tls_listener_is_healthy_with_its_ca_and_refused_with_another() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start_with_files(MOSQUITTO_TLS, &server_files(&pki)));
    healthy_with_its_ca_and_refused_with_another(
        "mosquitto",
        &server.addr(),
        &pki,
        &["--probe", "mqtt"],
    );
}

// === gRPC ===

/// etcd serving its client URL (gRPC, with `grpc.health.v1`) over TLS.
const ETCD_TLS: Recipe = Recipe {
    name: "etcd",
    binary: "etcd",
    package: "etcd-server",
    command: |binary, port, dir| etcd_command(binary, port, dir, true),
    ready: accepting,
};

#[tokio::test(flavor = "multi_thread")]
async fn an_etcd_serving_grpc_over_tls_is_healthy_with_its_ca_and_refused_with_another() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start_with_files(ETCD_TLS, &server_files(&pki)));
    healthy_with_its_ca_and_refused_with_another(
        "etcd",
        &server.addr(),
        &pki,
        &["--probe", "grpc"],
    );
}

// === NATS ===

/// nats-server requiring TLS (a `tls` block), pinging its clients every second and
/// closing one that leaves a ping unanswered.
const NATS_TLS: Recipe = Recipe {
    name: "nats",
    binary: "nats-server",
    package: "nats-server",
    command: |binary, port, dir| nats_command(binary, port, dir, true),
    ready: accepting,
};

/// The same nats-server without its `tls` block.
const NATS_PLAIN: Recipe = Recipe {
    name: "nats",
    binary: "nats-server",
    package: "nats-server",
    command: |binary, port, dir| nats_command(binary, port, dir, false),
    ready: accepting,
};

fn nats_command(binary: &Path, port: u16, dir: &Path, tls: bool) -> Command {
    let config = dir.join("nats.conf");
    let mut text = format!("listen: 127.0.0.1:{port}\nping_interval: \"1s\"\nping_max: 1\n");
    if tls {
        text.push_str(&format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
            dir.join("good.crt").display(),
            dir.join("good.key").display()
        ));
    }
    std::fs::write(&config, text).expect("write nats.conf");
    let mut c = Command::new(binary);
    c.arg("-c").arg(config);
    c
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_requiring_tls_is_healthy_after_its_plain_info_and_refused_with_another_ca() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start_with_files(NATS_TLS, &server_files(&pki)));
    healthy_with_its_ca_and_refused_with_another(
        "nats",
        &server.addr(),
        &pki,
        &["--probe", "nats"],
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_without_tls_is_not_talked_to_in_plain_text_when_tls_is_asked() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start(NATS_PLAIN));
    let out = tether(&[
        "probe",
        &server.addr(),
        "--probe",
        "nats",
        "--tls",
        "--ca-file",
        &pki.ca(),
        "--timeout",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("the server does not offer TLS (its INFO has neither tls_required"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_pinging_a_held_tls_connection_gets_its_pong_and_keeps_it() {
    let pki = Pki::new();
    let server = blocking(|| Daemon::start_with_files(NATS_TLS, &server_files(&pki)));
    let rec = Recorder::new();
    // Checks far apart: the server's pings come in between, through TLS, and only
    // answering them keeps the connection (unanswered, the server closes it within two
    // seconds).
    let config = format!(
        "[[targets]]\nname = \"bus\"\naddress = \"{}\"\nprobe = \"nats\"\ncheck_interval = \"30s\"\ncheck_timeout = \"500ms\"\ntls = {{ ca_file = \"{}\" }}\n",
        server.addr(),
        pki.ca()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("bus", Event::Connect, 1, LIMIT).await;
    // The scenario is time itself: three of the server's ping intervals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lost = rec.losses("bus");
    assert!(
        lost.is_empty(),
        "the server closed the connection: {lost:?}\n{}",
        server.log()
    );
    sup.shutdown().await;
}
