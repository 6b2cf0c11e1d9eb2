//! The hook spawner: a small process of tether's own that starts the hook commands.
//!
//! Starting a process copies the starting process's table of open files, whatever the
//! spawn call: the kernel duplicates it at the clone and closes the close-on-exec part
//! again at the exec. A sidecar watching 10,000 targets holds 10,000 sockets, and each
//! hook started from it paid for all of them: about 0.6 ms of CPU a hook instead of 0.13
//! (measured with posix_spawn from a process holding 10 and 10,000 files). After a mass
//! outage that is seconds before the last application hears of its fallback.
//!
//! So `tether run` starts, at its first command hook, a process of the same binary
//! (`tether spawner`, hidden) that holds nothing but its end of a socket pair, as
//! Erlang's runtime does with `erl_child_setup`. tether sends it each hook's command,
//! environment and the three ends of the hook's pipes; it starts the hook in a process
//! group of its own and answers with its pid, and with its exit status when it ends.
//! Everything else stays in tether: the pipes' other ends, the timeout, killing the
//! group, the processes the hook left behind (orphans still come to tether, a child
//! subreaper, since the spawner is not one).
//!
//! The spawner is supervised: when it ends, what waits on it fails, and the next hook
//! starts a new one, at most once a second; meanwhile, or where none can be started,
//! hooks are started by tether itself as before. A hook whose request was in flight
//! when the spawner died may have started; it is started again rather than lost, since
//! the application must end in the mode of the target's last state.

mod protocol;
mod serve;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, ControlMessage, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, socketpair,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::time::Instant;

pub use serve::serve;

use protocol::{Reply, Request};

/// The hidden subcommand that makes a `tether` process a spawner.
pub const SUBCOMMAND: &str = "spawner";

/// The least time between two starts of a spawner: one that dies at once is not
/// restarted in a loop, and hooks meanwhile start from tether.
const RESTART_INTERVAL: Duration = Duration::from_secs(1);

/// Where hooks are started.
enum Mode {
    /// By tether itself (tests of the library, and `cargo test` binaries, which are
    /// not tether and cannot be its spawner).
    InProcess,
    /// By a spawner made from this executable.
    Spawner {
        exe: PathBuf,
        current: Mutex<Current>,
    },
}

#[derive(Default)]
struct Current {
    spawner: Option<Arc<Spawner>>,
    last_start: Option<Instant>,
}

static MODE: OnceLock<Mode> = OnceLock::new();

/// Hooks are started by a spawner made from `exe` (tether's own binary) from now on.
/// Called once by `tether run`; without it hooks start from tether itself.
pub fn enable(exe: PathBuf) {
    let _ = MODE.set(Mode::Spawner {
        exe,
        current: Mutex::default(),
    });
}

/// The spawner to start a hook with, started (or restarted) if needed; `None` when
/// hooks start from tether itself.
pub fn current() -> Option<Arc<Spawner>> {
    let Mode::Spawner { exe, current } = MODE.get_or_init(|| Mode::InProcess) else {
        return None;
    };
    let mut current = current.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(spawner) = &current.spawner {
        if !spawner.ended() {
            return Some(Arc::clone(spawner));
        }
    }
    if current
        .last_start
        .is_some_and(|at| at.elapsed() < RESTART_INTERVAL)
    {
        return None;
    }
    let restart = current.last_start.is_some();
    current.last_start = Some(Instant::now());
    match Spawner::start(exe) {
        Ok(spawner) => {
            if restart {
                tracing::warn!(
                    pid = spawner.pid,
                    "the hook spawner ended; started a new one"
                );
            }
            current.spawner = Some(Arc::clone(&spawner));
            Some(spawner)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the hook spawner; tether starts hooks itself");
            current.spawner = None;
            None
        }
    }
}

/// The spawner's pid, while one runs: its children are hook processes too.
pub fn pid() -> Option<u32> {
    let Some(Mode::Spawner { current, .. }) = MODE.get() else {
        return None;
    };
    let current = current.lock().unwrap_or_else(|p| p.into_inner());
    current
        .spawner
        .as_ref()
        .filter(|s| !s.ended())
        .map(|s| s.pid)
}

/// What a hook is started with.
pub struct Command<'a> {
    pub argv: &'a [OsString],
    /// The hook's whole environment.
    pub env: &'a [OsString],
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// Why a spawner could not start a hook.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// The hook itself cannot be started (no such program, not executable): the same
    /// answer tether would get starting it.
    #[error(transparent)]
    Start(io::Error),
    /// The spawner is gone or the request could not reach it; the hook may be started
    /// another way.
    #[error("the hook spawner is unavailable: {0}")]
    Unavailable(io::Error),
}

/// A hook process a spawner started.
pub struct Child {
    pub pid: u32,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    status: Option<ExitStatus>,
}

impl Child {
    /// Waits for the hook to end; cancel-safe, like tokio's.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(exit) = self.exit.as_mut() else {
            return Err(ended());
        };
        match exit.await {
            Ok(status) => {
                self.status = Some(status);
                self.exit = None;
                Ok(status)
            }
            Err(_) => {
                self.exit = None;
                Err(ended())
            }
        }
    }
}

fn ended() -> io::Error {
    io::Error::other("the hook spawner ended before the hook did")
}

/// tether's side of one spawner process.
pub struct Spawner {
    pid: u32,
    socket: AsyncFd<OwnedFd>,
    next_id: AtomicU64,
    book: Mutex<Book>,
}

/// What waits on answers from the spawner.
#[derive(Default)]
struct Book {
    /// Requests not answered yet, by id.
    spawns: HashMap<u64, oneshot::Sender<io::Result<Child>>>,
    /// Hook processes running, by pid.
    exits: HashMap<u32, oneshot::Sender<ExitStatus>>,
    /// Set when the spawner's socket closed: nothing more will be answered.
    ended: bool,
}

impl Spawner {
    /// Starts a spawner process and the task that reads its answers.
    fn start(exe: &PathBuf) -> io::Result<Arc<Spawner>> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        )?;
        // The spawner's end blocks: it has nothing else to do while it waits.
        set_blocking(&theirs)?;
        let mut cmd = tokio::process::Command::new(exe);
        cmd.arg(SUBCOMMAND)
            .stdin(std::process::Stdio::from(theirs))
            .stdout(std::process::Stdio::null())
            .kill_on_drop(false);
        let mut child = super::reaper::spawn(&mut cmd)?;
        let pid = child.id().expect("a just-spawned child has a pid");
        // SAFETY: an `OwnedFd` names the same open descriptor for as long as it lives,
        // and the `AsyncFd` owns it.
        let socket = unsafe {
            AsyncFd::register_with_interest(ours, Interest::READABLE | Interest::WRITABLE)
        }?;
        let spawner = Arc::new(Spawner {
            pid,
            socket,
            next_id: AtomicU64::new(0),
            book: Mutex::default(),
        });
        let reader = Arc::clone(&spawner);
        tokio::spawn(async move {
            reader.read_answers().await;
            // Its socket closed: it is ending or gone. Whatever it started now belongs
            // to tether (a subreaper), whose orphan reaper collects it.
            let exits = reader.end();
            for pid in exits {
                super::reaper::reaped(pid);
            }
            let status = child.wait().await;
            super::reaper::reaped(pid);
            tracing::debug!(pid, ?status, "the hook spawner ended");
        });
        Ok(spawner)
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // Every change to the book is one call that leaves it whole.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ended(&self) -> bool {
        self.book().ended
    }

    /// Marks the spawner ended and fails whatever waited on it; returns the pids of
    /// the hooks that were still running.
    fn end(&self) -> Vec<u32> {
        let mut book = self.book();
        book.ended = true;
        book.spawns.clear();
        book.exits.drain().map(|(pid, _)| pid).collect()
    }

    /// Starts a hook; the descriptors in `cmd` are closed here once sent.
    pub async fn spawn(&self, cmd: Command<'_>) -> Result<Child, SpawnError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = Request {
            id,
            argv: cmd.argv,
            env: cmd.env,
        }
        .encode();
        let (tx, rx) = oneshot::channel();
        {
            let mut book = self.book();
            if book.ended {
                return Err(SpawnError::Unavailable(ended()));
            }
            book.spawns.insert(id, tx);
        }
        let fds = [
            cmd.stdin.as_raw_fd(),
            cmd.stdout.as_raw_fd(),
            cmd.stderr.as_raw_fd(),
        ];
        let sent = self
            .socket
            .async_io(Interest::WRITABLE, |fd| {
                let rights = [ControlMessage::ScmRights(&fds)];
                sendmsg::<()>(
                    fd.as_raw_fd(),
                    &[io::IoSlice::new(&request)],
                    &rights,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            })
            .await;
        // The spawner holds its own copies now; the hook's ends close here.
        drop(cmd);
        if let Err(e) = sent {
            self.book().spawns.remove(&id);
            return Err(SpawnError::Unavailable(e));
        }
        match rx.await {
            Ok(Ok(child)) => Ok(child),
            Ok(Err(e)) => Err(SpawnError::Start(e)),
            Err(_) => Err(SpawnError::Unavailable(ended())),
        }
    }

    /// Reads answers until the socket closes.
    async fn read_answers(&self) {
        let mut buf = vec![0u8; protocol::REPLY_MAX];
        loop {
            let read = self
                .socket
                .async_io(Interest::READABLE, |fd| {
                    recvmsg::<()>(
                        fd.as_raw_fd(),
                        &mut [io::IoSliceMut::new(&mut buf)],
                        None,
                        MsgFlags::empty(),
                    )
                    .map(|m| m.bytes)
                    .map_err(io::Error::from)
                })
                .await;
            let n = match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            match Reply::decode(&buf[..n]) {
                Some(reply) => self.answer(reply),
                None => {
                    tracing::error!("the hook spawner sent a message tether cannot read");
                    return;
                }
            }
        }
    }

    fn answer(&self, reply: Reply) {
        let mut book = self.book();
        match reply {
            Reply::Spawned { id, pid } => {
                let (tx, rx) = oneshot::channel();
                // Registered before the next answer is read, and so before the exit
                // that follows it.
                book.exits.insert(pid, tx);
                super::reaper::started(pid);
                let child = Child {
                    pid,
                    exit: Some(rx),
                    status: None,
                };
                if let Some(waiter) = book.spawns.remove(&id) {
                    let _ = waiter.send(Ok(child));
                }
            }
            Reply::Failed { id, errno } => {
                if let Some(waiter) = book.spawns.remove(&id) {
                    let _ = waiter.send(Err(io::Error::from_raw_os_error(errno)));
                }
            }
            Reply::Exited { pid, status } => {
                if let Some(waiter) = book.exits.remove(&pid) {
                    let _ = waiter.send(ExitStatus::from_raw(status));
                }
            }
        }
    }
}

fn set_blocking(fd: &OwnedFd) -> io::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
    Ok(())
}

/// The environment a hook gets: tether's own without the variables it reads as
/// secrets, then `vars`.
pub fn environment(vars: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<OsString> {
    let secrets = crate::secrets::variables();
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !secrets.iter().any(|s| k.to_str() == Some(&**s)))
        .collect();
    for (k, v) in vars {
        match env.iter_mut().find(|(key, _)| *key == k) {
            Some(slot) => slot.1 = v,
            None => env.push((k, v)),
        }
    }
    env.into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            OsString::from_vec(entry)
        })
        .collect()
}
