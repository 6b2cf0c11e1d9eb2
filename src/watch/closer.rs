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

use std::sync::OnceLock;
use std::time::Duration;

use crate::connect::Connection;
use crate::handoff::Handoff;

/// Connections waiting for the thread at most; each holds a descriptor.
const QUEUED: usize = 4096;

/// The thread closes what waits once no connection came for this long, or [`AT_MOST`]
/// after the first, or when half of [`QUEUED`] wait. While an outage is being announced
/// it is not runnable at all: a runnable thread, however low its priority, keeps its
/// core from going idle, and an idle core is what makes the kernel move an actor's
/// thread that waits on the other one onto it. A trace of 1,000 targets lost at once
/// showed both runtime workers sharing one core for 8 ms while the closer had the other.
const QUIET: Duration = Duration::from_millis(2);

/// The longest a dead connection waits for the thread.
const AT_MOST: Duration = Duration::from_millis(50);

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
    let refused = match closer() {
        Some(closer) => closer.push_within((conn, how), QUEUED),
        None => Err((conn, how)),
    };
    // A full queue, or no thread: this actor closes its own.
    if let Err((conn, how)) = refused {
        close_now(conn, how);
    }
}

fn close_now(conn: Connection, how: Close) {
    if how == Close::Reset {
        conn.reset_on_close();
    }
    drop(conn);
}

type Dead = Handoff<Vec<(Connection, Close)>>;

/// The dead connections waiting for the closer thread.
fn closer() -> Option<&'static Dead> {
    static CLOSER: OnceLock<Option<&'static Dead>> = OnceLock::new();
    *CLOSER.get_or_init(|| {
        let dead: &'static Dead = Box::leak(Box::default());
        std::thread::Builder::new()
            .name("tether-closer".to_owned())
            .stack_size(64 * 1024)
            .spawn(move || close_all(dead))
            .ok()
            .map(|_| dead)
    })
}

fn close_all(dead: &Dead) {
    lowest_priority();
    dead.serve_when_quiet(QUIET, AT_MOST, QUEUED / 2, |(conn, how)| {
        close_now(conn, how)
    });
}

/// `SCHED_IDLE` for the calling thread alone (Linux keeps a policy per thread): any
/// other thread that wakes on its core takes it at once, so it closes connections when
/// a core would otherwise idle, and still gets a sliver of a busy one. At nice 19 it
/// kept a core for up to half a millisecond at a time in the middle of a mass outage.
fn lowest_priority() {
    // SAFETY: a plain system call on the calling thread with a parameter it reads; a
    // failure only leaves the thread at its default priority.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        let _ = libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}
