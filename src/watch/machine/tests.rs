//! The machine's rules, as scenarios and as properties over random histories.

use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::config::{self, Config};
use crate::watch::backoff;

fn target(threshold: u32, recover_after_ms: u64, jitter: f64) -> config::Target {
    let text = format!(
        r#"
        [[targets]]
        name = "db"
        address = "127.0.0.1:5432"
        failure_threshold = {threshold}
        recover_after = "{recover_after_ms}ms"
        backoff = {{ initial = "100ms", max = "2s", multiplier = 2.0, jitter = {jitter} }}
        "#
    );
    Config::parse(&text, "test.toml".as_ref())
        .unwrap()
        .targets
        .remove(0)
}

fn err(s: &str) -> Input {
    Input::ConnectFailed(Loss::said(s))
}

fn lost(s: &str) -> Input {
    Input::Lost(Loss::said(s))
}

fn crashed(panic: &str) -> Loss {
    Loss::gave_up(4, Duration::from_secs(60), panic.to_owned())
}

/// Drives a machine with a fake clock, recording what it published.
struct Harness {
    machine: Machine,
    now: Instant,
    events: Vec<Transition>,
    next: Next,
}

impl Harness {
    fn new(t: &config::Target) -> Harness {
        Harness {
            machine: Machine::new(t, 0),
            now: Instant::now(),
            events: Vec::new(),
            next: Next::ConnectNow,
        }
    }

    fn feed(&mut self, input: Input) -> Vec<Event> {
        let step = self.machine.on(input, self.now, SystemTime::UNIX_EPOCH);
        self.next = step.next;
        let events: Vec<Event> = step.transitions.iter().map(|t| t.event).collect();
        self.events.extend(step.transitions);
        events
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
    }
}

#[test]
fn first_connect_fires_on_connect_and_holds() {
    let mut h = Harness::new(&target(3, 0, 0.2));
    assert_eq!(h.machine.state(), State::Connecting);
    assert_eq!(h.feed(Input::Connected), [Event::Connect]);
    assert_eq!(h.machine.state(), State::Up);
    assert_eq!(h.next, Next::Hold { until: None });
}

#[test]
fn a_lost_connection_is_retried_at_once_without_any_event() {
    let mut h = Harness::new(&target(3, 0, 0.2));
    h.feed(Input::Connected);
    assert_eq!(h.feed(lost("closed by peer")), []);
    assert_eq!(h.next, Next::ConnectNow);
    assert_eq!(h.machine.state(), State::Up);
    assert_eq!(
        h.feed(Input::Connected),
        [],
        "a quick reconnect is invisible"
    );
    assert_eq!(h.machine.state(), State::Up);
}

#[test]
fn a_failed_reconnect_enters_down_and_the_threshold_enters_failed() {
    let mut h = Harness::new(&target(3, 0, 0.0));
    h.feed(Input::Connected);
    h.feed(lost("reset"));
    assert_eq!(h.feed(err("refused")), [Event::Disconnect]);
    assert_eq!((h.machine.state(), h.machine.failures()), (State::Down, 1));
    assert_eq!(h.next, Next::ConnectAfter(Duration::from_millis(100)));
    assert_eq!(h.feed(err("refused")), []);
    assert_eq!(h.next, Next::ConnectAfter(Duration::from_millis(200)));
    assert_eq!(h.feed(err("refused")), [Event::Failure]);
    assert_eq!(
        (h.machine.state(), h.machine.failures()),
        (State::Failed, 3)
    );
    assert_eq!(
        h.next,
        Next::ConnectAfter(Duration::from_millis(400)),
        "entering failed does not jump to max"
    );
    assert_eq!(h.feed(err("refused")), []);
    assert_eq!(h.feed(Input::Connected), [Event::Connect, Event::Recover]);
    assert_eq!((h.machine.state(), h.machine.failures()), (State::Up, 0));
}

#[test]
fn the_backoff_keeps_growing_across_failed_and_resets_on_connect() {
    let mut h = Harness::new(&target(3, 0, 0.0));
    let mut delays = Vec::new();
    let mut states = Vec::new();
    for _ in 0..8 {
        h.feed(err("refused"));
        let Next::ConnectAfter(d) = h.next else {
            panic!("a failed attempt schedules the next one: {:?}", h.next);
        };
        delays.push(d.as_millis());
        states.push(h.machine.state());
        h.advance(d);
    }
    assert_eq!(delays, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
    assert_eq!(states[1], State::Down);
    assert_eq!(
        states[2],
        State::Failed,
        "the third failure reaches the threshold"
    );
    assert_eq!(h.feed(Input::Connected), [Event::Connect, Event::Recover]);
    h.feed(lost("reset"));
    h.feed(err("refused"));
    assert_eq!(
        h.next,
        Next::ConnectAfter(Duration::from_millis(100)),
        "a successful connect starts the schedule over"
    );
}

#[test]
fn a_server_that_stops_answering_goes_down_at_once_without_a_reconnect_first() {
    let mut h = Harness::new(&target(3, 0, 0.0));
    h.feed(Input::Connected);
    assert_eq!(
        h.feed(Input::Failed(Loss::said("no answer within 1s"))),
        [Event::Disconnect]
    );
    assert_eq!((h.machine.state(), h.machine.failures()), (State::Down, 1));
    assert_eq!(h.next, Next::ConnectAfter(Duration::from_millis(100)));
    assert_eq!(
        h.events[1]
            .last_error
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("no answer within 1s")
    );
}

#[test]
fn a_target_never_reached_goes_down_from_connecting() {
    let mut h = Harness::new(&target(1, 0, 0.2));
    assert_eq!(h.feed(err("refused")), [Event::Disconnect, Event::Failure]);
    assert_eq!(h.events[0].previous, State::Connecting);
    assert_eq!(h.events[0].state, State::Down);
    assert_eq!(h.events[1].previous, State::Down);
    assert_eq!(h.events[1].state, State::Failed);
    assert_eq!(
        h.events[1]
            .last_error
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("refused")
    );
}

#[test]
fn recover_waits_for_recover_after_and_a_relapse_continues_the_outage() {
    let mut h = Harness::new(&target(2, 5000, 0.2));
    h.feed(err("refused"));
    assert_eq!(h.feed(err("refused")), [Event::Failure]);
    assert_eq!(h.feed(Input::Connected), [Event::Connect]);
    let due = h.now + Duration::from_secs(5);
    assert_eq!(h.next, Next::Hold { until: Some(due) });
    h.advance(Duration::from_secs(1));
    h.feed(lost("reset"));
    assert_eq!(h.feed(err("refused")), [Event::Disconnect]);
    assert_eq!(h.machine.state(), State::Failed, "the outage continues");
    assert_eq!(h.feed(err("refused")), [], "no second on_failure");
    assert_eq!(h.feed(Input::Connected), [Event::Connect]);
    h.advance(Duration::from_millis(4999));
    assert_eq!(h.feed(Input::Tick), []);
    h.advance(Duration::from_millis(1));
    assert_eq!(h.feed(Input::Tick), [Event::Recover]);
    assert_eq!(h.next, Next::Hold { until: None });
    assert!(!h.machine.in_outage());
}

#[test]
fn a_quick_reconnect_during_damping_keeps_the_recover_deadline() {
    let mut h = Harness::new(&target(1, 1000, 0.2));
    h.feed(err("refused"));
    h.feed(Input::Connected);
    let due = h.now + Duration::from_secs(1);
    h.advance(Duration::from_millis(500));
    h.feed(lost("closed"));
    assert_eq!(h.feed(Input::Connected), []);
    assert_eq!(h.next, Next::Hold { until: Some(due) });
}

#[test]
fn event_ids_continue_from_the_given_sequence() {
    let t = target(1, 0, 0.2);
    let mut m = Machine::new(&t, 41);
    let step = m.on(err("x"), Instant::now(), SystemTime::UNIX_EPOCH);
    let seqs: Vec<u64> = step.transitions.iter().map(|t| t.seq).collect();
    assert_eq!(seqs, [41, 42]);
    assert_eq!(m.next_seq(), 43);
}

/// What the world does at each step of a random history.
#[derive(Clone, Debug)]
enum World {
    /// The attempt succeeds, or a held connection stays up for this long.
    Fine(u64),
    /// The attempt fails, or the held connection is lost.
    Broken,
    /// The attempt fails, or the held connection's server stops answering.
    Unresponsive,
}

fn world() -> impl Strategy<Value = World> {
    prop_oneof![
        3 => (0u64..3000).prop_map(World::Fine),
        3 => Just(World::Broken),
        1 => Just(World::Unresponsive),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn invariants_hold_over_any_history(
        threshold in 1u32..6,
        recover_after_ms in prop_oneof![Just(0u64), 1u64..2500],
        jitter in 0.0f64..=1.0,
        history in proptest::collection::vec(world(), 1..120),
    ) {
        let t = target(threshold, recover_after_ms, jitter);
        let recover_after = Duration::from_millis(recover_after_ms);
        let mut h = Harness::new(&t);
        // When the current connection was made, for checking `recover_after`.
        let mut connected_since: Option<Instant> = None;
        let mut last_input = None;

        for w in history {
            let before = h.events.len();
            let Some(input) = next_input(&mut h, &w) else { continue };
            let state_before = h.machine.state();
            let was_reconnecting = matches!(h.next, Next::ConnectNow) && state_before == State::Up;
            h.feed(input.clone());
            match &input {
                Input::Connected if !was_reconnecting => connected_since = Some(h.now),
                Input::ConnectFailed(_) | Input::Failed(_) => connected_since = None,
                _ => {}
            }
            last_input = Some(input.clone());

            for e in &h.events[before..] {
                check_event_names_its_state(e)?;
                check_failure_waits_for_the_threshold(e, threshold)?;
                check_recover_waits_for_recover_after(e, connected_since, h.now, recover_after)?;
            }
            check_delay_in_the_backoff_band(&h, &t)?;
        }

        check_final_state(&h, last_input.as_ref())?;
        check_failed_means_in_outage(&h)?;
        check_seqs_count_events(&h.events)?;
        check_mode_events_alternate(&h.events)?;
        check_link_events_alternate(&h.events)?;
    }
}

/// The input the world's next step makes, with the clock moved to it; `None` while a
/// held connection just stays up.
fn next_input(h: &mut Harness, w: &World) -> Option<Input> {
    Some(match (h.next, w) {
        (Next::Hold { until }, World::Fine(ms)) => {
            let stay = Duration::from_millis(*ms);
            match until {
                Some(at) if h.now + stay >= at => {
                    h.now = at;
                    Input::Tick
                }
                _ => {
                    h.advance(stay);
                    return None;
                }
            }
        }
        (Next::Hold { .. }, World::Broken) => lost("closed by peer"),
        (Next::Hold { .. }, World::Unresponsive) => Input::Failed(Loss::said("no answer")),
        (Next::ConnectNow, w) | (Next::ConnectAfter(_), w) => {
            if let Next::ConnectAfter(d) = h.next {
                h.advance(d);
            }
            match w {
                World::Fine(_) => Input::Connected,
                _ => err("refused"),
            }
        }
    })
}

/// Each event names the state it led to.
fn check_event_names_its_state(e: &Transition) -> Result<(), TestCaseError> {
    let expected = match e.event {
        Event::Connect | Event::Recover => vec![State::Up],
        Event::Disconnect => vec![State::Down, State::Failed],
        Event::Failure => vec![State::Failed],
    };
    prop_assert!(expected.contains(&e.state), "{e:?}");
    Ok(())
}

fn check_failure_waits_for_the_threshold(
    e: &Transition,
    threshold: u32,
) -> Result<(), TestCaseError> {
    if e.event == Event::Failure {
        prop_assert!(
            e.failures >= threshold,
            "on_failure before the threshold: {e:?}"
        );
    }
    Ok(())
}

fn check_recover_waits_for_recover_after(
    e: &Transition,
    connected_since: Option<Instant>,
    now: Instant,
    recover_after: Duration,
) -> Result<(), TestCaseError> {
    if e.event == Event::Recover {
        let since = connected_since.expect("recover while not connected");
        prop_assert!(now >= since + recover_after);
    }
    Ok(())
}

/// The next delay stays in the band of the policy.
fn check_delay_in_the_backoff_band(h: &Harness, t: &config::Target) -> Result<(), TestCaseError> {
    if let Next::ConnectAfter(d) = h.next {
        let slack = Duration::from_nanos(2);
        // One band for the whole outage: `failed` changes nothing.
        let (lo, hi) = backoff::band(&t.backoff, h.machine.failures() - 1);
        prop_assert!(
            d + slack >= lo && d <= hi + slack,
            "delay {d:?} outside [{lo:?}, {hi:?}]"
        );
    }
    Ok(())
}

/// The state after the history matches its last outcome.
fn check_final_state(h: &Harness, last_input: Option<&Input>) -> Result<(), TestCaseError> {
    match last_input {
        Some(Input::Connected) | Some(Input::Tick) | Some(Input::Lost(_)) => {
            prop_assert_eq!(h.machine.state(), State::Up)
        }
        Some(Input::ConnectFailed(_) | Input::Failed(_)) => {
            prop_assert!(matches!(h.machine.state(), State::Down | State::Failed))
        }
        None => prop_assert_eq!(h.machine.state(), State::Connecting),
    }
    Ok(())
}

fn check_failed_means_in_outage(h: &Harness) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        h.machine.state() == State::Failed,
        h.machine.in_outage() && h.machine.state() != State::Up
    );
    Ok(())
}

/// Sequence numbers count events one by one.
fn check_seqs_count_events(events: &[Transition]) -> Result<(), TestCaseError> {
    for (i, e) in events.iter().enumerate() {
        prop_assert_eq!(e.seq, i as u64);
    }
    Ok(())
}

/// on_failure / on_recover strictly alternate, starting with on_failure.
fn check_mode_events_alternate(events: &[Transition]) -> Result<(), TestCaseError> {
    let mode: Vec<Event> = events
        .iter()
        .map(|e| e.event)
        .filter(|e| matches!(e, Event::Failure | Event::Recover))
        .collect();
    for (i, e) in mode.iter().enumerate() {
        let want = if i % 2 == 0 {
            Event::Failure
        } else {
            Event::Recover
        };
        prop_assert_eq!(*e, want, "mode events out of order: {:?}", mode);
    }
    Ok(())
}

/// on_connect / on_disconnect alternate.
fn check_link_events_alternate(events: &[Transition]) -> Result<(), TestCaseError> {
    let link: Vec<Event> = events
        .iter()
        .map(|e| e.event)
        .filter(|e| matches!(e, Event::Connect | Event::Disconnect))
        .collect();
    for pair in link.windows(2) {
        prop_assert_ne!(pair[0], pair[1], "connection events repeat: {:?}", link);
    }
    Ok(())
}

#[test]
fn a_resumed_machine_neither_repeats_nor_skips_events() {
    let t = target(2, 0, 0.2);
    let mut h = Harness::new(&t);
    h.feed(Input::Connected);
    let snap = h.machine.snapshot();
    assert_eq!(
        (snap.next_seq, snap.state, snap.outage),
        (1, State::Up, false)
    );

    // Restarted while up: a quick reconnect is silent, a failed one is the outage.
    let mut m = Machine::resume(&t, &snap);
    let step = m.on(Input::Connected, Instant::now(), SystemTime::UNIX_EPOCH);
    assert!(step.transitions.is_empty());
    let mut m = Machine::resume(&t, &snap);
    let step = m.on(err("refused"), Instant::now(), SystemTime::UNIX_EPOCH);
    let events: Vec<_> = step.transitions.iter().map(|t| (t.seq, t.event)).collect();
    assert_eq!(events, [(1, Event::Disconnect)]);
}

#[test]
fn giving_up_marks_the_target_failed_once_and_recovery_follows_the_next_connect() {
    let t = target(5, 0, 0.2);
    let mut m = Machine::new(&t, 0);
    m.on(Input::Connected, Instant::now(), SystemTime::UNIX_EPOCH);
    let given_up = m.give_up(crashed("checker crashed"), SystemTime::UNIX_EPOCH);
    let events: Vec<_> = given_up.iter().map(|t| (t.event, t.state)).collect();
    assert_eq!(
        events,
        [
            (Event::Disconnect, State::Down),
            (Event::Failure, State::Failed)
        ]
    );
    assert!(
        m.give_up(crashed("again"), SystemTime::UNIX_EPOCH)
            .is_empty(),
        "once per outage"
    );

    let mut m = Machine::resume(&t, &m.snapshot());
    let step = m.on(Input::Connected, Instant::now(), SystemTime::UNIX_EPOCH);
    let events: Vec<_> = step.transitions.iter().map(|t| t.event).collect();
    assert_eq!(events, [Event::Connect, Event::Recover]);
}
