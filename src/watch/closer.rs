//! Lets go of dead connections off the actors' path.
//!
//! Closing a socket whose server is gone is a fifth of what an actor spends on a lost
//! connection: the close sends a reset, and on loopback the kernel handles it and the
//! peer's side inline. In a mass outage that work stood between the first target
//! announced down and the last. An actor now hands its dead connection to one thread
//! that closes connections at the lowest CPU priority: while the actors announce the
//! outage the thread waits for a free core, and it closes the whole batch after.
//!
//! The queue is bounded: past [`QUEUED`] connections an actor closes its own, so a host
//! whose cores never idle cannot make tether hoard sockets.

use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};

use crate::connect::Connection;

/// Connections waiting for the thread at most; each holds a descriptor.
const QUEUED: usize = 4096;

/// How a dead connection is let go of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Close {
    /// The server closed its end: a reset (see [`Connection::reset_on_close`]).
    Reset,
    /// The server stopped answering or answered wrong, and may be alive: in order.
    Orderly,
}

/// Closes `conn` on the closer thread, or here when the thread is busy with a full
/// queue or could not be started.
pub fn close(conn: Connection, how: Close) {
    if how == Close::Reset {
        conn.reset_on_close();
    }
    match closer() {
        Some(closer) => closer.push(conn),
        None => drop(conn),
    }
}

struct Closer {
    queue: Mutex<Queue>,
    wake: Condvar,
}

struct Queue {
    dead: Vec<Connection>,
    /// The thread waits for connections: the next one must wake it.
    waiting: bool,
}

fn closer() -> Option<&'static Closer> {
    static CLOSER: OnceLock<Option<&'static Closer>> = OnceLock::new();
    *CLOSER.get_or_init(|| {
        let closer: &'static Closer = Box::leak(Box::new(Closer {
            queue: Mutex::new(Queue {
                dead: Vec::new(),
                waiting: false,
            }),
            wake: Condvar::new(),
        }));
        std::thread::Builder::new()
            .name("tether-closer".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || closer.run())
            .ok()
            .map(|_| closer)
    })
}

impl Closer {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Every change leaves the queue whole: a poisoned lock is still sound.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, conn: Connection) {
        let mut queue = self.lock();
        if queue.dead.len() >= QUEUED {
            drop(queue);
            drop(conn);
            return;
        }
        queue.dead.push(conn);
        let wake = std::mem::take(&mut queue.waiting);
        drop(queue);
        if wake {
            self.wake.notify_one();
        }
    }

    fn run(&self) {
        lowest_priority();
        let mut batch = Vec::new();
        loop {
            let mut queue = self.lock();
            while queue.dead.is_empty() {
                queue.waiting = true;
                queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
            }
            queue.waiting = false;
            std::mem::swap(&mut queue.dead, &mut batch);
            drop(queue);
            batch.clear();
            batch.shrink_to(64);
        }
    }
}

/// Nice 19 for the calling thread alone (Linux keeps a nice value per thread): it
/// runs when a core would otherwise idle, and still gets a sliver of a busy one.
fn lowest_priority() {
    // SAFETY: plain system calls on the calling thread; a failure only leaves the
    // thread at its default priority.
    unsafe {
        let tid = libc::gettid();
        let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 19);
    }
}
