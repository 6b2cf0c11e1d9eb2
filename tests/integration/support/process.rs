//! The life of one test server's OS process: spawned with its output in a log, waited on with
//! bounded polls, frozen, thawed and killed on demand, and never outliving the test.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use nix::sys::prctl;
use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::{free_port, log_tail};

/// How long a frozen/thawed or killed process may take to show that state in /proc. Signals
/// land within microseconds; the bound only exists so a kernel oddity fails loudly.
const SIGNAL_SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a server gets to shut down cleanly when a test is over before it is SIGKILLed.
const GRACEFUL_TIMEOUT: Duration = Duration::from_secs(10);

/// How many fresh ports a start tries when another process keeps taking the one it picked.
const PORT_ATTEMPTS: usize = 5;

/// Why a server did not become ready.
#[derive(Debug)]
pub enum StartError {
    /// The process exited; `output` is what it logged during this attempt.
    Exited { status: ExitStatus, output: String },
    /// It kept running but never answered the readiness probe.
    NotReady {
        timeout: Duration,
        last_error: io::Error,
    },
}

impl StartError {
    /// Whether the server died because the port it was given had been taken in the meantime,
    /// which [`free_port`] cannot rule out; every server here logs the OS error text.
    fn is_port_taken(&self) -> bool {
        matches!(self, Self::Exited { output, .. } if output.contains("Address already in use"))
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exited { status, .. } => write!(f, "exited during startup ({status})"),
            Self::NotReady {
                timeout,
                last_error,
            } => {
                write!(
                    f,
                    "did not become ready within {timeout:?} (last probe: {last_error})"
                )
            }
        }
    }
}

/// A server process owned by one test.
///
/// The process is put in its own process group, so signals aimed at it never reach the test
/// harness, and is spawned with a parent-death signal, so it is SIGKILLed even when the test
/// binary itself is killed and no destructor runs.
#[derive(Debug)]
pub struct ServerProcess {
    name: &'static str,
    log: PathBuf,
    child: Option<Child>,
    /// Signal that makes the server stop promptly but tidily (reaping its own children) when the
    /// test is over; `None` means SIGKILL is already tidy enough.
    graceful: Option<Signal>,
    /// Length of the log when the current attempt started, to tell apart this attempt's output.
    attempt_start: u64,
    /// While the server is frozen: a watchdog that SIGKILLs the frozen processes if the test
    /// binary dies (see [`arm_freeze_guard`]).
    freeze_guard: Option<Child>,
}

impl ServerProcess {
    pub fn new(name: &'static str, log: PathBuf, graceful: Option<Signal>) -> Self {
        Self {
            name,
            log,
            child: None,
            graceful,
            attempt_start: 0,
            freeze_guard: None,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Panics with the server's log, which almost always holds the reason a test server
    /// misbehaved.
    pub fn fail(&self, what: impl fmt::Display) -> ! {
        panic!(
            "{}: {what}\n----- {} -----\n{}\n----- end of log -----",
            self.name,
            self.log.display(),
            log_tail(&self.log)
        )
    }

    /// Appends a line to the server's log so that, when a panic shows the log, the reader sees
    /// where the test started, froze, thawed or killed the server.
    fn note(&self, event: impl fmt::Display) {
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(&self.log) {
            let _ = writeln!(file, "===== tether test harness: {event} =====");
        }
    }

    fn open_log(&self) -> File {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|err| panic!("open {} log {}: {err}", self.name, self.log.display()))
    }

    /// Runs a one-off setup command (initdb, mariadb-install-db) to completion, with its output
    /// in the server's log, panicking if it fails or hangs.
    pub fn run_to_completion(&self, mut command: Command, timeout: Duration) {
        self.note(format_args!("running {command:?}"));
        let log = self.open_log();
        let stderr = log.try_clone().expect("duplicate log file handle");
        command.stdin(Stdio::null()).stdout(log).stderr(stderr);
        let mut child = spawn(command)
            .unwrap_or_else(|err| self.fail(format_args!("could not run setup command: {err}")));
        let status = super::poll_until(timeout, || child.try_wait().ok().flatten());
        match status {
            Some(status) if status.success() => {}
            Some(status) => self.fail(format_args!("setup command failed ({status})")),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                self.fail(format_args!(
                    "setup command did not finish within {timeout:?}"
                ));
            }
        }
    }

    /// Starts the server; the previous process, if any, must be gone.
    pub fn spawn(&mut self, mut command: Command) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.note(format_args!("starting {command:?}"));
        let log = self.open_log();
        self.attempt_start = log.metadata().map_or(0, |meta| meta.len());
        let stderr = log.try_clone().expect("duplicate log file handle");
        command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .process_group(0);
        match spawn(command) {
            Ok(child) => self.child = Some(child),
            Err(err) => self.fail(format_args!("could not start: {err}")),
        }
    }

    /// Polls `probe` until it succeeds, the process exits, or `timeout` passes.
    pub fn wait_ready<T>(
        &mut self,
        timeout: Duration,
        mut probe: impl FnMut() -> io::Result<T>,
    ) -> Result<T, StartError> {
        let mut last_error = io::Error::other("never probed");
        let mut exited = None;
        let ready = super::poll_until(timeout, || {
            let child = self
                .child
                .as_mut()
                .expect("wait_ready needs a spawned process");
            if let Ok(Some(status)) = child.try_wait() {
                exited = Some(status);
                return Some(None);
            }
            match probe() {
                Ok(value) => Some(Some(value)),
                Err(err) => {
                    last_error = err;
                    None
                }
            }
        });
        match (ready, exited) {
            (Some(Some(value)), _) => Ok(value),
            (_, Some(status)) => {
                self.child = None;
                Err(StartError::Exited {
                    status,
                    output: self.attempt_output(),
                })
            }
            _ => Err(StartError::NotReady {
                timeout,
                last_error,
            }),
        }
    }

    fn attempt_output(&self) -> String {
        let bytes = fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(self.attempt_start)
            .unwrap_or(0)
            .min(bytes.len());
        String::from_utf8_lossy(&bytes[start..]).into_owned()
    }

    /// Starts the server on a fresh port, moving to another port if the chosen one was taken
    /// between [`free_port`] and the server's bind. `launch` spawns the server on the given port
    /// and waits for it; the port that worked is returned.
    pub fn start_on_free_port(
        &mut self,
        mut launch: impl FnMut(&mut Self, u16) -> Result<(), StartError>,
    ) -> u16 {
        let mut taken = Vec::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port();
            match launch(self, port) {
                Ok(()) => return port,
                Err(err) if err.is_port_taken() => taken.push(port),
                Err(err) => {
                    self.kill();
                    self.fail(err);
                }
            }
        }
        self.fail(format_args!(
            "every port tried was already in use: {taken:?}"
        ))
    }

    /// Panics unless the process is still running: a server that died on its own means the test
    /// is no longer testing what it thinks it is.
    fn running_child(&mut self, action: &str) -> &Child {
        let Some(child) = self.child.as_mut() else {
            panic!(
                "{}: cannot {action}: it is not running (killed and not restarted)",
                self.name
            );
        };
        match child.try_wait() {
            Ok(None) => {}
            Ok(Some(status)) => {
                self.child = None;
                self.fail(format_args!(
                    "cannot {action}: it exited on its own ({status})"
                ));
            }
            Err(err) => self.fail(format_args!("cannot {action}: waitpid failed: {err}")),
        }
        self.child.as_ref().expect("checked above")
    }

    /// The pid of the server's main process (the one [`kill`](Self::kill) reaps).
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .unwrap_or_else(|| panic!("{}: has no pid: it is not running", self.name))
            .id()
    }

    /// Whether the server process is alive (frozen counts as alive).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|child| matches!(child.try_wait(), Ok(None)))
    }

    /// Freezes the server and every process it forked, and returns once the kernel reports them
    /// all stopped, so a probe made right after cannot catch the server still answering.
    pub fn stop(&mut self) {
        let leader = leader_pid(self.running_child("SIGSTOP it"));
        self.note("SIGSTOP");
        // The leader first, so it cannot fork a child after its children are listed.
        let _ = signal::killpg(leader, Signal::SIGSTOP);
        let children = child_pids(leader);
        self.disarm_freeze_guard();
        self.freeze_guard = arm_freeze_guard(&children);
        for &pid in &children {
            let _ = signal::kill(pid, Signal::SIGSTOP);
        }
        self.settle("stopped", leader, |state| {
            state == 'T' || is_dead_state(state)
        });
    }

    /// Thaws what [`stop`](Self::stop) froze, and returns once none of it is stopped any more.
    pub fn cont(&mut self) {
        let leader = leader_pid(self.running_child("SIGCONT it"));
        self.note("SIGCONT");
        signal_tree(leader, Signal::SIGCONT);
        self.disarm_freeze_guard();
        self.settle("running again", leader, |state| state != 'T');
    }

    fn disarm_freeze_guard(&mut self) {
        if let Some(mut guard) = self.freeze_guard.take() {
            // Kill before the handle drops: dropping it closes the pipe, which fires the guard.
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }

    fn settle(&self, what: &str, leader: Pid, done: impl Fn(char) -> bool) {
        let settled = super::poll_until(SIGNAL_SETTLE_TIMEOUT, || {
            std::iter::once(leader)
                .chain(child_pids(leader))
                .all(|pid| proc_state(pid).is_none_or(|(state, _)| done(state)))
                .then_some(())
        });
        if settled.is_none() {
            self.fail(format_args!(
                "processes were not {what} within {SIGNAL_SETTLE_TIMEOUT:?}"
            ));
        }
    }

    /// SIGKILLs the server and everything it forked, reaps it, and returns once all of them are
    /// dead, so the port and data directory are free for a restart. Does nothing if the server
    /// is not running.
    pub fn kill(&mut self) {
        if let Some(child) = self.child.take() {
            self.kill_child(child);
        }
        self.disarm_freeze_guard();
    }

    fn kill_child(&self, mut child: Child) {
        // Signalling is only safe while the pid is unreaped: after that it may name a stranger.
        if matches!(child.try_wait(), Ok(None)) {
            self.note("SIGKILL");
            let leader = leader_pid(&child);
            // Freeze the leader first so it cannot fork while its children are being listed.
            let _ = signal::killpg(leader, Signal::SIGSTOP);
            let children = child_pids(leader);
            for &pid in &children {
                let _ = signal::kill(pid, Signal::SIGKILL);
            }
            let _ = signal::killpg(leader, Signal::SIGKILL);
            let _ = child.wait();
            // The children were re-parented when the leader died and are reaped by init; dead
            // (zombie) is enough: they no longer hold sockets, files or shared memory.
            let gone = super::poll_until(SIGNAL_SETTLE_TIMEOUT, || {
                children
                    .iter()
                    .all(|&pid| proc_state(pid).is_none_or(|(state, _)| is_dead_state(state)))
                    .then_some(())
            });
            if gone.is_none() {
                // Not a panic: this also runs from Drop, possibly while already unwinding.
                eprintln!(
                    "{}: children {children:?} still alive {SIGNAL_SETTLE_TIMEOUT:?} after SIGKILL",
                    self.name
                );
            }
        }
    }

    /// Ends the server when a test is done with it (or restarts it): cleanly when it has a
    /// graceful signal, so it reaps its own children instead of leaving zombies for init; by
    /// SIGKILL otherwise or if the clean stop hangs. Does nothing if the server is not running.
    pub fn shut_down(&mut self) {
        if let (Some(graceful), Some(child)) = (self.graceful, self.child.as_mut()) {
            if matches!(child.try_wait(), Ok(None)) {
                let leader = leader_pid(child);
                // A frozen server cannot act on the graceful signal.
                signal_tree(leader, Signal::SIGCONT);
                let _ = signal::kill(leader, graceful);
                if super::poll_until(GRACEFUL_TIMEOUT, || child.try_wait().ok().flatten()).is_some()
                {
                    self.child = None;
                }
            }
        }
        self.kill();
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn leader_pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"))
}

/// Starts a watchdog for the children of a server about to be frozen, and returns it.
///
/// If the test binary dies without running destructors (Ctrl-C, a harness timeout), the server's
/// main process gets its parent-death SIGKILL, but its children (PostgreSQL's) would stay
/// stopped forever: a stopped process cannot notice that its parent died. The watchdog is a
/// shell blocked reading a pipe that only the test binary holds; when the binary dies the pipe
/// closes and the shell SIGKILLs the children, which works on stopped processes. It is in its
/// own process group so the Ctrl-C that kills the test binary does not kill it first.
fn arm_freeze_guard(children: &[Pid]) -> Option<Child> {
    if children.is_empty() {
        return None;
    }
    let mut command = Command::new("sh");
    command
        .args(["-c", r#"read -r _; kill -KILL "$@""#, "tether-freeze-guard"])
        .args(children.iter().map(Pid::to_string))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0);
    match command.spawn() {
        Ok(guard) => Some(guard),
        Err(err) => {
            eprintln!(
                "could not start the freeze watchdog (frozen children may leak if the test binary is killed): {err}"
            );
            None
        }
    }
}

/// Sends `signal` to the leader's process group and to each of its children. PostgreSQL's
/// children make themselves leaders of their own sessions, so the group alone misses them.
fn signal_tree(leader: Pid, signal: Signal) {
    let _ = signal::killpg(leader, signal);
    for pid in child_pids(leader) {
        let _ = signal::kill(pid, signal);
    }
}

/// Zombie or dead: the process holds no resources any more, even if nobody has reaped it yet.
fn is_dead_state(state: char) -> bool {
    matches!(state, 'Z' | 'X' | 'x')
}

/// The state letter and parent pid of `pid`, from /proc; `None` once the process is gone.
fn proc_state(pid: Pid) -> Option<(char, i32)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces and parentheses; the fields after
    // the last ')' are fixed.
    let mut fields = stat[stat.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let parent = fields.next()?.parse().ok()?;
    Some((state, parent))
}

/// The processes whose parent is `parent`.
fn child_pids(parent: Pid) -> Vec<Pid> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .map(Pid::from_raw)
        .filter(|&pid| proc_state(pid).is_some_and(|(_, ppid)| ppid == parent.as_raw()))
        .collect()
}

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Spawns `command` with a parent-death SIGKILL, so the process cannot outlive the test binary.
///
/// Linux sends the parent-death signal when the *thread* that forked the child exits, not the
/// process. Test threads (and tokio's blocking-pool threads) come and go, so all spawning is done
/// by one thread that lives as long as the test binary.
pub fn spawn(mut command: Command) -> io::Result<Child> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        thread::Builder::new()
            .name("test-server-spawner".into())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("start the test server spawner thread");
        Mutex::new(requests)
    });

    // SAFETY: the closure runs in the forked child before exec and only makes the prctl system
    // call, which is async-signal-safe; it allocates nothing and takes no locks.
    unsafe {
        command.pre_exec(|| prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from));
    }
    let (reply, response) = mpsc::channel();
    spawner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .send((command, reply))
        .map_err(|_| io::Error::other("test server spawner thread is gone"))?;
    response
        .recv()
        .map_err(|_| io::Error::other("test server spawner thread is gone"))?
}
