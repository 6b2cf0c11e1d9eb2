//! Reaping: tether may run as PID 1 of a container, and hook commands may leave
//! orphans (a shell's background job, the grandchild of a killed hook). As a child
//! subreaper tether inherits those orphans and must collect them, or they pile up as
//! zombies.
//!
//! Hook commands themselves are reaped by tokio; the orphan reaper must not take their
//! exit status first, so spawning and reaping share one lock and the reaper skips the
//! hook processes tokio still waits for.

use std::collections::HashSet;
use std::io;
use std::sync::{Mutex, MutexGuard, OnceLock};

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};

/// The hook processes tokio is waiting for.
fn live() -> MutexGuard<'static, HashSet<u32>> {
    static LIVE: OnceLock<Mutex<HashSet<u32>>> = OnceLock::new();
    LIVE.get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Spawns a hook process and registers it atomically with respect to the reaper.
pub fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut live = live();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        live.insert(pid);
    }
    Ok(child)
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
        }
    });
    Ok(())
}

/// Reaps every zombie child that is not a hook process tokio waits for.
pub fn reap_orphans() -> usize {
    let live = live();
    let me = std::process::id();
    let mut reaped = 0;
    for pid in zombie_children(me) {
        if live.contains(&pid) {
            continue;
        }
        if waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)).is_ok() {
            reaped += 1;
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
