//! Protocol probes against real Redis, PostgreSQL, MariaDB and HTTP servers: what each
//! probe notices that a plain TCP connection cannot (a frozen server), how fast, and what
//! it must not mistake for an outage (servers closing unauthenticated sessions).
//!
//! Detection times are printed (`cargo test probes -- --nocapture`) as the median of
//! several runs; the assertions bound them generously, for a crowded CI machine.

use std::time::{Duration, Instant};

use tether::watch::machine::{Event, State};

use crate::support::TestServer;
use crate::support::harness::{Record, Recorder, watch};
use crate::support::http::{Framing, HttpServer};
use crate::support::mariadb::MariadbServer;
use crate::support::postgres::PostgresServer;
use crate::support::redis::RedisServer;
use crate::support::tether_process::{self, TetherProcess};
use crate::support::{Exchange, POLL_INTERVAL, workdir};
use crate::support::{blocking, stdout};

/// How many times each failure is provoked; the median is reported.
const RUNS: usize = 5;

/// Bound on any single wait for an event that must come.
const LIMIT: Duration = Duration::from_secs(30);

/// Settings for fast tests: a check every second with 500 ms to answer, and quick retries.
const FAST: &str = r#"connect_timeout = "500ms"
failure_threshold = 3
keepalive = { idle = "1s", interval = "1s", count = 3 }
backoff = { initial = "50ms", max = "200ms", multiplier = 2.0, jitter = 0.1 }"#;

/// A check every second with 500 ms to answer, for targets with a protocol probe.
const CHECK: &str = r#"check_interval = "1s"
check_timeout = "500ms""#;

/// A frozen server is noticed by the next check, due within one interval (1 s) and given
/// `check_timeout` (500 ms) to be answered: 1.5 s. The window allows for a loaded machine,
/// and is also how long the `tcp` target must stay blind.
const FROZEN_WINDOW: Duration = Duration::from_secs(4);

/// A closed or reset connection is noticed from the socket, without waiting for a check.
const KILL_BOUND: Duration = Duration::from_secs(1);

/// How long servers that close unauthenticated sessions are watched for a false `down`.
const HELD_FOR: Duration = Duration::from_secs(10);

/// A target named `probe` with the server's protocol probe, and a target named `tcp` on
/// the same server, to compare what each sees.
fn probe_and_tcp(addr: &str, probe: &str, extra: &str) -> String {
    format!(
        r#"
        [[targets]]
        name = "probe"
        address = "{addr}"
        probe = "{probe}"
        {FAST}
        {CHECK}
        {extra}

        [[targets]]
        name = "tcp"
        address = "{addr}"
        probe = "tcp"
        {FAST}
        {extra}
        "#
    )
}

/// The first lost connection of `target` reported at or after `since`: how long after
/// `since`, and why.
async fn lost_since(rec: &Recorder, target: &str, since: Instant) -> (Duration, String) {
    let (at, error) = rec.lost_since(target, since, LIMIT).await;
    (at.duration_since(since), error)
}

fn losses(rec: &Recorder, target: &str) -> Vec<String> {
    rec.of(target)
        .into_iter()
        .filter_map(|r| match r {
            Record::Lost { error, .. } => Some(error),
            _ => None,
        })
        .collect()
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn report(server: &str, what: &str, samples: &[Duration]) {
    eprintln!(
        "DETECTION {server} {what}: median {:?} over {} runs {samples:?}",
        median(samples),
        samples.len()
    );
}

// === SIGKILL and restart ===

/// Kills the server `RUNS` times: each death must be noticed from the socket at once, and
/// each restarted server picked up again.
async fn a_killed_server_is_detected_at_once_and_picked_up_after_restart(
    name: &str,
    mut server: impl TestServer + Send,
    probe: &str,
) {
    let rec = Recorder::new();
    let sup = watch(&probe_and_tcp(&server.addr(), probe, ""), &rec);
    rec.nth_event("probe", Event::Connect, 1, LIMIT).await;

    let (mut detected, mut picked_up) = (Vec::new(), Vec::new());
    for run in 0..RUNS {
        let killed = Instant::now();
        blocking(|| server.kill());
        let (after, error) = lost_since(&rec, "probe", killed).await;
        assert!(
            after < KILL_BOUND,
            "{name}: SIGKILL noticed after {after:?} ({error})"
        );
        detected.push(after);
        let (down, _) = rec
            .nth_event("probe", Event::Disconnect, run + 1, LIMIT)
            .await;
        assert_eq!(down.previous, State::Up);

        blocking(|| server.restart());
        let ready = Instant::now();
        let (_, up_at) = rec.nth_event("probe", Event::Connect, run + 2, LIMIT).await;
        // A probe may pass before the harness's own readiness check does (PostgreSQL
        // answers SSLRequest while it still refuses logins): that counts as zero.
        picked_up.push(up_at.saturating_duration_since(ready));
    }
    report(name, "SIGKILL noticed", &detected);
    report(
        name,
        "restart picked up (after the server was ready)",
        &picked_up,
    );
    for after in &picked_up {
        assert!(
            *after < Duration::from_secs(2),
            "{name}: restart picked up after {after:?}"
        );
    }
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_redis_is_detected_at_once_and_picked_up_after_restart() {
    let redis = blocking(RedisServer::start);
    a_killed_server_is_detected_at_once_and_picked_up_after_restart("redis", redis, "redis").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_postgres_is_detected_at_once_and_picked_up_after_restart() {
    let pg = blocking(PostgresServer::start);
    a_killed_server_is_detected_at_once_and_picked_up_after_restart("postgres", pg, "postgres")
        .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_mariadb_is_detected_at_once_and_picked_up_after_restart() {
    let mariadb = blocking(MariadbServer::start);
    a_killed_server_is_detected_at_once_and_picked_up_after_restart("mariadb", mariadb, "mysql")
        .await;
}

// === SIGSTOP ===

/// Freezes the server `RUNS` times: the protocol probe must notice within one interval
/// plus the timeout, while the `tcp` target, whose connection the kernel keeps alive,
/// notices nothing in the same window. Thawed, the server is picked up again.
async fn a_frozen_server_is_detected_by_its_probe_but_not_by_tcp(
    name: &str,
    mut server: impl TestServer + Send,
    probe: &str,
) {
    let rec = Recorder::new();
    let sup = watch(&probe_and_tcp(&server.addr(), probe, ""), &rec);
    rec.nth_event("probe", Event::Connect, 1, LIMIT).await;
    rec.nth_event("tcp", Event::Connect, 1, LIMIT).await;

    let mut detected = Vec::new();
    for run in 0..RUNS {
        let frozen = Instant::now();
        blocking(|| server.stop());
        let (after, error) = lost_since(&rec, "probe", frozen).await;
        assert!(
            error.contains("no answer within 500ms"),
            "{name}: unexpected reason {error:?}"
        );
        assert!(
            after < FROZEN_WINDOW,
            "{name}: freeze noticed after {after:?}"
        );
        detected.push(after);

        if run == 0 {
            // `tether probe` uses the same check, and the same bound.
            let out =
                tether_process::probe(&[&server.addr(), "--probe", probe, "--timeout", "500ms"]);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            assert!(stdout(&out).contains("no answer within 500ms"), "{out:?}");
        }

        // Watch the whole window: the tcp target must not notice the freeze in it.
        tokio::time::sleep_until((frozen + FROZEN_WINDOW).into()).await;
        let tcp_lost: Vec<_> = rec
            .of("tcp")
            .into_iter()
            .filter(|r| matches!(r, Record::Lost { at, .. } if *at >= frozen))
            .collect();
        assert!(
            tcp_lost.is_empty(),
            "{name}: the tcp target saw the freeze: {tcp_lost:?}"
        );
        assert_eq!(rec.state("tcp"), Some(State::Up));

        blocking(|| server.cont());
        rec.nth_event("probe", Event::Connect, run + 2, LIMIT).await;
    }
    report(name, "SIGSTOP noticed by the probe", &detected);
    eprintln!(
        "DETECTION {name} SIGSTOP noticed by tcp: never within {FROZEN_WINDOW:?}, in {RUNS} runs"
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_redis_is_detected_by_ping_but_not_by_tcp() {
    let redis = blocking(RedisServer::start);
    a_frozen_server_is_detected_by_its_probe_but_not_by_tcp("redis", redis, "redis").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_postgres_is_detected_by_sslrequest_but_not_by_tcp() {
    let pg = blocking(PostgresServer::start);
    a_frozen_server_is_detected_by_its_probe_but_not_by_tcp("postgres", pg, "postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_mariadb_is_detected_by_its_handshake_but_not_by_tcp() {
    // A long connect_timeout, so that MariaDB closing the tcp target's unauthenticated
    // connection (10 s by default) cannot be mistaken for the tcp target seeing the freeze.
    let mariadb = blocking(|| MariadbServer::start_with(&[("connect_timeout", "3600")]));
    a_frozen_server_is_detected_by_its_probe_but_not_by_tcp("mariadb", mariadb, "mysql").await;
}

// === Servers that close unauthenticated sessions ===

/// Three targets on a server that closes unauthenticated sessions after `timeout`: one
/// checked less often than that (so the server closes its held connections), one checked
/// more often (the check replaces the held connection first), and a `tcp` one. For
/// `HELD_FOR`, none of them may leave `up`, and the server must have closed connections
/// (or the scenario proved nothing).
async fn closed_unauthenticated_sessions_raise_no_false_down(name: &str, addr: &str, probe: &str) {
    let config = format!(
        r#"
        [[targets]]
        name = "seldom"
        address = "{addr}"
        probe = "{probe}"
        connect_timeout = "500ms"
        check_interval = "5s"
        keepalive = {{ idle = "5s", interval = "5s", count = 3 }}

        [[targets]]
        name = "often"
        address = "{addr}"
        probe = "{probe}"
        connect_timeout = "500ms"
        check_interval = "1s"
        keepalive = {{ idle = "1s", interval = "1s", count = 3 }}

        [[targets]]
        name = "tcp"
        address = "{addr}"
        connect_timeout = "500ms"
        "#
    );
    let rec = Recorder::new();
    let sup = watch(&config, &rec);
    for target in ["seldom", "often", "tcp"] {
        rec.nth_event(target, Event::Connect, 1, LIMIT).await;
    }
    // The scenario is time itself: watch the targets for the whole period.
    tokio::time::sleep(HELD_FOR).await;
    for target in ["seldom", "often", "tcp"] {
        assert_eq!(
            rec.events(target),
            [Event::Connect],
            "{name}: {target} left up; records: {:#?}",
            rec.of(target)
        );
        eprintln!(
            "{name}: {target} reconnected {} times in {HELD_FOR:?} without leaving up",
            losses(&rec, target).len()
        );
    }
    for target in ["seldom", "tcp"] {
        let closed = losses(&rec, target);
        assert!(
            closed.len() >= 3,
            "{name}: the server closed {target}'s connection only {} times in {HELD_FOR:?}: {closed:?}",
            closed.len()
        );
    }
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_with_a_1s_authentication_timeout_produces_no_false_down() {
    let pg = blocking(|| PostgresServer::start_with(&[("authentication_timeout", "1s")]));
    closed_unauthenticated_sessions_raise_no_false_down("postgres", &pg.addr(), "postgres").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn mariadb_with_a_2s_connect_timeout_produces_no_false_down() {
    let mariadb = blocking(|| MariadbServer::start_with(&[("connect_timeout", "2")]));
    closed_unauthenticated_sessions_raise_no_false_down("mariadb", &mariadb.addr(), "mysql").await;
}

// === HTTP ===

#[tokio::test(flavor = "multi_thread")]
async fn an_http_service_that_starts_answering_503_is_detected_within_an_interval() {
    let http = HttpServer::start(Framing::KeepAlive).await;
    let rec = Recorder::new();
    let config = format!(
        r#"
        [[targets]]
        name = "web"
        address = "{}"
        probe = {{ kind = "http", path = "/healthz", host = "web.internal" }}
        {FAST}
        {CHECK}
        "#,
        http.addr()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("web", Event::Connect, 1, LIMIT).await;

    let mut detected = Vec::new();
    for run in 0..RUNS {
        let broken = Instant::now();
        http.answer(503);
        let (after, error) = lost_since(&rec, "web", broken).await;
        assert!(
            error.ends_with("answered 503 X, expected 200"),
            "unexpected reason {error:?}"
        );
        assert!(after < FROZEN_WINDOW, "503 noticed after {after:?}");
        detected.push(after);
        let (down, _) = rec
            .nth_event("web", Event::Disconnect, run + 1, LIMIT)
            .await;
        assert!(
            down.last_error
                .unwrap()
                .to_string()
                .contains("answered 503")
        );

        http.answer(200);
        rec.nth_event("web", Event::Connect, run + 2, LIMIT).await;
    }
    report("http", "503 noticed", &detected);

    let heads = http.request_heads();
    assert!(
        heads[0].starts_with("GET /healthz HTTP/1.1\r\n"),
        "{heads:?}"
    );
    assert!(heads[0].contains("\r\nHost: web.internal\r\n"), "{heads:?}");
    sup.shutdown().await;
}

/// Serves `framing` and watches it until it has answered `checks` requests; returns the
/// server for its counters. The target must stay up throughout.
async fn watch_http_until(framing: Framing, checks: usize) -> HttpServer {
    let http = HttpServer::start(framing).await;
    let rec = Recorder::new();
    let config = format!(
        "[[targets]]\nname = \"web\"\naddress = \"{}\"\nprobe = \"http\"\n{FAST}\n{CHECK}\n",
        http.addr()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("web", Event::Connect, 1, LIMIT).await;
    let deadline = Instant::now() + LIMIT;
    while http.requests() < checks {
        assert!(
            Instant::now() < deadline,
            "only {} checks in {LIMIT:?}",
            http.requests()
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    sup.shutdown().await;
    assert_eq!(rec.events("web"), [Event::Connect], "{:#?}", rec.of("web"));
    assert_eq!(losses(&rec, "web"), Vec::<String>::new());
    http
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_keep_alive_service_is_checked_on_the_one_held_connection() {
    let http = watch_http_until(Framing::KeepAlive, 4).await;
    assert_eq!(http.connections(), 1, "requests: {}", http.requests());

    let chunked = watch_http_until(Framing::Chunked, 4).await;
    assert_eq!(chunked.connections(), 1, "requests: {}", chunked.requests());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_http_service_that_closes_after_each_answer_gets_one_connection_per_check() {
    let http = watch_http_until(Framing::Close, 4).await;
    // Not a reconnect storm: one connection per check, and no connection held in between
    // (so the server's closing it is no lost connection either).
    assert_eq!(http.connections(), http.requests());
}

// === Redis: -LOADING and authentication ===

/// Sends one command to a test Redis and returns the first line of its reply.
fn redis_command(port: u16, args: &[&str]) -> String {
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
    let mut exchange = Exchange::connect(port, Duration::from_secs(10)).unwrap();
    exchange.send(command.as_bytes()).unwrap();
    let reply = exchange.receive_until(b"\r\n", 512).unwrap();
    String::from_utf8(reply).unwrap().trim_end().to_owned()
}

/// Makes the server require `password`, as a production Redis would.
fn require_password(port: u16, password: &str) {
    assert_eq!(
        redis_command(port, &["CONFIG", "SET", "requirepass", password]),
        "+OK"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_loading_redis_is_unhealthy_until_its_dataset_is_in_memory() {
    let primary = blocking(RedisServer::start);
    let replica = blocking(RedisServer::start);
    // A dataset the replica takes about two seconds (longer than a check interval) to load, during which it keeps
    // answering clients, with -LOADING.
    let filled = redis_command(
        primary.port(),
        &[
            "EVAL",
            "for i = 1, 20000 do redis.call('SET', 'key' .. i, i) end return 1",
            "0",
        ],
    );
    assert_eq!(filled, ":1");
    // Send the dataset at once rather than after the default five-second grace.
    assert_eq!(
        redis_command(
            primary.port(),
            &["CONFIG", "SET", "repl-diskless-sync-delay", "0"]
        ),
        "+OK"
    );
    for (key, value) in [
        ("key-load-delay", "100"),
        ("loading-process-events-interval-bytes", "1024"),
    ] {
        assert_eq!(
            redis_command(replica.port(), &["CONFIG", "SET", key, value]),
            "+OK"
        );
    }

    let rec = Recorder::new();
    let config = format!(
        "[[targets]]\nname = \"replica\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\n{CHECK}\n",
        replica.addr()
    );
    let sup = watch(&config, &rec);
    rec.nth_event("replica", Event::Connect, 1, LIMIT).await;

    // A full resynchronisation makes the replica load the primary's dataset.
    let started = Instant::now();
    let port = primary.port().to_string();
    assert_eq!(
        redis_command(replica.port(), &["REPLICAOF", "127.0.0.1", &port]),
        "+OK"
    );
    let (after, error) = lost_since(&rec, "replica", started).await;
    assert!(
        error.ends_with("PING answered -LOADING Redis is loading the dataset in memory"),
        "unexpected reason {error:?}"
    );
    let (down, _) = rec.nth_event("replica", Event::Disconnect, 1, LIMIT).await;
    assert!(
        down.last_error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("-LOADING"),
        "{down:?}"
    );
    let (_, up_at) = rec.nth_event("replica", Event::Connect, 2, LIMIT).await;
    eprintln!(
        "redis: loading noticed after {after:?}, up again {:?} after the resync began",
        up_at.duration_since(started)
    );
    sup.shutdown().await;
}

// === Redis authentication, through the real binary ===

#[tokio::test(flavor = "multi_thread")]
async fn redis_auth_takes_the_password_from_the_environment_and_never_logs_it() {
    const PASSWORD: &str = "correct-horse-battery";
    const WRONG: &str = "wrong-staple";
    let redis = blocking(RedisServer::start);
    require_password(redis.port(), PASSWORD);

    let dir = workdir("tether-config");
    let config = dir.path().join("tether.toml");
    let addr = redis.addr();
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen = "127.0.0.1:0"

            [[targets]]
            name = "authed"
            address = "{addr}"
            probe = {{ kind = "redis", password_env = "TEST_REDIS_PASSWORD" }}

            [[targets]]
            name = "wrong"
            address = "{addr}"
            probe = {{ kind = "redis", password_env = "TEST_REDIS_WRONG" }}

            [[targets]]
            name = "unset"
            address = "{addr}"
            probe = {{ kind = "redis", password_env = "TEST_REDIS_UNSET" }}

            [[targets]]
            name = "anonymous"
            address = "{addr}"
            probe = "redis"
            "#
        ),
    )
    .unwrap();
    let tether = TetherProcess::spawn({
        let mut command = tether_process::run_command(&config, &["--log-format", "json"]);
        command.envs([
            ("TEST_REDIS_PASSWORD", PASSWORD),
            ("TEST_REDIS_WRONG", WRONG),
        ]);
        command
    });
    let limit = Duration::from_secs(10);
    blocking(|| {
        tether.wait_for("authed is up (connect)", limit);
        // -NOAUTH: the server answered; a password is the application's business.
        tether.wait_for("anonymous is up (connect)", limit);
        let wrong = tether.wait_for("wrong is down (disconnect)", limit);
        assert!(wrong.contains("AUTH refused: -WRONGPASS"), "{wrong}");
        let unset = tether.wait_for("unset is down (disconnect)", limit);
        assert!(
            unset.contains("no password: environment variable TEST_REDIS_UNSET: not set"),
            "{unset}"
        );
    });
    let (status, log) = blocking(|| tether.stop());
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        !log.contains(PASSWORD),
        "the password leaked into the log:\n{log}"
    );
    assert!(
        !log.contains(WRONG),
        "the password leaked into the log:\n{log}"
    );
}

// === tether probe ===

#[tokio::test(flavor = "multi_thread")]
async fn tether_probe_speaks_the_protocol_it_is_given() {
    let redis = blocking(RedisServer::start);
    let http = HttpServer::start(Framing::KeepAlive).await;

    let out = tether_process::probe(&[&redis.addr(), "--probe", "redis"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout(&out).contains("is healthy"), "{out:?}");

    let out = tether_process::probe(&[&http.addr(), "--probe", "http"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    http.answer(503);
    let out = tether_process::probe(&[&http.addr(), "--probe", "http"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        stdout(&out).contains("answered 503 X, expected 200"),
        "{out:?}"
    );

    // The path and the expected status come from the command line; they mean nothing
    // to other probes, and saying them there is a usage error.
    let out = tether_process::probe(&[
        &http.addr(),
        "--probe",
        "http",
        "--path",
        "/healthz",
        "--expect-status",
        "503",
    ]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        http.request_heads()
            .last()
            .unwrap()
            .starts_with("GET /healthz HTTP/1.1")
    );
    let out = tether_process::probe(&[&redis.addr(), "--probe", "redis", "--path", "/healthz"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // The wrong protocol is not healthy: HTTP is not Redis, and Redis does not greet.
    let out = tether_process::probe(&[&http.addr(), "--probe", "redis"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let out = tether_process::probe(&[&redis.addr(), "--probe", "mysql", "--timeout", "300ms"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout(&out).contains("no answer within 300ms"), "{out:?}");
}

// === Check interval ===

/// How many `PING`s the server has answered since it started, from `INFO commandstats`.
fn pings_answered(port: u16) -> u64 {
    let mut exchange = Exchange::connect(port, Duration::from_secs(10)).unwrap();
    exchange
        .send(b"*2\r\n$4\r\nINFO\r\n$12\r\ncommandstats\r\n")
        .unwrap();
    let header = exchange.receive_until(b"\r\n", 64).unwrap();
    let len: usize = String::from_utf8_lossy(&header[1..])
        .trim_end()
        .parse()
        .expect("INFO answers a bulk string");
    let mut body = vec![0; len + 2];
    exchange.receive_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body);
    body.lines()
        .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
        .map_or(0, |rest| {
            rest.split(',').next().unwrap().parse().expect("a count")
        })
}

#[tokio::test(flavor = "multi_thread")]
async fn check_interval_sets_how_often_the_server_is_asked() {
    let fast = blocking(RedisServer::start);
    let slow = blocking(RedisServer::start);
    let config = format!(
        r#"
        [[targets]]
        name = "fast"
        address = "{}"
        probe = "redis"
        check_interval = "100ms"

        [[targets]]
        name = "slow"
        address = "{}"
        probe = "redis"
        check_interval = "1s"
        "#,
        fast.addr(),
        slow.addr()
    );
    let rec = Recorder::new();
    let sup = watch(&config, &rec);
    rec.nth_event("fast", Event::Connect, 1, LIMIT).await;
    rec.nth_event("slow", Event::Connect, 1, LIMIT).await;
    let (before_fast, before_slow) = (pings_answered(fast.port()), pings_answered(slow.port()));
    let started = Instant::now();
    // Neither keepalive nor the default check interval (2 s) could ask 20 times in 15 s.
    let deadline = started + Duration::from_secs(15);
    while pings_answered(fast.port()) - before_fast < 20 {
        assert!(
            Instant::now() < deadline,
            "the 100ms target was asked only {} times in 15 s",
            pings_answered(fast.port()) - before_fast
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    let elapsed = started.elapsed();
    let asked_fast = pings_answered(fast.port()) - before_fast;
    let asked_slow = pings_answered(slow.port()) - before_slow;
    eprintln!("in {elapsed:?}: {asked_fast} checks at 100ms, {asked_slow} at 1s");
    assert!(
        asked_slow <= elapsed.as_secs() + 2,
        "the 1s target was asked {asked_slow} times in {elapsed:?}"
    );
    assert!(
        asked_slow * 4 < asked_fast,
        "{asked_fast} checks at 100ms against {asked_slow} at 1s"
    );
    sup.shutdown().await;
    assert_eq!(rec.events("fast"), [Event::Connect]);
    assert_eq!(rec.events("slow"), [Event::Connect]);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_redis_password_file_is_used_from_the_next_connection_after_sighup() {
    let redis = blocking(RedisServer::start);
    require_password(redis.port(), "first-password-3b1");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("redis-password");
    std::fs::write(&password, "first-password-3b1\n").unwrap();
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen = "127.0.0.1:0"

            [[targets]]
            name = "cache"
            address = "{}"
            probe = {{ kind = "redis", password_file = "{}" }}
            {FAST}
            {CHECK}
            "#,
            redis.addr(),
            password.display()
        ),
    )
    .unwrap();
    let tether = TetherProcess::run(&config, &[]);
    let limit = Duration::from_secs(10);
    blocking(|| tether.wait_for("cache is up (connect)", limit));

    // The secret rotates: the server and the mounted file change, then tether is told.
    assert_eq!(
        redis_command(redis.port(), &["AUTH", "first-password-3b1"]),
        "+OK"
    );
    let mut exchange = Exchange::connect(redis.port(), limit).unwrap();
    let rotate = b"*2\r\n$4\r\nAUTH\r\n$18\r\nfirst-password-3b1\r\n*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n$19\r\nsecond-password-3b1\r\n";
    exchange.send(rotate).unwrap();
    assert_eq!(exchange.receive_until(b"\r\n", 64).unwrap(), b"+OK\r\n");
    assert_eq!(exchange.receive_until(b"\r\n", 64).unwrap(), b"+OK\r\n");
    std::fs::write(&password, "second-password-3b1\n").unwrap();
    tether.signal(nix::sys::signal::Signal::SIGHUP);
    blocking(|| tether.wait_for("config reloaded", limit));
    // The held connection is cut: its replacement must log in with the new password.
    let received = || -> u64 {
        let mut e = Exchange::connect(redis.port(), limit).unwrap();
        e.send(b"*2\r\n$4\r\nAUTH\r\n$19\r\nsecond-password-3b1\r\n*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
            .unwrap();
        assert_eq!(e.receive_until(b"\r\n", 64).unwrap(), b"+OK\r\n");
        let stats = e.receive_until(b"rejected_connections", 8192).unwrap();
        String::from_utf8_lossy(&stats)
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let before = received();
    exchange
        .send(b"*4\r\n$6\r\nCLIENT\r\n$4\r\nKILL\r\n$4\r\nTYPE\r\n$6\r\nnormal\r\n")
        .unwrap();
    assert_eq!(
        exchange.receive_until(b"\r\n", 64).unwrap(),
        b":1\r\n",
        "tether's held connection, and only it, was cut"
    );
    blocking(|| crate::support::poll(limit, "tether connected again", || received() > before + 1));
    // Checks go on over the new connection (one a second) without an outage.
    blocking(|| std::thread::sleep(Duration::from_secs(3)));
    let log = tether.log();
    assert!(!log.contains("cache is down"), "{log}");
    assert!(!log.contains("second-password-3b1"), "{log}");
    drop(tether);
}
