//! The state machine of one target: what each connect outcome means, which hooks it
//! fires and when to try again. No I/O and no clock reads: time is an input, so every
//! rule here is tested exactly and without sockets.
//!
//! ```text
//!            connected                       closed by peer
//! connecting ─────────▶ up ◀──────────────▶ (reconnecting, still up)
//!     │                 ▲ │                        │ reconnect failed
//!     │ failed          │ └──── connected ─────┐   ▼
//!     └───────────────▶ down ──(threshold)──▶ failed
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config;
use crate::watch::backoff::ReconnectBackoff;
use crate::watch::loss::Loss;

/// The state of a target as users see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Not yet reached since start.
    Connecting,
    /// A connection is held.
    Up,
    /// The last attempt failed; fewer than `failure_threshold` in a row.
    Down,
    /// `failure_threshold` attempts in a row failed: the application runs on its
    /// fallback until `on_recover`.
    Failed,
}

impl State {
    pub const ALL: [State; 4] = [State::Connecting, State::Up, State::Down, State::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Connecting => "connecting",
            State::Up => "up",
            State::Down => "down",
            State::Failed => "failed",
        }
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The events hooks are attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    Connect,
    Disconnect,
    Failure,
    Recover,
}

impl Event {
    pub const ALL: [Event; 4] = [
        Event::Connect,
        Event::Disconnect,
        Event::Failure,
        Event::Recover,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Event::Connect => "connect",
            Event::Disconnect => "disconnect",
            Event::Failure => "failure",
            Event::Recover => "recover",
        }
    }

    /// The config key of this event's hooks.
    pub fn hook_key(self) -> &'static str {
        match self {
            Event::Connect => "on_connect",
            Event::Disconnect => "on_disconnect",
            Event::Failure => "on_failure",
            Event::Recover => "on_recover",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the checker observed.
#[derive(Clone, Debug)]
pub enum Input {
    /// A connect attempt (and its probe) succeeded.
    Connected,
    /// A connect attempt failed.
    ConnectFailed(Arc<Loss>),
    /// The held connection was closed or reset by the peer: it is replaced at once, and
    /// only if that fails is the target down (servers close idle sessions).
    Lost(Arc<Loss>),
    /// The held connection's server stopped answering (a check timed out, a keepalive
    /// or user timeout) or answered wrong: the target is down at once. Reconnecting
    /// first would only wait for the same silence again.
    Failed(Arc<Loss>),
    /// The deadline of the last [`Next::Hold`] has passed.
    Tick,
}

/// What the checker must do next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep the connection; feed [`Input::Tick`] at `until` if set.
    Hold { until: Option<Instant> },
    /// Connect again without delay.
    ConnectNow,
    /// Connect again after this delay.
    ConnectAfter(Duration),
}

/// One published state change: the record hooks, the status API and metrics consume.
#[derive(Clone, Debug)]
pub struct Transition {
    /// Increases by one per event of this target for the life of the process.
    pub seq: u64,
    pub event: Event,
    pub previous: State,
    pub state: State,
    /// Consecutive failed attempts at the time of the event.
    pub failures: u32,
    pub last_error: Option<Arc<Loss>>,
    /// Wall-clock time of the observation that caused the event.
    pub at: SystemTime,
}

impl Transition {
    /// `<target>:<sequence>`, the id receivers drop duplicates and spot gaps with.
    pub fn event_id(&self, target: &str) -> String {
        format!("{target}:{}", self.seq)
    }
}

/// The result of feeding one input.
#[derive(Debug)]
pub struct Step {
    /// At most two: `disconnect` + `failure` when the first failure reaches a threshold
    /// of 1, or `connect` + `recover` when `recover_after` is zero.
    pub transitions: Vec<Transition>,
    pub next: Next,
}

/// Where the machine is; finer than [`State`] because a lost connection being replaced
/// is still `up` to users.
///
/// Each phase carries what only it has: the failure count lives in the phases that are
/// failing, and the pending recovery in the phases that hold (or are replacing) a
/// connection. Leaving a phase drops its data, so no stale deadline or count outlives
/// the situation that made it, and a state the machine cannot be in (`down` on the
/// fallback, `up` with failures) cannot be written down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Before the first attempt has ended.
    Connecting,
    Up {
        recovery: Recovery,
    },
    /// The held connection was lost and an immediate reconnect is under way. Shown as
    /// `up`: servers that close idle sessions must not raise a false alarm. A pending
    /// recovery is kept, so a quick reconnect does not start the wait over.
    Reconnecting {
        recovery: Recovery,
    },
    /// Failing, `failures` attempts in a row, not yet `failure_threshold`.
    Down {
        failures: u32,
    },
    /// On the fallback: `on_failure` has run and `on_recover` has not.
    Failed {
        failures: u32,
    },
}

/// Whether a connected target still has its application on the fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Recovery {
    /// Not on the fallback.
    None,
    /// On the fallback since an outage; `on_recover` is due at `at` (set once the
    /// connection that will end the outage is made).
    Pending { at: Option<Instant> },
}

/// The state machine of one target.
#[derive(Debug)]
pub struct Machine {
    phase: Phase,
    threshold: u32,
    recover_after: Duration,
    last_error: Option<Arc<Loss>>,
    next_seq: u64,
    backoff: ReconnectBackoff,
}

/// What must survive a restart of a target's actor, so that the new incarnation
/// neither repeats nor skips an event: the numbering, and what the application was
/// last told.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub next_seq: u64,
    pub state: State,
    /// `on_failure` fired and `on_recover` has not.
    pub outage: bool,
    pub failures: u32,
    pub last_error: Option<Arc<Loss>>,
}

impl Default for Snapshot {
    fn default() -> Snapshot {
        Snapshot {
            next_seq: 0,
            state: State::Connecting,
            outage: false,
            failures: 0,
            last_error: None,
        }
    }
}

impl Machine {
    /// `first_seq` continues a previous incarnation's numbering after a restart, so
    /// event ids never repeat within a process.
    pub fn new(target: &config::Target, first_seq: u64) -> Machine {
        Machine::resume(
            target,
            &Snapshot {
                next_seq: first_seq,
                ..Snapshot::default()
            },
        )
    }

    /// A machine that continues where a crashed or replaced one stopped. It connects
    /// anew; a target that was `up` is treated like a lost connection being replaced,
    /// so a quick reconnect announces nothing and a failed one announces the outage.
    pub fn resume(target: &config::Target, from: &Snapshot) -> Machine {
        let recovery = if from.outage {
            Recovery::Pending { at: None }
        } else {
            Recovery::None
        };
        let failures = from.failures;
        Machine {
            phase: match from.state {
                State::Connecting => Phase::Connecting,
                State::Up => Phase::Reconnecting { recovery },
                State::Down if from.outage => Phase::Failed { failures },
                State::Down => Phase::Down { failures },
                State::Failed => Phase::Failed { failures },
            },
            threshold: target.failure_threshold,
            recover_after: target.recover_after.get(),
            last_error: from.last_error.clone(),
            next_seq: from.next_seq,
            backoff: ReconnectBackoff::new(&target.backoff),
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            next_seq: self.next_seq,
            state: self.state(),
            outage: self.in_outage(),
            failures: self.failures(),
            last_error: self.last_error.clone(),
        }
    }

    /// The supervisor gave up on the target's actor (it crashed too often): the target
    /// is `failed` until the actor is tried again, and the application is told once.
    pub fn give_up(&mut self, reason: Loss, wall: SystemTime) -> Vec<Transition> {
        let mut out = Emitter {
            transitions: Vec::new(),
            wall,
        };
        self.last_error = Some(Arc::new(reason));
        let failures = self.failures().saturating_add(1).max(self.threshold);
        let previous = self.state();
        let was_in_outage = self.in_outage();
        match self.phase {
            Phase::Connecting | Phase::Up { .. } | Phase::Reconnecting { .. } => {
                self.phase = if was_in_outage {
                    Phase::Failed { failures }
                } else {
                    Phase::Down { failures }
                };
                self.emit(&mut out, Event::Disconnect, previous);
            }
            Phase::Down { .. } | Phase::Failed { .. } => {}
        }
        let previous = self.state();
        self.phase = Phase::Failed { failures };
        if !was_in_outage {
            self.emit(&mut out, Event::Failure, previous);
        }
        out.transitions
    }

    pub fn state(&self) -> State {
        match self.phase {
            Phase::Connecting => State::Connecting,
            Phase::Up { .. } | Phase::Reconnecting { .. } => State::Up,
            Phase::Down { .. } => State::Down,
            Phase::Failed { .. } => State::Failed,
        }
    }

    /// Consecutive failed attempts; 0 while up or before the first attempt.
    pub fn failures(&self) -> u32 {
        match self.phase {
            Phase::Down { failures } | Phase::Failed { failures } => failures,
            Phase::Connecting | Phase::Up { .. } | Phase::Reconnecting { .. } => 0,
        }
    }

    pub fn last_error(&self) -> Option<&Arc<Loss>> {
        self.last_error.as_ref()
    }

    /// The sequence number the next event will carry.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Whether the application is on its fallback (between `on_failure` and `on_recover`).
    pub fn in_outage(&self) -> bool {
        match self.phase {
            Phase::Failed { .. } => true,
            Phase::Up { recovery } | Phase::Reconnecting { recovery } => recovery != Recovery::None,
            Phase::Connecting | Phase::Down { .. } => false,
        }
    }

    /// Feeds one observation made at `now` (monotonic) / `wall` (for the record).
    pub fn on(&mut self, input: Input, now: Instant, wall: SystemTime) -> Step {
        let mut out = Emitter {
            transitions: Vec::new(),
            wall,
        };
        let next = match input {
            Input::Connected => self.connected(now, &mut out),
            Input::ConnectFailed(error) | Input::Failed(error) => {
                self.attempt_failed(error, &mut out)
            }
            Input::Lost(error) => match self.phase {
                Phase::Up { recovery } => {
                    self.last_error = Some(error);
                    self.phase = Phase::Reconnecting { recovery };
                    Next::ConnectNow
                }
                // Only a held connection can be lost; anything else is a failed attempt.
                _ => self.attempt_failed(error, &mut out),
            },
            Input::Tick => self.tick(now, &mut out),
        };
        Step {
            transitions: out.transitions,
            next,
        }
    }

    fn connected(&mut self, now: Instant, out: &mut Emitter) -> Next {
        let previous = self.state();
        self.backoff.reset();
        // An outage without a deadline (a new connection, or one replaced after a
        // restart, whose pending recovery was not kept) starts its wait now.
        let due = |recovery: Recovery| match recovery {
            Recovery::Pending { at: None } => Recovery::Pending {
                at: Some(later(now, self.recover_after)),
            },
            kept => kept,
        };
        match self.phase {
            Phase::Up { .. } => {}
            // The replaced connection was never reported lost: nothing to announce.
            Phase::Reconnecting { recovery } => {
                self.phase = Phase::Up {
                    recovery: due(recovery),
                };
            }
            Phase::Connecting | Phase::Down { .. } | Phase::Failed { .. } => {
                let recovery = if self.in_outage() {
                    Recovery::Pending { at: None }
                } else {
                    Recovery::None
                };
                self.phase = Phase::Up {
                    recovery: due(recovery),
                };
                self.emit(out, Event::Connect, previous);
            }
        }
        self.tick(now, out)
    }

    fn attempt_failed(&mut self, error: Arc<Loss>, out: &mut Emitter) -> Next {
        self.last_error = Some(error);
        let failures = self.failures().saturating_add(1);
        let previous = self.state();
        match self.phase {
            Phase::Connecting | Phase::Reconnecting { .. } | Phase::Up { .. } => {
                // A drop before `recover_after` passed continues the outage: the
                // application is still on its fallback, so the target is `failed`
                // again, without a second `on_failure`.
                self.phase = if self.in_outage() {
                    Phase::Failed { failures }
                } else {
                    Phase::Down { failures }
                };
                self.emit(out, Event::Disconnect, previous);
            }
            Phase::Down { .. } => self.phase = Phase::Down { failures },
            Phase::Failed { .. } => self.phase = Phase::Failed { failures },
        }
        match self.phase {
            Phase::Down { failures } if failures >= self.threshold => {
                let previous = self.state();
                self.phase = Phase::Failed { failures };
                self.emit(out, Event::Failure, previous);
            }
            _ => {}
        }
        // The schedule keeps growing through the whole outage, `failed` or not: a
        // dependency that restarts in seconds is announced back within seconds.
        Next::ConnectAfter(self.backoff.next_delay())
    }

    fn tick(&mut self, now: Instant, out: &mut Emitter) -> Next {
        match self.phase {
            Phase::Up {
                recovery: Recovery::Pending { at: Some(at) },
            } if now >= at => {
                self.phase = Phase::Up {
                    recovery: Recovery::None,
                };
                self.emit(out, Event::Recover, State::Up);
                Next::Hold { until: None }
            }
            Phase::Up {
                recovery: Recovery::Pending { at },
            } => Next::Hold { until: at },
            Phase::Up {
                recovery: Recovery::None,
            } => Next::Hold { until: None },
            Phase::Reconnecting { .. } => Next::ConnectNow,
            // Only a held connection has timers; a tick in any other phase is stale
            // (the actor only ticks while holding), and the attempt it would find
            // pending stands.
            Phase::Connecting | Phase::Down { .. } | Phase::Failed { .. } => Next::ConnectNow,
        }
    }

    fn emit(&mut self, out: &mut Emitter, event: Event, previous: State) {
        let seq = self.next_seq;
        self.next_seq += 1;
        out.transitions.push(Transition {
            seq,
            event,
            previous,
            state: self.state(),
            failures: self.failures(),
            last_error: self.last_error.clone(),
            at: out.wall,
        });
    }
}

/// `now + d`, or a deadline that never comes when that is past what `Instant` holds:
/// a setting can never make the machine panic.
fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(config::duration::MAX))
        .unwrap_or(now)
}

struct Emitter {
    transitions: Vec<Transition>,
    wall: SystemTime,
}

#[cfg(test)]
mod tests;
