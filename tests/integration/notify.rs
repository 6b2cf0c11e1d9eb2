//! `tether run` under systemd's `Type=notify`: readiness after the first round, a status
//! line that follows the targets, reloads and shutdown announced, and watchdog pings,
//! all read from a notification socket the test binds.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::support::harness::{Behaviour, Listener, target, write_config};
use crate::support::notify_socket::NotifySocket;
use crate::support::tether_process::{TetherProcess, run_command};
use crate::support::workdir;

/// What the tests ask of the watchdog: a ping every 200 ms.
const WATCHDOG_USEC: u64 = 400_000;

/// Generous bound for anything tether should announce within a second or two.
const LIMIT: Duration = Duration::from_secs(10);

/// `tether run` with `NOTIFY_SOCKET` and `WATCHDOG_USEC` set.
fn run_notified(config: &Path, socket: &NotifySocket) -> TetherProcess {
    let mut command = run_command(config, &[]);
    command
        .env("NOTIFY_SOCKET", socket.path())
        .env("WATCHDOG_USEC", WATCHDOG_USEC.to_string())
        .env_remove("WATCHDOG_PID");
    TetherProcess::spawn(command)
}

#[tokio::test(flavor = "multi_thread")]
async fn ready_waits_for_every_first_attempt_and_status_follows_the_targets() {
    let mut web = Listener::start(Behaviour::Hold).await;
    // Accepts and never answers: the first `redis` probe takes its whole check_timeout.
    let slow = Listener::start(Behaviour::Hold).await;
    let dir = workdir("notify-ready");
    let slow_probe = "probe = \"redis\"\ncheck_timeout = \"1s\"";
    let config = write_config(
        dir.path(),
        "",
        &(target("web", &web.address(), "") + &target("slow", &slow.address(), slow_probe)),
    );
    let mut socket = NotifySocket::bind();
    let started = Instant::now();
    let mut tether = run_notified(&config, &socket);

    let ready = socket.until(LIMIT, "READY=1", |m| m.says("READY")).await;
    let waited = ready.at - started;
    println!("READY=1 after {waited:?}; before it: {:?}", socket.seen);
    assert!(
        waited >= Duration::from_millis(900),
        "READY=1 after {waited:?}, before the slow target's first probe could time out"
    );
    let line = ready
        .get("STATUS")
        .expect("READY=1 comes with a status line");
    assert_eq!(line, "1/2 targets up; slow down", "status at READY=1");
    assert!(
        !socket.seen[..socket.seen.len() - 1]
            .iter()
            .any(|m| m.says("READY")),
        "a single READY=1 at startup: {:?}",
        socket.seen
    );

    web.kill().await;
    let down = socket
        .until(LIMIT, "a status line with web not up", |m| {
            m.get("STATUS")
                .is_some_and(|s| s.contains("web down") || s.contains("web failed"))
        })
        .await;
    println!("after the kill: {:?}", down.get("STATUS"));

    tether.signal(Signal::SIGTERM);
    socket
        .until(LIMIT, "STOPPING=1", |m| m.says("STOPPING"))
        .await;
    // Waited for, not stopped: a second SIGTERM would make tether exit at once.
    let status = tokio::task::spawn_blocking(move || {
        let status = tether.wait_exit(LIMIT);
        (status, tether.log())
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}; log:\n{}",
        status.0,
        status.1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn watchdog_pings_come_every_half_period() {
    let web = Listener::start(Behaviour::Hold).await;
    let dir = workdir("notify-watchdog");
    let config = write_config(dir.path(), "", &target("web", &web.address(), ""));
    let mut socket = NotifySocket::bind();
    let tether = run_notified(&config, &socket);
    socket.until(LIMIT, "READY=1", |m| m.says("READY")).await;

    let window = Duration::from_secs(2);
    let pings = socket.pings_during(window).await;
    let expected = window.as_micros() as u64 / (WATCHDOG_USEC / 2);
    let period = match (pings.first(), pings.last()) {
        (Some(first), Some(last)) if pings.len() > 1 => (*last - *first) / (pings.len() as u32 - 1),
        _ => Duration::ZERO,
    };
    println!(
        "{} watchdog pings in {window:?} (expected about {expected}); measured period {period:?}",
        pings.len()
    );
    let count = pings.len() as u64;
    assert!(
        (expected / 2..=expected * 3 / 2).contains(&count),
        "{count} pings in {window:?}, expected about {expected}"
    );
    assert!(
        period >= Duration::from_millis(150) && period <= Duration::from_millis(300),
        "measured period {period:?}, expected about 200 ms"
    );
    drop(tether);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_is_announced_whether_applied_or_refused_and_shutdown_too() {
    let web = Listener::start(Behaviour::Hold).await;
    let more = Listener::start(Behaviour::Hold).await;
    let dir = workdir("notify-reload");
    let config = write_config(dir.path(), "", &target("web", &web.address(), ""));
    let mut socket = NotifySocket::bind();
    let mut tether = run_notified(&config, &socket);
    socket.until(LIMIT, "READY=1", |m| m.says("READY")).await;

    // A good config: applied.
    write_config(
        dir.path(),
        "",
        &(target("web", &web.address(), "") + &target("more", &more.address(), "")),
    );
    reload_round(&mut socket, &tether).await;
    tether.wait_for("config reloaded", LIMIT);
    socket
        .until(LIMIT, "a status line with both targets", |m| {
            m.get("STATUS") == Some("2/2 targets up")
        })
        .await;

    // A bad config: refused, and tether goes on.
    std::fs::write(&config, "[[targets]]\nname = 1\n").unwrap();
    reload_round(&mut socket, &tether).await;
    tether.wait_for("keeping the running config", LIMIT);
    assert!(
        tether.try_wait().is_none(),
        "tether exited after a bad reload"
    );

    tether.signal(Signal::SIGTERM);
    let stopping = socket
        .until(LIMIT, "STOPPING=1", |m| m.says("STOPPING"))
        .await;
    println!("at shutdown: {:?}", stopping.lines);
    // Waited for, not stopped: a second SIGTERM would make tether exit at once.
    let status = tokio::task::spawn_blocking(move || {
        let status = tether.wait_exit(LIMIT);
        (status, tether.log())
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}; log:\n{}",
        status.0,
        status.1
    );
}

/// SIGHUP, then `RELOADING=1` with the monotonic clock at the time, then `READY=1`.
async fn reload_round(socket: &mut NotifySocket, tether: &TetherProcess) {
    let before = monotonic_usec();
    tether.signal(Signal::SIGHUP);
    let reloading = socket
        .until(LIMIT, "RELOADING=1", |m| m.says("RELOADING"))
        .await;
    let after = monotonic_usec();
    let stamp: i128 = reloading
        .get("MONOTONIC_USEC")
        .expect("RELOADING=1 comes with MONOTONIC_USEC")
        .parse()
        .expect("MONOTONIC_USEC is a number");
    assert!(
        (before..=after).contains(&stamp),
        "MONOTONIC_USEC={stamp} not between {before} and {after}"
    );
    let ready = socket
        .until(LIMIT, "READY=1 after the reload", |m| {
            m.says("READY") || m.says("RELOADING")
        })
        .await;
    assert!(
        ready.says("READY") && !ready.says("RELOADING"),
        "{:?}",
        socket.seen
    );
}

fn monotonic_usec() -> i128 {
    match sd_notify::NotifyState::monotonic_usec_now().expect("read CLOCK_MONOTONIC") {
        sd_notify::NotifyState::MonotonicUsec(usec) => usec,
        _ => unreachable!("monotonic_usec_now makes a MonotonicUsec"),
    }
}
