//! What checker actors publish, and the listeners that consume it.
//!
//! Listeners are called synchronously from the checker that observed the change, so
//! they must be quick and must never block: they record into their own state (a gauge,
//! a registry slot, a hook queue) and return. This keeps publication allocation-free
//! on the hot path and ordered per target, with no shared channel to saturate.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use crate::config::{Group, Target};
use crate::logging;
use crate::probe::Role;
use crate::watch::groups::{GroupEvent, GroupEventKind};
use crate::watch::machine::{Event, Transition};

/// One incarnation of a target's actor: its start, or the start that replaced it when
/// a reload changed the target. A restart after a crash continues the incarnation.
/// What an incarnation owns (its metric series) is left alone when the incarnation it
/// replaced stops late.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ActorId(pub u64);

impl ActorId {
    /// An id no other incarnation in this process has; never 0.
    pub fn next() -> ActorId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        ActorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// A listener to checker reports.
pub trait Observer: Send + Sync + 'static {
    /// An actor for `target` started (or restarted) and is about to connect.
    fn started(&self, _target: &Target, _actor: ActorId) {}

    /// A connect attempt finished, successfully or not, after `elapsed`.
    fn attempt(&self, _target: &Target, _ok: bool, _elapsed: Duration) {}

    /// A held connection was lost. Counted even when the immediate reconnect succeeds
    /// and no transition follows.
    fn lost(&self, _target: &Target, _error: &str) {}

    /// A state change, in the order the target went through them.
    fn transition(&self, target: &Arc<Target>, transition: &Transition);

    /// The target's replication role changed (`None`: unknown, which it also becomes
    /// when the connection is lost or the target goes down). Not a state change: no
    /// hook runs and `/events` does not move.
    ///
    /// Reported before the transitions of the same step: the check that brings a
    /// target up reports its role first, so a listener that sees `up` already knows the
    /// role, and a failover group never takes a member that is up for a primary it has
    /// not been told about; on a loss, the role turns unknown before the target leaves
    /// `up`, so "up and primary" is never seen of a connection that is gone.
    fn role(&self, _target: &Arc<Target>, _role: Option<Role>) {}

    /// A TLS connection was made and its server's certificate expires at `not_after`;
    /// told again only when that changes (a renewed certificate). Kept while the target
    /// is down: the certificate does not go away with the connection.
    fn certificate(&self, _target: &Target, _not_after: SystemTime) {}

    /// The held connection was moved to another address because the target's name
    /// now resolves elsewhere (DNS failover, a re-pointed service).
    fn address_changed(&self, _target: &Target, _from: SocketAddr, _to: SocketAddr) {}

    /// One hook action finished (or was given up on).
    fn hook_run(&self, _target: &Target, _event: Event, _result: HookResult, _elapsed: Duration) {}

    /// Pending hook events of `target` were merged because it changed state faster
    /// than its hooks ran; `count` events were dropped from the queue.
    fn hooks_coalesced(&self, _target: &Target, _count: u64) {}

    /// The actor for `target` crashed and was restarted by its supervisor.
    fn restarted(&self, _target: &Target) {}

    /// A config reload was applied (`ok`) or rejected, keeping the running config.
    fn reloaded(&self, _ok: bool) {}

    /// The actor for `target` stopped for good (removed, or the sidecar is stopping).
    fn stopped(&self, _target: &Target, _actor: ActorId) {}

    /// A group changed its active member, or its members started or stopped
    /// disagreeing on the primary; in the order the group decided.
    fn group_event(&self, _group: &Arc<Group>, _event: &GroupEvent) {}

    /// One action of a group's hook finished (or was given up on).
    fn group_hook_run(
        &self,
        _group: &Group,
        _event: GroupEventKind,
        _result: HookResult,
        _elapsed: Duration,
    ) {
    }
}

/// How a hook action ended, as counted by `tether_hook_runs_total{result}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HookResult {
    /// Exit status 0, or a 2xx answer.
    Ok,
    /// A non-zero exit status, or an HTTP error status after every retry.
    Failed,
    /// Outlived `hook_timeout` and was killed (or its delivery given up).
    Timeout,
    /// Could not be run at all: spawn failure, unreachable webhook.
    Error,
}

impl HookResult {
    pub const ALL: [HookResult; 4] = [
        HookResult::Ok,
        HookResult::Failed,
        HookResult::Timeout,
        HookResult::Error,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HookResult::Ok => "ok",
            HookResult::Failed => "failed",
            HookResult::Timeout => "timeout",
            HookResult::Error => "error",
        }
    }
}

/// Fans reports out to several listeners, in order.
#[derive(Clone, Default)]
pub struct Observers(Vec<Arc<dyn Observer>>);

impl Observers {
    pub fn new() -> Observers {
        Observers(Vec::new())
    }

    pub fn with(mut self, observer: Arc<dyn Observer>) -> Observers {
        self.0.push(observer);
        self
    }
}

impl Observers {
    /// Calls every listener, each behind its own catch of panics: a bug in one
    /// listener must not keep the others (hooks among them) from the report, nor
    /// crash the checker that made it.
    fn each(&self, what: &str, call: impl Fn(&dyn Observer)) {
        for o in &self.0 {
            if let Err(payload) =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| call(o.as_ref())))
            {
                let message = panic_message(payload);
                tracing::error!(report = what, panic = %message, "a listener panicked; the others were still told");
            }
        }
    }
}

/// The text of a panic, whatever its payload: the two kinds `panic!` makes, or a note
/// that it had none.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-string payload".to_owned())
}

impl Observer for Observers {
    fn started(&self, target: &Target, actor: ActorId) {
        self.each("started", |o| o.started(target, actor));
    }

    fn attempt(&self, target: &Target, ok: bool, elapsed: Duration) {
        self.each("attempt", |o| o.attempt(target, ok, elapsed));
    }

    fn lost(&self, target: &Target, error: &str) {
        self.each("lost", |o| o.lost(target, error));
    }

    fn transition(&self, target: &Arc<Target>, transition: &Transition) {
        self.each("transition", |o| o.transition(target, transition));
    }

    fn role(&self, target: &Arc<Target>, role: Option<Role>) {
        self.each("role", |o| o.role(target, role));
    }

    fn certificate(&self, target: &Target, not_after: SystemTime) {
        self.each("certificate", |o| o.certificate(target, not_after));
    }

    fn address_changed(&self, target: &Target, from: SocketAddr, to: SocketAddr) {
        self.each("address_changed", |o| o.address_changed(target, from, to));
    }

    fn hook_run(&self, target: &Target, event: Event, result: HookResult, elapsed: Duration) {
        self.each("hook_run", |o| o.hook_run(target, event, result, elapsed));
    }

    fn hooks_coalesced(&self, target: &Target, count: u64) {
        self.each("hooks_coalesced", |o| o.hooks_coalesced(target, count));
    }

    fn restarted(&self, target: &Target) {
        self.each("restarted", |o| o.restarted(target));
    }

    fn reloaded(&self, ok: bool) {
        self.each("reloaded", |o| o.reloaded(ok));
    }

    fn stopped(&self, target: &Target, actor: ActorId) {
        self.each("stopped", |o| o.stopped(target, actor));
    }

    fn group_event(&self, group: &Arc<Group>, event: &GroupEvent) {
        self.each("group_event", |o| o.group_event(group, event));
    }

    fn group_hook_run(
        &self,
        group: &Group,
        event: GroupEventKind,
        result: HookResult,
        elapsed: Duration,
    ) {
        self.each("group_hook_run", |o| {
            o.group_hook_run(group, event, result, elapsed)
        });
    }
}

/// Logs every transition as one structured event.
pub struct LogObserver;

impl Observer for LogObserver {
    fn group_event(&self, group: &Arc<Group>, e: &GroupEvent) {
        let previous = e.previous_active.as_deref().unwrap_or("");
        let event_id = e.event_id(&group.name);
        match e.kind {
            GroupEventKind::Change => tracing::warn!(
                target: "tether::group",
                group = %group.name,
                event = e.kind.as_str(),
                active = %e.active,
                previous_active = %previous,
                reason = %e.reason,
                event_id = %event_id,
                "group {} now uses {} (was {}): {}", group.name, e.active,
                if previous.is_empty() { "undecided" } else { previous }, e.reason,
            ),
            GroupEventKind::Conflict => tracing::error!(
                target: "tether::group",
                group = %group.name,
                event = e.kind.as_str(),
                active = %e.active,
                claimants = ?e.claimants,
                event_id = %event_id,
                "group {}: {} all claim to be primary; staying on {}",
                group.name, e.claimants.join(", "), e.active,
            ),
            GroupEventKind::ConflictResolved => tracing::warn!(
                target: "tether::group",
                group = %group.name,
                event = e.kind.as_str(),
                active = %e.active,
                event_id = %event_id,
                "group {}: the conflict is over; using {}", group.name, e.active,
            ),
        }
    }

    /// Logged once the burst it may be part of is over, with the time of the
    /// transition (see [`logging::later`]): formatted in place, the lines of a mass
    /// outage took a sixth of the CPU its recording needs.
    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        let enabled = match t.event {
            Event::Connect | Event::Recover => {
                tracing::enabled!(target: TRANSITION, tracing::Level::INFO)
            }
            Event::Disconnect | Event::Failure => {
                tracing::enabled!(target: TRANSITION, tracing::Level::WARN)
            }
        };
        if !enabled {
            return;
        }
        let (target, t) = (target.clone(), t.clone());
        logging::later(t.at, move || log_transition(&target, &t));
    }
}

/// The log target of transition lines.
const TRANSITION: &str = "tether::transition";

/// One transition line at `$level`: the fields every transition has, then `$rest`.
macro_rules! transition_line {
    ($level:expr, $target:expr, $t:expr, $($rest:tt)+) => {
        tracing::event!(
            target: TRANSITION,
            $level,
            target_name = %$target.name,
            address = %$target.address,
            event = %$t.event,
            from = %$t.previous,
            to = %$t.state,
            failures = $t.failures,
            $($rest)+
        )
    };
}

fn log_transition(target: &Target, t: &Transition) {
    let id = t.event_id(&target.name);
    match t.event {
        Event::Connect | Event::Recover => transition_line!(
            tracing::Level::INFO, target, t,
            event_id = %id,
            "{} is {} ({})", target.name, t.state, t.event,
        ),
        Event::Disconnect | Event::Failure => {
            let error = t.last_error.as_ref().map_or("", |e| e.text());
            transition_line!(
                tracing::Level::WARN, target, t,
                error = %error,
                event_id = %id,
                "{} is {} ({}): {}", target.name, t.state, t.event, error,
            )
        }
    }
}
