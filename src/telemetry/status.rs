//! The status registry: the current state of every target, as `/status`, `/readyz`, the
//! state file and `tether status` show it.
//!
//! Checkers write into it synchronously (it is an [`Observer`]), so a reader sees a
//! transition the moment the checker has published it. Each target has its own slot
//! behind its own mutex: a transition locks only its target's slot, and the map of slots
//! is only write-locked when a target is added or removed. Readiness is a counter kept
//! up to date on each transition, so `/readyz` never visits every target.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Notify;

use crate::config::{Config, Target};
use crate::probe::Role;
use crate::watch::machine::{Event, State, Transition};
use crate::watch::observe::{ActorId, Observer};

/// The `/status` document. Its field names are part of the user contract (README).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// tether's version.
    pub version: String,
    /// This run of tether (see [`crate::instance`]); empty from an older sidecar.
    #[serde(default)]
    pub instance: String,
    /// When this document was taken; `tether status` measures "for how long" from it,
    /// so a skewed reader clock does not matter.
    pub generated_at: Timestamp,
    /// What `/readyz` answers: every required target is up and the sidecar is not
    /// stopping.
    pub ready: bool,
    /// The sidecar received SIGTERM/SIGINT and is closing its connections.
    pub stopping: bool,
    /// One entry per target, sorted by name.
    pub targets: Vec<TargetStatus>,
}

impl Document {
    /// Whether every required target is up (what `tether status` exits 0 on).
    pub fn required_up(&self) -> bool {
        self.targets
            .iter()
            .all(|t| !t.required || t.state == State::Up)
    }
}

/// One target in the `/status` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    pub name: String,
    /// As configured (`host:port`), never a resolved address.
    pub address: String,
    /// The probe kind: `tcp`, `redis`, `postgres`, `mysql` or `http`.
    pub probe: String,
    /// Whether the target counts toward `/readyz`.
    pub required: bool,
    pub state: State,
    /// When the target entered `state`.
    pub since: Timestamp,
    /// Consecutive failed attempts; 0 while up.
    pub failures: u32,
    /// The last error seen (kept after recovery, so an operator can see what happened).
    pub last_error: Option<String>,
    /// The id of the target's last event, `<target>:<sequence>`, as hooks received it.
    pub event_id: Option<String>,
    /// The target's last event.
    pub event: Option<Event>,
    /// Between this target's `failure` and `recover` events: the application should be
    /// on its fallback. Lets an application that reads the state file pick its mode
    /// without replaying events.
    pub fallback: bool,
    /// The replication role the server reported at the last check; `null` when unknown
    /// (a probe that cannot ask, a server that would not say, no connection held).
    /// Absent from an older sidecar's document.
    #[serde(default)]
    pub role: Option<Role>,
    /// When the certificate of the target's server expires (the leaf's notAfter), as
    /// seen at the last TLS connection; absent for a target without `tls`, or before
    /// its first handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_not_after: Option<Timestamp>,
}

/// A wall-clock time, written as RFC 3339 in UTC with milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub SystemTime);

impl Timestamp {
    /// How long from `self` to `later`; zero if `later` is earlier.
    pub fn until(self, later: Timestamp) -> Duration {
        later.0.duration_since(self.0).unwrap_or_default()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_rfc3339_millis(self.0))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map(Timestamp)
            .map_err(serde::de::Error::custom)
    }
}

/// The registry.
pub struct Status {
    /// One slot per target, by name. Write-locked only to add or remove a target.
    slots: RwLock<BTreeMap<String, Arc<Slot>>>,
    /// Required targets that are not up; `/readyz` is 200 when this is 0.
    not_ready: AtomicUsize,
    /// Set on SIGTERM: `/readyz` turns 503 and removed targets keep their last state, so
    /// the state file left behind still tells the application its mode.
    stopping: AtomicBool,
    /// Set once every target has had its first attempt answered (see [`Status::startup_complete`]).
    started: AtomicBool,
    /// Increased on every change, so the state-file writer knows whether it is behind.
    version: AtomicU64,
    /// Woken on every change; `notify_one` keeps a permit, so no change is missed by the
    /// single writer that waits on it.
    changed: Notify,
}

/// One target's slot.
struct Slot {
    entry: Mutex<TargetStatus>,
}

impl Status {
    /// A registry with every target of `config` in `connecting`, so that `/readyz` is 503
    /// and `/status` lists every target from the first moment, before any actor runs.
    pub fn new(config: &Config) -> Status {
        let status = Status {
            slots: RwLock::new(BTreeMap::new()),
            not_ready: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            started: AtomicBool::new(false),
            version: AtomicU64::new(0),
            changed: Notify::new(),
        };
        {
            let mut slots = status.write_slots();
            let now = SystemTime::now();
            for target in &config.targets {
                slots.insert(target.name.clone(), status.new_slot(target, now));
            }
        }
        status
    }

    /// Takes over the target set of a reloaded config in one step: removed targets
    /// leave and added ones appear (`connecting`) together, so no reader ever sees a
    /// mix of the two configs, whatever the actors are doing meanwhile. Kept targets
    /// keep their state.
    pub fn apply(&self, config: &Config) {
        let now = SystemTime::now();
        let mut slots = self.write_slots();
        let wanted: HashSet<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        slots.retain(|name, slot| {
            let keep = wanted.contains(name.as_str());
            if !keep {
                let e = lock(&slot.entry);
                if e.required && e.state != State::Up {
                    self.not_ready.fetch_sub(1, Ordering::AcqRel);
                }
            }
            keep
        });
        for target in &config.targets {
            if !slots.contains_key(&target.name) {
                let slot = self.new_slot(target, now);
                slots.insert(target.name.clone(), slot);
            }
        }
        drop(slots);
        self.bump();
    }

    fn new_slot(&self, target: &Target, now: SystemTime) -> Arc<Slot> {
        if target.required {
            self.not_ready.fetch_add(1, Ordering::AcqRel);
        }
        Arc::new(Slot {
            entry: Mutex::new(TargetStatus {
                name: target.name.clone(),
                address: target.address.to_string(),
                probe: target.probe.kind().name.to_owned(),
                required: target.required,
                state: State::Connecting,
                since: Timestamp(now),
                failures: 0,
                last_error: None,
                event_id: None,
                event: None,
                fallback: false,
                role: None,
                tls_not_after: None,
            }),
        })
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        !self.stopping.load(Ordering::Acquire) && self.not_ready.load(Ordering::Acquire) == 0
    }

    /// The required targets that are not up, for the body of a 503.
    pub fn not_ready(&self) -> Vec<String> {
        self.read_slots()
            .values()
            .filter_map(|slot| {
                let e = lock(&slot.entry);
                (e.required && e.state != State::Up).then(|| e.name.clone())
            })
            .collect()
    }

    /// Whether every target has finished its first attempt, up or down: what
    /// `/startupz` answers, so that an application started after it starts knowing the
    /// truth (and can start on its fallback). Latched: targets a reload adds later do
    /// not take it back, as a startup probe is asked only until it first succeeds.
    pub fn startup_complete(&self) -> bool {
        if self.started.load(Ordering::Acquire) {
            return true;
        }
        // Stops at the first target still connecting: cheap while startup lasts,
        // when the notifier asks after every transition.
        let pending = self
            .read_slots()
            .values()
            .any(|slot| lock(&slot.entry).state == State::Connecting);
        if !pending {
            self.started.store(true, Ordering::Release);
        }
        !pending
    }

    /// The targets whose first attempt has not ended yet, for the body of a 503.
    pub fn starting(&self) -> Vec<String> {
        self.read_slots()
            .values()
            .filter_map(|slot| {
                let e = lock(&slot.entry);
                (e.state == State::Connecting).then(|| e.name.clone())
            })
            .collect()
    }

    /// Calls `f` with every target's name and state, by name, without copying entries:
    /// cheap enough to summarise 10,000 targets on every change.
    pub fn each_state(&self, mut f: impl FnMut(&str, State)) {
        for (name, slot) in self.read_slots().iter() {
            f(name, lock(&slot.entry).state);
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Marks the sidecar as stopping: `/readyz` turns 503 at once.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Release);
        self.bump();
    }

    /// The status of one target.
    pub fn target(&self, name: &str) -> Option<TargetStatus> {
        self.read_slots()
            .get(name)
            .map(|slot| lock(&slot.entry).clone())
    }

    /// A consistent-per-target snapshot of every target.
    pub fn document(&self) -> Document {
        let targets: Vec<TargetStatus> = self
            .read_slots()
            .values()
            .map(|slot| lock(&slot.entry).clone())
            .collect();
        Document {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instance: crate::instance::id().to_owned(),
            generated_at: Timestamp(SystemTime::now()),
            ready: self.ready(),
            stopping: self.is_stopping(),
            targets,
        }
    }

    /// The document as pretty JSON with a final newline, as served and written.
    pub fn document_json(&self) -> Vec<u8> {
        let mut out = serde_json::to_vec_pretty(&self.document())
            .expect("the status document always serializes");
        out.push(b'\n');
        out
    }

    /// Counts changes; compare two readings to know whether anything changed between.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Resolves after the next change (or at once if one happened since the last wait).
    /// Meant for a single waiter: the state-file writer.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn bump(&self) {
        self.version.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_one();
    }

    /// Runs `f` on the target's entry, keeping the readiness count in step with its state.
    fn update(&self, target: &Target, f: impl FnOnce(&mut TargetStatus)) {
        let slots = self.read_slots();
        let Some(slot) = slots.get(&target.name) else {
            return;
        };
        let mut entry = lock(&slot.entry);
        let was_up = entry.state == State::Up;
        f(&mut entry);
        let is_up = entry.state == State::Up;
        if entry.required && was_up != is_up {
            if is_up {
                self.not_ready.fetch_sub(1, Ordering::AcqRel);
            } else {
                self.not_ready.fetch_add(1, Ordering::AcqRel);
            }
        }
        drop(entry);
        drop(slots);
        self.bump();
    }

    fn read_slots(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Slot>>> {
        // A panic while holding the lock cannot leave the map half-changed (insert and
        // remove are single calls), so a poisoned lock is still sound to use.
        self.slots.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_slots(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Slot>>> {
        self.slots.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn lock(entry: &Mutex<TargetStatus>) -> MutexGuard<'_, TargetStatus> {
    // Every update leaves the entry consistent field by field; see `read_slots`.
    entry.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Observer ===

impl Observer for Status {
    fn started(&self, target: &Target, _actor: ActorId) {
        // No slot: an actor of a target the config no longer has (one that a reload
        // removed, ending late). It gets no slot back.
        let Some(slot) = self.read_slots().get(&target.name).cloned() else {
            return;
        };
        // A restarted or replaced actor resumes where the last one stopped (its machine
        // continues from what was last announced): the state stands; only settings a
        // reload changed are taken over.
        let mut e = lock(&slot.entry);
        // The new actor holds no connection yet, so nothing is known of the role.
        e.role = None;
        if target.tls.is_none() {
            e.tls_not_after = None;
        }
        e.address = target.address.to_string();
        e.probe = target.probe.kind().name.to_owned();
        if e.required != target.required {
            if e.state != State::Up {
                if target.required {
                    self.not_ready.fetch_add(1, Ordering::AcqRel);
                } else {
                    self.not_ready.fetch_sub(1, Ordering::AcqRel);
                }
            }
            e.required = target.required;
        }
        drop(e);
        self.bump();
    }

    fn attempt(&self, target: &Target, ok: bool, _elapsed: Duration) {
        // Keeps `failures` live between transitions, as the consecutive-failures gauge is.
        self.update(target, |e| {
            e.failures = if ok { 0 } else { e.failures.saturating_add(1) };
        });
    }

    fn lost(&self, target: &Target, error: &str) {
        self.update(target, |e| e.last_error = Some(error.to_owned()));
    }

    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        self.update(target, |e| {
            if e.state != t.state {
                e.state = t.state;
                e.since = Timestamp(t.at);
            }
            e.failures = t.failures;
            if let Some(error) = &t.last_error {
                e.last_error = Some(error.to_string());
            }
            e.event_id = Some(t.event_id(&target.name));
            e.event = Some(t.event);
            match t.event {
                Event::Failure => e.fallback = true,
                Event::Recover => e.fallback = false,
                Event::Connect | Event::Disconnect => {}
            }
        });
    }

    fn role(&self, target: &Arc<Target>, role: Option<Role>) {
        self.update(target, |e| e.role = role);
    }

    fn certificate(&self, target: &Target, not_after: SystemTime) {
        self.update(target, |e| e.tls_not_after = Some(Timestamp(not_after)));
    }

    // `stopped` changes nothing: which targets are listed follows the config, applied
    // whole by `apply`, not the order in which old actors happen to end.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::loss::Loss;

    fn config(targets: &str) -> Config {
        Config::parse(targets, "test.toml".as_ref()).unwrap()
    }

    fn two_targets() -> Config {
        config(
            r#"
            [[targets]]
            name = "db"
            address = "127.0.0.1:5432"
            [[targets]]
            name = "cache"
            address = "127.0.0.1:6379"
            probe = "redis"
            required = false
            "#,
        )
    }

    fn transition(seq: u64, event: Event, previous: State, state: State) -> Transition {
        Transition {
            seq,
            event,
            previous,
            state,
            failures: if state == State::Up { 0 } else { 3 },
            last_error: (state != State::Up).then(|| Loss::said("connection refused")),
            at: SystemTime::now(),
        }
    }

    #[test]
    fn every_configured_target_is_listed_as_connecting_before_any_actor_runs() {
        let status = Status::new(&two_targets());
        let doc = status.document();
        let names: Vec<_> = doc.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["cache", "db"]);
        assert!(doc.targets.iter().all(|t| t.state == State::Connecting));
        assert_eq!(doc.targets[0].probe, "redis");
        assert!(!doc.ready);
        assert_eq!(status.not_ready(), ["db"]);
    }

    #[test]
    fn started_waits_for_every_first_attempt_and_stays_once_reached() {
        let config = two_targets();
        let (db, cache) = (
            &Arc::new(config.targets[0].clone()),
            &Arc::new(config.targets[1].clone()),
        );
        let status = Status::new(&config);
        assert!(!status.startup_complete());
        status.transition(
            db,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        assert_eq!(status.starting(), ["cache"]);
        assert!(!status.startup_complete(), "an optional target counts too");
        status.transition(
            cache,
            &transition(0, Event::Disconnect, State::Connecting, State::Down),
        );
        assert!(status.startup_complete(), "a target that is down is known");
        // A reload adds a target that has not answered yet: startup stays over.
        let mut more = config.clone();
        more.targets.push(Target {
            name: "queue".into(),
            ..config.targets[0].clone()
        });
        status.apply(&more);
        assert_eq!(status.starting(), ["queue"]);
        assert!(status.startup_complete());
    }

    #[test]
    fn readiness_follows_required_targets_only() {
        let config = two_targets();
        let (db, cache) = (
            &Arc::new(config.targets[0].clone()),
            &Arc::new(config.targets[1].clone()),
        );
        let status = Status::new(&config);
        status.transition(
            cache,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        assert!(!status.ready(), "db is still connecting");
        status.transition(
            db,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        assert!(status.ready());
        status.transition(
            cache,
            &transition(1, Event::Disconnect, State::Up, State::Down),
        );
        assert!(status.ready(), "cache is not required");
        status.transition(
            db,
            &transition(1, Event::Disconnect, State::Up, State::Down),
        );
        assert!(!status.ready());
        status.transition(
            db,
            &transition(2, Event::Failure, State::Down, State::Failed),
        );
        assert!(!status.ready());
        status.transition(db, &transition(3, Event::Connect, State::Failed, State::Up));
        assert!(status.ready());
        status.set_stopping();
        assert!(!status.ready(), "a stopping sidecar is not ready");
    }

    #[test]
    fn a_transition_records_state_since_error_and_event_id() {
        let config = two_targets();
        let db = &Arc::new(config.targets[0].clone());
        let status = Status::new(&config);
        let down = transition(7, Event::Disconnect, State::Up, State::Down);
        status.transition(db, &down);
        let e = status.target("db").unwrap();
        assert_eq!(e.state, State::Down);
        assert_eq!(e.since, Timestamp(down.at));
        assert_eq!(e.failures, 3);
        assert_eq!(e.last_error.as_deref(), Some("connection refused"));
        assert_eq!(e.event_id.as_deref(), Some("db:7"));
        assert_eq!(e.event, Some(Event::Disconnect));
    }

    #[test]
    fn recover_keeps_the_since_of_the_connect_and_ends_the_fallback() {
        let config = two_targets();
        let db = &Arc::new(config.targets[0].clone());
        let status = Status::new(&config);
        status.transition(
            db,
            &transition(0, Event::Failure, State::Down, State::Failed),
        );
        assert!(status.target("db").unwrap().fallback);
        let up = transition(1, Event::Connect, State::Failed, State::Up);
        status.transition(db, &up);
        assert!(status.target("db").unwrap().fallback, "not recovered yet");
        let mut recover = transition(2, Event::Recover, State::Up, State::Up);
        recover.at = up.at + Duration::from_secs(5);
        status.transition(db, &recover);
        let e = status.target("db").unwrap();
        assert_eq!(e.since, Timestamp(up.at));
        assert!(!e.fallback);
        assert_eq!(e.event_id.as_deref(), Some("db:2"));
    }

    #[test]
    fn failures_count_attempts_between_transitions() {
        let config = two_targets();
        let db = &Arc::new(config.targets[0].clone());
        let status = Status::new(&config);
        for _ in 0..4 {
            status.attempt(db, false, Duration::ZERO);
        }
        assert_eq!(status.target("db").unwrap().failures, 4);
        status.attempt(db, true, Duration::ZERO);
        assert_eq!(status.target("db").unwrap().failures, 0);
    }

    #[test]
    fn a_restarted_or_replaced_actor_keeps_the_state_and_takes_over_new_settings() {
        let config = two_targets();
        let db = &Arc::new(config.targets[0].clone());
        let status = Status::new(&config);
        status.started(db, ActorId(1));
        status.transition(
            db,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        status.restarted(db);
        status.started(db, ActorId(1));
        assert_eq!(status.target("db").unwrap().state, State::Up);
        assert!(status.ready());

        // A reload made db optional while it is down: readiness no longer waits for it.
        status.transition(
            db,
            &transition(1, Event::Disconnect, State::Up, State::Down),
        );
        assert_eq!(status.not_ready(), ["db"]);
        let mut optional = Target::clone(db);
        optional.required = false;
        status.started(&optional, ActorId(1));
        assert!(status.not_ready().is_empty());
        assert!(!status.target("db").unwrap().required);
    }

    #[test]
    fn a_reload_swaps_the_listed_targets_in_one_step_and_late_stops_change_nothing() {
        let config = two_targets();
        let status = Status::new(&config);
        let (db, cache) = (
            &Arc::new(config.targets[0].clone()),
            &Arc::new(config.targets[1].clone()),
        );
        status.started(cache, ActorId(1));
        status.transition(
            cache,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        let reloaded = self::config(
            r#"
            [[targets]]
            name = "cache"
            address = "127.0.0.1:6379"
            probe = "redis"
            required = false
            [[targets]]
            name = "queue"
            address = "127.0.0.1:5672"
            "#,
        );
        status.apply(&reloaded);
        let names: Vec<String> = status
            .document()
            .targets
            .into_iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(names, ["cache", "queue"]);
        assert_eq!(
            status.target("cache").unwrap().state,
            State::Up,
            "kept as it was"
        );
        assert_eq!(status.target("queue").unwrap().state, State::Connecting);
        assert_eq!(status.not_ready(), ["queue"], "db no longer counts");
        // The removed target's actor ends after the reload: nothing comes back.
        status.stopped(db, ActorId(1));
        status.transition(
            db,
            &transition(1, Event::Disconnect, State::Up, State::Down),
        );
        assert!(status.target("db").is_none());
        assert_eq!(status.not_ready(), ["queue"]);
    }

    #[test]
    fn snapshots_taken_during_reloads_always_show_one_whole_config() {
        let a = two_targets();
        let b = config(
            r#"
            [[targets]]
            name = "queue"
            address = "127.0.0.1:5672"
            [[targets]]
            name = "search"
            address = "127.0.0.1:9200"
            "#,
        );
        let status = Arc::new(Status::new(&a));
        let flipper = std::thread::spawn({
            let status = status.clone();
            move || {
                for i in 0..2_000 {
                    let (to, from) = if i % 2 == 0 { (&b, &a) } else { (&a, &b) };
                    status.apply(to);
                    // The old config's actors start and stop late, as real ones do.
                    for t in &from.targets {
                        status.stopped(t, ActorId(1));
                    }
                    for t in &to.targets {
                        status.started(t, ActorId(1));
                    }
                }
            }
        });
        let mut seen = 0;
        while !flipper.is_finished() || seen == 0 {
            let mut names: Vec<String> = status
                .document()
                .targets
                .into_iter()
                .map(|t| t.name)
                .collect();
            names.sort();
            assert!(
                names == ["cache", "db"] || names == ["queue", "search"],
                "a snapshot of neither config: {names:?}"
            );
            seen += 1;
        }
        flipper.join().unwrap();
        assert!(seen > 0);
    }

    #[test]
    fn an_actor_of_a_target_no_config_has_gets_no_slot() {
        let status = Status::new(&two_targets());
        let extra = config("[[targets]]\nname = \"queue\"\naddress = \"127.0.0.1:5672\"\n");
        status.started(&extra.targets[0], ActorId(1));
        assert!(status.target("queue").is_none());
        assert_eq!(status.not_ready(), ["db"]);
    }

    #[test]
    fn while_stopping_targets_keep_their_last_state() {
        let config = two_targets();
        let db = &Arc::new(config.targets[0].clone());
        let status = Status::new(&config);
        status.transition(
            db,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        status.set_stopping();
        status.stopped(db, ActorId(1));
        let doc = status.document();
        assert!(doc.stopping);
        assert_eq!(status.target("db").unwrap().state, State::Up);
    }

    #[test]
    fn the_document_round_trips_through_json_with_rfc3339_timestamps() {
        let status = Status::new(&two_targets());
        let json = status.document_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let since = value["targets"][0]["since"].as_str().unwrap();
        assert!(since.ends_with('Z') && since.contains('T'), "{since}");
        assert_eq!(since.len(), "2024-01-02T03:04:05.678Z".len(), "{since}");
        let doc: Document = serde_json::from_slice(&json).unwrap();
        let original = status.document();
        assert_eq!(doc.targets.len(), original.targets.len());
        for (read, kept) in doc.targets.iter().zip(&original.targets) {
            assert_eq!((&read.name, read.state), (&kept.name, kept.state));
            // Milliseconds survive; finer digits are not written.
            assert!(read.since.until(kept.since) < Duration::from_millis(1));
        }
    }

    #[test]
    fn every_change_moves_the_version() {
        let config = two_targets();
        let status = Status::new(&config);
        let before = status.version();
        status.lost(&config.targets[0], "reset by peer");
        assert!(status.version() > before);
    }
}
