//! A buffer that any thread fills and one thread of its own empties, a batch at a time:
//! the log's writer thread, the formatter of a burst's log lines and the closer of dead
//! connections.
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
    /// Items put since the emptying thread last took them.
    count: usize,
    /// The emptying thread waits for items: the next one must wake it.
    waiting: bool,
    /// Nothing more is taken; the thread empties what is left and ends.
    closed: bool,
}

impl<B> State<B> {
    /// Swaps what was put into `batch`, which must be empty.
    fn take_into(&mut self, batch: &mut B) {
        std::mem::swap(&mut self.items, batch);
        self.count = 0;
    }
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
                count: 0,
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
        state.count += 1;
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
        let Some(mut state) = self.wait_for_items() else {
            return false;
        };
        if !state.closed && !gather.is_zero() {
            drop(state);
            std::thread::sleep(gather);
            state = self.lock();
        }
        state.take_into(batch);
        true
    }

    /// Like [`Handoff::take`], but lets items gather for as long as they keep coming:
    /// until none was put for `quiet`, `enough` are waiting, or `at_most` has passed.
    pub fn take_when_quiet(
        &self,
        batch: &mut B,
        quiet: Duration,
        at_most: Duration,
        enough: usize,
    ) -> bool {
        let Some(mut state) = self.wait_for_items() else {
            return false;
        };
        let began = tokio::time::Instant::now();
        loop {
            let before = state.count;
            if state.closed || before >= enough || began.elapsed() >= at_most {
                break;
            }
            drop(state);
            std::thread::sleep(quiet);
            state = self.lock();
            if state.count == before {
                break;
            }
        }
        state.take_into(batch);
        true
    }

    /// Waits until something was put or the handoff is closed; `None` once closed
    /// with nothing left.
    fn wait_for_items(&self) -> Option<MutexGuard<'_, State<B>>> {
        let mut state = self.lock();
        while state.items.is_empty() && !state.closed {
            state.waiting = true;
            state = self.wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.waiting = false;
        (!state.items.is_empty()).then_some(state)
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

/// A queue of items that a thread of its own works through once they stop coming: the
/// closer of dead connections and the formatter of a burst's log lines.
impl<T> Handoff<Vec<T>> {
    /// Puts `item` in unless `limit` items wait already (or the handoff is closed); a
    /// refused item comes back, for the caller to deal with in place.
    pub fn push_within(&self, item: T, limit: usize) -> Result<(), T> {
        self.put(item, |items, item| {
            if items.len() >= limit {
                return Err(item);
            }
            items.push(item);
            Ok(())
        })
    }

    /// For the emptying thread: hands every item to `each`, a batch at a time, each
    /// batch taken as [`Handoff::take_when_quiet`] does, until the handoff is closed and
    /// empty. A burst's room is given back after its batch.
    pub fn serve_when_quiet(
        &self,
        quiet: Duration,
        at_most: Duration,
        enough: usize,
        mut each: impl FnMut(T),
    ) {
        let mut batch = Vec::new();
        while self.take_when_quiet(&mut batch, quiet, at_most, enough) {
            batch.drain(..).for_each(&mut each);
            batch.shrink_to(64);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    fn push(h: &Handoff<Vec<u32>>, n: u32) {
        h.put(n, |v, n| {
            v.push(n);
            Ok(())
        })
        .unwrap();
    }

    /// What keeps coming is taken in one batch, once it pauses.
    #[test]
    fn items_that_keep_coming_are_taken_once_they_pause() {
        let handoff = Arc::new(Handoff::<Vec<u32>>::default());
        let done = Arc::new(AtomicBool::new(false));
        let putter = std::thread::spawn({
            let (handoff, done) = (handoff.clone(), done.clone());
            move || {
                for n in 0..50 {
                    push(&handoff, n);
                    std::thread::sleep(Duration::from_micros(200));
                }
                done.store(true, Ordering::Release);
            }
        });
        let mut batch = Vec::new();
        assert!(handoff.take_when_quiet(
            &mut batch,
            Duration::from_millis(100),
            Duration::from_secs(60),
            1000
        ));
        assert!(
            done.load(Ordering::Acquire),
            "taken after {} items, before they paused",
            batch.len()
        );
        assert_eq!(batch, (0..50).collect::<Vec<_>>());
        putter.join().unwrap();
    }

    #[test]
    fn an_item_past_the_limit_comes_back_and_the_rest_are_served_in_order() {
        let handoff = Handoff::<Vec<u32>>::default();
        for n in 0..3 {
            handoff.push_within(n, 3).unwrap();
        }
        assert_eq!(handoff.push_within(3, 3), Err(3));
        handoff.close();
        let mut served = Vec::new();
        handoff.serve_when_quiet(Duration::ZERO, Duration::ZERO, 1, |n| served.push(n));
        assert_eq!(served, [0, 1, 2]);
    }

    #[test]
    fn enough_items_are_taken_without_waiting_for_a_pause() {
        let handoff = Handoff::<Vec<u32>>::default();
        for n in 0..8 {
            push(&handoff, n);
        }
        let mut batch = Vec::new();
        // A pause of an hour would never come within the test.
        assert!(handoff.take_when_quiet(
            &mut batch,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            8
        ));
        assert_eq!(batch.len(), 8);
        handoff.close();
        batch.clear();
        assert!(!handoff.take_when_quiet(
            &mut batch,
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            8
        ));
    }
}
