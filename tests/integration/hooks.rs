//! Hooks with real processes and a real HTTP receiver: order, environment, payload,
//! signatures, retries, timeouts with process-group kills, bursts, and isolation
//! between targets.

use std::path::Path;
use std::time::Duration;

use tether::watch::machine::Event;
use tether::watch::observe::HookResult;

use crate::support::harness::{
    Behaviour, Listener, Record, Recorder, Sidecar, target, write_config,
};
use crate::support::poll;
use crate::support::receiver::Receiver;
use crate::support::tether_process::TetherProcess;

const LIMIT: Duration = Duration::from_secs(15);

/// A command hook that records its environment and standard input under `dir`, one
/// file pair per event id. Target data arrives only as variables and stdin.
fn recording_hook(dir: &Path) -> String {
    format!(
        r#"{{ command = ["/bin/sh", "-c", "env | grep ^TETHER_ | sort > \"$0/$TETHER_EVENT_ID.env\"; cat > \"$0/$TETHER_EVENT_ID.json\"; echo $TETHER_EVENT >> \"$0/order\"", "{}"] }}"#,
        dir.display()
    )
}

/// `[targets.hooks]` running `hook` on every event.
fn on_every_event(hook: &str) -> String {
    format!(
        "[targets.hooks]\non_connect = {hook}\non_disconnect = {hook}\n\
         on_failure = {hook}\non_recover = {hook}"
    )
}

fn read_env(path: &Path) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_and_restored_target_runs_its_four_hooks_in_order_with_environment_and_payload() {
    let dir = tempfile::tempdir().unwrap();
    let hook = recording_hook(dir.path());
    let mut listener = Listener::start(Behaviour::Hold).await;
    let (sidecar, rec) = Sidecar::with_target(
        "db-1.primary",
        &listener.address(),
        &format!(
            "failure_threshold = 2\nbackoff = {{ initial = \"20ms\", max = \"100ms\" }}\n{}",
            on_every_event(&hook)
        ),
    );
    let t = "db-1.primary";
    rec.hook_runs(t, 1, LIMIT).await;
    listener.kill().await;
    rec.hook_runs(t, 3, LIMIT).await;
    listener.restore(Behaviour::Hold).await;
    let runs = rec.hook_runs(t, 5, LIMIT).await;
    assert!(runs.iter().all(|(_, r)| *r == HookResult::Ok), "{runs:?}");
    sidecar.stop().await;

    let order = std::fs::read_to_string(dir.path().join("order")).unwrap();
    assert_eq!(
        order.lines().collect::<Vec<_>>(),
        ["connect", "disconnect", "failure", "connect", "recover"]
    );
    // Event 2 is the failure: check every variable against the published transition
    // and the JSON on stdin.
    let failure = rec
        .transitions(t)
        .into_iter()
        .find(|(tr, _)| tr.event == Event::Failure)
        .unwrap()
        .0;
    assert_eq!(failure.seq, 2);
    let env = read_env(&dir.path().join("db-1.primary:2.env"));
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("db-1.primary:2.json")).unwrap())
            .unwrap();
    let expected = [
        ("TETHER_TARGET", "target", "db-1.primary".to_owned()),
        ("TETHER_ADDRESS", "address", listener.address()),
        ("TETHER_EVENT", "event", "failure".to_owned()),
        ("TETHER_EVENT_ID", "event_id", "db-1.primary:2".to_owned()),
        ("TETHER_STATE", "state", "failed".to_owned()),
        ("TETHER_PREVIOUS_STATE", "previous_state", "down".to_owned()),
        (
            "TETHER_LAST_ERROR",
            "last_error",
            failure.last_error.as_ref().unwrap().to_string(),
        ),
    ];
    for (var, field, value) in expected {
        assert_eq!(env[var], value, "{var}");
        assert_eq!(json[field], value.as_str(), "{field}");
    }
    assert_eq!(env["TETHER_FAILURES"], "2");
    assert_eq!(json["failures"], 2);
    assert_eq!(env["TETHER_TIMESTAMP"], json["timestamp"].as_str().unwrap());
    assert!(env["TETHER_TIMESTAMP"].ends_with('Z') && env["TETHER_TIMESTAMP"].len() == 24);
    // The run of tether the event belongs to: the same in both, and this process's.
    assert_eq!(env["TETHER_INSTANCE"], tether::instance::id());
    assert_eq!(json["instance"], tether::instance::id());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_webhook_carries_a_verifiable_hmac_of_its_body() {
    // tether runs in this process and reads webhook keys from its environment.
    // SAFETY: no other test reads or writes this variable.
    #[allow(clippy::disallowed_methods)]
    unsafe {
        std::env::set_var("TETHER_TEST_HOOK_SECRET", "s3cret-key")
    };
    let receiver = Receiver::start(&[]).await;
    let listener = Listener::start(Behaviour::Hold).await;
    let (sidecar, _rec) = Sidecar::with_target(
        "cache",
        &listener.address(),
        &format!(
            r#"[targets.hooks]
            on_connect = {{ webhook = "{}", secret_env = "TETHER_TEST_HOOK_SECRET", headers = {{ X-Team = "payments" }} }}"#,
            receiver.url("/store")
        ),
    );
    let got = receiver.until(1, LIMIT).await;
    sidecar.stop().await;
    let req = &got[0];
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/store"));
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(req.headers["x-team"], "payments");
    assert_eq!(req.headers["x-tether-event-id"], "cache:0");
    assert_eq!(req.headers["x-tether-instance"], tether::instance::id());
    let expected = tether::hooks::signature(
        &tether::hooks::Secret::new(b"s3cret-key".to_vec()),
        &req.body,
    );
    assert_eq!(req.headers["x-tether-signature"], expected);
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["event"], "connect");
    assert_eq!(body["event_id"], "cache:0");
    assert_eq!(body["last_error"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_receiver_that_fails_twice_then_accepts_gets_exactly_one_successful_delivery() {
    let receiver = Receiver::start(&[503, 500]).await;
    let listener = Listener::start(Behaviour::Hold).await;
    let (sidecar, rec) = Sidecar::with_target(
        "api",
        &listener.address(),
        &format!(
            "hook_timeout = \"10s\"\n[targets.hooks]\non_connect = {{ webhook = \"{}\" }}",
            receiver.url("/hook")
        ),
    );
    let runs = rec.hook_runs("api", 1, LIMIT).await;
    assert_eq!(runs, [(Event::Connect, HookResult::Ok)]);
    sidecar.stop().await;
    let answered: Vec<u16> = receiver.requests().iter().map(|r| r.answered).collect();
    assert_eq!(
        answered,
        [503, 500, 200],
        "retried until accepted, then stopped"
    );
    let ids: Vec<String> = receiver
        .requests()
        .iter()
        .map(|r| r.headers["x-tether-event-id"].clone())
        .collect();
    assert!(
        ids.iter().all(|id| *id == "api:0"),
        "the same event each time: {ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_webhook_is_counted_as_an_error_and_watching_goes_on() {
    let dead = format!(
        "http://127.0.0.1:{}/hook",
        crate::support::harness::dead_port()
    );
    let mut listener = Listener::start(Behaviour::Hold).await;
    let (sidecar, rec) = Sidecar::with_target(
        "api",
        &listener.address(),
        &format!(
            "hook_timeout = \"300ms\"\n[targets.hooks]\non_connect = {{ webhook = \"{dead}\" }}"
        ),
    );
    let runs = rec.hook_runs("api", 1, LIMIT).await;
    assert_eq!(runs, [(Event::Connect, HookResult::Error)]);
    listener.kill().await;
    rec.nth_event("api", Event::Disconnect, 1, LIMIT).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_command_is_counted_and_the_next_hooks_still_run() {
    let mut listener = Listener::start(Behaviour::Hold).await;
    let (sidecar, rec) = Sidecar::with_target(
        "q",
        &listener.address(),
        r#"[targets.hooks]
        on_connect = [{ shell = "echo broken >&2; exit 3" }, { command = ["/nonexistent/hook"] }]
        on_disconnect = { command = ["/bin/true"] }"#,
    );
    rec.hook_runs("q", 2, LIMIT).await;
    listener.kill().await;
    let runs = rec.hook_runs("q", 3, LIMIT).await;
    sidecar.stop().await;
    assert_eq!(
        runs,
        [
            (Event::Connect, HookResult::Failed),
            (Event::Connect, HookResult::Error),
            (Event::Disconnect, HookResult::Ok)
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_flapping_200_times_with_a_slow_hook_runs_a_valid_story_ending_in_the_final_state()
{
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("seen");
    let mut listener = Listener::start(Behaviour::Hold).await;
    let hook = format!(
        r#"{{ shell = "sleep 0.05; echo $TETHER_EVENT $TETHER_PREVIOUS_STATE $TETHER_STATE $TETHER_EVENT_ID >> '{}'" }}"#,
        log.display()
    );
    let (sidecar, rec) = Sidecar::with_target(
        "flappy",
        &listener.address(),
        &format!(
            "failure_threshold = 1\nbackoff = {{ initial = \"1ms\", max = \"2ms\", jitter = 0.0 }}\n{}",
            on_every_event(&hook)
        ),
    );
    rec.nth_event("flappy", Event::Connect, 1, LIMIT).await;
    // 200 changes of the dependency within about a second, each one seen by tether.
    for i in 1..=100 {
        listener.kill().await;
        rec.nth_event("flappy", Event::Disconnect, i, LIMIT).await;
        listener.restore(Behaviour::Hold).await;
        rec.nth_event("flappy", Event::Connect, i + 1, LIMIT).await;
    }
    // The last restore ends in `connect` and then `recover`, published in that order.
    rec.until("flappy", LIMIT, "final recover", |records| {
        let last = records.iter().rev().find_map(|r| match r {
            Record::Transition { t, .. } => Some(t.event),
            _ => None,
        });
        (last == Some(Event::Recover)).then_some(())
    })
    .await;
    let transitions = rec.transitions("flappy");
    // Wait until the hook has run the final event, then stop.
    poll(LIMIT, "final hook run", || {
        std::fs::read_to_string(&log)
            .is_ok_and(|s| s.lines().last().is_some_and(|l| l.starts_with("recover ")))
    });
    sidecar.stop().await;
    let lines = std::fs::read_to_string(&log).unwrap();
    let runs: Vec<Vec<&str>> = lines.lines().map(|l| l.split(' ').collect()).collect();
    // What ran is a story the machine could have told: each event starts in the state
    // the previous one announced, and ids only grow.
    for w in runs.windows(2) {
        assert_eq!(w[1][1], w[0][2], "{:?} after {:?}", w[1], w[0]);
        let id = |r: &[&str]| -> u64 { r[3].rsplit(':').next().unwrap().parse().unwrap() };
        assert!(id(&w[0]) < id(&w[1]), "{:?} after {:?}", w[1], w[0]);
    }
    let seen: Vec<&str> = runs.iter().map(|r| r[0]).collect();
    assert_eq!(seen.last(), Some(&"recover"), "{seen:?}");
    // The application's view alternates in each pair and ends up connected.
    let link: Vec<_> = seen
        .iter()
        .filter(|e| ["connect", "disconnect"].contains(e))
        .collect();
    assert!(link.windows(2).all(|w| w[0] != w[1]), "{link:?}");
    assert_eq!(link.last(), Some(&&"connect"));
    let mode: Vec<_> = seen
        .iter()
        .filter(|e| ["failure", "recover"].contains(e))
        .collect();
    assert!(mode.windows(2).all(|w| w[0] != w[1]), "{mode:?}");
    let coalesced: u64 = rec
        .of("flappy")
        .iter()
        .map(|r| {
            if let Record::Coalesced { count } = r {
                *count
            } else {
                0
            }
        })
        .sum();
    assert!(
        coalesced > 0,
        "a 50 ms hook cannot keep up with 400 events in a second"
    );
    assert_eq!(
        seen.len() as u64 + coalesced,
        transitions.len() as u64,
        "every event either ran or was counted as coalesced"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_more_hooks_run_at_once_than_max_concurrent_hooks_and_every_waiting_one_runs() {
    // Each hook marks itself running with a file, counts the marks, and stays a while:
    // a count above the bound means more hooks ran at once than allowed.
    let dir = tempfile::tempdir().unwrap();
    let listener = Listener::start(Behaviour::Hold).await;
    let script = format!(
        "d={dir}; touch $d/run.$TETHER_TARGET; ls $d | grep -c '^run\\.' >> $d/counts; \
         sleep 0.2; rm $d/run.$TETHER_TARGET",
        dir = dir.path().display()
    );
    let mut config = format!(
        "[defaults]\nmax_concurrent_hooks = 3\n[defaults.hooks]\non_connect = {{ shell = {script:?} }}\n"
    );
    let names: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
    for name in &names {
        config.push_str(&target(name, &listener.address(), ""));
    }
    let rec = Recorder::new();
    let sidecar = Sidecar::start(&config, &rec);
    for name in &names {
        let runs = rec.hook_runs(name, 1, LIMIT).await;
        assert_eq!(runs, [(Event::Connect, HookResult::Ok)], "{name}");
    }
    sidecar.stop().await;
    let counts: Vec<usize> = std::fs::read_to_string(dir.path().join("counts"))
        .unwrap()
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(counts.len(), 12, "every waiting hook ran once: {counts:?}");
    let most = counts.iter().copied().max().unwrap();
    println!("hooks running at once, as each saw it: {counts:?}");
    assert!(most <= 3, "at most 3 hooks at once, saw {most}: {counts:?}");
    assert!(most >= 2, "the slots are used side by side: {counts:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hanging_hook_on_one_target_does_not_delay_another_targets_hooks() {
    let a = Listener::start(Behaviour::Hold).await;
    let mut b = Listener::start(Behaviour::Hold).await;
    let rec = Recorder::new();
    let sidecar = Sidecar::start(
        &format!(
            "[defaults]\nmax_concurrent_hooks = 2\n{}{}",
            target(
                "a",
                &a.address(),
                r#"hook_timeout = "3s"
                [targets.hooks]
                on_connect = { command = ["/bin/sleep", "60"] }
                on_disconnect = { command = ["/bin/sleep", "60"] }"#
            ),
            target(
                "b",
                &b.address(),
                r#"[targets.hooks]
                on_connect = { command = ["/bin/true"] }
                on_disconnect = { command = ["/bin/true"] }"#
            ),
        ),
        &rec,
    );
    rec.hook_runs("b", 1, LIMIT).await;
    b.kill().await;
    let runs = rec.hook_runs("b", 2, Duration::from_secs(5)).await;
    assert_eq!(
        runs,
        [
            (Event::Connect, HookResult::Ok),
            (Event::Disconnect, HookResult::Ok)
        ]
    );
    assert!(rec.hooks("a").is_empty(), "a's hook is still hanging");
    sidecar.stop().await;
    assert_eq!(rec.hooks("a"), [(Event::Connect, HookResult::Timeout)]);
    drop(a);
}

#[tokio::test(flavor = "multi_thread")]
async fn target_data_and_arguments_reach_a_command_hook_only_as_data() {
    let dir = tempfile::tempdir().unwrap();
    let hostile = "x$(touch pwned);`touch pwned2`|y";
    let listener = Listener::start(Behaviour::Hold).await;
    let (sidecar, rec) = Sidecar::with_target(
        "db.-_1",
        &listener.address(),
        &format!(
            r#"[targets.hooks]
            on_connect = {{ command = ["/usr/bin/touch", "--", "{}/{hostile}"] }}"#,
            dir.path().display()
        ),
    );
    assert_eq!(rec.hook_runs("db.-_1", 1, LIMIT).await[0].1, HookResult::Ok);
    sidecar.stop().await;
    assert!(
        dir.path().join(hostile).exists(),
        "the argument was passed verbatim"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "nothing was executed: {names:?}");
    assert!(!Path::new("pwned").exists() && !Path::new("pwned2").exists());
}

/// Is `pid` still in the process table (running or as a zombie)?
fn exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_past_its_timeout_is_killed_with_its_grandchild_and_both_are_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let listener = Listener::start(Behaviour::Hold).await;
    let config = write_config(
        dir.path(),
        "",
        &target(
            "db",
            &listener.address(),
            &format!(
                r#"hook_timeout = "1s"
                [targets.hooks]
                on_connect = {{ shell = "sleep 60 & echo $! > '{d}/grandchild'; echo $$ > '{d}/hook'; wait" }}
                on_disconnect = {{ shell = "sleep 60 & echo $! > '{d}/orphan'" }}"#,
                d = dir.path().display()
            ),
        ),
    );
    let tether = TetherProcess::run(&config, &[]);
    let (hook, grandchild) = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            let mut pids = (None, None);
            poll(LIMIT, "hook pid files", || {
                pids = (
                    read_pid(&dir.join("hook")),
                    read_pid(&dir.join("grandchild")),
                );
                pids.0.is_some() && pids.1.is_some()
            });
            (pids.0.unwrap(), pids.1.unwrap())
        }
    })
    .await
    .unwrap();
    assert!(exists(hook) && exists(grandchild));
    // Killed at the 1 s timeout (plus the SIGTERM grace), and reaped: gone entirely.
    tokio::task::spawn_blocking(move || {
        poll(Duration::from_secs(10), "hook and grandchild gone", || {
            !exists(hook) && !exists(grandchild)
        })
    })
    .await
    .unwrap();

    // A hook that exits leaving a background job behind: the job ends with the hook
    // and is reaped (tether, a child subreaper, adopted it).
    drop(listener);
    let orphan = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            let mut pid = None;
            poll(LIMIT, "orphan pid file", || {
                pid = read_pid(&dir.join("orphan"));
                pid.is_some()
            });
            pid.unwrap()
        }
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking(move || {
        poll(
            Duration::from_secs(10),
            "background job ended and reaped",
            || !exists(orphan),
        );
    })
    .await
    .unwrap();

    let (status, log) = tokio::task::spawn_blocking(move || tether.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_while_a_target_flaps_keep_its_ids_in_order_and_its_hooks_a_valid_story() {
    let mut listener = Listener::start(Behaviour::Hold).await;
    let other = Listener::start(Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("runs");
    let hook = format!(
        r#"{{ shell = "echo $TETHER_EVENT $TETHER_PREVIOUS_STATE $TETHER_STATE $TETHER_EVENT_ID >> '{}'" }}"#,
        log.display()
    );
    // Each reload changes the flapping target (so its actor is replaced mid-flap) and
    // adds or removes another target.
    let (address, other) = (listener.address(), other.address());
    let config = |round: usize| {
        let flappy = target(
            "flappy",
            &address,
            &format!(
                "failure_threshold = {}\nbackoff = {{ initial = \"1ms\", max = \"5ms\", jitter = 0.0 }}\n{}",
                1 + round % 3,
                on_every_event(&hook)
            ),
        );
        if round % 2 == 0 {
            flappy
        } else {
            format!("{flappy}{}", target("other", &other, ""))
        }
    };
    let rec = Recorder::new();
    let sidecar = Sidecar::start(&config(0), &rec);
    rec.nth_event("flappy", Event::Connect, 1, LIMIT).await;
    for round in 1..=40 {
        listener.kill().await;
        rec.nth_event("flappy", Event::Disconnect, round, LIMIT)
            .await;
        if round % 4 == 0 {
            sidecar.reload(&config(round / 4)).await;
        }
        listener.restore(Behaviour::Hold).await;
        rec.nth_event("flappy", Event::Connect, round + 1, LIMIT)
            .await;
    }
    // A connect and its recover are published together: read what was published each
    // time, so the last event is the real last one.
    let caught_up = crate::support::poll_until(LIMIT, || {
        let last_id = rec.transitions("flappy").last().unwrap().0.seq;
        std::fs::read_to_string(&log)
            .is_ok_and(|s| {
                s.lines()
                    .last()
                    .is_some_and(|l| l.ends_with(&format!("flappy:{last_id}")))
            })
            .then_some(())
    });
    let transitions = rec.transitions("flappy");
    assert!(
        caught_up.is_some(),
        "the hooks never ran the last event; ran:\n{}\npublished: {:?}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        transitions
            .iter()
            .map(|(t, _)| (t.seq, t.event))
            .collect::<Vec<_>>()
    );
    sidecar.stop().await;

    // Published: every id once, in order, from 0.
    for (i, (t, _)) in transitions.iter().enumerate() {
        assert_eq!(t.seq, i as u64, "{transitions:?}");
    }
    // Run: a valid story, ids growing, ending with the last event.
    let lines = std::fs::read_to_string(&log).unwrap();
    let runs: Vec<Vec<&str>> = lines.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(runs[0][0], "connect");
    for w in runs.windows(2) {
        assert_eq!(w[1][1], w[0][2], "{:?} after {:?}", w[1], w[0]);
        let id = |r: &[&str]| -> u64 { r[3].rsplit(':').next().unwrap().parse().unwrap() };
        assert!(id(&w[0]) < id(&w[1]), "{:?} after {:?}", w[1], w[0]);
    }
    eprintln!(
        "{} events published, {} hook runs, across 10 reloads",
        transitions.len(),
        runs.len()
    );
}

/// A config whose single target runs `on_connect` and `on_disconnect` shell hooks.
fn two_hook_config(
    dir: &Path,
    address: &str,
    on_connect: &str,
    on_disconnect: &str,
) -> std::path::PathBuf {
    write_config(
        dir,
        "",
        &target(
            "db",
            address,
            &format!(
                "hook_timeout = \"1s\"\n[targets.hooks]\non_connect = {{ shell = {on_connect:?} }}\non_disconnect = {{ shell = {on_disconnect:?} }}"
            ),
        ),
    )
}

/// Waits for `names` to hold pids under `dir`.
async fn pids(dir: &Path, names: &'static [&'static str]) -> Vec<u32> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut found = Vec::new();
        poll(LIMIT, "pid files", || {
            found = names
                .iter()
                .filter_map(|n| read_pid(&dir.join(n)))
                .collect();
            found.len() == names.len()
        });
        found
    })
    .await
    .unwrap()
}

async fn all_gone(pids: Vec<u32>, what: &'static str) {
    tokio::task::spawn_blocking(move || {
        poll(Duration::from_secs(10), what, || {
            pids.iter().all(|p| !exists(*p))
        })
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn processes_a_hook_moved_out_of_its_group_end_when_it_ends_or_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // Exits 0 at once, leaving a `setsid` child and a double-forked `setsid` grandchild,
    // both outside its process group, both meant to live a minute.
    let escapes = format!(
        "setsid sh -c 'echo $$ > {d}/escaped; exec sleep 60' & \
         (setsid sh -c 'echo $$ > {d}/doubled; exec sleep 60' &); \
         while [ ! -s {d}/escaped ] || [ ! -s {d}/doubled ]; do sleep 0.01; done; exit 0"
    );
    // The same, then outlives its 1 s timeout.
    let hangs = format!(
        "setsid sh -c 'echo $$ > {d}/escaped-late; exec sleep 60' & \
         echo $$ > {d}/hanging; exec sleep 60"
    );
    let listener = Listener::start(Behaviour::Hold).await;
    let config = two_hook_config(dir.path(), &listener.address(), &escapes, &hangs);
    let tether = TetherProcess::run(&config, &[]);

    let escaped = pids(dir.path(), &["escaped", "doubled"]).await;
    for pid in &escaped {
        // While it still runs, each leads a process group (and session) of its own.
        if let Some(group) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.split(' ').nth(4).map(str::to_owned))
        {
            assert_eq!(
                group,
                pid.to_string(),
                "the process stayed in the hook's group"
            );
        }
    }
    all_gone(escaped, "the processes the finished hook left behind ended").await;

    drop(listener);
    let late = pids(dir.path(), &["escaped-late", "hanging"]).await;
    all_gone(
        late,
        "the timed-out hook and what it moved out of its group ended",
    )
    .await;

    let (status, log) = tokio::task::spawn_blocking(move || tether.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_logged_output_of_a_failing_hook_is_at_most_4_kib() {
    let dir = tempfile::tempdir().unwrap();
    let listener = Listener::start(Behaviour::Hold).await;
    let noisy =
        "head -c 10000 /dev/zero | tr '\\0' x; head -c 10000 /dev/zero | tr '\\0' y >&2; exit 3";
    let config = two_hook_config(dir.path(), &listener.address(), noisy, "true");
    let tether = TetherProcess::run(&config, &["--log-format", "json"]);
    let line = tokio::task::spawn_blocking(move || {
        let line = tether.wait_for("exit status 3", LIMIT);
        drop(tether);
        line
    })
    .await
    .unwrap();
    let event: serde_json::Value = serde_json::from_str(&line).unwrap();
    let output = event["output"].as_str().unwrap_or_else(|| panic!("{line}"));
    eprintln!("logged {} bytes of output", output.len());
    assert!(output.len() <= 4096, "{} bytes logged", output.len());
    assert!(output.starts_with("yyyy"), "standard error comes first");
    assert!(
        output.len() > 4000,
        "the output is cut at 4 KiB, not dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_queued_webhook_stays_signed_with_its_key_when_a_reload_removes_its_target() {
    // tether runs in this process and reads webhook keys from its environment.
    // SAFETY: no other test reads or writes this variable.
    #[allow(clippy::disallowed_methods)]
    unsafe {
        std::env::set_var("TETHER_TEST_QUEUED_KEY", "key-it-was-queued-under")
    };
    // Four refusals: the delivery is still being retried when the reload lands.
    let receiver = Receiver::start(&[503, 503, 503, 503]).await;
    let (listener, other) = (
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
    );
    let rec = Recorder::new();
    let sidecar = Sidecar::start(
        &format!(
            "{}{}",
            target(
                "cache",
                &listener.address(),
                &format!(
                    r#"hook_timeout = "20s"
                    [targets.hooks]
                    on_connect = {{ webhook = "{}", secret_env = "TETHER_TEST_QUEUED_KEY" }}"#,
                    receiver.url("/store")
                ),
            ),
            target("other", &other.address(), "")
        ),
        &rec,
    );
    receiver.until(1, LIMIT).await;
    // The target goes, and the variable is no longer one the config reads.
    sidecar.reload(&target("other", &other.address(), "")).await;
    let got = receiver.until(5, LIMIT).await;
    sidecar.stop().await;
    let key = tether::hooks::Secret::new(b"key-it-was-queued-under".to_vec());
    for req in &got {
        assert_eq!(
            req.headers.get("x-tether-signature").map(String::as_str),
            Some(tether::hooks::signature(&key, &req.body).as_str()),
            "every attempt is signed with the key it was queued under"
        );
    }
    assert_eq!(got.len(), 5, "the delivery went on to its success");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_key_from_a_file_signs_and_a_rotated_one_is_taken_up_on_reload() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("hook-key");
    std::fs::write(&key_file, "first-key-from-a-file\n").unwrap();
    let receiver = Receiver::start(&[]).await;
    let mut listener = Listener::start(Behaviour::Hold).await;
    let config = target(
        "cache",
        &listener.address(),
        &format!(
            r#"failure_threshold = 5
            [targets.hooks]
            on_connect = {{ webhook = "{url}", secret_file = "{key}" }}
            on_disconnect = {{ webhook = "{url}", secret_file = "{key}" }}"#,
            url = receiver.url("/store"),
            key = key_file.display()
        ),
    );
    let rec = Recorder::new();
    let sidecar = Sidecar::start(&config, &rec);
    receiver.until(1, LIMIT).await;
    std::fs::write(&key_file, "second-key-from-a-file").unwrap();
    sidecar.reload(&config).await;
    rec.reloads_applied(1, LIMIT).await;
    listener.kill().await;
    let got = receiver.until(2, LIMIT).await;
    sidecar.stop().await;
    let signed = |key: &str, i: usize| {
        tether::hooks::signature(
            &tether::hooks::Secret::new(key.as_bytes().to_vec()),
            &got[i].body,
        )
    };
    assert_eq!(
        got[0].headers["x-tether-signature"],
        signed("first-key-from-a-file", 0)
    );
    assert_eq!(
        got[1].headers["x-tether-signature"],
        signed("second-key-from-a-file", 1)
    );
}
