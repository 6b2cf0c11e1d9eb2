//! TLS on probes, against real servers: redis-server with `--tls-port`, PostgreSQL with
//! `ssl = on`, an HTTPS server and plain TCP, with certificates made here (a CA, a leaf
//! for localhost and 127.0.0.1, one for another name, an expired one). A failed handshake
//! must say why; a held TLS connection must be watched as closely as a plain one; the
//! certificate's expiry reaches the metric and `/status` exactly.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tether::config::Config;
use tether::connect::{self, Limits};
use tether::probe::Prober;
use tether::telemetry::metrics::Metrics;
use tether::telemetry::status::Status;
use tether::watch::machine::Event;
use tether::watch::observe::Observers;
use tether::watch::supervisor::Supervisor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::TestServer;
use crate::support::harness::{Recorder, target};
use crate::support::mariadb::MariadbServer;
use crate::support::postgres::{PostgresServer, USER};
use crate::support::redis::RedisServer;
use crate::support::tether_process::TetherProcess;
use crate::support::tls::{NOT_AFTER, Pki, hanging_up_tls_server, https_server};
use crate::support::{blocking, free_port, stdout};
use crate::support::{tether_process, workdir};

/// Bound on any single wait for an event that must come.
const LIMIT: Duration = Duration::from_secs(30);
/// A check every second with 500 ms to answer: a freeze is due to be noticed in 1.5 s.
const CHECK: &str = "check_interval = \"1s\"\ncheck_timeout = \"500ms\"\nbackoff = { initial = \"50ms\", max = \"200ms\" }";
/// Generous bounds for a loaded machine: a freeze within interval + timeout (1.5 s), a
/// kill from the socket at once.
const FROZEN_BOUND: Duration = Duration::from_secs(4);
const KILL_BOUND: Duration = Duration::from_secs(1);

/// A redis-server with a plain port (its harness's readiness check) and a TLS port
/// presenting the leaf `leaf` of `pki`.
struct TlsRedis {
    server: RedisServer,
    tls_port: u16,
}

impl TlsRedis {
    fn start(pki: &Pki, leaf: &str) -> TlsRedis {
        TlsRedis::start_with(pki, leaf, "no")
    }

    /// `auth_clients`: redis's `--tls-auth-clients`, `yes` to require a client
    /// certificate signed by the CA.
    fn start_with(pki: &Pki, leaf: &str, auth_clients: &str) -> TlsRedis {
        let tls_port = free_port();
        let (cert, key, ca) = (
            pki.path(&format!("{leaf}.crt")),
            pki.path(&format!("{leaf}.key")),
            pki.path("ca.pem"),
        );
        let server = RedisServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-ca-cert-file",
            &ca.display().to_string(),
            "--tls-auth-clients",
            auth_clients,
        ]);
        TlsRedis { server, tls_port }
    }

    fn tls_addr(&self) -> String {
        format!("127.0.0.1:{}", self.tls_port)
    }
}

/// One connect attempt of the first target of `toml`, as the sidecar makes it.
async fn attempt(toml: &str) -> Result<connect::Connection, String> {
    let config = Config::parse(toml, "test.toml".as_ref()).expect("test config is valid");
    let t = &config.targets[0];
    let prober = Prober::new(&t.probe, &t.address, t.tls.as_deref());
    connect::connect(&t.address, &prober, Limits::of(t), &t.keepalive)
        .await
        .map_err(|e| e.to_string())
}

fn tls(ca: &str, extra: &str) -> String {
    format!("tls = {{ ca_file = \"{ca}\" {extra} }}")
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs()
}

fn expected_not_after() -> u64 {
    let (y, m, d) = NOT_AFTER;
    let text = format!("{y:04}-{m:02}-{d:02}T00:00:00Z");
    unix_seconds(humantime::parse_rfc3339(&text).unwrap())
}

// === Redis ===

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_redis_is_healthy_with_its_ca_and_its_certificate_expiry_is_exposed_exactly() {
    let pki = Pki::new();
    let redis = blocking(|| TlsRedis::start(&pki, "good"));
    let toml = target(
        "cache",
        &redis.tls_addr(),
        &format!("probe = \"redis\"\n{CHECK}\n{}", tls(&pki.ca(), "")),
    );
    let config = Config::parse(&toml, "test.toml".as_ref()).unwrap();
    let rec = Recorder::new();
    let metrics = Arc::new(Metrics::new(&config).unwrap());
    let status = Arc::new(Status::new(&config));
    let observers = Observers::new()
        .with(rec.clone())
        .with(metrics.clone())
        .with(status.clone());
    let sup = Supervisor::start(&config, Arc::new(observers));
    rec.nth_event("cache", Event::Connect, 1, LIMIT).await;

    let want = expected_not_after();
    let scrape = String::from_utf8(metrics.encode().unwrap()).unwrap();
    let line = format!("tether_tls_cert_expiry_timestamp_seconds{{target=\"cache\"}} {want}");
    assert!(
        scrape.lines().any(|l| l == line),
        "no {line:?} in:\n{scrape}"
    );
    let shown = status.target("cache").unwrap().tls_not_after.unwrap();
    assert_eq!(unix_seconds(shown.0), want);
    assert_eq!(shown.to_string(), "2035-06-01T00:00:00.000Z");
    eprintln!("TLS redis up; certificate notAfter {shown} = {want}");
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_redis_with_a_wrong_ca_a_wrong_name_or_an_expired_certificate_fails_saying_which() {
    let pki = Pki::new();
    let good = blocking(|| TlsRedis::start(&pki, "good"));
    let expired = blocking(|| TlsRedis::start(&pki, "expired"));
    let other_ca = pki.path("other-ca.pem").display().to_string();
    let cases = [
        (good.tls_addr(), tls(&other_ca, ""), "unknown CA"),
        (
            good.tls_addr(),
            tls(&pki.ca(), ", server_name = \"db.example\""),
            "certificate is not valid for name db.example (it names localhost, 127.0.0.1)",
        ),
        (
            expired.tls_addr(),
            tls(&pki.ca(), ""),
            "certificate expired at 2021-01-01T00:00:00Z",
        ),
    ];
    for (addr, tls, says) in cases {
        let toml = target("cache", &addr, &format!("probe = \"redis\"\n{tls}"));
        let Err(e) = attempt(&toml).await else {
            panic!("{tls} against {addr} connected");
        };
        assert!(
            e.starts_with(&format!("redis probe {addr}: TLS handshake: ")) && e.contains(says),
            "{tls}: {e}"
        );
    }
    // `tether probe` takes the same settings from its flags.
    let addr = good.tls_addr();
    let ok = tether_process::probe(&[&addr, "--probe", "redis", "--tls", "--ca-file", &pki.ca()]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let wrong = tether_process::probe(&[
        &addr,
        "--probe",
        "redis",
        "--tls",
        "--ca-file",
        &pki.ca(),
        "--server-name",
        "db.example",
    ]);
    assert_eq!(wrong.status.code(), Some(1), "{wrong:?}");
    assert!(
        stdout(&wrong).contains("not valid for name db.example"),
        "{wrong:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_that_requires_client_certificates_accepts_the_configured_one_only() {
    let pki = Pki::new();
    let redis = blocking(|| TlsRedis::start_with(&pki, "good", "yes"));
    let addr = redis.tls_addr();
    let (cert, key) = (pki.path("good.crt"), pki.path("good.key"));
    let with_cert = tls(
        &pki.ca(),
        &format!(
            ", cert_file = \"{}\", key_file = \"{}\"",
            cert.display(),
            key.display()
        ),
    );
    let conn = attempt(&target(
        "cache",
        &addr,
        &format!("probe = \"redis\"\n{with_cert}"),
    ))
    .await
    .expect("the client certificate is accepted");
    assert!(conn.reusable);
    // Without one, TLS 1.3 finishes the handshake before the server says no: the
    // refusal arrives as the answer to the first command.
    let e = attempt(&target(
        "cache",
        &addr,
        &format!("probe = \"redis\"\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .unwrap_err();
    assert_eq!(
        e,
        format!("redis probe {addr}: received fatal alert: CertificateRequired")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_tls_redis_is_detected_within_the_check_and_a_killed_one_at_once() {
    let pki = Pki::new();
    let mut redis = blocking(|| TlsRedis::start(&pki, "good"));
    let toml = target(
        "cache",
        &redis.tls_addr(),
        &format!("probe = \"redis\"\n{CHECK}\n{}", tls(&pki.ca(), "")),
    );
    let rec = Recorder::new();
    let sup = crate::support::harness::watch(&toml, &rec);
    rec.nth_event("cache", Event::Connect, 1, LIMIT).await;

    let frozen = Instant::now();
    blocking(|| redis.server.stop());
    let (at, error) = rec.lost_since("cache", frozen, LIMIT).await;
    let after = at.duration_since(frozen);
    eprintln!("DETECTION tls redis SIGSTOP noticed after {after:?}: {error}");
    assert!(error.contains("no answer within 500ms"), "{error}");
    assert!(after < FROZEN_BOUND, "freeze noticed after {after:?}");
    blocking(|| redis.server.cont());
    rec.nth_event("cache", Event::Connect, 2, LIMIT).await;

    let killed = Instant::now();
    blocking(|| redis.server.kill());
    let (at, error) = rec.lost_since("cache", killed, LIMIT).await;
    let after = at.duration_since(killed);
    eprintln!("DETECTION tls redis SIGKILL noticed after {after:?}: {error}");
    assert!(after < KILL_BOUND, "kill noticed after {after:?} ({error})");
    blocking(|| redis.server.restart());
    rec.nth_event("cache", Event::Connect, 3, LIMIT).await;
    sup.shutdown().await;
}

// === tcp ===

#[tokio::test(flavor = "multi_thread")]
async fn a_tcp_target_with_tls_is_checked_by_the_handshake_and_a_plaintext_server_fails() {
    let pki = Pki::new();
    let redis = blocking(|| TlsRedis::start(&pki, "good"));
    let tls = tls(&pki.ca(), "");
    let conn = attempt(&target("edge", &redis.tls_addr(), &tls))
        .await
        .expect("the handshake succeeds");
    assert!(conn.not_after.is_some());
    // A plaintext redis reads the ClientHello as the start of a command and waits.
    let plain = redis.server.addr();
    let e = attempt(&target("edge", &plain, &tls)).await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "tcp probe {plain}: TLS handshake: no answer within 1s (a server that does not \
             speak TLS may be waiting for plain text)"
        )
    );
    // A plaintext server that answers anything is told apart at once.
    let (talker, task) = plaintext_server().await;
    let e = attempt(&target("edge", &talker, &tls)).await.unwrap_err();
    assert_eq!(
        e,
        format!(
            "tcp probe {talker}: TLS handshake: the server does not speak TLS (its answer is not a TLS record)"
        )
    );
    task.abort();
    let wrong = attempt(&target(
        "edge",
        &redis.tls_addr(),
        &self::tls(&pki.path("other-ca.pem").display().to_string(), ""),
    ))
    .await
    .unwrap_err();
    assert!(wrong.contains("unknown CA"), "{wrong}");
}

/// A server that answers whatever it is sent with a plain-text error line, as a
/// plaintext protocol server does to bytes it cannot parse.
async fn plaintext_server() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        for _ in 0..16 {
            let Ok((mut tcp, _)) = listener.accept().await else {
                return;
            };
            let mut buf = [0u8; 1024];
            if tcp.read(&mut buf).await.is_ok() {
                let _ = tcp
                    .write_all(b"-ERR Protocol error: expected text\r\n")
                    .await;
            }
        }
    });
    (addr, task)
}

// === HTTPS ===

#[tokio::test(flavor = "multi_thread")]
async fn an_https_server_is_healthy_with_its_ca_and_fails_with_another_ca_a_wrong_name_or_an_expired_certificate()
 {
    let pki = Pki::new();
    let (addr, server) = https_server(&pki, "good").await;
    let probe = "probe = { kind = \"http\", path = \"/healthz\" }";
    let conn = attempt(&target(
        "api",
        &addr,
        &format!("{probe}\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .expect("HTTPS answers 200");
    assert!(
        conn.reusable,
        "a keep-alive HTTPS connection carries the next check"
    );
    let other_ca = pki.path("other-ca.pem").display().to_string();
    let e = attempt(&target(
        "api",
        &addr,
        &format!("{probe}\n{}", tls(&other_ca, "")),
    ))
    .await
    .unwrap_err();
    assert!(
        e.starts_with(&format!("http probe {addr}: TLS handshake: ")),
        "{e}"
    );
    assert!(e.contains("unknown CA"), "{e}");
    let wrong_name = attempt(&target(
        "api",
        &addr,
        &format!(
            "{probe}\n{}",
            tls(&pki.ca(), ", server_name = \"api.example\"")
        ),
    ))
    .await
    .unwrap_err();
    assert!(
        wrong_name.contains("certificate is not valid for name api.example"),
        "{wrong_name}"
    );
    server.abort();
    let (expired_addr, expired) = https_server(&pki, "expired").await;
    let e = attempt(&target(
        "api",
        &expired_addr,
        &format!("{probe}\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("certificate expired at 2021-01-01T00:00:00Z"),
        "{e}"
    );
    expired.abort();
}

// === PostgreSQL ===

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_with_ssl_on_is_healthy_over_tls_with_and_without_a_session_and_says_why_a_wrong_ca_name_or_expiry_fails()
 {
    let pki = Pki::new();
    let (cert, key) = (pki.pem("good.crt"), pki.pem("good.key"));
    let pg = blocking(|| PostgresServer::start_with_tls(&cert, &key));
    let on = tls(&pki.ca(), "");
    let bare = attempt(&target(
        "db",
        &pg.addr(),
        &format!("probe = \"postgres\"\n{on}"),
    ))
    .await
    .expect("SSLRequest answered S and the handshake completes");
    assert!(bare.stream.as_ref().is_some_and(|s| s.is_tls()));
    let session = format!("probe = {{ kind = \"postgres\", user = \"{USER}\" }}\n{on}");
    let conn = attempt(&target("db", &pg.addr(), &session))
        .await
        .expect("a session over TLS answers pg_is_in_recovery()");
    assert_eq!(conn.role, Some(tether::probe::Role::Primary));
    assert_eq!(conn.not_after.map(unix_seconds), Some(expected_not_after()));
    // The server sees the session encrypted.
    let ssl = blocking(|| {
        pg.sql("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'tether'")
    });
    assert_eq!(ssl.trim(), "1", "tether's session is not listed as TLS");

    // What a wrong CA and a wrong name are told; an expired certificate below.
    let addr = pg.addr();
    let other_ca = pki.path("other-ca.pem").display().to_string();
    for (tls, says) in [
        (tls(&other_ca, ""), "unknown CA"),
        (
            tls(&pki.ca(), ", server_name = \"db.example\""),
            "certificate is not valid for name db.example",
        ),
    ] {
        let e = attempt(&target(
            "db",
            &addr,
            &format!("probe = \"postgres\"\n{tls}"),
        ))
        .await
        .unwrap_err();
        assert!(
            e.starts_with(&format!("postgres probe {addr}: TLS handshake: ")) && e.contains(says),
            "{tls}: {e}"
        );
    }
    drop(pg);
    let (cert, key) = (pki.pem("expired.crt"), pki.pem("expired.key"));
    let stale = blocking(|| PostgresServer::start_with_tls(&cert, &key));
    let e = attempt(&target(
        "db",
        &stale.addr(),
        &format!("probe = \"postgres\"\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .unwrap_err();
    assert!(
        e.contains("certificate expired at 2021-01-01T00:00:00Z"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_against_a_postgres_with_ssl_off_fails_saying_the_server_does_not_support_it() {
    let pki = Pki::new();
    let pg = blocking(PostgresServer::start);
    let addr = pg.addr();
    let e = attempt(&target(
        "db",
        &addr,
        &format!("probe = \"postgres\"\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "postgres probe {addr}: the server does not support TLS"
        )),
        "{e}"
    );
}

// === MySQL / MariaDB ===

#[tokio::test(flavor = "multi_thread")]
async fn a_mariadb_with_tls_is_reached_over_tls_after_its_greeting_and_one_without_says_so() {
    let pki = Pki::new();
    let (cert, key, ca) = (
        pki.path("good.crt").display().to_string(),
        pki.path("good.key").display().to_string(),
        pki.path("ca.pem").display().to_string(),
    );
    let with_tls = blocking(|| {
        MariadbServer::start_with(&[("ssl-cert", &cert), ("ssl-key", &key), ("ssl-ca", &ca)])
    });
    let conn = attempt(&target(
        "db",
        &with_tls.addr(),
        &format!("probe = \"mysql\"\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .expect("the greeting offers CLIENT_SSL and the handshake completes");
    assert!(conn.stream.as_ref().is_some_and(|s| s.is_tls()));
    assert_eq!(conn.not_after.map(unix_seconds), Some(expected_not_after()));

    let other = Pki::new();
    let e = attempt(&target(
        "db",
        &with_tls.addr(),
        &format!("probe = \"mysql\"\n{}", tls(&other.ca(), "")),
    ))
    .await
    .unwrap_err();
    assert!(e.contains("certificate is not trusted"), "{e}");

    // `tether probe` takes the same from its flags.
    let ca = pki.ca();
    let ok = tether_process::probe(&[
        &with_tls.addr(),
        "--probe",
        "mysql",
        "--tls",
        "--ca-file",
        &ca,
    ]);
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    let plain = blocking(MariadbServer::start);
    let addr = plain.addr();
    let e = attempt(&target(
        "db",
        &addr,
        &format!("probe = \"mysql\"\n{}", tls(&pki.ca(), "")),
    ))
    .await
    .unwrap_err();
    assert!(
        e.starts_with(&format!(
            "mysql probe {addr}: the server does not support TLS"
        )),
        "{e}"
    );
}

// === Expiry warning ===

#[tokio::test(flavor = "multi_thread")]
async fn a_certificate_nearer_its_expiry_than_warn_before_is_warned_of_once_a_day_not_per_connection()
 {
    let pki = Pki::new();
    let (addr, server, accepted) = hanging_up_tls_server(&pki, "soon").await;
    let dir = workdir("tls-warn");
    let config = dir.path().join("tether.toml");
    let toml = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[defaults]\nbackoff = {{ initial = \"50ms\", max = \"100ms\" }}\n\n{}",
        target("edge", &addr, &tls(&pki.ca(), ", warn_before = \"7d\""))
    );
    std::fs::write(&config, toml).unwrap();
    let tether = blocking(|| TetherProcess::run(&config, &[]));
    let warning = blocking(|| tether.wait_for("expires in", LIMIT));
    assert!(
        warning.contains("the TLS certificate of edge expires in 2days")
            || warning.contains("the TLS certificate of edge expires in"),
        "{warning}"
    );
    // The server hangs up after each handshake: wait for more connections, each
    // presenting the same certificate.
    let deadline = Instant::now() + LIMIT;
    while accepted.load(std::sync::atomic::Ordering::Relaxed) < 5 {
        assert!(
            Instant::now() < deadline,
            "too few reconnects:\n{}",
            tether.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines = tether.lines();
    let warnings = lines.iter().filter(|l| l.contains("expires in")).count();
    assert_eq!(warnings, 1, "{}", lines.join("\n"));
    eprintln!(
        "{} connections, 1 warning: {warning}",
        accepted.load(std::sync::atomic::Ordering::Relaxed)
    );
    blocking(|| tether.stop());
    server.abort();
}
