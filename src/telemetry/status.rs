//! The status registry: the current state of every target, as `/status`, `/readyz`, the
//! state file and `tether status` show it.
//!
//! Checkers write into it synchronously (it is an [`Observer`]), so a reader sees a
//! transition the moment the checker has published it. Each target has its own slot
//! behind its own mutex: a transition locks only its target's slot, and the map of slots
//! is only write-locked when a target is added or removed. Readiness is a counter kept
//! up to date on each transition, so `/readyz` never visits every target.
//!
//! Failover groups have their entries here too, fed by the groups' decisions. A member
//! of a group counts toward readiness only through its group(s): the application is
//! meant to work while any member is active, so one member going down must not make
//! it unready, and a group that does not count must not make it stricter than one that
//! does.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use tokio::sync::Notify;

use crate::config::{Config, Failback, Group, Role, Target};
use crate::watch::groups::{GroupEvent, GroupEventKind};
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
    /// What `/readyz` answers: every required target outside groups is up, every
    /// required group has an active member, and the sidecar is not stopping.
    pub ready: bool,
    /// The sidecar received SIGTERM/SIGINT and is closing its connections.
    pub stopping: bool,
    /// One entry per target, sorted by name.
    pub targets: Vec<TargetStatus>,
    /// One entry per failover group, sorted by name; left out when there are none, so
    /// the document of a config without groups is what it always was.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStatus>,
}

/// [`Document`] as it is serialized, borrowing from the registry: the same fields in
/// the same order, so the two give the same JSON.
#[derive(Serialize)]
struct DocumentView<'a> {
    version: &'a str,
    instance: &'a str,
    generated_at: Timestamp,
    ready: bool,
    stopping: bool,
    targets: Entries<'a>,
    #[serde(skip_serializing_if = "<[GroupStatus]>::is_empty")]
    groups: &'a [GroupStatus],
}

/// Every target's entry, each serialized under its own lock.
struct Entries<'a>(&'a BTreeMap<String, Arc<Slot>>);

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.values().map(|slot| Locked(slot)))
    }
}

struct Locked<'a>(&'a Slot);

impl Serialize for Locked<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        lock(&self.0.entry).serialize(serializer)
    }
}

impl Document {
    /// Whether every required target outside groups is up and every required group
    /// has an active member (what `tether status` exits 0 on).
    pub fn required_up(&self) -> bool {
        let grouped: HashSet<&str> = self
            .groups
            .iter()
            .flat_map(|g| g.members.iter().map(String::as_str))
            .collect();
        self.targets
            .iter()
            .all(|t| !t.required || grouped.contains(t.name.as_str()) || t.state == State::Up)
            && self.groups.iter().all(|g| !g.required || g.serving())
    }
}

/// One failover group in the `/status` document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroupStatus {
    pub name: String,
    /// Target names, in order of preference.
    pub members: Vec<String>,
    /// The role members must report to be eligible; `null` when any member that is up
    /// will do.
    pub role: Option<Role>,
    /// The name `active` takes while no member is eligible.
    pub fallback: String,
    pub failback: Failback,
    /// The member in use, or the fallback's name; `null` before the group's first
    /// decision.
    pub active: Option<String>,
    /// Whether `active` is the fallback.
    pub fallback_active: bool,
    /// When `active` last changed (or the group was configured, before its first
    /// decision).
    pub since: Timestamp,
    /// Whether members disagree on which is primary.
    pub conflict: bool,
    /// The members claiming `primary` while in conflict; empty otherwise.
    #[serde(default)]
    pub claimants: Vec<String>,
    /// Why `active` last changed (`active-lost`, `preferred-eligible`, ...).
    pub reason: Option<String>,
    /// The id of the group's last event, `<group>:<sequence>`, as hooks received it.
    pub event_id: Option<String>,
    /// Whether the group counts toward `/readyz`.
    pub required: bool,
}

impl GroupStatus {
    fn new(group: &Group, now: SystemTime) -> GroupStatus {
        let mut status = GroupStatus {
            name: group.name.clone(),
            members: Vec::new(),
            role: None,
            fallback: String::new(),
            failback: group.failback,
            active: None,
            fallback_active: false,
            since: Timestamp(now),
            conflict: false,
            claimants: Vec::new(),
            reason: None,
            event_id: None,
            required: group.required,
        };
        status.configure(group);
        status
    }

    /// Takes over a reloaded group's settings, keeping its decision while that still
    /// names one of its members or its fallback.
    fn configure(&mut self, group: &Group) {
        if self.fallback_active {
            self.active = Some(group.fallback.clone());
        } else if self
            .active
            .as_ref()
            .is_some_and(|a| !group.members.contains(a))
        {
            self.active = None;
        }
        self.members = group.members.clone();
        self.role = group.role;
        self.fallback = group.fallback.clone();
        self.failback = group.failback;
        self.required = group.required;
    }

    /// Whether a member is active: what a required group needs for `/readyz`.
    pub fn serving(&self) -> bool {
        self.active.is_some() && !self.fallback_active
    }

    /// Whether the group holds `/readyz` at 503.
    fn holds_readiness(&self) -> bool {
        self.required && !self.serving()
    }

    fn record(&mut self, group: &Group, e: &GroupEvent) {
        self.active = Some(e.active.clone());
        self.fallback_active = e.fallback;
        self.conflict = e.conflict;
        if !e.conflict {
            self.claimants.clear();
        } else if !e.claimants.is_empty() {
            self.claimants = e.claimants.clone();
        }
        if e.kind == GroupEventKind::Change {
            self.since = Timestamp(e.at);
            self.reason = Some(e.reason.as_str().to_owned());
        }
        self.event_id = Some(e.event_id(&group.name));
    }
}

/// A required group that holds `/readyz` at 503, for the body of the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupNotReady {
    pub name: String,
    /// In its fallback (`true`) or still undecided.
    pub in_fallback: bool,
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
    /// Required targets outside groups that are not up, and required groups without an
    /// active member; `/readyz` is 200 when this is 0.
    not_ready: AtomicUsize,
    /// Each group's entry, by name. Locked after `slots` when both are needed, so a
    /// document and a reload see targets and groups of the same config.
    groups: Mutex<BTreeMap<String, GroupStatus>>,
    /// Set on SIGTERM: `/readyz` turns 503 and removed targets keep their last state, so
    /// the state file left behind still tells the application its mode.
    stopping: AtomicBool,
    /// Set once every target has had its first attempt answered (see [`Status::startup_complete`]).
    started: AtomicBool,
    /// Increased on every change, so the state-file writer knows whether it is behind.
    version: AtomicU64,
    /// The length of the last document written, to size the next one's buffer.
    last_document_len: AtomicUsize,
    /// Woken on every change; `notify_one` keeps a permit, so no change is missed by the
    /// single writer that waits on it.
    changed: Notify,
}

/// One target's slot.
struct Slot {
    entry: Mutex<TargetStatus>,
    /// Whether the target is a member of a group, and so counts toward readiness only
    /// through it. Changed only under the entry's lock.
    grouped: AtomicBool,
}

impl Slot {
    fn grouped(&self) -> bool {
        self.grouped.load(Ordering::Relaxed)
    }
}

/// Whether a target holds `/readyz` at 503.
fn holds_readiness(e: &TargetStatus, grouped: bool) -> bool {
    e.required && !grouped && e.state != State::Up
}

/// Every target that is a member of some group of `config`.
fn members(config: &Config) -> HashSet<&str> {
    config
        .groups
        .iter()
        .flat_map(|g| g.members.iter().map(String::as_str))
        .collect()
}

impl Status {
    /// A registry with every target of `config` in `connecting`, so that `/readyz` is 503
    /// and `/status` lists every target from the first moment, before any actor runs.
    pub fn new(config: &Config) -> Status {
        let status = Status {
            slots: RwLock::new(BTreeMap::new()),
            not_ready: AtomicUsize::new(0),
            groups: Mutex::new(BTreeMap::new()),
            stopping: AtomicBool::new(false),
            started: AtomicBool::new(false),
            version: AtomicU64::new(0),
            last_document_len: AtomicUsize::new(0),
            changed: Notify::new(),
        };
        {
            let mut slots = status.write_slots();
            let now = SystemTime::now();
            let grouped = members(config);
            for target in &config.targets {
                let slot = status.new_slot(target, grouped.contains(target.name.as_str()), now);
                slots.insert(target.name.clone(), slot);
            }
            status.apply_groups(config, now);
        }
        status
    }

    /// Takes over the target set of a reloaded config in one step: removed targets
    /// leave and added ones appear (`connecting`) together, so no reader ever sees a
    /// mix of the two configs, whatever the actors are doing meanwhile. Kept targets
    /// keep their state; groups likewise: kept ones keep their decision, added ones are
    /// undecided until they decide.
    pub fn apply(&self, config: &Config) {
        let now = SystemTime::now();
        let mut slots = self.write_slots();
        let wanted: HashSet<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        let grouped = members(config);
        slots.retain(|name, slot| {
            let keep = wanted.contains(name.as_str());
            let e = lock(&slot.entry);
            let held = holds_readiness(&e, slot.grouped());
            let now_grouped = grouped.contains(name.as_str());
            let holds = keep && holds_readiness(&e, now_grouped);
            slot.grouped.store(now_grouped, Ordering::Relaxed);
            self.count(held, holds);
            keep
        });
        for target in &config.targets {
            if !slots.contains_key(&target.name) {
                let slot = self.new_slot(target, grouped.contains(target.name.as_str()), now);
                slots.insert(target.name.clone(), slot);
            }
        }
        self.apply_groups(config, now);
        drop(slots);
        self.bump();
    }

    /// Takes over the groups of `config`; called with the slots write-locked.
    fn apply_groups(&self, config: &Config, now: SystemTime) {
        let mut groups = self.lock_groups();
        let mut next = BTreeMap::new();
        for g in &config.groups {
            let entry = match groups.remove(&g.name) {
                Some(mut kept) => {
                    let held = kept.holds_readiness();
                    kept.configure(g);
                    self.count(held, kept.holds_readiness());
                    kept
                }
                None => {
                    let added = GroupStatus::new(g, now);
                    self.count(false, added.holds_readiness());
                    added
                }
            };
            next.insert(g.name.clone(), entry);
        }
        for removed in groups.values() {
            self.count(removed.holds_readiness(), false);
        }
        *groups = next;
    }

    /// Moves the readiness count for one target or group that held `/readyz` at 503
    /// (`was`) and now does (`is`).
    fn count(&self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => {
                self.not_ready.fetch_add(1, Ordering::AcqRel);
            }
            (true, false) => {
                self.not_ready.fetch_sub(1, Ordering::AcqRel);
            }
            _ => {}
        }
    }

    fn new_slot(&self, target: &Target, grouped: bool, now: SystemTime) -> Arc<Slot> {
        self.count(false, target.required && !grouped);
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
            grouped: AtomicBool::new(grouped),
        })
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        !self.stopping.load(Ordering::Acquire) && self.not_ready.load(Ordering::Acquire) == 0
    }

    /// The required targets outside groups that are not up, for the body of a 503.
    pub fn not_ready(&self) -> Vec<String> {
        self.read_slots()
            .values()
            .filter_map(|slot| {
                let e = lock(&slot.entry);
                holds_readiness(&e, slot.grouped()).then(|| e.name.clone())
            })
            .collect()
    }

    /// The required groups without an active member, for the body of a 503.
    pub fn groups_not_ready(&self) -> Vec<GroupNotReady> {
        self.lock_groups()
            .values()
            .filter(|g| g.holds_readiness())
            .map(|g| GroupNotReady {
                name: g.name.clone(),
                in_fallback: g.fallback_active,
            })
            .collect()
    }

    /// The status of one group.
    pub fn group(&self, name: &str) -> Option<GroupStatus> {
        self.lock_groups().get(name).cloned()
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
        let slots = self.read_slots();
        let targets: Vec<TargetStatus> = slots
            .values()
            .map(|slot| lock(&slot.entry).clone())
            .collect();
        let groups = self.lock_groups().values().cloned().collect();
        drop(slots);
        Document {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            instance: crate::instance::id().to_owned(),
            generated_at: Timestamp(SystemTime::now()),
            ready: self.ready(),
            stopping: self.is_stopping(),
            targets,
            groups,
        }
    }

    /// The document as pretty JSON with a final newline, as served and written.
    ///
    /// Written straight from the slots, each target under its own lock, rather than
    /// from a [`Document`] copy: at 10,000 targets the copy and the output would each
    /// be megabytes, and every `/status` poll and state-file write made both. The
    /// output starts at the size of the previous one, so it is not grown by doubling.
    pub fn document_json(&self) -> Vec<u8> {
        let groups: Vec<GroupStatus> = self.lock_groups().values().cloned().collect();
        let ready = self.ready();
        let stopping = self.is_stopping();
        let last = self.last_document_len.load(Ordering::Relaxed);
        let mut out = Vec::with_capacity(last + last / 16 + 1024);
        {
            let slots = self.read_slots();
            let view = DocumentView {
                version: env!("CARGO_PKG_VERSION"),
                instance: crate::instance::id(),
                generated_at: Timestamp(SystemTime::now()),
                ready,
                stopping,
                targets: Entries(&slots),
                groups: &groups,
            };
            serde_json::to_writer_pretty(&mut out, &view)
                .expect("the status document always serializes");
        }
        out.push(b'\n');
        self.last_document_len.store(out.len(), Ordering::Relaxed);
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
        let held = holds_readiness(&entry, slot.grouped());
        f(&mut entry);
        self.count(held, holds_readiness(&entry, slot.grouped()));
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

    fn lock_groups(&self) -> MutexGuard<'_, BTreeMap<String, GroupStatus>> {
        // Each group's entry is changed by one call that leaves it whole.
        self.groups.lock().unwrap_or_else(|e| e.into_inner())
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
        let held = holds_readiness(&e, slot.grouped());
        e.required = target.required;
        self.count(held, holds_readiness(&e, slot.grouped()));
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
                e.last_error = Some(error.text().to_owned());
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

    fn group_event(&self, group: &Arc<Group>, event: &GroupEvent) {
        let mut groups = self.lock_groups();
        // No entry: a group a reload removed, deciding late. It does not come back.
        let Some(entry) = groups.get_mut(&group.name) else {
            return;
        };
        let held = entry.holds_readiness();
        entry.record(group, event);
        self.count(held, entry.holds_readiness());
        drop(groups);
        self.bump();
    }
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

    /// `/status` is written from the registry without a [`Document`] copy; it must
    /// still be exactly the JSON of the document it stands for, key order included.
    #[test]
    fn the_document_written_in_place_is_the_json_of_the_document() {
        let config = grouped("role = \"primary\"");
        let status = Status::new(&config);
        let db = &Arc::new(config.targets[0].clone());
        status.transition(
            db,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        status.transition(
            db,
            &transition(1, Event::Disconnect, State::Up, State::Down),
        );
        let without_time = |json: &[u8]| -> String {
            String::from_utf8(json.to_vec())
                .unwrap()
                .lines()
                .filter(|l| !l.trim_start().starts_with("\"generated_at\""))
                .collect::<Vec<_>>()
                .join("\n")
        };
        let mut copy = serde_json::to_vec_pretty(&status.document()).unwrap();
        copy.push(b'\n');
        assert_eq!(without_time(&status.document_json()), without_time(&copy));
    }

    /// db outside any group; a and b in the group "store" (fallback "memory").
    fn grouped(extra: &str) -> Config {
        config(&format!(
            r#"
            [[targets]]
            name = "db"
            address = "127.0.0.1:5432"
            [[targets]]
            name = "a"
            address = "127.0.0.1:6379"
            probe = "redis"
            [[targets]]
            name = "b"
            address = "127.0.0.1:6380"
            probe = "redis"
            [[groups]]
            name = "store"
            members = ["a", "b"]
            fallback = "memory"
            {extra}
            "#
        ))
    }

    fn group_event(
        seq: u64,
        kind: GroupEventKind,
        active: &str,
        previous: Option<&str>,
        reason: crate::watch::group::Reason,
        claimants: &[&str],
        conflict: bool,
    ) -> GroupEvent {
        GroupEvent {
            seq,
            kind,
            active: active.to_owned(),
            fallback: active == "memory",
            previous_active: previous.map(str::to_owned),
            reason,
            claimants: claimants.iter().map(|c| (*c).to_owned()).collect(),
            conflict,
            at: SystemTime::now(),
        }
    }

    fn change(seq: u64, active: &str, previous: Option<&str>, reason: Reason) -> GroupEvent {
        group_event(
            seq,
            GroupEventKind::Change,
            active,
            previous,
            reason,
            &[],
            false,
        )
    }

    use crate::watch::group::Reason;

    #[test]
    fn a_group_is_listed_undecided_then_shows_each_decision_and_conflict() {
        let config = grouped("");
        let store = &Arc::new(config.groups[0].clone());
        let status = Status::new(&config);
        let g = &status.document().groups[0];
        assert_eq!(
            (g.name.as_str(), g.members.as_slice(), g.fallback.as_str()),
            ("store", &["a".to_owned(), "b".to_owned()][..], "memory")
        );
        assert_eq!(
            (g.active.as_deref(), g.role, g.failback),
            (None, None, Failback::Immediate)
        );
        assert!(!g.fallback_active && !g.conflict && g.claimants.is_empty() && g.required);
        assert_eq!((g.reason.as_deref(), g.event_id.as_deref()), (None, None));

        let first = change(0, "a", None, Reason::PreferredEligible);
        status.group_event(store, &first);
        let g = status.group("store").unwrap();
        assert_eq!(g.active.as_deref(), Some("a"));
        assert_eq!(g.since, Timestamp(first.at));
        assert_eq!(g.reason.as_deref(), Some("preferred-eligible"));
        assert_eq!(g.event_id.as_deref(), Some("store:0"));

        let mut conflict = group_event(
            1,
            GroupEventKind::Conflict,
            "a",
            Some("a"),
            Reason::Conflict,
            &["a", "b"],
            true,
        );
        conflict.at = first.at + Duration::from_secs(3);
        status.group_event(store, &conflict);
        let g = status.group("store").unwrap();
        assert!(g.conflict);
        assert_eq!(g.claimants, ["a", "b"]);
        assert_eq!(g.since, Timestamp(first.at), "a conflict changes no member");
        assert_eq!(g.reason.as_deref(), Some("preferred-eligible"));
        assert_eq!(g.event_id.as_deref(), Some("store:1"));

        // Still in conflict when the active member is lost: the claimants stay listed.
        let mut lost = change(2, "memory", Some("a"), Reason::Conflict);
        lost.conflict = true;
        status.group_event(store, &lost);
        let g = status.group("store").unwrap();
        assert_eq!(
            (g.active.as_deref(), g.fallback_active),
            (Some("memory"), true)
        );
        assert_eq!(g.claimants, ["a", "b"]);
        assert_eq!(g.reason.as_deref(), Some("conflict"));

        let resolved = group_event(
            3,
            GroupEventKind::ConflictResolved,
            "memory",
            Some("memory"),
            Reason::Conflict,
            &[],
            false,
        );
        status.group_event(store, &resolved);
        let g = status.group("store").unwrap();
        assert!(!g.conflict && g.claimants.is_empty());
        assert_eq!(g.event_id.as_deref(), Some("store:3"));
    }

    #[test]
    fn a_required_group_counts_once_for_readiness_and_its_members_only_through_it() {
        let config = grouped("");
        let store = &Arc::new(config.groups[0].clone());
        let [db, a, b] = [0, 1, 2].map(|i| Arc::new(config.targets[i].clone()));
        let status = Status::new(&config);
        assert_eq!(
            status.not_ready(),
            ["db"],
            "members count only through the group"
        );
        let undecided = GroupNotReady {
            name: "store".into(),
            in_fallback: false,
        };
        assert_eq!(status.groups_not_ready(), [undecided]);
        let up = transition(0, Event::Connect, State::Connecting, State::Up);
        status.transition(&db, &up);
        status.transition(&a, &up);
        assert!(
            !status.ready(),
            "a member is up but the group has not decided"
        );
        status.group_event(store, &change(0, "a", None, Reason::PreferredEligible));
        assert!(status.ready());
        assert!(status.document().ready);

        // b never came up and a goes down: the group still uses a until it decides.
        status.transition(
            &b,
            &transition(0, Event::Disconnect, State::Connecting, State::Down),
        );
        status.transition(
            &a,
            &transition(1, Event::Disconnect, State::Up, State::Down),
        );
        assert!(status.ready(), "members do not count on their own");
        status.group_event(
            store,
            &change(1, "memory", Some("a"), Reason::NoEligibleMember),
        );
        assert!(
            !status.ready(),
            "a required group in its fallback is not ready"
        );
        assert!(status.not_ready().is_empty());
        assert_eq!(
            status.groups_not_ready(),
            [GroupNotReady {
                name: "store".into(),
                in_fallback: true
            }]
        );
        assert!(!status.document().required_up());
        status.group_event(
            store,
            &change(2, "b", Some("memory"), Reason::PreferredEligible),
        );
        assert!(status.ready());
        assert!(status.document().required_up());

        // A group that does not count: its members still count only through it.
        let optional = grouped("required = false");
        let status = Status::new(&optional);
        assert!(status.groups_not_ready().is_empty());
        status.transition(&db, &up);
        assert!(
            status.ready(),
            "neither the group nor its members hold readiness"
        );
        assert!(status.document().required_up());
    }

    #[test]
    fn a_reload_keeps_kept_groups_decisions_adds_undecided_ones_and_drops_removed_ones() {
        let config = grouped("");
        let store = &Arc::new(config.groups[0].clone());
        let db = &Arc::new(config.targets[0].clone());
        let status = Status::new(&config);
        status.transition(
            db,
            &transition(0, Event::Connect, State::Connecting, State::Up),
        );
        status.group_event(store, &change(0, "b", None, Reason::PreferredEligible));
        assert!(status.ready());
        let reloaded = grouped(
            r#"
            [[groups]]
            name = "jobs"
            members = ["db"]
            fallback = "inline"
            "#,
        );
        status.apply(&reloaded);
        let doc = status.document();
        let names: Vec<&str> = doc.groups.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["jobs", "store"]);
        assert_eq!(doc.groups[1].active.as_deref(), Some("b"), "kept as it was");
        assert_eq!(doc.groups[0].active, None);
        assert!(!status.ready(), "the added group has not decided");
        assert!(status.not_ready().is_empty(), "db now counts through jobs");

        // The groups go: their members count on their own again.
        status.apply(&two_targets());
        assert!(status.document().groups.is_empty());
        assert!(status.ready());
        // A removed group deciding late comes back nowhere.
        status.group_event(store, &change(1, "a", Some("b"), Reason::ActiveLost));
        assert!(status.group("store").is_none());
        assert!(status.ready());
    }

    #[test]
    fn the_document_has_groups_only_when_some_are_configured() {
        let json = Status::new(&two_targets()).document_json();
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert!(value.get("groups").is_none(), "{value}");

        let status = Status::new(&grouped("role = \"primary\"\nfailback = \"manual\""));
        let value: serde_json::Value = serde_json::from_slice(&status.document_json()).unwrap();
        let g = &value["groups"][0];
        assert_eq!(g["role"], "primary");
        assert_eq!(g["failback"], "manual");
        assert_eq!(g["active"], serde_json::Value::Null);
        assert_eq!(g["claimants"], serde_json::json!([]));
        for key in [
            "fallback_active",
            "since",
            "conflict",
            "reason",
            "event_id",
            "required",
        ] {
            assert!(g.get(key).is_some(), "no {key} in {g}");
        }
        let mut read: Document = serde_json::from_slice(&status.document_json()).unwrap();
        let kept = status.document().groups;
        // Milliseconds survive; finer digits are not written.
        assert!(read.groups[0].since.until(kept[0].since) < Duration::from_millis(1));
        read.groups[0].since = kept[0].since;
        assert_eq!(read.groups, kept);
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
