//! The running failover groups: each group's [machine](super::group) fed with what its
//! members' checkers report, woken at its deadlines, and its decisions published to the
//! same listeners as target transitions (status, metrics, the event stream, hooks).
//!
//! Members report synchronously from their checkers, like every observer call: a
//! group's decision is taken and published under its own lock, so its events go out
//! one at a time and in order whichever members report at once. Nothing here blocks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Group, Role, Target};
use crate::watch::group::{self, Active, Decision, Reason, Refusal, Report};
use crate::watch::machine::{State, Transition};
use crate::watch::observe::Observer;

/// What a group announces, as hooks, the status API and the event stream see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupEvent {
    /// Increases by one per event of this group for the life of the process.
    pub seq: u64,
    pub kind: GroupEventKind,
    /// The member in use (or the fallback's name) after the event.
    pub active: String,
    /// Whether `active` is the fallback.
    pub fallback: bool,
    /// What was in use before; `None` for the group's first decision.
    pub previous_active: Option<String>,
    pub reason: Reason,
    /// Members claiming `primary` when a conflict starts; empty otherwise.
    pub claimants: Vec<String>,
    /// Whether members disagree on the primary after the event.
    pub conflict: bool,
    pub at: SystemTime,
}

/// The events of a group, as hooks are attached to them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GroupEventKind {
    /// The active member changed (`on_change`).
    Change,
    /// Two or more members claim `primary` (`on_conflict`).
    Conflict,
    /// The claims are down to one or none again (`on_conflict`).
    ConflictResolved,
}

impl GroupEventKind {
    pub const ALL: [GroupEventKind; 3] = [
        GroupEventKind::Change,
        GroupEventKind::Conflict,
        GroupEventKind::ConflictResolved,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            GroupEventKind::Change => "change",
            GroupEventKind::Conflict => "conflict",
            GroupEventKind::ConflictResolved => "conflict_resolved",
        }
    }

    /// The config key of this event's hooks.
    pub fn hook_key(self) -> &'static str {
        match self {
            GroupEventKind::Change => "on_change",
            GroupEventKind::Conflict | GroupEventKind::ConflictResolved => "on_conflict",
        }
    }
}

impl GroupEvent {
    /// `<group>:<sequence>`.
    pub fn event_id(&self, group: &str) -> String {
        format!("{group}:{}", self.seq)
    }
}

/// `tether failback GROUP` could not be carried out.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FailbackError {
    #[error("no group is named \"{0}\"")]
    UnknownGroup(String),
    #[error("group \"{group}\": {refusal}")]
    Refused { group: String, refusal: Refusal },
}

/// The running groups.
#[derive(Clone)]
pub struct Groups {
    inner: Arc<Inner>,
}

struct Inner {
    /// Each running group, by name.
    groups: RwLock<BTreeMap<String, Arc<Cell>>>,
    /// The groups each target is a member of, with its place in each.
    members: RwLock<HashMap<String, Places>>,
    /// The next sequence of every group ever configured: one removed and added again
    /// continues its ids, as targets do.
    seqs: Mutex<HashMap<String, u64>>,
    /// Where decisions go (never back to this).
    out: Arc<dyn Observer>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The groups a target is in, and its index among each one's members.
type Places = Vec<(Arc<Cell>, usize)>;

/// One running group.
struct Cell {
    state: Mutex<CellState>,
    /// Wakes the group's timer when a report may have moved its next deadline.
    wake: Notify,
    /// Ends the group's timer when a reload removes it.
    removed: CancellationToken,
}

struct CellState {
    config: Arc<Group>,
    machine: group::Group,
    /// The role each member last reported.
    roles: Vec<Option<Role>>,
}

/// What a member's checker last said, for a group that starts (or is rebuilt by a
/// reload) while its members already run.
#[derive(Clone, Copy, Debug)]
pub struct MemberNow {
    pub state: State,
    pub role: Option<Role>,
}

impl Groups {
    /// Starts the groups of `config`; `now_of` tells what each member reports at this
    /// moment (everything `connecting` at start).
    pub fn start(
        config: &Config,
        out: Arc<dyn Observer>,
        now_of: impl Fn(&str) -> Option<MemberNow>,
    ) -> Groups {
        let groups = Groups {
            inner: Arc::new(Inner {
                groups: RwLock::default(),
                members: RwLock::default(),
                seqs: Mutex::default(),
                out,
                stop: CancellationToken::new(),
                tasks: TaskTracker::new(),
            }),
        };
        groups.apply(config, now_of);
        groups
    }

    /// Takes over the groups of a reloaded config. An unchanged group fires nothing; a
    /// group whose settings changed keeps its decision and applies the new policy at
    /// once; a group whose members changed starts over from its members' current
    /// states, keeping its active member when that one is still eligible.
    pub fn apply(&self, config: &Config, now_of: impl Fn(&str) -> Option<MemberNow>) {
        let now = Instant::now();
        let mut groups = write(&self.inner.groups);
        let mut kept: BTreeMap<String, Arc<Cell>> = BTreeMap::new();
        for g in &config.groups {
            let policy = g.policy(config);
            let config_g = Arc::new(g.clone());
            match groups.remove(&g.name) {
                Some(cell) if lock(&cell.state).config.members == g.members => {
                    let mut state = lock(&cell.state);
                    let same = *state.config == *g;
                    state.config = config_g.clone();
                    if !same {
                        let decisions = state.machine.set_policy(policy, now);
                        self.publish(&mut state, decisions);
                    }
                    drop(state);
                    cell.wake.notify_one();
                    kept.insert(g.name.clone(), cell);
                }
                old => {
                    let previous = old.map(|cell| {
                        cell.removed.cancel();
                        let state = lock(&cell.state);
                        state
                            .machine
                            .active()
                            .map(|a| state.config.active_name(a).to_owned())
                    });
                    let cell = self.build(config_g, policy, &now_of, previous.flatten(), now);
                    kept.insert(g.name.clone(), cell);
                }
            }
        }
        for (_, cell) in std::mem::replace(&mut *groups, kept) {
            cell.removed.cancel();
        }
        let mut members: HashMap<String, Places> = HashMap::new();
        for cell in groups.values() {
            for (i, m) in lock(&cell.state).config.members.iter().enumerate() {
                members
                    .entry(m.clone())
                    .or_default()
                    .push((cell.clone(), i));
            }
        }
        *write(&self.inner.members) = members;
    }

    /// A new group, its machine fed with its members' current states. When a reload
    /// rebuilt it, the member in use before stays in use if it is eligible.
    fn build(
        &self,
        config: Arc<Group>,
        policy: group::Policy,
        now_of: &impl Fn(&str) -> Option<MemberNow>,
        previous: Option<String>,
        now: Instant,
    ) -> Arc<Cell> {
        let mut machine = group::Group::new(policy);
        let mut roles = vec![None; config.members.len()];
        // What the members' current states decide is announced like any decision: a
        // group added while its members are already up decides at once.
        let mut decisions = Vec::new();
        for (i, name) in config.members.iter().enumerate() {
            let Some(member) = now_of(name) else { continue };
            roles[i] = member.role;
            if member.state != State::Connecting {
                let (matches, primary) = role_report(&config, member.role);
                decisions.extend(machine.report(i, Report::Role { matches, primary }, now));
                decisions.extend(machine.report(i, Report::Up(member.state == State::Up), now));
            }
        }
        if let Some(previous) = previous
            && let Some(i) = config.members.iter().position(|m| *m == previous)
        {
            machine.assume(Active::Member(i), now);
            if machine.active() == Some(Active::Member(i)) {
                // The member in use stays in use: no change to announce.
                decisions.retain(|d| !matches!(d, Decision::Change { .. }));
            }
        }
        let cell = Arc::new(Cell {
            state: Mutex::new(CellState {
                config,
                machine,
                roles,
            }),
            wake: Notify::new(),
            removed: self.inner.stop.child_token(),
        });
        {
            let mut state = lock(&cell.state);
            decisions.extend(state.machine.tick(now));
            self.publish(&mut state, decisions);
        }
        self.inner.tasks.spawn(timer(self.clone(), cell.clone()));
        cell
    }

    /// The role a member's last check learned.
    pub fn role(&self, target: &Target, role: Option<Role>) {
        self.each_membership(&target.name, |this, cell, i| {
            let mut state = lock(&cell.state);
            if state.roles[i] == role {
                return;
            }
            state.roles[i] = role;
            let (matches, primary) = role_report(&state.config, role);
            let decisions =
                state
                    .machine
                    .report(i, Report::Role { matches, primary }, Instant::now());
            this.publish(&mut state, decisions);
        });
    }

    /// An operator's `tether failback GROUP`.
    pub fn failback(&self, name: &str) -> Result<GroupEvent, FailbackError> {
        let cell = read(&self.inner.groups)
            .get(name)
            .cloned()
            .ok_or_else(|| FailbackError::UnknownGroup(name.to_owned()))?;
        let mut state = lock(&cell.state);
        let decision =
            state
                .machine
                .failback(Instant::now())
                .map_err(|refusal| FailbackError::Refused {
                    group: name.to_owned(),
                    refusal,
                })?;
        let event = self
            .publish(&mut state, vec![decision])
            .pop()
            .expect("a failback is one change");
        drop(state);
        cell.wake.notify_one();
        Ok(event)
    }

    /// Ends every group's timer.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }

    fn each_membership(&self, target: &str, f: impl Fn(&Groups, &Arc<Cell>, usize)) {
        let Some(places) = read(&self.inner.members).get(target).cloned() else {
            return;
        };
        for (cell, i) in places {
            f(self, &cell, i);
            cell.wake.notify_one();
        }
    }

    /// Numbers and announces decisions, under the group's lock so they go out in order.
    fn publish(&self, state: &mut CellState, decisions: Vec<Decision>) -> Vec<GroupEvent> {
        let config = state.config.clone();
        let mut events = Vec::with_capacity(decisions.len());
        for decision in decisions {
            let seq = {
                let mut seqs = lock(&self.inner.seqs);
                let next = seqs.entry(config.name.clone()).or_insert(0);
                let seq = *next;
                *next += 1;
                seq
            };
            let active = state.machine.active().unwrap_or(Active::Fallback);
            let (kind, previous, reason, claimants) = match decision {
                Decision::Change {
                    previous, reason, ..
                } => (GroupEventKind::Change, previous, reason, Vec::new()),
                Decision::ConflictStarted { claimants } => (
                    GroupEventKind::Conflict,
                    Some(active),
                    Reason::Conflict,
                    claimants
                        .into_iter()
                        .map(|i| config.members[i].clone())
                        .collect(),
                ),
                Decision::ConflictEnded => (
                    GroupEventKind::ConflictResolved,
                    Some(active),
                    Reason::Conflict,
                    Vec::new(),
                ),
            };
            let event = GroupEvent {
                seq,
                kind,
                active: config.active_name(active).to_owned(),
                fallback: active == Active::Fallback,
                previous_active: previous.map(|p| config.active_name(p).to_owned()),
                reason,
                claimants,
                conflict: state.machine.in_conflict(),
                at: SystemTime::now(),
            };
            self.inner.out.group_event(&config, &event);
            events.push(event);
        }
        events
    }
}

impl Observer for Groups {
    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        self.each_membership(&target.name, |this, cell, i| {
            let mut state = lock(&cell.state);
            if t.state != State::Up {
                // A member that is not up has no role worth keeping.
                state.roles[i] = None;
            }
            let decisions =
                state
                    .machine
                    .report(i, Report::Up(t.state == State::Up), Instant::now());
            this.publish(&mut state, decisions);
        });
    }
}

/// Wakes a group at its deadlines (a member's `recover_after` ending, a `hold`
/// running out) until the group is removed or tether stops.
async fn timer(groups: Groups, cell: Arc<Cell>) {
    loop {
        let deadline = lock(&cell.state).machine.next_deadline(Instant::now());
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cell.removed.cancelled() => return,
            () = cell.wake.notified() => continue,
            () = sleep => {}
        }
        let mut state = lock(&cell.state);
        let decisions = state.machine.tick(Instant::now());
        groups.publish(&mut state, decisions);
    }
}

/// What a reported role means to a group: whether it is the group's role, and
/// whether it claims `primary`.
fn role_report(config: &Group, role: Option<Role>) -> (bool, bool) {
    (
        role.is_some() && role == config.role,
        role == Some(Role::Primary),
    )
}

/// Each change under these locks is one step; a poisoned lock still guards consistent
/// data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(m: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(m: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|p| p.into_inner())
}
