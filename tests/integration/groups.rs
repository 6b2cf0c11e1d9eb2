//! Failover groups on a real `tether run` against real servers: a PostgreSQL primary and
//! its streaming replica, a Redis master and its replica, plain TCP members. Each
//! scenario kills, promotes and restarts servers and reads what the group's hooks were
//! told, in order: a shell hook appends every `TETHER_*` variable (and the JSON on its
//! standard input) to a file per group, which the test reads with bounded polls. The
//! `tether::group` log lines must tell the same events, so none was coalesced away.
//!
//! Failover times are printed (`cargo test --test integration groups -- --nocapture`);
//! the assertions bound them generously, for a crowded CI machine.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::support::postgres::Pair;
use crate::support::redis::{self, RedisServer};
use crate::support::tether_process::{TetherProcess, command as tether};
use crate::support::{TestServer, poll_until, workdir};

/// Bound on any single wait for something that must happen.
const LIMIT: Duration = Duration::from_secs(30);

/// Checks every 300 ms with 200 ms to answer: a promotion is seen within 300 ms.
const CHECK_INTERVAL: Duration = Duration::from_millis(300);
const CHECKED: &str = r#"check_interval = "300ms"
check_timeout = "200ms""#;
/// Every member: short connects and a short backoff, so a restarted server is back
/// within a fraction of a second.
const CONNECT: &str = r#"connect_timeout = "500ms"
backoff = { initial = "50ms", max = "200ms", multiplier = 2.0, jitter = 0.1 }"#;

/// A promotion must reach the hook within a check interval, plus the hook's own start;
/// the margin is for a loaded machine.
const PROMOTION_BOUND: Duration = Duration::from_millis(3 * 300 + 2000);

/// A killed member's connection closes at once: the switch is a matter of milliseconds;
/// the margin is for a loaded machine.
const KILL_BOUND: Duration = Duration::from_secs(2);

/// How long nothing must happen where nothing should: a few check intervals.
const QUIET: Duration = Duration::from_millis(5 * 300);

/// Appends the JSON on a group hook's standard input to `<dir>/<group>.json`, then one
/// tab-separated line of every variable it gets to `<group>.events`: once the line is
/// there, so is the record.
const HOOK_SHELL: &str = r#"{ cat; echo; } >> "$HOOK_DIR/$TETHER_GROUP.json"; printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$TETHER_EVENT_ID" "$TETHER_EVENT" "$TETHER_PREVIOUS_ACTIVE" "$TETHER_ACTIVE" "$TETHER_REASON" "$TETHER_CLAIMANTS" "$TETHER_FALLBACK" "$TETHER_GROUP" "$TETHER_INSTANCE" "$TETHER_TIMESTAMP" >> "$HOOK_DIR/$TETHER_GROUP.events""#;

/// The `[groups.hooks]` table of the last group: [`HOOK_SHELL`] writing to `dir`, each
/// line's event id prefixed with `tag`.
fn hooks_table(dir: &Path, tag: &str) -> String {
    let shell = HOOK_SHELL.replace("$HOOK_DIR", &dir.display().to_string());
    let shell = if tag.is_empty() {
        shell
    } else {
        // A second hook writes the same line with a tag, so a test can tell which
        // config's hook ran.
        shell.replace("$TETHER_EVENT_ID", &format!("{tag}$TETHER_EVENT_ID"))
    };
    format!(
        "[groups.hooks]\non_change = {{ shell = '''{shell}''' }}\non_conflict = {{ shell = '''{shell}''' }}\n"
    )
}

/// A target `name` on `addr` probed by `probe` (a bare name or an inline table).
fn target(name: &str, addr: &str, probe: &str) -> String {
    let checked = if probe == "\"tcp\"" { "" } else { CHECKED };
    format!(
        "[[targets]]\nname = \"{name}\"\naddress = \"{addr}\"\nprobe = {probe}\n{CONNECT}\n{checked}\n"
    )
}

/// A postgres member that logs in, so it reports `pg_is_in_recovery()`.
const PG_SESSION: &str = r#"{ kind = "postgres", user = "postgres", database = "postgres" }"#;

/// What one group hook was told.
#[derive(Clone, Debug)]
struct Told {
    event_id: String,
    event: String,
    previous: String,
    active: String,
    reason: String,
    claimants: String,
    fallback: String,
    group: String,
    instance: String,
    timestamp: String,
}

impl Told {
    fn parse(line: &str) -> Told {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 10, "a hook line has ten fields: {line:?}");
        Told {
            event_id: f[0].into(),
            event: f[1].into(),
            previous: f[2].into(),
            active: f[3].into(),
            reason: f[4].into(),
            claimants: f[5].into(),
            fallback: f[6].into(),
            group: f[7].into(),
            instance: f[8].into(),
            timestamp: f[9].into(),
        }
    }

    /// `id event previous->active reason [claimants]`, the form expectations are written in.
    fn summary(&self) -> String {
        let claimants = if self.claimants.is_empty() {
            String::new()
        } else {
            format!(" [{}]", self.claimants)
        };
        format!(
            "{} {} {}->{} {}{claimants}",
            self.event_id, self.event, self.previous, self.active, self.reason
        )
    }
}

/// A `tether run` with a config in a scratch directory, its hooks writing there too.
struct Sidecar {
    process: TetherProcess,
    dir: TempDir,
    config: PathBuf,
}

impl Sidecar {
    fn rewrite(&self, body: &str) {
        write_config(self.dir.path(), &self.config, body);
    }

    /// Every line the hooks of `group` wrote so far.
    fn told(&self, group: &str) -> Vec<Told> {
        std::fs::read_to_string(self.dir.path().join(format!("{group}.events")))
            .unwrap_or_default()
            .lines()
            .map(Told::parse)
            .collect()
    }

    /// The JSON records the hooks of `group` read on their standard input.
    fn payloads(&self, group: &str) -> Vec<serde_json::Value> {
        std::fs::read_to_string(self.dir.path().join(format!("{group}.json")))
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// Waits until the hooks of `group` have told `expected.len()` events, asserts they
    /// are exactly `expected` (in their [`Told::summary`] form), and returns when the
    /// last one was seen.
    fn expect(&self, group: &str, expected: &[&str]) -> Instant {
        let seen = poll_until(LIMIT, || {
            (self.told(group).len() >= expected.len()).then(Instant::now)
        });
        let told: Vec<String> = self.told(group).iter().map(Told::summary).collect();
        assert_eq!(
            told,
            expected,
            "the events of group {group}; log:\n{}",
            self.process.log()
        );
        seen.expect("the poll above only ends early with the events")
    }

    /// Asserts that the hooks of `group` tell nothing more for `window`.
    fn quiet(&self, group: &str, window: Duration) {
        let before = self.told(group).len();
        let more = poll_until(window, || (self.told(group).len() > before).then_some(()));
        assert!(
            more.is_none(),
            "group {group} told more: {:#?}",
            &self.told(group)[before..]
        );
    }

    /// The event ids the `tether::group` log lines gave `group`, in order.
    fn logged_ids(&self, group: &str) -> Vec<String> {
        let needle = format!("event_id={group}:");
        self.process
            .lines()
            .iter()
            .filter(|l| l.contains("tether::group"))
            .filter_map(|l| {
                let rest = &l[l.find(&needle)? + "event_id=".len()..];
                Some(rest.split_whitespace().next()?.to_owned())
            })
            .collect()
    }

    /// The hooks told every event the log tells, and their ids count from `<group>:0`
    /// without a gap or a repeat.
    fn assert_consecutive(&self, group: &str) {
        let told: Vec<String> = self.told(group).into_iter().map(|t| t.event_id).collect();
        let counted: Vec<String> = (0..told.len()).map(|i| format!("{group}:{i}")).collect();
        assert_eq!(told, counted, "hook event ids of {group}");
        // The log is written from a thread of its own: a line may trail its hook.
        poll_until(LIMIT, || (self.logged_ids(group) == told).then_some(()));
        assert_eq!(self.logged_ids(group), told, "logged event ids of {group}");
    }

    /// Waits for the `n`th log line containing `needle`.
    fn wait_nth(&self, needle: &str, n: usize) {
        let found = poll_until(LIMIT, || {
            (self
                .process
                .lines()
                .iter()
                .filter(|l| l.contains(needle))
                .count()
                >= n)
                .then_some(())
        });
        assert!(
            found.is_some(),
            "no {n} lines with {needle:?} within {LIMIT:?}; log:\n{}",
            self.process.log()
        );
    }

    /// Sends SIGHUP and waits for the `n`th "config reloaded".
    fn reload(&self, body: &str, n: usize) {
        self.rewrite(body);
        self.process.signal(Signal::SIGHUP);
        self.wait_nth("config reloaded", n);
    }

    /// `tether failback ARGS` with this config.
    fn failback(&self, args: &[&str]) -> Output {
        tether()
            .arg("failback")
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }
}

/// Writes the config for `body` (targets and groups; `{hooks}` and `{tagged-hooks}`
/// stand for the hooks tables) to `path`: HTTP on a free TCP port and on `tether.sock`
/// in `dir`, where the hooks write too.
fn write_config(dir: &Path, path: &Path, body: &str) {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nunix_socket = \"{}\"\n\n{}",
        dir.join("tether.sock").display(),
        body.replace("{hooks}", &hooks_table(dir, ""))
            .replace("{tagged-hooks}", &hooks_table(dir, "new:"))
    );
    std::fs::write(path, text).unwrap();
}

/// Starts `tether run` on `body` in a scratch directory of its own.
fn start(label: &str, body: &str) -> Sidecar {
    let dir = workdir(label);
    let config = dir.path().join("tether.toml");
    write_config(dir.path(), &config, body);
    let process = TetherProcess::run(&config, &[]);
    process.wait_for("serving HTTP on unix socket", LIMIT);
    Sidecar {
        process,
        dir,
        config,
    }
}

/// The first line of an HTTP/1.0 `POST path` with no body to the TCP listener.
fn post_tcp(addr: std::net::SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer.lines().next().unwrap_or("").to_owned()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// === split brain, with real replication ===

#[test]
fn a_postgres_group_follows_a_promotion_and_sits_out_the_old_primarys_return_as_a_conflict() {
    let mut pair = Pair::start();
    let body = [
        target("pg-a", &pair.primary.addr(), PG_SESSION),
        target("pg-b", &pair.replica.addr(), PG_SESSION),
        "[[groups]]\nname = \"store\"\nmembers = [\"pg-a\", \"pg-b\"]\nrole = \"primary\"\n\
         fallback = \"readonly\"\n{hooks}"
            .to_owned(),
    ]
    .concat();
    let sidecar = start("group-pg", &body);
    let mut expected = vec!["store:0 change ->pg-a preferred-eligible"];
    sidecar.expect("store", &expected);

    // The replica is still in recovery: nobody will do.
    let killed = Instant::now();
    pair.primary.kill();
    expected.push("store:1 change pg-a->readonly no-eligible-member");
    let seen = sidecar.expect("store", &expected);
    println!(
        "postgres: primary killed, group in its fallback after {:?}",
        seen - killed
    );

    pair.replica.promote();
    let promoted = Instant::now();
    expected.push("store:2 change readonly->pg-b preferred-eligible");
    let after = sidecar.expect("store", &expected) - promoted;
    println!(
        "postgres: pg_promote() returned, group on pg-b after {after:?} (check interval {CHECK_INTERVAL:?})"
    );
    assert!(
        after < PROMOTION_BOUND,
        "promotion followed after {after:?}"
    );

    // The old primary comes back writable: split brain. pg-b stays, pg-a is not used.
    pair.primary.restart();
    expected.push("store:3 conflict pg-b->pg-b conflict [pg-a,pg-b]");
    sidecar.expect("store", &expected);
    sidecar.quiet("store", QUIET);

    pair.primary.kill();
    expected.push("store:4 conflict_resolved pg-b->pg-b conflict");
    sidecar.expect("store", &expected);
    sidecar.quiet("store", QUIET);
    sidecar.assert_consecutive("store");
    let conflict = &sidecar.told("store")[3];
    assert_eq!(conflict.fallback, "0");
}

#[test]
fn a_redis_group_follows_replicaof_no_one_and_its_hooks_get_every_variable_and_the_json() {
    let mut master = RedisServer::start();
    let replica = redis::replica_of(&master, &[]);
    let body = [
        target("red-a", &master.addr(), "\"redis\""),
        target("red-b", &replica.addr(), "\"redis\""),
        "[[groups]]\nname = \"cache\"\nmembers = [\"red-a\", \"red-b\"]\nrole = \"primary\"\n\
         fallback = \"local\"\n{hooks}"
            .to_owned(),
    ]
    .concat();
    let sidecar = start("group-redis", &body);
    let mut expected = vec!["cache:0 change ->red-a preferred-eligible"];
    sidecar.expect("cache", &expected);

    master.kill();
    expected.push("cache:1 change red-a->local no-eligible-member");
    sidecar.expect("cache", &expected);

    assert_eq!(
        redis::command(replica.port(), &["REPLICAOF", "NO", "ONE"]),
        "+OK"
    );
    let promoted = Instant::now();
    expected.push("cache:2 change local->red-b preferred-eligible");
    let after = sidecar.expect("cache", &expected) - promoted;
    println!(
        "redis: REPLICAOF NO ONE answered, group on red-b after {after:?} (check interval {CHECK_INTERVAL:?})"
    );
    assert!(
        after < PROMOTION_BOUND,
        "promotion followed after {after:?}"
    );

    master.restart();
    expected.push("cache:3 conflict red-b->red-b conflict [red-a,red-b]");
    sidecar.expect("cache", &expected);
    sidecar.quiet("cache", QUIET);
    master.kill();
    expected.push("cache:4 conflict_resolved red-b->red-b conflict");
    sidecar.expect("cache", &expected);
    sidecar.assert_consecutive("cache");

    // Every variable, and the same in the JSON on standard input.
    let told = sidecar.told("cache");
    let payloads = sidecar.payloads("cache");
    assert_eq!(payloads.len(), told.len(), "one JSON record per run");
    for (t, json) in told.iter().zip(&payloads) {
        assert_eq!(t.group, "cache");
        assert!(!t.instance.is_empty());
        assert!(
            t.timestamp.ends_with('Z') && t.timestamp.len() == 24,
            "RFC 3339 in milliseconds: {}",
            t.timestamp
        );
        let fallback = t.fallback == "1";
        assert_eq!(fallback, t.active == "local", "{t:?}");
        let claimants: Vec<&str> = t.claimants.split(',').filter(|c| !c.is_empty()).collect();
        let expected = serde_json::json!({
            "event_id": t.event_id,
            "instance": t.instance,
            "group": t.group,
            "event": t.event,
            "active": t.active,
            "fallback": fallback,
            "previous_active": t.previous,
            "reason": t.reason,
            "claimants": claimants,
            "conflict": t.event == "conflict",
            "timestamp": t.timestamp,
        });
        assert_eq!(*json, expected);
    }
}

// === failback policies ===

/// Two redis members without a role (any member that is up will do), `failback` as given.
fn pair_without_role(a: &RedisServer, b: &RedisServer, failback: &str) -> String {
    [
        target("alpha", &a.addr(), "\"redis\""),
        target("beta", &b.addr(), "\"redis\""),
        format!(
            "[[groups]]\nname = \"duo\"\nmembers = [\"alpha\", \"beta\"]\n{failback}\n{{hooks}}"
        ),
    ]
    .concat()
}

/// Brings `alpha` back and takes it away again `times` times, each time up for `up`
/// once tether has seen it up; leaves it up. Returns when it was last started.
fn flap(sidecar: &Sidecar, alpha: &mut RedisServer, times: usize, up: Duration) -> Instant {
    let ups = |s: &Sidecar| {
        s.process
            .lines()
            .iter()
            .filter(|l| l.contains("alpha is up (connect)"))
            .count()
    };
    let mut started = Instant::now();
    for i in 0..=times {
        let before = ups(sidecar);
        alpha.restart();
        started = Instant::now();
        sidecar.wait_nth("alpha is up (connect)", before + 1);
        if i == times {
            break;
        }
        // Up for a while, but less than any hold: the flap the policy must sit out.
        std::thread::sleep(up);
        alpha.kill();
    }
    started
}

#[test]
fn a_hold_group_returns_to_a_flapping_preferred_member_only_after_it_stayed_eligible_for_failback_after()
 {
    const HOLD: Duration = Duration::from_secs(2);
    let mut alpha = RedisServer::start();
    let beta = RedisServer::start();
    let sidecar = start(
        "group-hold",
        &pair_without_role(
            &alpha,
            &beta,
            "failback = \"hold\"\nfailback_after = \"2s\"",
        ),
    );
    let mut expected = vec!["duo:0 change ->alpha preferred-eligible"];
    sidecar.expect("duo", &expected);
    alpha.kill();
    expected.push("duo:1 change alpha->beta active-lost");
    sidecar.expect("duo", &expected);

    // A hold group does not take orders.
    let refused = sidecar.failback(&["duo"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        text(&refused.stderr).contains("the group fails back by itself"),
        "{}",
        text(&refused.stderr)
    );

    // Up for 700 ms at a time, three times, within the hold: no failback.
    let last_start = flap(&sidecar, &mut alpha, 3, Duration::from_millis(700));
    expected.push("duo:2 change beta->alpha preferred-eligible");
    let back = sidecar.expect("duo", &expected);
    let held = back - last_start;
    println!("hold: back on alpha {held:?} after its last return (failback_after {HOLD:?})");
    assert!(held >= HOLD, "failed back after {held:?}, within the hold");
    assert!(
        held < HOLD + Duration::from_secs(3),
        "failed back after {held:?}"
    );
    sidecar.quiet("duo", QUIET);
    sidecar.assert_consecutive("duo");
}

#[test]
fn a_manual_group_stays_off_a_flapping_preferred_member_until_tether_failback_over_the_unix_socket()
{
    let mut alpha = RedisServer::start();
    let beta = RedisServer::start();
    let sidecar = start(
        "group-manual",
        &pair_without_role(&alpha, &beta, "failback = \"manual\""),
    );
    let mut expected = vec!["duo:0 change ->alpha preferred-eligible"];
    sidecar.expect("duo", &expected);

    // Nothing better than the active member: refused.
    let refused = sidecar.failback(&["duo"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    alpha.kill();
    expected.push("duo:1 change alpha->beta active-lost");
    sidecar.expect("duo", &expected);

    flap(&sidecar, &mut alpha, 2, Duration::from_millis(300));
    // alpha is up and eligible for good now: still no change.
    sidecar.quiet("duo", QUIET);

    let done = sidecar.failback(&["duo"]);
    assert_eq!(done.status.code(), Some(0), "{done:?}");
    assert_eq!(
        text(&done.stdout).trim(),
        "duo: now on alpha (was beta), event duo:2"
    );
    expected.push("duo:2 change beta->alpha manual-failback");
    sidecar.expect("duo", &expected);

    let again = sidecar.failback(&["duo"]);
    assert_eq!(again.status.code(), Some(1), "{again:?}");
    assert_eq!(
        text(&again.stderr).trim(),
        "tether: group \"duo\": no member more preferred than the active one is eligible"
    );

    let unknown = sidecar.failback(&["nope"]);
    assert_eq!(unknown.status.code(), Some(1), "{unknown:?}");
    assert!(
        text(&unknown.stderr).contains("no group is named \"nope\""),
        "{}",
        text(&unknown.stderr)
    );

    // Never on TCP: the command will not try, and the listener refuses.
    let addr = sidecar.process.http_addr(LIMIT);
    let tcp = sidecar.failback(&["--url", &format!("http://{addr}"), "duo"]);
    assert_eq!(tcp.status.code(), Some(2), "{tcp:?}");
    let line = post_tcp(addr, "/groups/duo/failback");
    assert!(line.contains(" 403 "), "{line}");

    let nobody = sidecar.dir.path().join("nobody.sock");
    let unreachable = sidecar.failback(&["--url", &format!("unix:{}", nobody.display()), "duo"]);
    assert_eq!(unreachable.status.code(), Some(2), "{unreachable:?}");

    sidecar.quiet("duo", QUIET);
    sidecar.assert_consecutive("duo");
}

// === reload ===

#[test]
fn a_reload_fires_nothing_for_an_unchanged_group_keeps_the_active_member_of_a_changed_one_and_decides_for_a_new_one()
 {
    let mut alpha = RedisServer::start();
    let beta = RedisServer::start();
    let first = pair_without_role(&alpha, &beta, "");
    let sidecar = start("group-reload", &first);
    let mut expected = vec!["duo:0 change ->alpha preferred-eligible"];
    sidecar.expect("duo", &expected);

    sidecar.reload(&first, 1);
    sidecar.quiet("duo", QUIET);

    // Only the policy and the hooks change: alpha stays in use, nothing is announced.
    let second = pair_without_role(&alpha, &beta, "failback = \"manual\"")
        .replace("{hooks}", "{tagged-hooks}");
    sidecar.reload(&second, 2);
    sidecar.quiet("duo", QUIET);
    // The new hook tells the next change, from alpha.
    alpha.kill();
    sidecar.wait_nth("group duo now uses beta", 1);
    let told = poll_until(LIMIT, || {
        let t = sidecar.told("duo");
        (t.len() == 2).then_some(t)
    })
    .unwrap_or_else(|| panic!("{:#?}", sidecar.told("duo")));
    assert_eq!(
        told[1].summary(),
        "new:duo:1 change alpha->beta active-lost"
    );

    // A new group decides at once.
    let third = format!("{second}[[groups]]\nname = \"solo\"\nmembers = [\"beta\"]\n{{hooks}}");
    sidecar.reload(&third, 3);
    sidecar.expect("solo", &["solo:0 change ->beta preferred-eligible"]);

    // New members, among them the one in use: it stays, without a word.
    let fourth = third.replacen(
        "members = [\"alpha\", \"beta\"]",
        "members = [\"beta\", \"alpha\"]",
        1,
    );
    assert_ne!(fourth, third);
    sidecar.reload(&fourth, 4);
    sidecar.quiet("duo", QUIET);
    expected.push("new:duo:1 change alpha->beta active-lost");
    assert_eq!(
        sidecar
            .told("duo")
            .iter()
            .map(Told::summary)
            .collect::<Vec<_>>(),
        expected
    );
    assert_eq!(sidecar.logged_ids("duo"), ["duo:0", "duo:1"]);
    assert_eq!(sidecar.logged_ids("solo"), ["solo:0"]);
}

// === without a role ===

#[test]
fn a_group_without_role_switches_within_milliseconds_of_a_kill_and_takes_the_first_member_back() {
    let mut alpha = RedisServer::start();
    let mut beta = RedisServer::start();
    let body = [
        target("alpha", &alpha.addr(), "\"tcp\""),
        target("beta", &beta.addr(), "\"tcp\""),
        "[[groups]]\nname = \"duo\"\nmembers = [\"alpha\", \"beta\"]\nfallback = \"offline\"\n{hooks}"
            .to_owned(),
    ]
    .concat();
    let sidecar = start("group-plain", &body);
    let mut expected = vec!["duo:0 change ->alpha preferred-eligible"];
    sidecar.expect("duo", &expected);

    let killed = Instant::now();
    alpha.kill();
    expected.push("duo:1 change alpha->beta active-lost");
    let after = sidecar.expect("duo", &expected) - killed;
    println!("tcp: alpha killed, group on beta after {after:?}");
    assert!(after < KILL_BOUND, "switched after {after:?}");

    beta.kill();
    expected.push("duo:2 change beta->offline no-eligible-member");
    sidecar.expect("duo", &expected);

    beta.restart();
    expected.push("duo:3 change offline->beta preferred-eligible");
    sidecar.expect("duo", &expected);
    alpha.restart();
    expected.push("duo:4 change beta->alpha preferred-eligible");
    sidecar.expect("duo", &expected);
    sidecar.assert_consecutive("duo");
}

// === connections lost under a member ===

#[test]
fn a_redis_member_whose_connection_the_server_closes_and_tether_reopens_at_once_keeps_the_group_where_it_is()
 {
    let master = RedisServer::start();
    let replica = redis::replica_of(&master, &[]);
    let body = [
        target("red-a", &master.addr(), "\"redis\""),
        target("red-b", &replica.addr(), "\"redis\""),
        "[[groups]]\nname = \"cache\"\nmembers = [\"red-a\", \"red-b\"]\nrole = \"primary\"\n\
         failback = \"manual\"\n{hooks}"
            .to_owned(),
    ]
    .concat();
    let sidecar = start("group-client-kill", &body);
    let expected = ["cache:0 change ->red-a preferred-eligible"];
    sidecar.expect("cache", &expected);

    // The server drops tether's session; the reconnect succeeds at once, as for a
    // target, so the application hears nothing.
    let connections = |port| {
        redis::info(port, "stats")
            .lines()
            .find_map(|l| l.strip_prefix("total_connections_received:"))
            .map_or(0, |v| v.trim().parse::<u64>().unwrap())
    };
    let before = connections(master.port());
    assert_eq!(
        redis::command(master.port(), &["CLIENT", "KILL", "TYPE", "normal"]),
        ":1",
        "tether's session"
    );
    // Our own INFO and CLIENT KILL made two; tether's reconnect is the third.
    crate::support::poll(LIMIT, "tether's reconnect", || {
        connections(master.port()) >= before + 3
    });
    sidecar.quiet("cache", QUIET);
    sidecar.expect("cache", &expected);
    let transitions = sidecar
        .process
        .lines()
        .iter()
        .filter(|l| l.contains("tether::transition") && l.contains("red-a is"))
        .count();
    assert_eq!(transitions, 1, "red-a's first connect only");
}

#[test]
fn a_group_of_replicas_that_loses_its_active_replica_to_a_kill_switches_as_active_lost() {
    let master = RedisServer::start();
    let mut first = redis::replica_of(&master, &[]);
    let second = redis::replica_of(&master, &[]);
    let body = [
        target("rep-1", &first.addr(), "\"redis\""),
        target("rep-2", &second.addr(), "\"redis\""),
        "[[groups]]\nname = \"reads\"\nmembers = [\"rep-1\", \"rep-2\"]\nrole = \"replica\"\n{hooks}"
            .to_owned(),
    ]
    .concat();
    let sidecar = start("group-replicas", &body);
    let mut expected = vec!["reads:0 change ->rep-1 preferred-eligible"];
    sidecar.expect("reads", &expected);
    first.kill();
    expected.push("reads:1 change rep-1->rep-2 active-lost");
    sidecar.expect("reads", &expected);
    sidecar.assert_consecutive("reads");
}
