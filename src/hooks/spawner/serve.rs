//! The spawner process itself: `tether spawner`, started by `tether run` with its end
//! of the socket pair as standard input. Blocking calls on a few threads, nothing else
//! open: every hook it starts copies a file table of a handful of entries.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, send};

use super::protocol::{REQUEST_MAX, Reply, Spawn};

/// Threads that start hooks. `posix_spawn` returns only once the hook's `execve` is
/// done, and under a burst of hooks on a busy machine that takes a while: one thread
/// alone would start the hooks one exec after another.
const STARTERS: usize = 4;

/// Serves requests on standard input until tether closes its end; returns the exit
/// status of the process.
pub fn serve() -> i32 {
    // SAFETY: fd 0 is the socket `tether run` started this process with, and nothing
    // else in this process uses standard input.
    let socket = unsafe { OwnedFd::from_raw_fd(0) };
    // One heap for the starters, as for tether's own threads.
    crate::allocator::limit_arenas();
    let served = Server::new(socket).and_then(|mut server| {
        // The executable's start (the command line, logging) is not run again: its
        // pages go back, and the spawner keeps about the few it loops through.
        let _ = crate::resident::release_file_pages();
        server.run()
    });
    match served {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("tether spawner: {e}");
            1
        }
    }
}

/// One request read, for a starter thread.
struct Job {
    spawn: Spawn,
    stdio: Vec<OwnedFd>,
}

/// What the main thread (reading requests, collecting children) and the starters share.
struct Shared {
    socket: OwnedFd,
    book: Mutex<Book>,
}

/// Keeps each hook's exit after its pid on the socket: a hook can end, and be
/// collected, before the thread that started it has announced it.
#[derive(Default)]
struct Book {
    /// Started and announced, not yet collected.
    announced: HashSet<u32>,
    /// Collected before being announced: pid → wait status.
    early: HashMap<u32, i32>,
    /// Hooks started since none last ran.
    since_idle: usize,
}

/// A burst of at least this many hooks is followed, once none runs any more, by giving
/// back the memory and code pages it used (as tether does after its own bursts).
const BURST: usize = 64;

impl Shared {
    fn reply(&self, reply: Reply) -> io::Result<()> {
        loop {
            match send(
                self.socket.as_raw_fd(),
                &reply.encode(),
                MsgFlags::MSG_NOSIGNAL,
            ) {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Each change to the book is one call that leaves it whole.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the hooks of the jobs it takes, until the queue closes.
    fn start_hooks(&self, jobs: &Mutex<mpsc::Receiver<Job>>) {
        loop {
            let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
            let Ok(Job { spawn, stdio }) = job else {
                return;
            };
            let started = match <[OwnedFd; 3]>::try_from(stdio) {
                Ok(stdio) => start(&spawn, stdio),
                Err(_) => Err(io::Error::from_raw_os_error(libc::EBADF)),
            };
            // A failed send means tether is gone; the main thread sees it too.
            let _ = match started {
                Ok(pid) => {
                    let mut book = self.book();
                    book.since_idle += 1;
                    let announced = self.reply(Reply::Spawned { id: spawn.id, pid });
                    match book.early.remove(&pid) {
                        Some(status) => self.reply(Reply::Exited { pid, status }),
                        None => {
                            book.announced.insert(pid);
                            announced
                        }
                    }
                }
                Err(e) => self.reply(Reply::Failed {
                    id: spawn.id,
                    errno: e.raw_os_error().unwrap_or(libc::EIO),
                }),
            };
        }
    }

    /// Collects every child that ended and tells tether. The exits of hooks that
    /// ended between two SIGCHLDs are all collected by the loop.
    fn reap(&self) -> io::Result<()> {
        loop {
            let mut status = 0;
            // SAFETY: waitpid writes only `status`.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return Ok(());
            }
            let pid = pid as u32;
            let mut book = self.book();
            if book.announced.remove(&pid) {
                self.reply(Reply::Exited { pid, status })?;
            } else {
                book.early.insert(pid, status);
            }
            if book.announced.is_empty() && book.since_idle >= BURST {
                book.since_idle = 0;
                drop(book);
                // The burst's queued requests and the code that served them.
                crate::allocator::release_free_memory();
                let _ = crate::resident::release_file_pages();
            }
        }
    }
}

struct Server {
    shared: Arc<Shared>,
    children: SignalFd,
    jobs: mpsc::Sender<Job>,
    buf: Vec<u8>,
}

impl Server {
    fn new(socket: OwnedFd) -> io::Result<Server> {
        // SIGCHLD is read from a descriptor. The signals a terminal or a service
        // manager sends the whole group or cgroup are held, not acted on: the spawner
        // ends when tether closes the socket, after tether's own shutdown has run the
        // last hooks. Held before the starters exist, which inherit the mask; hooks
        // start with none held (`Attributes`), and signals pending here are not
        // passed on.
        let mut mask = SigSet::empty();
        for signal in [
            Signal::SIGCHLD,
            Signal::SIGTERM,
            Signal::SIGINT,
            Signal::SIGHUP,
            Signal::SIGQUIT,
        ] {
            mask.add(signal);
        }
        mask.thread_block()?;
        let mut only_children = SigSet::empty();
        only_children.add(Signal::SIGCHLD);
        let children = SignalFd::with_flags(
            &only_children,
            SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK,
        )?;
        let shared = Arc::new(Shared {
            socket,
            book: Mutex::default(),
        });
        let (jobs, queue) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        for i in 0..STARTERS {
            let shared = Arc::clone(&shared);
            let queue = Arc::clone(&queue);
            std::thread::Builder::new()
                .name(format!("starter-{i}"))
                .stack_size(128 * 1024)
                .spawn(move || shared.start_hooks(&queue))?;
        }
        Ok(Server {
            shared,
            children,
            jobs,
            buf: vec![0; REQUEST_MAX],
        })
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            let (request, exited) = {
                let mut fds = [
                    PollFd::new(self.shared.socket.as_fd(), PollFlags::POLLIN),
                    PollFd::new(self.children.as_fd(), PollFlags::POLLIN),
                ];
                match poll(&mut fds, PollTimeout::NONE) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(e.into()),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                (ready(&fds[0]), ready(&fds[1]))
            };
            if exited {
                while let Ok(Some(_)) = self.children.read_signal() {}
                self.shared.reap()?;
            }
            if request && !self.read_one()? {
                return Ok(());
            }
        }
    }

    /// Reads one request and queues it for a starter; `false` once tether closed its
    /// end.
    fn read_one(&mut self) -> io::Result<bool> {
        let mut space = nix::cmsg_space!([RawFd; 3]);
        let (n, stdio) = {
            let mut iov = [io::IoSliceMut::new(&mut self.buf)];
            let msg = match recvmsg::<()>(
                self.shared.socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return Ok(true),
                Err(e) => return Err(e.into()),
            };
            let mut fds: Vec<OwnedFd> = Vec::new();
            for cmsg in msg.cmsgs()? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: the kernel just installed these descriptors for this
                    // process; nothing else owns them.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            (msg.bytes, fds)
        };
        if n == 0 {
            return Ok(false);
        }
        let Some(spawn) = Spawn::decode(&self.buf[..n]) else {
            // A request this spawner cannot read was not made by its tether.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "unreadable request",
            ));
        };
        self.jobs
            .send(Job { spawn, stdio })
            .map_err(|_| io::Error::other("every starter thread ended"))?;
        Ok(true)
    }
}

/// Starts one hook with `posix_spawnp`: in a process group of its own, with exactly
/// the environment it was sent, the three descriptors as its standard streams, no
/// signal blocked and SIGPIPE at its default (the spawner blocks the signals it reads
/// or holds, and Rust ignores SIGPIPE; both would otherwise pass to the hook). The
/// standard library's `Command` passes the signal mask on as it is.
fn start(spawn: &Spawn, stdio: [OwnedFd; 3]) -> io::Result<u32> {
    let argv = c_strings(&spawn.argv)?;
    let env = c_strings(&spawn.env)?;
    let argv_ptrs = pointers(&argv);
    let env_ptrs = pointers(&env);
    let mut actions = FileActions::new()?;
    for (fd, target) in stdio.iter().zip(0..) {
        actions.dup2(fd.as_raw_fd(), target)?;
    }
    let attrs = Attributes::new()?;
    let mut pid: libc::pid_t = 0;
    // SAFETY: every pointer is valid for the call: the strings and their
    // NULL-terminated arrays live until it returns, as do the initialized attributes
    // and file actions.
    let error = unsafe {
        libc::posix_spawnp(
            &mut pid,
            argv[0].as_ptr(),
            &actions.0,
            &attrs.0,
            argv_ptrs.as_ptr(),
            env_ptrs.as_ptr(),
        )
    };
    if error != 0 {
        return Err(io::Error::from_raw_os_error(error));
    }
    Ok(pid as u32)
}

fn c_strings(strings: &[OsString]) -> io::Result<Vec<CString>> {
    strings
        .iter()
        .map(|s| CString::new(s.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL)))
        .collect()
}

fn pointers(strings: &[CString]) -> Vec<*mut libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr().cast_mut())
        .chain(std::iter::once(std::ptr::null_mut()))
        .collect()
}

fn check(error: libc::c_int) -> io::Result<()> {
    match error {
        0 => Ok(()),
        e => Err(io::Error::from_raw_os_error(e)),
    }
}

/// `posix_spawn_file_actions_t`, destroyed on drop.
struct FileActions(libc::posix_spawn_file_actions_t);

impl FileActions {
    fn new() -> io::Result<FileActions> {
        // SAFETY: zeroed storage is what `init` expects to initialize.
        let mut actions = FileActions(unsafe { std::mem::zeroed() });
        // SAFETY: initializes the storage just made.
        check(unsafe { libc::posix_spawn_file_actions_init(&mut actions.0) })?;
        Ok(actions)
    }

    fn dup2(&mut self, fd: RawFd, target: RawFd) -> io::Result<()> {
        // SAFETY: the actions were initialized by `new`.
        check(unsafe { libc::posix_spawn_file_actions_adddup2(&mut self.0, fd, target) })
    }
}

impl Drop for FileActions {
    fn drop(&mut self) {
        // SAFETY: initialized by `new`, destroyed once.
        unsafe { libc::posix_spawn_file_actions_destroy(&mut self.0) };
    }
}

/// `posix_spawnattr_t` for a hook, destroyed on drop.
struct Attributes(libc::posix_spawnattr_t);

impl Attributes {
    fn new() -> io::Result<Attributes> {
        // SAFETY: zeroed storage is what `init` expects to initialize.
        let mut attrs = Attributes(unsafe { std::mem::zeroed() });
        // SAFETY: each call works on the attributes `init` initialized, with signal
        // sets initialized by `sigemptyset` before use.
        unsafe {
            check(libc::posix_spawnattr_init(&mut attrs.0))?;
            let mut none: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut none);
            check(libc::posix_spawnattr_setsigmask(&mut attrs.0, &none))?;
            let mut default: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut default);
            libc::sigaddset(&mut default, libc::SIGPIPE);
            check(libc::posix_spawnattr_setsigdefault(&mut attrs.0, &default))?;
            check(libc::posix_spawnattr_setpgroup(&mut attrs.0, 0))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK
                | libc::POSIX_SPAWN_SETSIGDEF
                | libc::POSIX_SPAWN_SETPGROUP;
            check(libc::posix_spawnattr_setflags(
                &mut attrs.0,
                flags as libc::c_short,
            ))?;
        }
        Ok(attrs)
    }
}

impl Drop for Attributes {
    fn drop(&mut self) {
        // SAFETY: initialized by `new`, destroyed once.
        unsafe { libc::posix_spawnattr_destroy(&mut self.0) };
    }
}
