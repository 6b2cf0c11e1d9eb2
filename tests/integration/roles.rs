//! Targets learn their replication role on the held connection, at every check: Redis
//! through `ROLE`, PostgreSQL through `SELECT pg_is_in_recovery()` in a logged-in session.
//! The role is reported before the transition of the check that learned it, turns
//! unknown when the connection goes, and follows a promotion within one check interval.
//!
//! Promotion times are printed (`cargo test roles -- --nocapture`); the assertions bound
//! them generously, for a crowded CI machine.

use std::time::{Duration, Instant};

use tether::probe::Role;
use tether::watch::machine::{Event, State};

use crate::support::TestServer;
use crate::support::blocking;
use crate::support::harness::{Record, Recorder, watch};
use crate::support::postgres::{Pair, PostgresServer};
use crate::support::redis::{self, RedisServer};

/// Bound on any single wait for a report that must come.
const LIMIT: Duration = Duration::from_secs(30);

/// Checks every 500 ms with 400 ms to answer: a promotion is seen within 500 ms.
const CHECK_INTERVAL: Duration = Duration::from_millis(500);
const SETTINGS: &str = r#"check_interval = "500ms"
check_timeout = "400ms"
connect_timeout = "500ms"
backoff = { initial = "50ms", max = "200ms", multiplier = 2.0, jitter = 0.1 }"#;

/// A promotion must be seen within one check interval; the margin is for a loaded machine.
const PROMOTION_BOUND: Duration = Duration::from_secs(3);

/// A frozen session is noticed by the next check: due within one interval, given
/// `check_timeout` to be answered (900 ms); the margin is for a loaded machine.
const FROZEN_BOUND: Duration = Duration::from_secs(3);

/// A target `name` on `addr` with `probe` (bare name or inline table).
fn target(name: &str, addr: &str, probe: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\naddress = \"{addr}\"\nprobe = {probe}\n{SETTINGS}\n")
}

/// Asserts that the first role the target reported came before its first `connect`.
fn role_came_before_up(rec: &Recorder, name: &str, role: Role) {
    let records = rec.of(name);
    let role_at = records
        .iter()
        .position(|r| matches!(r, Record::Role { role: Some(r), .. } if *r == role));
    let up_at = records
        .iter()
        .position(|r| matches!(r, Record::Transition { t, .. } if t.event == Event::Connect));
    assert!(
        matches!((role_at, up_at), (Some(r), Some(u)) if r < u),
        "{name}: the role must be reported before the target turns up: {records:#?}"
    );
}

// === Redis ===

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_master_is_primary_and_its_replica_turns_primary_when_promoted() {
    let master = blocking(RedisServer::start);
    let replica = blocking(|| redis::replica_of(&master, &[]));
    let rec = Recorder::new();
    let toml = [
        target("master", &master.addr(), "\"redis\""),
        target("replica", &replica.addr(), "\"redis\""),
    ]
    .concat();
    let start = Instant::now();
    let _sup = watch(&toml, &rec);
    rec.role_since("master", Some(Role::Primary), start, LIMIT)
        .await;
    rec.role_since("replica", Some(Role::Replica), start, LIMIT)
        .await;
    rec.nth_event("master", Event::Connect, 1, LIMIT).await;
    rec.nth_event("replica", Event::Connect, 1, LIMIT).await;
    role_came_before_up(&rec, "master", Role::Primary);
    role_came_before_up(&rec, "replica", Role::Replica);

    let promoted = Instant::now();
    assert_eq!(
        blocking(|| redis::command(replica.port(), &["REPLICAOF", "NO", "ONE"])),
        "+OK"
    );
    let seen = rec
        .role_since("replica", Some(Role::Primary), promoted, LIMIT)
        .await;
    let after = seen - promoted;
    println!(
        "redis: REPLICAOF NO ONE seen as primary after {after:?} (check interval {CHECK_INTERVAL:?})"
    );
    assert!(after < PROMOTION_BOUND, "promotion seen after {after:?}");
    assert_eq!(rec.state("replica"), Some(State::Up));
    assert_eq!(
        rec.events("replica"),
        [Event::Connect],
        "a role change is no transition"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_without_role_stays_healthy_on_ping_with_its_role_unknown() {
    let redis = blocking(|| RedisServer::start_with(&["--rename-command", "ROLE", ""]));
    asks_ping_alone_after_the_first_refusal(&redis).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_user_without_permission_for_role_stays_healthy_on_ping() {
    let redis = blocking(RedisServer::start);
    assert_eq!(
        blocking(|| redis::command(redis.port(), &["ACL", "SETUSER", "default", "-role"])),
        "+OK"
    );
    asks_ping_alone_after_the_first_refusal(&redis).await;
}

/// Watches a Redis that refuses `ROLE`: the target is up with its role unknown, and
/// checks go on with `PING` alone (the pings grow while the refused `ROLE` stays the one
/// of the first check).
async fn asks_ping_alone_after_the_first_refusal(redis: &RedisServer) {
    let rec = Recorder::new();
    let _sup = watch(&target("cache", &redis.addr(), "\"redis\""), &rec);
    rec.nth_event("cache", Event::Connect, 1, LIMIT).await;
    let stats = |port| {
        let info = redis::info(port, "stats");
        let errors = info
            .lines()
            .find_map(|l| l.strip_prefix("total_error_replies:"))
            .map(|v| v.trim().parse::<u64>().unwrap());
        let pings = redis::info(port, "commandstats")
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_ping:calls="))
            .map(|v| v.split(',').next().unwrap().parse::<u64>().unwrap());
        (errors.unwrap_or(0), pings.unwrap_or(0))
    };
    let port = redis.port();
    // The readiness PING of the test harness, then three checks.
    crate::support::eventually(LIMIT, "three checks", || async {
        (blocking(|| stats(port)).1 >= 4).then_some(())
    })
    .await;
    let (errors, pings) = blocking(|| stats(port));
    assert_eq!(
        errors, 1,
        "ROLE is asked once, then PING alone ({pings} pings)"
    );
    assert_eq!(rec.state("cache"), Some(State::Up));
    assert!(
        rec.roles("cache").is_empty(),
        "role stays unknown: {:?}",
        rec.roles("cache")
    );
    assert!(
        !rec.of("cache")
            .iter()
            .any(|r| matches!(r, Record::Lost { .. })),
        "{:#?}",
        rec.of("cache")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_with_requirepass_reports_its_role_to_the_right_password() {
    const PASSWORD: &str = "roles-redis-pass-5b8e";
    let redis = blocking(RedisServer::start);
    assert_eq!(
        blocking(|| redis::command(redis.port(), &["CONFIG", "SET", "requirepass", PASSWORD])),
        "+OK"
    );
    let dir = crate::support::workdir("redis-role-pass");
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{PASSWORD}\n")).unwrap();
    let probe = format!(
        "{{ kind = \"redis\", password_file = \"{}\" }}",
        file.display()
    );
    let rec = Recorder::new();
    let start = Instant::now();
    let _sup = watch(&target("cache", &redis.addr(), &probe), &rec);
    rec.role_since("cache", Some(Role::Primary), start, LIMIT)
        .await;
    rec.nth_event("cache", Event::Connect, 1, LIMIT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_lost_redis_connection_turns_the_role_unknown_before_the_target_goes_down() {
    let mut redis = blocking(RedisServer::start);
    let rec = Recorder::new();
    let _sup = watch(&target("cache", &redis.addr(), "\"redis\""), &rec);
    rec.nth_event("cache", Event::Connect, 1, LIMIT).await;
    let killed = Instant::now();
    blocking(|| redis.kill());
    rec.role_since("cache", None, killed, LIMIT).await;
    rec.nth_event("cache", Event::Disconnect, 1, LIMIT).await;
    let records = rec.of("cache");
    let unknown = records
        .iter()
        .position(|r| matches!(r, Record::Role { role: None, .. }))
        .unwrap();
    let down = records
        .iter()
        .position(|r| matches!(r, Record::Transition { t, .. } if t.event == Event::Disconnect))
        .unwrap();
    assert!(unknown < down, "{records:#?}");
}

// === PostgreSQL sessions ===

/// A `postgres` probe table logging in as `user`, with the password in `file` if any.
fn session(user: &str, password_file: Option<&std::path::Path>) -> String {
    match password_file {
        None => format!("{{ kind = \"postgres\", user = \"{user}\", database = \"postgres\" }}"),
        Some(f) => format!(
            "{{ kind = \"postgres\", user = \"{user}\", database = \"postgres\", password_file = \"{}\" }}",
            f.display()
        ),
    }
}

/// Writes `password` to a file in `dir`, as a mounted Secret would hold it.
fn password_file(dir: &tempfile::TempDir, name: &str, password: &str) -> std::path::PathBuf {
    let path = dir.path().join(name);
    std::fs::write(&path, format!("{password}\n")).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_session_logs_in_with_trust_cleartext_md5_and_scram_and_reports_primary() {
    const PASSWORD: &str = "roles-pg-pass-0c41";
    let pair = blocking(Pair::shared);
    let pg = &pair.primary;
    blocking(|| {
        pg.sql(&format!(
            "CREATE ROLE auth_trust LOGIN; \
             CREATE ROLE auth_clear LOGIN PASSWORD '{PASSWORD}'; \
             CREATE ROLE auth_scram LOGIN PASSWORD '{PASSWORD}'; \
             SET password_encryption = 'md5'; \
             CREATE ROLE auth_md5 LOGIN PASSWORD '{PASSWORD}';"
        ));
        pg.hba_first(&[
            "host all auth_trust 127.0.0.1/32 trust",
            "host all auth_clear 127.0.0.1/32 password",
            "host all auth_md5 127.0.0.1/32 md5",
            "host all auth_scram 127.0.0.1/32 scram-sha-256",
        ]);
    });
    let dir = crate::support::workdir("pg-role-pass");
    let file = password_file(&dir, "password", PASSWORD);
    let users = ["auth_trust", "auth_clear", "auth_md5", "auth_scram"];
    let toml: String = users
        .iter()
        .map(|u| {
            let f = (*u != "auth_trust").then_some(file.as_path());
            target(u, &pg.addr(), &session(u, f))
        })
        .collect();
    let rec = Recorder::new();
    let start = Instant::now();
    let _sup = watch(&toml, &rec);
    for user in users {
        rec.role_since(user, Some(Role::Primary), start, LIMIT)
            .await;
        rec.nth_event(user, Event::Connect, 1, LIMIT).await;
        role_came_before_up(&rec, user, Role::Primary);
    }
    let methods = blocking(|| {
        pg.sql(
            "SELECT string_agg(usename, ',' ORDER BY usename) FROM pg_stat_activity \
             WHERE application_name = 'tether' AND usename LIKE 'auth_%'",
        )
    });
    assert_eq!(
        methods, "auth_clear,auth_md5,auth_scram,auth_trust",
        "one session each"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_postgres_password_is_a_failed_attempt_that_names_the_failure_and_never_the_password()
 {
    const WRONG: &str = "roles-pg-wrong-7d2a";
    let pair = blocking(Pair::shared);
    let pg = &pair.primary;
    blocking(|| {
        pg.sql("CREATE ROLE wrong_scram LOGIN PASSWORD 'the-right-one'");
        pg.hba_first(&["host all wrong_scram 127.0.0.1/32 scram-sha-256"]);
    });
    let dir = crate::support::workdir("pg-role-wrong");
    let file = password_file(&dir, "password", WRONG);
    let rec = Recorder::new();
    let _sup = watch(
        &target("db", &pg.addr(), &session("wrong_scram", Some(&file))),
        &rec,
    );
    let error = rec
        .until("db", LIMIT, "failed attempt", |records| {
            records.iter().find_map(|r| match r {
                Record::Transition { t, .. } => t.last_error.as_ref().map(|e| e.to_string()),
                _ => None,
            })
        })
        .await;
    assert!(
        error.contains("login as \"wrong_scram\" to database \"postgres\" refused: FATAL 28P01 password authentication failed"),
        "{error}"
    );
    assert!(!error.contains(WRONG), "{error}");
    assert!(rec.roles("db").is_empty(), "{:?}", rec.roles("db"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_postgres_streaming_replica_reports_replica_and_its_primary_primary() {
    let pair = blocking(Pair::shared);
    let toml = [
        target("primary", &pair.primary.addr(), &session("postgres", None)),
        target("replica", &pair.replica.addr(), &session("postgres", None)),
        target("bare", &pair.replica.addr(), "\"postgres\""),
    ]
    .concat();
    let rec = Recorder::new();
    let start = Instant::now();
    let _sup = watch(&toml, &rec);
    rec.role_since("primary", Some(Role::Primary), start, LIMIT)
        .await;
    rec.role_since("replica", Some(Role::Replica), start, LIMIT)
        .await;
    rec.nth_event("bare", Event::Connect, 1, LIMIT).await;
    assert!(
        rec.roles("bare").is_empty(),
        "without user, no role: {:?}",
        rec.roles("bare")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_postgres_session_is_a_lost_connection_reconnected_at_once() {
    let pair = blocking(Pair::shared);
    let pg = &pair.primary;
    blocking(|| pg.sql("CREATE ROLE terminated_session LOGIN"));
    let rec = Recorder::new();
    let start = Instant::now();
    let _sup = watch(
        &target("db", &pg.addr(), &session("terminated_session", None)),
        &rec,
    );
    rec.role_since("db", Some(Role::Primary), start, LIMIT)
        .await;
    rec.nth_event("db", Event::Connect, 1, LIMIT).await;
    let terminated = Instant::now();
    let done = blocking(|| {
        pg.sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
             WHERE usename = 'terminated_session'",
        )
    });
    assert_eq!(done, "1");
    let (at, error) = rec.lost_since("db", terminated, LIMIT).await;
    println!(
        "postgres: pg_terminate_backend noticed after {:?}",
        at - terminated
    );
    assert!(
        error.contains("server ended the session: FATAL 57P01 terminating connection due to administrator command"),
        "{error}"
    );
    rec.role_since("db", Some(Role::Primary), at, LIMIT).await;
    assert_eq!(
        rec.events("db"),
        [Event::Connect],
        "reconnected without a down"
    );
    assert_eq!(
        rec.roles("db"),
        [Some(Role::Primary), None, Some(Role::Primary)]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_promoted_postgres_replica_reports_primary_within_one_check_interval() {
    let pair = blocking(Pair::start);
    let rec = Recorder::new();
    let start = Instant::now();
    let _sup = watch(
        &target("replica", &pair.replica.addr(), &session("postgres", None)),
        &rec,
    );
    rec.role_since("replica", Some(Role::Replica), start, LIMIT)
        .await;
    blocking(|| pair.replica.promote());
    let promoted = Instant::now();
    let seen = rec
        .role_since(
            "replica",
            Some(Role::Primary),
            promoted - CHECK_INTERVAL,
            LIMIT,
        )
        .await;
    let after = seen.saturating_duration_since(promoted);
    println!(
        "postgres: promotion seen as primary {after:?} after pg_promote() returned (check interval {CHECK_INTERVAL:?})"
    );
    assert!(after < PROMOTION_BOUND, "promotion seen after {after:?}");
    assert!(
        !rec.of("replica")
            .iter()
            .any(|r| matches!(r, Record::Lost { .. })),
        "the session outlives the promotion: {:#?}",
        rec.of("replica")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_postgres_session_is_detected_within_interval_and_timeout() {
    let mut pg = blocking(PostgresServer::start);
    let rec = Recorder::new();
    let start = Instant::now();
    let _sup = watch(&target("db", &pg.addr(), &session("postgres", None)), &rec);
    rec.role_since("db", Some(Role::Primary), start, LIMIT)
        .await;
    let frozen = Instant::now();
    blocking(|| pg.stop());
    let (at, error) = rec.lost_since("db", frozen, LIMIT).await;
    let after = at - frozen;
    blocking(|| pg.cont());
    println!("postgres: frozen session detected after {after:?} (interval 500ms + timeout 400ms)");
    assert!(after < FROZEN_BOUND, "detected after {after:?}: {error}");
    assert!(error.contains("no answer within 400ms"), "{error}");
    rec.role_since("db", None, frozen, LIMIT).await;
}

// === Where the role shows ===

#[tokio::test(flavor = "multi_thread")]
async fn the_role_shows_in_status_and_metrics_and_turns_unknown_when_the_server_dies() {
    use crate::endpoint::Sidecar;
    use crate::support::eventually;

    let master = blocking(RedisServer::start);
    let mut replica = blocking(|| redis::replica_of(&master, &[]));
    let sidecar = Sidecar::start(&target("cache", &replica.addr(), "\"redis\"")).await;
    let role_in_status = |doc: serde_json::Value| doc["targets"][0]["role"].clone();
    let series = |role: &str| format!("tether_target_role{{role=\"{role}\",target=\"cache\"}}");

    eventually(LIMIT, "role replica in /status", || async {
        (role_in_status(sidecar.get("/status").await.json()) == "replica").then_some(())
    })
    .await;
    let metrics = sidecar.get("/metrics").await;
    assert_eq!(
        metrics.sample(&series("replica")),
        Some(1.0),
        "{}",
        metrics.body
    );
    assert_eq!(metrics.sample(&series("primary")), Some(0.0));
    assert_eq!(metrics.sample(&series("unknown")), Some(0.0));

    blocking(|| replica.kill());
    eventually(LIMIT, "role unknown in /status", || async {
        role_in_status(sidecar.get("/status").await.json())
            .is_null()
            .then_some(())
    })
    .await;
    let metrics = sidecar.get("/metrics").await;
    assert_eq!(
        metrics.sample(&series("unknown")),
        Some(1.0),
        "{}",
        metrics.body
    );
    assert_eq!(metrics.sample(&series("replica")), Some(0.0));
    sidecar.stop().await;
}
