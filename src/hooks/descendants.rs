//! Every process a hook started ends when the hook ends.
//!
//! A hook runs in a process group of its own, and the group is ended with it: SIGTERM,
//! then SIGKILL after a grace. A process can leave the group (`setsid`, `setpgid`, a
//! daemon's double fork); when its parent dies it is reparented to tether, which is a
//! child subreaper. Each hook's processes carry `TETHER_HOOK_RUN` in their environment,
//! with a value unique to that run, so the orphans tether adopts are matched to the run
//! that left them and ended with their own descendants. Only a process that both leaves
//! the group and clears its environment (`env -i`) escapes; a hook that means to start
//! something long-lived hands it to the service manager instead (`systemd-run`).
//!
//! Looking for escapees costs a read of tether's own child list (a few `/proc` files)
//! when a hook ends; `/proc` is walked further only when an orphan is found.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::time::{Instant, sleep};

/// The environment variable that marks a hook run's processes.
pub const RUN_VAR: &str = "TETHER_HOOK_RUN";

/// Between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(1);

/// How often the end of a process group is checked for during the grace.
const POLL: Duration = Duration::from_millis(10);

/// A value of [`RUN_VAR`] no other run of this process shares.
pub fn new_run() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        crate::instance::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Ends what is left of the run `run` whose group is `group`: the members of its
/// process group, then the processes it left outside the group, each with its
/// descendants. `hooks` are the hook processes still running, never touched here.
pub async fn end(group: u32, run: &str, hooks: &HashSet<u32>) {
    end_group(group).await;
    let escaped: Vec<u32> = adopted(hooks)
        .into_iter()
        .filter(|&pid| carries(pid, run))
        .collect();
    if escaped.is_empty() {
        return;
    }
    let mut doomed = Vec::new();
    for pid in escaped {
        doomed.extend(tree(pid));
    }
    tracing::debug!(
        run,
        processes = doomed.len(),
        "ending processes a hook left outside its group"
    );
    for &pid in &doomed {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    }
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && doomed.iter().any(|&p| alive(p)) {
        sleep(POLL).await;
    }
    for &pid in &doomed {
        if alive(pid) {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// SIGTERM to the group if anything is left in it, SIGKILL to what survives the grace.
async fn end_group(group: u32) {
    let group = Pid::from_raw(group as i32);
    // The common case, a hook that left nothing behind, costs one system call.
    if killpg(group, None).is_err() {
        return;
    }
    let _ = killpg(group, Signal::SIGTERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        sleep(POLL).await;
        if !group_alive(group) {
            return;
        }
    }
    let _ = killpg(group, Signal::SIGKILL);
}

/// SIGKILL to every process the hooks of this process started, with their descendants:
/// the shutdown is over, nothing a hook started may outlive tether. Only processes that
/// carry a run marker of this process are touched, so a program embedding tether keeps
/// its other children. Returns how many were signalled.
pub fn kill_everything() -> usize {
    let ours = format!("{RUN_VAR}={}-", crate::instance::id());
    let mut n = 0;
    // Hooks are the spawner's children, or tether's own where it started them.
    let mut candidates = children(std::process::id());
    if let Some(spawner) = super::spawner::pid() {
        candidates.extend(children(spawner));
    }
    for child in candidates {
        if !marked(child, &ours) {
            continue;
        }
        for pid in tree(child) {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                n += 1;
            }
        }
    }
    n
}

/// Whether anything but zombies waiting to be reaped is left in the group.
fn group_alive(group: Pid) -> bool {
    killpg(group, None).is_ok() && members(group).next().is_some()
}

/// The live (non-zombie) members of a process group, from /proc.
fn members(group: Pid) -> impl Iterator<Item = u32> {
    let group = group.as_raw();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(move |entry| {
            let pid: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let (state, _, pgrp) = stat(pid)?;
            (pgrp == group && state != 'Z').then_some(pid)
        })
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some_and(|(state, _, _)| state != 'Z')
}

/// State, parent and process group of `pid`, from `/proc/PID/stat`.
fn stat(pid: u32) -> Option<(char, u32, i32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may contain anything: parse after it.
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split(' ');
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some((state, ppid, pgrp))
}

/// tether's children that are not hook processes nor the spawner: orphans it adopted.
fn adopted(hooks: &HashSet<u32>) -> Vec<u32> {
    let spawner = super::spawner::pid();
    children(std::process::id())
        .into_iter()
        .filter(|pid| !hooks.contains(pid) && Some(*pid) != spawner && alive(*pid))
        .collect()
}

/// The children of `pid`, from each of its threads' `children` file.
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for task in tasks.flatten() {
        let path = task.path().join("children");
        if let Ok(text) = std::fs::read_to_string(path) {
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
    }
    out
}

/// `pid` and all its descendants, parents before children.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let next = children(out[i]);
        out.extend(next);
        i += 1;
    }
    out
}

/// Whether `pid` was started with `TETHER_HOOK_RUN=run` in its environment.
fn carries(pid: u32, run: &str) -> bool {
    let wanted = format!("{RUN_VAR}={run}");
    environ(pid).is_some_and(|env| env.split(|&b| b == 0).any(|e| e == wanted.as_bytes()))
}

/// Whether `pid`'s environment has an entry starting with `prefix`.
fn marked(pid: u32, prefix: &str) -> bool {
    environ(pid).is_some_and(|env| {
        env.split(|&b| b == 0)
            .any(|e| e.starts_with(prefix.as_bytes()))
    })
}

fn environ(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}
