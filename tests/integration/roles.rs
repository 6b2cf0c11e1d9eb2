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
use crate::support::harness::{Record, Recorder, watch};
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

/// Runs blocking server control (start, signals, commands) without starving the checkers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

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
    let rec = Recorder::new();
    let _sup = watch(&target("cache", &redis.addr(), "\"redis\""), &rec);
    rec.nth_event("cache", Event::Connect, 1, LIMIT).await;
    // Checks go on with PING alone: the pings grow while the refused ROLE stays the one
    // of the first check.
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
    crate::support::poll(LIMIT, "three checks", || blocking(|| stats(port)).1 >= 4);
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
