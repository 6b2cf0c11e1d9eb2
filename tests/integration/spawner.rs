//! The hook spawner of `tether run`: hooks start from a small process of tether's own,
//! with a clean signal state, and keep starting when it dies or is signalled.

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::support::harness::{Behaviour, Listener, target, write_config};
use crate::support::poll_until;
use crate::support::tether_process::TetherProcess;

const LIMIT: Duration = Duration::from_secs(15);

/// A shell hook that appends "`$TETHER_EVENT` `parent pid`" to `dir/hooks`, and records
/// its parent's command line, its signal state and its input under `dir`. The signal
/// state is read first, with builtins only: a shell blocks every signal for a moment
/// around each fork, and a command it forks could read it then.
fn recording_hook(dir: &Path) -> String {
    format!(
        r#"{{ shell = "while read -r k v; do case $k in SigBlk:|SigIgn:) echo $k $v;; esac; done < /proc/$$/status > '{d}'/signals.$TETHER_EVENT_ID; tr '\\0' ' ' < /proc/$PPID/cmdline > '{d}'/parent.$TETHER_EVENT_ID; cat > '{d}'/stdin.$TETHER_EVENT_ID; echo \"$TETHER_EVENT $PPID\" >> '{d}/hooks'; echo to-stdout; echo to-stderr >&2; exit 3" }}"#,
        d = dir.display()
    )
}

fn config(dir: &Path, listener: &Listener) -> PathBuf {
    let hook = recording_hook(dir);
    write_config(
        dir,
        "",
        &target(
            "db",
            &listener.address(),
            &format!(
                "backoff = {{ initial = \"20ms\", max = \"100ms\" }}\n\
                 [targets.hooks]\non_connect = {hook}\non_disconnect = {hook}"
            ),
        ),
    )
}

/// The hooks that ran so far: (event, parent pid), in order.
fn hooks(dir: &Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(dir.join("hooks"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (event, parent) = l.split_once(' ')?;
            Some((event.to_owned(), parent.parse().ok()?))
        })
        .collect()
}

/// Waits until `n` hooks ran; returns them all.
async fn hooks_until(dir: &Path, n: usize) -> Vec<(String, u32)> {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        poll_until(LIMIT, || {
            let h = hooks(&dir);
            (h.len() >= n).then_some(h)
        })
        .unwrap_or_else(|| {
            panic!(
                "fewer than {n} hooks ran within {LIMIT:?}: {:?}",
                hooks(&dir)
            )
        })
    })
    .await
    .unwrap()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].split(' ').nth(1)?.parse().ok()
}

fn is_spawner(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"spawner".as_slice()))
}

/// Gone, or a zombie nobody has collected yet: not running.
fn ended(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
        stat.rfind(')')
            .is_some_and(|i| stat[i + 2..].starts_with('Z'))
    })
}

async fn stops_cleanly(tether: TetherProcess) {
    let (status, log) = tokio::task::spawn_blocking(move || tether.stop())
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{log}");
}

/// Waits until `pid` has ended.
async fn until_ended(pid: u32, what: &'static str) {
    tokio::task::spawn_blocking(move || {
        poll_until(LIMIT, || ended(pid).then_some(())).unwrap_or_else(|| panic!("{what}"));
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sidecars_hooks_start_from_its_spawner_with_input_output_and_no_signal_held() {
    let dir = tempfile::tempdir().unwrap();
    let listener = Listener::start(Behaviour::Hold).await;
    let tether = TetherProcess::run(&config(dir.path(), &listener), &[]);
    let hooks = hooks_until(dir.path(), 1).await;
    let (event, spawner) = &hooks[0];
    assert_eq!(event, "connect");
    assert!(is_spawner(*spawner), "the hook's parent is not the spawner");
    assert_eq!(parent_of(*spawner), Some(tether.pid()));

    // No signal blocked, SIGPIPE not ignored: the spawner's own signal state (it holds
    // SIGCHLD, SIGTERM, SIGINT, SIGHUP and SIGQUIT; Rust ignores SIGPIPE) stays its own.
    let signals = std::fs::read_to_string(dir.path().join("signals.db:0")).unwrap();
    let mask = |name: &str| {
        signals
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
            .unwrap_or_else(|| panic!("no {name} in {signals:?}"))
    };
    assert_eq!(mask("SigBlk:"), 0, "{signals}");
    let ignored = mask("SigIgn:");
    assert_eq!(ignored & (1 << (libc::SIGPIPE - 1)), 0, "{signals}");

    // The event arrives on stdin; the exit status and output reach the log.
    let input = std::fs::read_to_string(dir.path().join("stdin.db:0")).unwrap();
    let payload: serde_json::Value = serde_json::from_str(&input).unwrap();
    assert_eq!(payload["event"], "connect");
    assert_eq!(payload["target"], "db");
    // Standard error, then standard output, on the lines that follow.
    let line = tether.wait_for("exit status 3", LIMIT);
    assert!(line.contains("to-stderr"), "{line}");
    tether.wait_for("to-stdout", LIMIT);

    stops_cleanly(tether).await;
    until_ended(*spawner, "the spawner outlived tether").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_spawner_signalled_with_its_group_keeps_starting_hooks() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(Behaviour::Hold).await;
    let tether = TetherProcess::run(&config(dir.path(), &listener), &[]);
    let (_, spawner) = hooks_until(dir.path(), 1).await[0];
    // What a terminal's ^C or a service manager's stop sends every process of the
    // group: tether shuts down on it and runs its last hooks, so the spawner waits for
    // tether to close its socket instead.
    for signal in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        kill(Pid::from_raw(spawner as i32), signal).unwrap();
    }
    listener.kill().await;
    let hooks = hooks_until(dir.path(), 2).await;
    assert_eq!(hooks[1], ("disconnect".to_owned(), spawner));
    stops_cleanly(tether).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_spawner_loses_no_hook_and_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut listener = Listener::start(Behaviour::Hold).await;
    let tether = TetherProcess::run(&config(dir.path(), &listener), &[]);
    let (_, first) = hooks_until(dir.path(), 1).await[0];
    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    until_ended(first, "the spawner survived SIGKILL").await;

    // Every event still runs its hook: from a new spawner, or from tether itself in
    // the second after a spawner died. Flapped until a new spawner started one.
    let mut seen = 1;
    let flapping = std::time::Instant::now();
    let replaced = loop {
        listener.kill().await;
        seen += 1;
        let hooks = hooks_until(dir.path(), seen).await;
        assert_eq!(hooks[seen - 1].0, "disconnect", "{hooks:?}");
        listener.restore(Behaviour::Hold).await;
        seen += 1;
        let hooks = hooks_until(dir.path(), seen).await;
        assert_eq!(hooks[seen - 1].0, "connect", "{hooks:?}");
        let parent = hooks[seen - 1].1;
        assert_ne!(parent, first, "a hook started from the dead spawner");
        assert!(parent == tether.pid() || is_spawner(parent), "{hooks:?}");
        if parent != tether.pid() {
            break parent;
        }
        // A new spawner is started at most once a second.
        assert!(
            flapping.elapsed() < LIMIT,
            "no new spawner after {seen} hooks: {hooks:?}"
        );
    };
    assert_eq!(parent_of(replaced), Some(tether.pid()));
    tether.wait_for("the hook spawner ended; started a new one", LIMIT);
    stops_cleanly(tether).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_hooks_that_end_at_once_is_reported_whole() {
    // 300 hooks that exit as soon as they start: some end, and are collected, before the
    // thread that started them has announced them. Each must still be reported as ended
    // (a lost exit would hold its run until the 60 s timeout).
    const TARGETS: usize = 300;
    let dir = tempfile::tempdir().unwrap();
    let listener = Listener::start(Behaviour::Hold).await;
    let targets: String = (0..TARGETS)
        .map(|i| {
            target(
                &format!("t{i}"),
                &listener.address(),
                "hook_timeout = \"60s\"\n[targets.hooks]\non_connect = { command = [\"/bin/true\"] }",
            )
        })
        .collect();
    let path = dir.path().join("tether.toml");
    std::fs::write(
        &path,
        format!("[server]\nlisten = \"127.0.0.1:0\"\n{targets}"),
    )
    .unwrap();
    let tether = TetherProcess::run(&path, &[]);
    let tether = tokio::task::spawn_blocking(move || {
        let ran = || {
            tether
                .lines()
                .iter()
                .filter(|l| l.contains("hook ran: exit status 0"))
                .count()
        };
        poll_until(LIMIT, || (ran() == TARGETS).then_some(()))
            .unwrap_or_else(|| panic!("{} of {TARGETS} hooks reported ended", ran()));
        tether
    })
    .await
    .unwrap();
    stops_cleanly(tether).await;
}
