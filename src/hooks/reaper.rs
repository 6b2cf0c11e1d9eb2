//! Reaping: tether may run as PID 1 of a container, and hook commands may leave
//! orphans (a shell's background job, the grandchild of a killed hook). As a child
//! subreaper tether inherits those orphans and must collect them, or they pile up as
//! zombies.
//!
//! Hook commands themselves are reaped by tokio; the orphan reaper must not take their
//! exit status first, so it skips the hook processes tokio still waits for, and a hook
//! is spawned and registered as one step with respect to the reaper. Spawns take that
//! guard shared, so they never wait for each other; the reaper takes it exclusively
//! only to collect, never while it scans `/proc`.

use std::collections::HashSet;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock, RwLock};
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// The hook processes tokio is waiting for.
fn live() -> MutexGuard<'static, HashSet<u32>> {
    static LIVE: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Held shared from a hook's spawn to its registration, exclusively while orphans are
/// collected: a hook that exits at once is never mistaken for an orphan.
fn spawning() -> &'static RwLock<()> {
    static SPAWNING: RwLock<()> = RwLock::new(());
    &SPAWNING
}

/// At most one `/proc` scan in this interval: a burst of hooks raises SIGCHLD
/// thousands of times, and an orphan may well wait a moment to be collected.
const SCAN_INTERVAL: Duration = Duration::from_millis(100);

/// Spawns a hook process and registers it atomically with respect to the reaper.
pub fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let _spawning = spawning().read().unwrap_or_else(|p| p.into_inner());
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        live().insert(pid);
    }
    Ok(child)
}

/// Registers a hook process the spawner started: not tether's child, but ended with
/// the others by [`kill_all`].
pub fn started(pid: u32) {
    live().insert(pid);
}

/// The hook processes running now.
pub fn running() -> HashSet<u32> {
    live().clone()
}

/// Forgets a hook process once tokio has reaped it.
pub fn reaped(pid: u32) {
    live().remove(&pid);
}

/// Kills every hook process still running, with its process group: shutdown's grace
/// period is over. Returns how many groups were signalled.
pub fn kill_all() -> usize {
    let live = live();
    for pid in live.iter() {
        let _ = nix::sys::signal::killpg(
            Pid::from_raw(*pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    live.len()
}

/// Makes orphans of this process's descendants its children, not init's.
pub fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// Collects orphans on every SIGCHLD, for the life of the process.
pub fn spawn_orphan_reaper() -> io::Result<()> {
    let mut sigchld = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while sigchld.recv().await.is_some() {
            reap_orphans();
            // Signals that arrive meanwhile are kept by the stream: the next scan
            // follows at once after the pause, and covers them all.
            tokio::time::sleep(SCAN_INTERVAL).await;
        }
    });
    Ok(())
}

/// Reaps every zombie child that is not a hook process tokio waits for.
pub fn reap_orphans() -> usize {
    let zombies = zombie_children(std::process::id());
    if zombies.is_empty() {
        return 0;
    }
    let _collecting = spawning().write().unwrap_or_else(|p| p.into_inner());
    let live = live();
    let mut reaped = 0;
    for pid in zombies {
        if live.contains(&pid) {
            continue;
        }
        match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => {}
            Ok(_) => reaped += 1,
        }
    }
    reaped
}

/// Children of `parent` that have exited and wait to be reaped, from /proc.
fn zombie_children(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is parenthesised and may contain spaces: parse after it.
        let rest = &stat[stat.rfind(')')? + 2..];
        let mut fields = rest.split(' ');
        let state = fields.next()?;
        let ppid: u32 = fields.next()?.parse().ok()?;
        (state == "Z" && ppid == parent).then_some(pid)
    })
    .collect()
}
