//! Lines whose formatting waits until a burst of them is over.
//!
//! Formatting a transition's line (timestamp, message, eight fields, each escaped) was
//! a sixth of the runtime workers' CPU in a profile of a thousand targets losing their
//! server at once: formatted in place, those lines stood between the first target shown
//! `down` and the last. An actor now queues what its line needs and a thread formats
//! the queue once no line came for [`QUIET`], or [`AT_MOST`] after the first. While the
//! outage is being recorded that thread is not runnable at all, and the cores are the
//! actors'.
//!
//! A line keeps the time of its event (see [`stamped`]), so a line formatted late is
//! not stamped late; only its place among lines logged in place may move by as much.
//!
//! The queue is bounded: past [`QUEUED`] lines an actor formats its own, so a host whose
//! cores never idle cannot make tether hoard them.

use std::cell::Cell;
use std::io;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use crate::handoff::Handoff;

/// Lines waiting for the thread at most.
const QUEUED: usize = 16 * 1024;

/// The thread formats what waits once no line came for this long, or [`AT_MOST`] after
/// the first, or when half of [`QUEUED`] wait.
const QUIET: Duration = Duration::from_millis(2);

/// The longest a line waits to be formatted.
const AT_MOST: Duration = Duration::from_millis(50);

/// What a queued line needs to be logged, with the time it carries.
struct Line {
    at: SystemTime,
    log: Box<dyn FnOnce() + Send>,
}

impl Line {
    fn log(self) {
        stamped(self.at, self.log);
    }
}

/// Where lines are queued for the formatting thread.
pub struct Later {
    queue: Handoff<Vec<Line>>,
}

/// Ends the formatting thread once it has logged what is queued; see [`Guard::finish`].
pub struct Guard {
    later: &'static Later,
    /// Disconnected when the thread ends.
    ended: mpsc::Receiver<()>,
}

/// Starts the formatting thread.
pub fn start(name: &str) -> io::Result<(&'static Later, Guard)> {
    let later: &'static Later = Box::leak(Box::new(Later {
        queue: Handoff::default(),
    }));
    let (alive, ended) = mpsc::channel::<()>();
    std::thread::Builder::new()
        .name(name.to_owned())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _alive = alive;
            later
                .queue
                .serve_when_quiet(QUIET, AT_MOST, QUEUED / 2, |line| {
                    // A line whose formatting panics is lost alone; the thread goes on.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| line.log()));
                });
        })?;
    Ok((later, Guard { later, ended }))
}

impl Later {
    /// Logs with `log` on the formatting thread, stamped `at`; here and now if the
    /// queue is full or closed.
    pub fn log(&self, at: SystemTime, log: Box<dyn FnOnce() + Send>) {
        if let Err(line) = self.queue.push_within(Line { at, log }, QUEUED) {
            line.log();
        }
    }
}

impl Guard {
    /// Takes no more lines and waits until the thread has logged those queued, at most
    /// `patience`.
    pub fn finish(self, patience: Duration) {
        self.later.queue.close();
        let _ = self.ended.recv_timeout(patience);
    }
}

thread_local! {
    /// The time the line being logged on this thread carries, if not now.
    static AT: Cell<Option<SystemTime>> = const { Cell::new(None) };
}

/// Runs `log` with every line it logs stamped `at` instead of the time of writing.
pub fn stamped<R>(at: SystemTime, log: impl FnOnce() -> R) -> R {
    /// Puts the previous stamp back, even if `log` panics.
    struct Restore(Option<SystemTime>);
    impl Drop for Restore {
        fn drop(&mut self) {
            AT.set(self.0);
        }
    }
    let _restore = Restore(AT.replace(Some(at)));
    log()
}

/// The time a line logged now on this thread carries.
pub fn now() -> SystemTime {
    AT.get().unwrap_or_else(SystemTime::now)
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn a_line_logged_late_carries_the_time_of_its_event() {
        let event = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(stamped(event, now), event);
        let after = now();
        assert!(after > event, "the stamp is put back after the line");
    }

    #[test]
    fn queued_lines_are_all_logged_in_order_before_finish_returns() {
        let (later, guard) = start("test-later").unwrap();
        let logged = Arc::new(Mutex::new(Vec::new()));
        let epoch = SystemTime::UNIX_EPOCH;
        for i in 0..1_000u64 {
            let logged = logged.clone();
            let at = epoch + Duration::from_secs(i);
            later.log(
                at,
                Box::new(move || logged.lock().unwrap().push((i, now()))),
            );
        }
        guard.finish(Duration::from_secs(10));
        let logged = logged.lock().unwrap();
        let expected: Vec<_> = (0..1_000u64)
            .map(|i| (i, epoch + Duration::from_secs(i)))
            .collect();
        assert_eq!(*logged, expected, "every line, in order, with its own time");
    }

    #[test]
    fn a_line_whose_formatting_panics_is_lost_alone() {
        let (later, guard) = start("test-later").unwrap();
        let logged = Arc::new(Mutex::new(Vec::new()));
        for i in 0..3u64 {
            let logged = logged.clone();
            later.log(
                SystemTime::UNIX_EPOCH,
                Box::new(move || {
                    assert_ne!(i, 1, "a line that cannot be formatted");
                    logged.lock().unwrap().push(i);
                }),
            );
        }
        guard.finish(Duration::from_secs(10));
        assert_eq!(*logged.lock().unwrap(), [0, 2]);
    }

    #[test]
    fn a_line_queued_after_finish_is_logged_at_once() {
        let (later, guard) = start("test-later").unwrap();
        guard.finish(Duration::from_secs(10));
        let logged = Arc::new(Mutex::new(None));
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(7);
        let sink = logged.clone();
        later.log(at, Box::new(move || *sink.lock().unwrap() = Some(now())));
        assert_eq!(*logged.lock().unwrap(), Some(at));
    }
}
