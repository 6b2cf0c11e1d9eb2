//! Coalescing as scenarios, and as the property the hooks' story rests on, over histories
//! the real machine produces.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::config::Config;
use crate::watch::loss::Loss;
use crate::watch::machine::{Input, Machine, Transition};

impl Queued for Transition {
    type View = View;

    fn step(&self) -> (View, View) {
        target_step(self.event, self.previous, self.state)
    }
}

/// The machine's announcements for a series of attempt outcomes (`true`: connected).
fn announced(outcomes: &[bool], threshold: u32) -> Vec<Transition> {
    let text = format!(
        "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:1\"\nfailure_threshold = {threshold}\n"
    );
    let target = Config::parse(&text, "t.toml".as_ref())
        .unwrap()
        .targets
        .remove(0);
    let mut machine = Machine::new(&target, 0);
    let now = Instant::now();
    outcomes
        .iter()
        .flat_map(|&ok| {
            let input = if ok {
                Input::Connected
            } else {
                Input::ConnectFailed(Loss::said("refused"))
            };
            machine.on(input, now, SystemTime::UNIX_EPOCH).transitions
        })
        .collect()
}

fn ids(p: &mut Pending<Transition>) -> Vec<u64> {
    std::iter::from_fn(|| p.pop()).map(|t| t.seq).collect()
}

#[test]
fn events_that_arrive_one_at_a_time_are_all_kept() {
    let ts = announced(&[true, false, false], 2);
    let mut p = Pending::default();
    let mut ran = Vec::new();
    for t in ts {
        assert_eq!(p.push(t), 0);
        ran.extend(p.pop().map(|t| t.event));
    }
    assert_eq!(ran, [Event::Connect, Event::Disconnect, Event::Failure]);
}

#[test]
fn an_outage_that_ended_while_hooks_were_busy_is_dropped_whole_and_the_newest_runs() {
    // C0 runs; then D1 F2 C3 R4 D5 C6 pile up. Running C0 D1 F2 R4 C6 would tell the
    // application `recover` without a `connect` before it.
    let ts = announced(&[true, false, false, true, false, true], 2);
    let events: Vec<Event> = ts.iter().map(|t| t.event).collect();
    use Event::*;
    assert_eq!(
        events,
        [
            Connect, Disconnect, Failure, Connect, Recover, Disconnect, Connect
        ]
    );
    let mut p = Pending::default();
    let mut it = ts.into_iter();
    p.push(it.next().unwrap());
    assert_eq!(p.pop().unwrap().seq, 0);
    let mut dropped = 0;
    for t in it {
        dropped += p.push(t);
    }
    assert_eq!(ids(&mut p), [5, 6], "disconnect then connect, ids kept");
    assert_eq!(dropped, 4);
}

#[test]
fn a_flap_while_busy_keeps_both_halves_when_it_is_the_latest_news() {
    let ts = announced(&[true, false, true], 5);
    let mut p = Pending::default();
    let mut it = ts.into_iter();
    p.push(it.next().unwrap());
    p.pop();
    for t in it {
        assert_eq!(p.push(t), 0);
    }
    assert_eq!(ids(&mut p), [1, 2]);
}

#[test]
fn a_long_burst_nets_out_to_the_final_state() {
    let outcomes: Vec<bool> = (0..200).map(|i| i % 2 == 0).collect();
    let ts = announced(&outcomes, 5);
    let n = ts.len() as u64;
    let mut p = Pending::default();
    let mut dropped = 0;
    for t in ts {
        dropped += p.push(t);
    }
    // From `connecting`: the first connect, then the final disconnect.
    assert_eq!(ids(&mut p), [0, n - 1]);
    assert_eq!(dropped, n - 2);
}

/// Outcomes with time between them, so `recover_after` can pass or not.
fn history() -> impl Strategy<Value = Vec<(u8, u64)>> {
    proptest::collection::vec((0u8..4, 0u64..300), 0..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Whatever the worker's pace, the events that run form a path the machine could
    /// have announced: each starts where the last one left the application, beginning
    /// where it stood; ids only grow; the newest event runs, last; and the application
    /// ends where the target is.
    #[test]
    fn the_hooks_that_run_tell_a_story_the_machine_could_have_told(
        inputs in history(),
        threshold in 1u32..4,
        recover_ms in prop_oneof![Just(0u64), 1u64..500],
        // The worker takes an event after every `k`-th push (0: never, all pile up).
        k in 0usize..5,
    ) {
        let text = format!(
            "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:1\"\nfailure_threshold = {threshold}\nrecover_after = \"{recover_ms}ms\"\n"
        );
        let target = Config::parse(&text, "t.toml".as_ref()).unwrap().targets.remove(0);
        let mut machine = Machine::new(&target, 0);
        let mut now = Instant::now();
        let mut announced = Vec::new();
        for (kind, wait) in inputs {
            now += Duration::from_millis(wait);
            let input = match kind {
                0 => Input::Connected,
                1 => Input::ConnectFailed(Loss::said("refused")),
                2 => Input::Lost(Loss::said("reset")),
                _ => Input::Tick,
            };
            announced.extend(machine.on(input, now, SystemTime::UNIX_EPOCH).transitions);
        }

        let mut p = Pending::default();
        let mut ran: Vec<Transition> = Vec::new();
        for (i, t) in announced.iter().enumerate() {
            p.push(t.clone());
            if k > 0 && i % k == 0 {
                ran.extend(p.pop());
            }
        }
        ran.extend(std::iter::from_fn(|| p.pop()));

        let mut view = View {
            state: State::Connecting,
            fallback: false,
        };
        for t in &ran {
            let (from, to) = t.step();
            prop_assert_eq!(from, view, "{:?} does not start where the last event left off: {:?}", t, ran);
            view = to;
        }
        for w in ran.windows(2) {
            prop_assert!(w[0].seq < w[1].seq);
        }
        if let Some(last) = announced.last() {
            prop_assert_eq!(ran.last().map(|t| t.seq), Some(last.seq));
            prop_assert_eq!(view.state, machine.state());
            prop_assert_eq!(view.fallback, machine.in_outage());
        }
    }
}
