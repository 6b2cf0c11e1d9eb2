//! The pending hook events of one target, coalesced when the target changes state
//! faster than its hooks run.
//!
//! Events form two pairs that each alternate: `connect`/`disconnect` and
//! `failure`/`recover`. Within a pair, an even run of pending events cancels out and an
//! odd run nets to its last event, so dropping the rest keeps the application's view
//! alternating and leaves it in the mode of the target's final state. The newest event
//! is never dropped.

use std::collections::VecDeque;

use crate::machine::Event;

/// Anything queued for a target's hooks, known by its event.
pub trait Queued {
    fn event(&self) -> Event;
}

/// The two alternating pairs an event belongs to.
fn pair(e: Event) -> u8 {
    match e {
        Event::Connect | Event::Disconnect => 0,
        Event::Failure | Event::Recover => 1,
    }
}

/// Events waiting for the target's hook worker.
#[derive(Debug)]
pub struct Pending<T> {
    items: VecDeque<T>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            items: VecDeque::new(),
        }
    }
}

impl<T: Queued> Pending<T> {
    /// Queues an event and coalesces; returns how many pending events were dropped.
    pub fn push(&mut self, item: T) -> u64 {
        self.items.push_back(item);
        let last_pair = pair(self.items.back().expect("just pushed").event());
        let mut dropped = 0;
        for p in [0u8, 1] {
            let positions: Vec<usize> = self
                .items
                .iter()
                .enumerate()
                .filter(|(_, it)| pair(it.event()) == p)
                .map(|(i, _)| i)
                .collect();
            let n = positions.len();
            let keep = match (n % 2, p == last_pair) {
                _ if n < 2 => n,
                (1, _) => 1,
                (_, true) => 2,
                (_, false) => 0,
            };
            let doomed = &positions[..n - keep];
            // Remove from the back so earlier indices stay valid.
            for &i in doomed.iter().rev() {
                self.items.remove(i);
            }
            dropped += doomed.len() as u64;
        }
        dropped
    }

    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    impl Queued for (Event, u32) {
        fn event(&self) -> Event {
            self.0
        }
    }

    fn drain(p: &mut Pending<(Event, u32)>) -> Vec<Event> {
        std::iter::from_fn(|| p.pop()).map(|(e, _)| e).collect()
    }

    use Event::*;

    #[test]
    fn events_that_arrive_one_at_a_time_are_all_kept() {
        let mut p = Pending::default();
        assert_eq!(p.push((Disconnect, 0)), 0);
        assert_eq!(p.push((Failure, 1)), 0);
        assert_eq!(drain(&mut p), [Disconnect, Failure]);
    }

    #[test]
    fn a_flap_while_busy_keeps_both_halves_when_it_is_the_latest_news() {
        let mut p = Pending::default();
        p.push((Disconnect, 0));
        assert_eq!(p.push((Connect, 1)), 0);
        assert_eq!(drain(&mut p), [Disconnect, Connect]);
    }

    #[test]
    fn a_long_burst_nets_out_to_the_final_state() {
        let mut p = Pending::default();
        let mut dropped = 0;
        for i in 0..200 {
            dropped += p.push((if i % 2 == 0 { Disconnect } else { Connect }, i));
        }
        assert_eq!(drain(&mut p), [Disconnect, Connect]);
        assert_eq!(dropped, 198);
    }

    #[test]
    fn a_cancelled_out_outage_disappears_behind_newer_news() {
        let mut p = Pending::default();
        for e in [Failure, Recover, Disconnect] {
            p.push((e, 0));
        }
        assert_eq!(drain(&mut p), [Disconnect]);
    }

    /// A machine-like history: each pair alternates, starting where the app stands.
    fn history() -> impl Strategy<Value = Vec<Event>> {
        proptest::collection::vec(any::<bool>(), 0..60).prop_map(|flips| {
            let (mut link_up, mut mode_failed) = (true, false);
            flips
                .into_iter()
                .map(|link| {
                    if link {
                        link_up = !link_up;
                        if link_up { Connect } else { Disconnect }
                    } else {
                        mode_failed = !mode_failed;
                        if mode_failed { Failure } else { Recover }
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn coalescing_keeps_alternation_the_final_mode_and_the_last_event(
            events in history(),
            // The worker takes an event after every `k`-th push (0: never, all pile up).
            k in 0usize..5,
        ) {
            let mut p = Pending::default();
            let mut seen: Vec<Event> = Vec::new();
            for (i, e) in events.iter().enumerate() {
                p.push((*e, i as u32));
                if k > 0 && i % k == 0 {
                    if let Some((e, _)) = p.pop() { seen.push(e); }
                }
            }
            seen.extend(drain(&mut p));
            // The last event always runs, and runs last.
            if let Some(last) = events.last() {
                prop_assert_eq!(seen.last(), Some(last));
            }
            // Each pair still alternates as the application sees it, and ends where the
            // full history ends.
            for pair_events in [[Connect, Disconnect], [Failure, Recover]] {
                let full: Vec<_> = events.iter().filter(|e| pair_events.contains(e)).collect();
                let got: Vec<_> = seen.iter().filter(|e| pair_events.contains(e)).collect();
                for w in got.windows(2) {
                    prop_assert_ne!(w[0], w[1], "{:?}", got);
                }
                if let Some(first) = got.first() {
                    prop_assert_eq!(*first, full[0]);
                }
                prop_assert_eq!(full.len() % 2, got.len() % 2);
            }
        }
    }
}
