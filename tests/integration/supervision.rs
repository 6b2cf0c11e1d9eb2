//! Supervision, live reload and shutdown: crashed actors restart alone, a crash loop
//! marks its target failed, SIGHUP applies a config by difference (or keeps the
//! running one), SIGTERM waits for hooks in flight.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::Signal;

use tether::watch::machine::Event;

use crate::support::harness::{Behaviour, Listener, Recorder, Sidecar, target};
use crate::support::tether_process::{TetherProcess, run_command};
use crate::support::{eventually, poll, poll_until};

const LIMIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread")]
async fn sighup_adds_removes_and_replaces_changed_targets_and_leaves_unchanged_ones_alone() {
    let (unchanged, changed, removed, added) = (
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let head = "[server]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(
        &path,
        format!(
            "{head}{}{}{}",
            target("unchanged", &unchanged.address(), ""),
            target("changed", &changed.address(), "failure_threshold = 3"),
            target("removed", &removed.address(), "")
        ),
    )
    .unwrap();
    let mut tether = TetherProcess::run(&path, &[]);
    let counts = || (unchanged.accepted(), changed.accepted(), removed.accepted());
    poll(LIMIT, "all three connected", || counts() == (1, 1, 1));

    std::fs::write(
        &path,
        format!(
            "{head}{}{}{}",
            target("unchanged", &unchanged.address(), ""),
            target("changed", &changed.address(), "failure_threshold = 4"),
            target("added", &added.address(), "")
        ),
    )
    .unwrap();
    tether.signal(Signal::SIGHUP);
    let line = tether.wait_for("config reloaded", LIMIT);
    assert!(line.contains(r#"added=["added"]"#), "{line}");
    assert!(line.contains(r#"removed=["removed"]"#), "{line}");
    assert!(line.contains(r#"changed=["changed"]"#), "{line}");
    poll(LIMIT, "reload applied", || {
        added.accepted() == 1
            && changed.accepted() == 2
            && changed.open() == 1
            && removed.open() == 0
    });
    assert_eq!(
        unchanged.accepted(),
        1,
        "the unchanged target kept its connection"
    );
    assert_eq!(unchanged.open(), 1);

    // /status follows: the replaced target stays up, the added one is listed, the
    // removed one is gone.
    let addr = tether.http_addr(LIMIT);
    let states = eventually(LIMIT, "added target up in /status", || async move {
        let doc = crate::endpoint::get(addr, "/status").await.json();
        let state = |name: &str| {
            doc["targets"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["name"] == name)
                .map(|t| t["state"].as_str().unwrap().to_owned())
        };
        (state("added").as_deref() == Some("up"))
            .then(|| (state("unchanged"), state("changed"), state("removed")))
    })
    .await;
    assert_eq!(states, (Some("up".to_owned()), Some("up".to_owned()), None));
    // The replaced actor announced nothing new: its reconnect replaced a live connection.
    assert!(
        !tether
            .lines()
            .iter()
            .any(|l| l.contains("changed is up (connect)") && l.contains("changed:1"))
    );

    tether.signal(Signal::SIGTERM);
    assert!(tether.wait_exit(LIMIT).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_with_a_broken_file_keeps_everything_running() {
    let a = Listener::start(Behaviour::Hold).await;
    let b = Listener::start(Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let good = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}{}",
        target("a", &a.address(), ""),
        target("b", &b.address(), "")
    );
    std::fs::write(&path, &good).unwrap();
    let mut tether = TetherProcess::run(&path, &[]);
    poll(LIMIT, "both connected", || {
        a.accepted() == 1 && b.accepted() == 1
    });

    std::fs::write(
        &path,
        format!("{good}\n[[targets]]\nname = \"a\"\naddress = \"nowhere\"\n"),
    )
    .unwrap();
    tether.signal(Signal::SIGHUP);
    let line = tether.wait_for("config reload failed", LIMIT);
    assert!(
        line.contains("tether.toml:"),
        "names file, line and column: {line}"
    );
    tether.wait_for("keeping the running config", LIMIT);
    assert!(tether.try_wait().is_none(), "still running");
    let metrics = crate::endpoint::get(tether.http_addr(LIMIT), "/metrics").await;
    assert_eq!(
        metrics.sample("tether_config_last_reload_successful"),
        Some(0.0),
        "a rejected reload shows until a good one"
    );
    assert_eq!(
        (a.accepted(), a.open(), b.accepted(), b.open()),
        (1, 1, 1, 1)
    );

    // A later good reload still works.
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            target("a", &a.address(), "")
        ),
    )
    .unwrap();
    tether.signal(Signal::SIGHUP);
    tether.wait_for("config reloaded", LIMIT);
    poll(LIMIT, "b stopped", || b.open() == 0);
    assert_eq!(a.accepted(), 1);

    // Both reloads were counted.
    let addr = tether.http_addr(LIMIT);
    let metrics = crate::endpoint::get(addr, "/metrics").await;
    assert_eq!(
        metrics.sample("tether_config_reloads_total{result=\"rejected\"}"),
        Some(1.0)
    );
    assert_eq!(
        metrics.sample("tether_config_reloads_total{result=\"applied\"}"),
        Some(1.0)
    );
    assert_eq!(
        metrics.sample("tether_config_last_reload_successful"),
        Some(1.0)
    );
    tether.signal(Signal::SIGTERM);
    assert!(tether.wait_exit(LIMIT).success());
}

/// A running `tether run` watching one live target whose `on_connect` hook runs
/// `shell`, where `{d}` stands for the returned scratch directory; `supervisor` holds
/// extra `[supervisor]` settings.
struct SlowHook {
    dir: tempfile::TempDir,
    tether: TetherProcess,
    /// The target's listener: bind it for the test's whole length, or the target dies.
    _listener: Listener,
}

async fn run_with_hook(supervisor: &str, hook_timeout: &str, shell: &str) -> SlowHook {
    let listener = Listener::start(Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let shell = shell.replace("{d}", &dir.path().display().to_string());
    let hooks = format!(
        "hook_timeout = \"{hook_timeout}\"\n[targets.hooks]\non_connect = {{ shell = \"{shell}\" }}"
    );
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[supervisor]\n{supervisor}\n{}",
            target("db", &listener.address(), &hooks)
        ),
    )
    .unwrap();
    let tether = TetherProcess::run(&path, &[]);
    SlowHook {
        dir,
        tether,
        _listener: listener,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_slow_hook_waits_for_it_and_exits_0() {
    let SlowHook {
        dir,
        mut tether,
        _listener,
    } = run_with_hook(
        "shutdown_grace = \"10s\"",
        "20s",
        "touch '{d}/started'; sleep 1.5; touch '{d}/finished'",
    )
    .await;
    poll(LIMIT, "hook started", || {
        dir.path().join("started").exists()
    });
    let asked = std::time::Instant::now();
    tether.signal(Signal::SIGTERM);
    let status = tether.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    assert!(
        dir.path().join("finished").exists(),
        "the hook was allowed to finish"
    );
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "within the grace period"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_lets_the_events_queued_behind_a_running_hook_run_within_the_grace() {
    let listener = Listener::start(Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // One slot: the second target's on_connect waits behind the first one's.
    let hooks = format!(
        "[targets.hooks]\non_connect = {{ shell = \"touch '{d}/started-'$TETHER_TARGET; \
         sleep 1; touch '{d}/done-'$TETHER_TARGET\" }}"
    );
    let path = dir.path().join("tether.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[defaults]\nmax_concurrent_hooks = 1\n\
             [supervisor]\nshutdown_grace = \"10s\"\n{}{}",
            target("a", &listener.address(), &hooks),
            target("b", &listener.address(), &hooks)
        ),
    )
    .unwrap();
    let mut tether = TetherProcess::run(&path, &[]);
    tether.wait_for("a is up", LIMIT);
    tether.wait_for("b is up", LIMIT);
    let started = |t: &str| dir.path().join(format!("started-{t}")).exists();
    poll(LIMIT, "the first hook started", || {
        started("a") || started("b")
    });
    assert!(
        !(started("a") && started("b")),
        "one slot runs one hook at a time"
    );
    tether.signal(Signal::SIGTERM);
    let status = tether.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    for t in ["a", "b"] {
        assert!(
            dir.path().join(format!("done-{t}")).exists(),
            "{t}'s on_connect ran to its end before tether exited"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once_and_takes_the_running_hooks_with_it() {
    let SlowHook {
        dir,
        mut tether,
        _listener,
    } = run_with_hook(
        "",
        "60s",
        "echo $$ > '{d}/hook'; setsid sh -c 'echo $$ > {d}/escaped; exec sleep 60' & \
         while [ ! -s '{d}/escaped' ]; do sleep 0.01; done; touch '{d}/started'; sleep 60",
    )
    .await;
    poll(LIMIT, "hook started", || {
        dir.path().join("started").exists()
    });
    let pid = |name: &str| -> u32 {
        std::fs::read_to_string(dir.path().join(name))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let (hook, escaped) = (pid("hook"), pid("escaped"));
    tether.signal(Signal::SIGTERM);
    tether.wait_for("shutting down", LIMIT);
    tether.signal(Signal::SIGTERM);
    let status = tether.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(143));
    // Dead (at most a zombie waiting for its new parent to reap it).
    let dead = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_or(true, |s| s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
    };
    poll(
        Duration::from_secs(5),
        "the hook and its escaped child ended",
        || dead(hook) && dead(escaped),
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once_even_after_many_sighups_during_shutdown() {
    let SlowHook {
        dir,
        mut tether,
        _listener,
    } = run_with_hook("", "60s", "touch '{d}/started'; sleep 60").await;
    poll(LIMIT, "hook started", || {
        dir.path().join("started").exists()
    });
    tether.signal(Signal::SIGTERM);
    tether.wait_for("shutting down", LIMIT);
    // One at a time, each seen before the next: the kernel folds signals sent together.
    let sighups = |t: &TetherProcess| t.lines().iter().filter(|l| l.contains("SIGHUP")).count();
    let mut handled = 0;
    for n in 1..=10 {
        tether.signal(Signal::SIGHUP);
        if poll_until(Duration::from_secs(3), || {
            (sighups(&tether) >= n).then_some(())
        })
        .is_none()
        {
            break;
        }
        handled = n;
    }
    let asked = std::time::Instant::now();
    tether.signal(Signal::SIGTERM);
    let status = tether.wait_exit(Duration::from_secs(5));
    println!(
        "{handled} SIGHUPs handled during shutdown; exited {:?} after the second SIGTERM",
        asked.elapsed()
    );
    assert_eq!(status.code(), Some(143));
    assert_eq!(handled, 10, "a SIGHUP went unhandled:\n{}", tether.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_fires_nothing_for_unchanged_targets_and_continues_numbering_for_changed_ones() {
    let (a, b) = (
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
    );
    let rec = Recorder::new();
    let sidecar = Sidecar::start(
        &format!(
            "{}{}",
            target("keep", &a.address(), ""),
            target("tune", &b.address(), "")
        ),
        &rec,
    );
    rec.nth_event("keep", Event::Connect, 1, LIMIT).await;
    rec.nth_event("tune", Event::Connect, 1, LIMIT).await;
    sidecar
        .reload(&format!(
            "{}{}",
            target("keep", &a.address(), ""),
            target("tune", &b.address(), "failure_threshold = 9")
        ))
        .await;
    poll(LIMIT, "tune reconnected", || b.accepted() == 2);
    drop(b);
    let (down, _) = rec.nth_event("tune", Event::Disconnect, 1, LIMIT).await;
    assert_eq!(down.seq, 1, "numbering continues after the replacement");
    assert_eq!(rec.events("keep"), [Event::Connect]);
    a.assert_accepted(1).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_removed_and_added_again_continues_its_event_ids() {
    let (a, b) = (
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
    );
    let rec = Recorder::new();
    let both = format!(
        "{}{}",
        target("stays", &a.address(), ""),
        target("comes-back", &b.address(), "")
    );
    let sidecar = Sidecar::start(&both, &rec);
    let (first, _) = rec.nth_event("comes-back", Event::Connect, 1, LIMIT).await;
    assert_eq!(first.seq, 0);

    sidecar.reload(&target("stays", &a.address(), "")).await;
    poll(LIMIT, "the removed target let go of its connection", || {
        b.open() == 0
    });
    sidecar.reload(&both).await;
    let (again, _) = rec.nth_event("comes-back", Event::Connect, 2, LIMIT).await;
    assert_eq!(
        again.seq, 1,
        "a receiver dropping duplicate ids would drop this event if it were :0"
    );
    assert_eq!(again.previous, tether::watch::machine::State::Connecting);
    assert_eq!(rec.events("stays"), [Event::Connect]);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_status_snapshot_during_reloads_shows_one_whole_config() {
    let listeners = [
        Listener::start(Behaviour::Hold).await,
        Listener::start(Behaviour::Hold).await,
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let head = "[server]\nlisten = \"127.0.0.1:0\"\n";
    // Two configs with no target in common, over the same listeners.
    let config = |prefix: &str| {
        let mut text = head.to_owned();
        for (i, l) in listeners.iter().enumerate() {
            for j in 0..10 {
                text.push_str(&target(&format!("{prefix}{i}-{j}"), &l.address(), ""));
            }
        }
        text
    };
    let names = |prefix: &str| {
        let mut names: Vec<String> = (0..2)
            .flat_map(|i| (0..10).map(move |j| format!("{prefix}{i}-{j}")))
            .collect();
        names.sort();
        names
    };
    let (a, b) = (names("a"), names("b"));
    std::fs::write(&path, config("a")).unwrap();
    let tether = TetherProcess::run(&path, &[]);
    let addr = tether.http_addr(LIMIT);

    let scraper = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while seen.len() < 400 && std::time::Instant::now() < deadline {
            let reply = crate::endpoint::get(addr, "/status").await;
            let doc: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
            let mut listed: Vec<String> = doc["targets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_owned())
                .collect();
            listed.sort();
            seen.push(listed);
        }
        seen
    });
    for round in 0..20 {
        let prefix = if round % 2 == 0 { "b" } else { "a" };
        std::fs::write(&path, config(prefix)).unwrap();
        tether.signal(Signal::SIGHUP);
        let applied = round + 1;
        poll(LIMIT, "the reload applied", || {
            tether.log().matches("config reloaded").count() >= applied
        });
    }
    let seen = scraper.await.unwrap();
    assert!(seen.len() >= 50, "only {} snapshots", seen.len());
    for listed in &seen {
        assert!(
            *listed == a || *listed == b,
            "a snapshot of neither config: {listed:?}"
        );
    }
    let of_b = seen.iter().filter(|l| **l == b).count();
    eprintln!("{} snapshots, {of_b} of the second config", seen.len());
    drop(tether);
}

#[cfg(feature = "fault-injection")]
mod faults {
    use super::*;
    use crate::support::harness::Record;
    use tether::watch::machine::State;

    #[tokio::test(flavor = "multi_thread")]
    async fn a_panicking_actor_is_restarted_without_touching_the_others() {
        let (a, b, c) = (
            Listener::start(Behaviour::Hold).await,
            Listener::start(Behaviour::Hold).await,
            Listener::start(Behaviour::Hold).await,
        );
        tether::fault::panic_on_connect("crashes-once", 1);
        let rec = Recorder::new();
        let sidecar = Sidecar::start(
            &format!(
                "{}{}{}",
                target("steady-a", &a.address(), ""),
                target("crashes-once", &b.address(), ""),
                target("steady-c", &c.address(), "")
            ),
            &rec,
        );
        rec.nth_event("crashes-once", Event::Connect, 1, LIMIT)
            .await;
        rec.nth_event("steady-a", Event::Connect, 1, LIMIT).await;
        rec.nth_event("steady-c", Event::Connect, 1, LIMIT).await;
        let restarts = rec
            .of("crashes-once")
            .iter()
            .filter(|r| matches!(r, Record::Restarted))
            .count();
        assert_eq!(restarts, 1);
        for listener in [&a, &b, &c] {
            listener.assert_accepted(1).await;
        }
        assert!(
            rec.of("steady-a")
                .iter()
                .all(|r| !matches!(r, Record::Restarted))
        );
        assert_eq!(
            rec.events("crashes-once"),
            [Event::Connect],
            "the crash itself is no event"
        );
        sidecar.stop().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn an_actor_crashing_beyond_its_intensity_marks_the_target_failed_once_then_recovers() {
        let l = Listener::start(Behaviour::Hold).await;
        tether::fault::panic_on_connect("crash-loop", 1000);
        let rec = Recorder::new();
        let sidecar = Sidecar::start(
            &format!(
                "[supervisor]\nmax_restarts = 3\nmax_seconds = 10\ncooldown = \"500ms\"\n{}",
                target("crash-loop", &l.address(), "")
            ),
            &rec,
        );
        let (failed, _) = rec.nth_event("crash-loop", Event::Failure, 1, LIMIT).await;
        assert_eq!(failed.state, State::Failed);
        let error = failed.last_error.as_ref().unwrap().to_string();
        assert!(
            error.contains("crashed 4 times") && error.contains("injected fault"),
            "{error}"
        );
        assert_eq!(
            rec.events("crash-loop"),
            [Event::Disconnect, Event::Failure]
        );

        // The cause goes away; after the cool-down the target comes back and recovers.
        tether::fault::panic_on_connect("crash-loop", 0);
        rec.nth_event("crash-loop", Event::Recover, 1, LIMIT).await;
        assert_eq!(
            rec.events("crash-loop"),
            [
                Event::Disconnect,
                Event::Failure,
                Event::Connect,
                Event::Recover
            ]
        );
        let seqs: Vec<u64> = rec
            .transitions("crash-loop")
            .iter()
            .map(|(t, _)| t.seq)
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3], "numbering continued across restarts");
        sidecar.stop().await;
    }
}

/// Runs `tether run` with the given open-files limits.
fn start_with_nofile(config: &Path, soft: u64, hard: u64) -> TetherProcess {
    use std::os::unix::process::CommandExt;
    let mut cmd = run_command(config, &[]);
    // SAFETY: only async-signal-safe work (one setrlimit call) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(std::io::Error::from)
        });
    }
    TetherProcess::spawn(cmd)
}

fn open_files_limit(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .skip(3)
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_raises_the_open_files_limit_and_warns_when_targets_may_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let l = Listener::start(Behaviour::Hold).await;
    let small = dir.path().join("small.toml");
    std::fs::write(
        &small,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}",
            target("one", &l.address(), "")
        ),
    )
    .unwrap();
    let mut tether = start_with_nofile(&small, 256, 4096);
    tether.wait_for("tether started", LIMIT);
    assert_eq!(open_files_limit(tether.pid()), "4096 4096");
    tether.signal(Signal::SIGTERM);
    assert!(tether.wait_exit(LIMIT).success());

    let many = dir.path().join("many.toml");
    let targets: String = (0..100)
        .map(|i| {
            format!(
                "[[targets]]\nname = \"t{i}\"\naddress = \"{}\"\n",
                l.address()
            )
        })
        .collect();
    std::fs::write(
        &many,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{targets}"),
    )
    .unwrap();
    let mut tether = start_with_nofile(&many, 128, 128);
    let warning = tether.wait_for("open-files limit may be too small", LIMIT);
    assert!(warning.contains("targets=100"), "{warning}");
    tether.signal(Signal::SIGTERM);
    assert!(tether.wait_exit(LIMIT).success());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hook_outliving_the_shutdown_grace_is_killed_and_tether_still_exits_0_in_time() {
    let SlowHook {
        dir,
        mut tether,
        _listener,
    } = run_with_hook(
        "shutdown_grace = \"1s\"",
        "60s",
        "echo $$ > '{d}/hook'; sleep 60",
    )
    .await;
    let pid_file = dir.path().join("hook");
    poll(LIMIT, "hook started", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let hook: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let asked = std::time::Instant::now();
    tether.signal(Signal::SIGTERM);
    let status = tether.wait_exit(LIMIT);
    assert!(status.success(), "{status:?}");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "exited {took:?} after SIGTERM with a 1 s grace"
    );
    tether.wait_for("killed", LIMIT);
    poll(Duration::from_secs(5), "hook process gone", || {
        !Path::new(&format!("/proc/{hook}")).exists()
            || std::fs::read_to_string(format!("/proc/{hook}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_on_status_returns_when_a_reload_adds_a_target() {
    let a = Listener::start(Behaviour::Hold).await;
    let b = Listener::start(Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let server = "[server]\nlisten = \"127.0.0.1:0\"\n";
    std::fs::write(&path, format!("{server}{}", target("a", &a.address(), ""))).unwrap();
    let tether = TetherProcess::run(&path, &[]);
    let addr = tether.http_addr(LIMIT);
    let up = eventually(LIMIT, "a up", || async {
        let r = crate::endpoint::get(addr, "/status").await;
        r.body.contains("\"up\"").then_some(r)
    })
    .await;
    let index = up.header("x-tether-index").unwrap().to_owned();
    let index = crate::endpoint::settled_index(addr, index, |r| r.body.contains("\"up\"")).await;
    let poll = tokio::spawn(async move {
        crate::endpoint::get(addr, &format!("/status?index={index}&wait=30s")).await
    });

    // b's first attempt lasts its check_timeout (the listener never answers PING): no
    // transition of b can end the wait before that, only the reload itself.
    let slow = "probe = \"redis\"\ncheck_interval = \"10s\"\ncheck_timeout = \"3s\"\n";
    std::fs::write(
        &path,
        format!(
            "{server}{}{}",
            target("a", &a.address(), ""),
            target("b", &b.address(), slow)
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    tether.signal(Signal::SIGHUP);
    let reply = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll answered")
        .unwrap();
    println!(
        "the long-poll answered {:?} after SIGHUP",
        started.elapsed()
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "answered by b's first attempt, not by the reload"
    );
    assert!(reply.body.contains("\"connecting\""), "{}", reply.body);
    assert!(reply.body.contains("\"name\": \"b\""), "{}", reply.body);
    assert_ne!(reply.header("x-tether-index"), up.header("x-tether-index"));
    drop(tether);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stderr_nobody_reads_never_stops_the_watching() {
    use crate::endpoint::get;
    let mut live = Listener::start(Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let port = crate::support::free_port();
    // 5,000 targets nobody listens for log about 10,000 transitions: far more than a
    // pipe holds (64 KiB), and more than the writer's queue.
    let mut config = format!("[server]\nlisten = \"127.0.0.1:{port}\"\n");
    config += &target("live", &live.address(), "");
    for i in 0..5_000 {
        config += &target(&format!("dead{i}"), "127.0.0.1:1", "");
    }
    let path = dir.path().join("tether.toml");
    std::fs::write(&path, config).unwrap();
    let mut command = run_command(&path, &[]);
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // Its stderr stays open and unread for the whole test.
    let mut tether = crate::support::process::spawn(command).expect("start tether");
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();

    let count = |body: &str, state: &str| body.matches(&format!("\"state\": \"{state}\"")).count();
    eventually(LIMIT, "every dead target failed and live up", || async {
        let r = crate::endpoint::request(
            addr,
            b"GET /status HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        (count(&r.body, "failed") == 5_000 && count(&r.body, "up") == 1).then_some(())
    })
    .await;
    let dropped = get(addr, "/metrics")
        .await
        .sample("tether_log_lines_dropped_total")
        .expect("the dropped lines are counted");
    eprintln!("log lines dropped: {dropped}");
    assert!(dropped > 0.0, "the log was never blocked");

    // And a death is still noticed.
    live.kill().await;
    eventually(LIMIT, "live noticed down", || async {
        let r = get(addr, "/status").await;
        (count(&r.body, "up") == 0).then_some(())
    })
    .await;
    let _ = tether.kill();
    let _ = tether.wait();
}
