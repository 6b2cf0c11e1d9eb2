//! A buffer that any thread fills and one thread of its own empties, a batch at a time:
//! the log's writer thread and the closer of dead connections.
//!
//! The emptying thread is woken only by the first item put into an empty buffer it waits
//! on: items put while it works cost no system call, and a burst costs one wake-up and
//! one turn of its work, not one per item.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

pub struct Handoff<B> {
    state: Mutex<State<B>>,
    wake: Condvar,
}

struct State<B> {
    items: B,
    /// The emptying thread waits for items: the next one must wake it.
    waiting: bool,
    /// Nothing more is taken; the thread empties what is left and ends.
    closed: bool,
}

/// What a handoff holds: a buffer that knows when it is empty.
pub trait Batch: Default {
    fn is_empty(&self) -> bool;
}

impl<T> Batch for Vec<T> {
    fn is_empty(&self) -> bool {
        Vec::is_empty(self)
    }
}

impl<B: Batch> Default for Handoff<B> {
    fn default() -> Self {
        Handoff {
            state: Mutex::new(State {
                items: B::default(),
                waiting: false,
                closed: false,
            }),
            wake: Condvar::new(),
        }
    }
}

impl<B: Batch> Handoff<B> {
    fn lock(&self) -> MutexGuard<'_, State<B>> {
        // Every change leaves the buffer whole: a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts `item` in with `add`, which may refuse it (a full buffer); refused as well
    /// once the handoff is closed. A refused item comes back.
    pub fn put<T>(&self, item: T, add: impl FnOnce(&mut B, T) -> Result<(), T>) -> Result<(), T> {
        let mut state = self.lock();
        if state.closed {
            return Err(item);
        }
        add(&mut state.items, item)?;
        let wake = std::mem::take(&mut state.waiting);
        drop(state);
        if wake {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// For the emptying thread: waits until something was put (or the handoff is
    /// closed), lets more gather for `gather` unless closed, and swaps it all into
    /// `batch`, which must be empty. False once closed with nothing left.
    pub fn take(&self, batch: &mut B, gather: Duration) -> bool {
        let mut state = self.lock();
        while state.items.is_empty() && !state.closed {
            state.waiting = true;
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiting = false;
        if state.items.is_empty() {
            return false;
        }
        if !state.closed && !gather.is_zero() {
            drop(state);
            std::thread::sleep(gather);
            state = self.lock();
        }
        std::mem::swap(&mut state.items, batch);
        true
    }

    /// Refuses every later item and tells the emptying thread to end once empty.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Whether nothing waits to be taken.
    pub fn is_empty(&self) -> bool {
        self.lock().items.is_empty()
    }
}
