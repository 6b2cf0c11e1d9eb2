//! The pending hook events of one target, coalesced when the target changes state
//! faster than its hooks run.
//!
//! The hooks of a target tell the application a story: each event moves it from one
//! view of the target (its state, and whether it runs on its fallback) to the next.
//! Whatever is dropped, the events that do run must still tell a story the machine could
//! have told: each one starts where the previous one left the application. So the
//! pending events, which form such a path from the view the hooks last told, are cut
//! down to the shortest path through them to the newest one: every detour that comes
//! back to a view already passed (an outage that ended, a flap) is dropped whole. The
//! newest event always runs, and runs last; the events kept keep their ids.

use std::collections::VecDeque;

use crate::watch::machine::{Event, State};

/// What the application believes after a hook: the target's state, and whether it was
/// told to run on its fallback (`failure` without `recover` since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct View {
    pub state: State,
    pub fallback: bool,
}

/// Anything queued for hooks, known by the views it leads from and to.
pub trait Queued {
    /// What the application believes between two events.
    type View: Copy + PartialEq;

    /// The view this event leaves and the one it leads to.
    fn step(&self) -> (Self::View, Self::View);
}

/// The step of a target's event. The machine enters `failed` only on its fallback, so a
/// `connect` from `failed` starts on the fallback and a `disconnect` into `failed`
/// continues it.
pub fn target_step(event: Event, previous: State, state: State) -> (View, View) {
    let before = match event {
        Event::Failure => false,
        Event::Recover => true,
        Event::Connect => previous == State::Failed,
        Event::Disconnect => state == State::Failed,
    };
    let after = match event {
        Event::Failure => true,
        Event::Recover => false,
        Event::Connect | Event::Disconnect => before,
    };
    (
        View {
            state: previous,
            fallback: before,
        },
        View {
            state,
            fallback: after,
        },
    )
}

/// Events waiting for the target's hook worker.
pub struct Pending<T: Queued> {
    items: VecDeque<T>,
    /// What the hooks told last: the view after the last event handed to the worker.
    /// `None` until the first event, whose own starting view stands in for it.
    told: Option<T::View>,
}

impl<T: Queued> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            items: VecDeque::new(),
            told: None,
        }
    }
}

impl<T: Queued> Pending<T> {
    /// Queues an event and coalesces; returns how many pending events were dropped.
    pub fn push(&mut self, item: T) -> u64 {
        let before = self.items.len() as u64 + 1;
        let start = self.told.unwrap_or_else(|| match self.items.front() {
            Some(first) => first.step().0,
            None => item.step().0,
        });
        // Erase the loops of the path through the events before the newest: each time
        // it comes back to a view it passed, the detour since then goes.
        let mut path: Vec<(T::View, T)> = Vec::with_capacity(self.items.len());
        for it in self.items.drain(..) {
            let to = it.step().1;
            if to == start {
                path.clear();
            } else if let Some(i) = path.iter().position(|(v, _)| *v == to) {
                // The event that reached `to` first stays; the loop after it goes.
                path.truncate(i + 1);
            } else {
                path.push((to, it));
                continue;
            }
            // The event that closed the loop goes with it.
        }
        self.items.extend(path.into_iter().map(|(_, it)| it));
        if self.items.capacity() == 0 {
            // Most queues hold one event at a time; the first growth would make room
            // for four, and thousands of targets queue at once after a mass outage.
            self.items.reserve_exact(1);
        }
        self.items.push_back(item);
        before - self.items.len() as u64
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The next event to run; from now on the hooks have told its view.
    pub fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front()?;
        self.told = Some(item.step().1);
        Some(item)
    }
}

#[cfg(test)]
mod tests;
