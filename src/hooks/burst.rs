//! Holding hook starts back while a burst of transitions is being recorded.
//!
//! When a thousand targets lose their server at once, each actor reads its loss, tries
//! the reconnect SPEC requires and records the new state in `/status`, `/readyz`, the
//! state file and `/events`, some 20 µs of CPU a target. Starting a hook costs more
//! than that, in tether, in the spawner and in the hook's own process; started as the
//! transitions come, the hooks of the first targets take the cores the actors of the
//! last ones need, and the last target is shown `down` twice as late. Everything that
//! reads the state must be right first: the hooks of a burst start once it is
//! recorded.
//!
//! A transition with no other within [`GAP`] before it is alone: its hooks start at
//! once, as they always did. Once a second one follows within [`GAP`], a burst is under
//! way, and hook starts wait until [`GAP`] passes without a transition, but never more
//! than [`MAX_HOLD`] after the burst began: a burst that goes on (ten thousand targets
//! going down, a fleet that keeps flapping) starts its hooks as they come from then on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// The longest pause between two transitions of one burst.
pub const GAP: Duration = Duration::from_millis(2);

/// The longest a burst holds back the hooks of its transitions.
pub const MAX_HOLD: Duration = Duration::from_millis(25);

/// When transitions were recorded, as microseconds after `base`.
pub struct Burst {
    base: Instant,
    /// The latest transition.
    last: AtomicU64,
    /// The first transition of the run of transitions, each within [`GAP`] of the one
    /// before, that the latest one belongs to.
    began: AtomicU64,
}

impl Burst {
    pub fn new() -> Burst {
        Burst {
            base: Instant::now(),
            last: AtomicU64::new(NEVER),
            began: AtomicU64::new(NEVER),
        }
    }

    /// Notes a transition, now.
    pub fn record(&self) {
        let now = self.now();
        let last = self.last.swap(now, Ordering::AcqRel);
        if last == NEVER || now.saturating_sub(last) > micros(GAP) {
            self.began.store(now, Ordering::Release);
        }
    }

    /// Until when hook starts wait; `None` when they may start now.
    pub fn hold(&self) -> Option<Instant> {
        let began = self.began.load(Ordering::Acquire);
        let last = self.last.load(Ordering::Acquire);
        if last == NEVER || last <= began {
            // The latest transition is alone, or the first of a burst: its hooks
            // started before a second one came.
            return None;
        }
        let until = (last + micros(GAP)).min(began + micros(MAX_HOLD));
        (self.now() < until).then(|| self.base + Duration::from_micros(until - 1))
    }

    /// Microseconds since `base`, plus one: 0 is [`NEVER`].
    fn now(&self) -> u64 {
        micros(self.base.elapsed()) + 1
    }
}

/// No transition yet.
const NEVER: u64 = 0;

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_transition_starts_its_hooks_at_once() {
        let burst = Burst::new();
        assert_eq!(burst.hold(), None, "nothing recorded yet");
        burst.record();
        assert_eq!(burst.hold(), None);
        tokio::time::advance(ms(10)).await;
        burst.record();
        assert_eq!(
            burst.hold(),
            None,
            "10 ms after the last one is not a burst"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_holds_hooks_until_it_pauses() {
        let burst = Burst::new();
        burst.record();
        for _ in 0..5 {
            tokio::time::advance(ms(1)).await;
            burst.record();
            let last = Instant::now();
            assert_eq!(burst.hold(), Some(last + GAP));
        }
        tokio::time::advance(GAP).await;
        assert_eq!(burst.hold(), None, "a pause of GAP ends the burst");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_that_goes_on_holds_hooks_no_longer_than_max_hold() {
        let burst = Burst::new();
        let began = Instant::now();
        burst.record();
        let mut released = None;
        for _ in 0..100 {
            tokio::time::advance(ms(1)).await;
            burst.record();
            if released.is_none() && burst.hold().is_none() {
                released = Some(Instant::now());
            }
            assert!(burst.hold().is_none_or(|until| until <= began + MAX_HOLD));
        }
        assert_eq!(released, Some(began + MAX_HOLD));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_after_a_pause_is_a_new_one() {
        let burst = Burst::new();
        for _ in 0..40 {
            tokio::time::advance(ms(1)).await;
            burst.record();
        }
        assert_eq!(burst.hold(), None, "held past MAX_HOLD");
        tokio::time::advance(ms(50)).await;
        burst.record();
        assert_eq!(burst.hold(), None, "alone again");
        tokio::time::advance(ms(1)).await;
        burst.record();
        assert_eq!(burst.hold(), Some(Instant::now() + GAP), "a new burst");
    }
}
