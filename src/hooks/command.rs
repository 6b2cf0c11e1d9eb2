//! Command and shell hooks: a child process in its own process group, given the event
//! as environment variables and as JSON on standard input, without the variables tether
//! reads as secrets. When it ends, or is killed at its timeout, everything it started
//! ends with it (see [`descendants`](super::descendants)).

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::timeout;

use super::spawner::{self, SpawnError};
use super::{descendants, reaper};
use crate::secrets;
use crate::watch::observe::HookResult;

/// How much of a hook's output (standard error, then standard output) is kept for the
/// log, in bytes.
pub const OUTPUT_CAP: usize = 4096;
/// How long to wait for output after the hook exited: a background process it left
/// behind may hold the pipe open for ever.
const OUTPUT_LINGER: Duration = Duration::from_millis(200);

/// How one run ended, with what the log should show.
#[derive(Debug)]
pub struct Outcome {
    pub result: HookResult,
    /// Exit status or the reason it could not run.
    pub status: String,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// What the log shows of the output: standard error, then standard output, at most
    /// [`OUTPUT_CAP`] bytes in all.
    pub fn output(&self) -> String {
        let mut out = match (self.stdout.is_empty(), self.stderr.is_empty()) {
            (true, _) => self.stderr.clone(),
            (false, true) => self.stdout.clone(),
            (false, false) => format!("{}\n{}", self.stderr, self.stdout),
        };
        if out.len() > OUTPUT_CAP {
            let mut cut = OUTPUT_CAP;
            while !out.is_char_boundary(cut) {
                cut -= 1;
            }
            out.truncate(cut);
        }
        out
    }
}

/// Runs `argv` directly: no shell ever sees target data.
pub async fn run_argv(argv: &[String], env: &[Var], json: &[u8], limit: Duration) -> Outcome {
    let argv: Vec<OsString> = argv.iter().map(OsString::from).collect();
    run(argv, env, json, limit).await
}

/// Runs the user's shell text with `sh -c`; target data arrives only as variables.
pub async fn run_shell(script: &str, env: &[Var], json: &[u8], limit: Duration) -> Outcome {
    let argv = vec!["/bin/sh".into(), "-c".into(), script.into()];
    run(argv, env, json, limit).await
}

/// One variable a hook is given.
pub type Var = (&'static str, String);

async fn run(argv: Vec<OsString>, env: &[Var], json: &[u8], limit: Duration) -> Outcome {
    let run_id = descendants::new_run();
    let Started {
        mut child,
        stdin,
        stdout,
        stderr,
    } = match start(&argv, env, &run_id).await {
        Ok(started) => started,
        Err(e) => {
            return Outcome {
                result: HookResult::Error,
                status: format!("cannot start: {e}"),
                stdout: String::new(),
                stderr: String::new(),
            };
        }
    };
    let pid = child.id();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A hook that ignores its input may close it early: not an error.
            let _ = stdin.write_all(json).await;
        }
    };

    let run = async {
        feed.await;
        child.wait().await
    };
    let (result, status) = match timeout(limit, run).await {
        Ok(Ok(status)) => (classify(status), describe(status)),
        Ok(Err(e)) => (HookResult::Error, format!("cannot wait for it: {e}")),
        Err(_) => {
            kill_group(pid, &mut child).await;
            (
                HookResult::Timeout,
                format!("killed after the {limit:?} hook timeout"),
            )
        }
    };
    reaper::reaped(pid);
    // Whatever it left running ends with it: background jobs in its group, and what
    // left the group, now tether's orphans.
    descendants::end(pid, &run_id, &reaper::running()).await;
    Outcome {
        result,
        status,
        stdout: collect(stdout).await,
        stderr: collect(stderr).await,
    }
}

/// A hook process, started by the spawner or by tether itself.
enum Child {
    Spawned(spawner::Child),
    Own(tokio::process::Child),
}

impl Child {
    fn id(&self) -> u32 {
        match self {
            Child::Spawned(c) => c.pid,
            Child::Own(c) => c.id().expect("a child not yet waited for has a pid"),
        }
    }

    async fn wait(&mut self) -> io::Result<ExitStatus> {
        match self {
            Child::Spawned(c) => c.wait().await,
            Child::Own(c) => c.wait().await,
        }
    }
}

/// A started hook, its input to write and its output being read.
struct Started {
    child: Child,
    stdin: Option<Box<dyn AsyncWrite + Send + Unpin>>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    stderr: Option<JoinHandle<Vec<u8>>>,
}

/// Starts the hook through the spawner where `tether run` has one, else from tether.
async fn start(argv: &[OsString], env: &[Var], run_id: &str) -> io::Result<Started> {
    let vars = || {
        env.iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .chain(std::iter::once((
                OsString::from(descendants::RUN_VAR),
                OsString::from(run_id),
            )))
    };
    if let Some(spawner) = spawner::current() {
        let (stdin, feed) = pipe()?;
        let (out, stdout) = pipe()?;
        let (err, stderr) = pipe()?;
        let environment = spawner::environment(vars());
        let request = spawner::Command {
            argv,
            env: &environment,
            stdin,
            stdout,
            stderr,
        };
        match spawner.spawn(request).await {
            Ok(child) => {
                return Ok(Started {
                    child: Child::Spawned(child),
                    stdin: Some(Box::new(pipe::Sender::from_owned_fd(feed)?)),
                    stdout: capture(Some(pipe::Receiver::from_owned_fd(out)?)),
                    stderr: capture(Some(pipe::Receiver::from_owned_fd(err)?)),
                });
            }
            Err(SpawnError::Start(e)) => return Err(e),
            Err(SpawnError::Unavailable(e)) => {
                tracing::debug!(error = %e, "starting a hook from tether");
            }
        }
    }
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    for var in secrets::variables() {
        cmd.env_remove(&*var);
    }
    cmd.envs(vars())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills the hook and everything it started. With
        // a process group and no `pre_exec` closure the standard library starts the
        // hook with posix_spawn (glibc: clone with CLONE_VM | CLONE_VFORK), which copies
        // nothing of tether's memory; a closure would force fork and exec, copying the
        // page tables of the whole process for every hook of a mass outage.
        .process_group(0)
        .kill_on_drop(false);
    let mut child = reaper::spawn(&mut cmd)?;
    Ok(Started {
        stdin: child
            .stdin
            .take()
            .map(|s| Box::new(s) as Box<dyn AsyncWrite + Send + Unpin>),
        stdout: capture(child.stdout.take()),
        stderr: capture(child.stderr.take()),
        child: Child::Own(child),
    })
}

/// A pipe, both ends closed on exec: the hook gets its end through the spawner.
/// Returns (read end, write end).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

/// SIGTERM to the whole group, SIGKILL to the hook after a grace period, then reap it;
/// members of the group that outlive it are ended by [`descendants::end`].
async fn kill_group(pid: u32, child: &mut Child) {
    let group = Pid::from_raw(pid as i32);
    let _ = killpg(group, Signal::SIGTERM);
    if timeout(descendants::GRACE, child.wait()).await.is_err() {
        let _ = killpg(group, Signal::SIGKILL);
        let _ = child.wait().await;
    }
}

fn classify(status: ExitStatus) -> HookResult {
    if status.success() {
        HookResult::Ok
    } else {
        HookResult::Failed
    }
}

fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// Reads a pipe to its end, keeping the first `OUTPUT_CAP` bytes; the rest is drained
/// so the hook never blocks on a full pipe.
fn capture<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>) -> Option<JoinHandle<Vec<u8>>> {
    let mut pipe = pipe?;
    Some(tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 1024];
        loop {
            match pipe.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = OUTPUT_CAP.saturating_sub(kept.len());
                    kept.extend_from_slice(&buf[..n.min(room)]);
                }
            }
        }
        kept
    }))
}

async fn collect(handle: Option<JoinHandle<Vec<u8>>>) -> String {
    let Some(mut handle) = handle else {
        return String::new();
    };
    match timeout(OUTPUT_LINGER, &mut handle).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).trim_end().to_owned(),
        _ => {
            handle.abort();
            String::new()
        }
    }
}
