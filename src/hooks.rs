//! Runs the user's hooks on the transitions checkers publish.
//!
//! A checker only enqueues: the transition goes into its target's queue and the call
//! returns, so no hook, however slow, hung or broken, delays detection. Each target
//! has at most one worker, which runs that target's events one at a time and in order
//! (actions of one event in the order written); workers of different targets run
//! concurrently, bounded by `max_concurrent_hooks`.

mod burst;
mod command;
mod descendants;
mod payload;
mod queue;
pub mod reaper;
pub mod spawner;
mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Group, HookAction, Target};
use crate::secrets;
use crate::watch::group::Active;
use crate::watch::groups::{GroupEvent, GroupEventKind};
use crate::watch::machine::{Event, Transition};
use crate::watch::observe::{HookResult, Observer};

/// Targets with pending events at once from which their serving counts as a burst,
/// after which the pages of code it ran are given back ([`crate::resident`]).
const BURST: usize = 64;

pub use descendants::kill_everything;
pub use payload::{GroupPayload, Payload};
pub use webhook::{Secret, signature};

/// A problem found before any hook runs.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("{owner}: {event} webhook {url}: no signing key: {error}")]
    MissingSecret {
        /// `target "name"` or `group "name"`.
        owner: String,
        event: &'static str,
        url: String,
        error: secrets::ReadError,
    },
}

/// The hook runner: an [`Observer`] that queues transitions for execution.
#[derive(Clone)]
pub struct HookRunner {
    inner: Arc<Inner>,
}

struct Inner {
    /// One queue per target or group that has hooks (their names never clash),
    /// created on its first event.
    queues: RwLock<HashMap<String, Arc<Mutex<TargetQueue>>>>,
    /// Bounds hook runs in flight across all targets.
    limit: Arc<Semaphore>,
    /// Targets with pending events waiting for a slot, first come first served. A
    /// waiting target costs a pointer here, not a task: after a mass outage 10,000
    /// targets wait for 64 slots.
    ready: Mutex<VecDeque<Arc<Mutex<TargetQueue>>>>,
    /// Webhook keys by environment variable name, read at start and on reload.
    /// Shared whole with every job queued meanwhile: a delivery is signed with the key
    /// it was queued under, whatever a reload does before it is sent.
    secrets: RwLock<Arc<Keys>>,
    /// Made at the first webhook delivery: a sidecar whose hooks are all commands never
    /// builds a TLS client config or loads the root certificates.
    http: OnceLock<webhook::Client>,
    /// Receives hook results (metrics); never this runner itself.
    report: Arc<dyn Observer>,
    /// The runs in flight, so shutdown can wait for them (each run dispatches the
    /// next waiting target when it ends, so waiting for the runs waits for every
    /// pending event).
    tracker: TaskTracker,
    /// Targets with pending events; when the last one is served, the memory the burst
    /// used goes back to the kernel.
    busy: AtomicUsize,
    /// The most targets with pending events at once since the runner was last idle.
    busiest: AtomicUsize,
    /// When transitions came: hooks wait while a burst of them is being recorded.
    burst: burst::Burst,
    /// Whether a task waits for the burst under way to end, to start the hooks it held.
    releasing: AtomicBool,
}

#[derive(Default)]
struct TargetQueue {
    pending: queue::Pending<Job>,
    /// Whether the target has pending events being served: waiting in
    /// [`Inner::ready`] or running. At most one of its events runs at a time.
    running: bool,
}

/// One event to run, with the config (and so the actions) it happened under.
struct Job {
    what: What,
    /// The webhook keys when the event was queued.
    keys: Arc<Keys>,
}

/// A target's event or a group's.
enum What {
    Target {
        /// The transition itself, its payload rendered only when its hooks run: after
        /// a mass outage thousands of events wait for a slot, and each holds a few words
        /// (its error shared with the actor) instead of a payload of strings.
        transition: Transition,
        /// The config its actor runs with, shared rather than copied: thousands of
        /// targets that lose their connection at once queue thousands of events, and
        /// each must stay small.
        config: Arc<Target>,
    },
    Group {
        event: GroupEventKind,
        payload: Box<GroupPayload>,
        config: Arc<Group>,
        /// What the application used before and after, and whether members disagreed.
        story: (GroupView, GroupView),
    },
}

/// What a group's hooks told the application last: the member in use, and whether a
/// conflict was announced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GroupView {
    active: Option<Active>,
    conflict: bool,
}

/// What the application believes after a hook, of a target or of a group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Told {
    Target(queue::View),
    Group(GroupView),
}

/// Webhook keys by where they were read from.
type Keys = HashMap<secrets::Source, Secret>;

impl queue::Queued for Job {
    type View = Told;

    fn step(&self) -> (Told, Told) {
        match &self.what {
            What::Target { transition: t, .. } => {
                let (from, to) = queue::target_step(t.event, t.previous, t.state);
                (Told::Target(from), Told::Target(to))
            }
            What::Group { story, .. } => (Told::Group(story.0), Told::Group(story.1)),
        }
    }
}

impl Job {
    fn name(&self) -> &str {
        match &self.what {
            What::Target { config, .. } => &config.name,
            What::Group { config, .. } => &config.name,
        }
    }

    fn hook_key(&self) -> &'static str {
        match &self.what {
            What::Target { transition, .. } => transition.event.hook_key(),
            What::Group { event, .. } => event.hook_key(),
        }
    }

    fn event_id(&self) -> String {
        match &self.what {
            What::Target { transition, config } => transition.event_id(&config.name),
            What::Group { payload, .. } => payload.event_id.clone(),
        }
    }

    fn actions(&self) -> &[HookAction] {
        match &self.what {
            What::Target { transition, config } => config.hooks.for_event(transition.event),
            What::Group { event, config, .. } => match event {
                GroupEventKind::Change => &config.hooks.on_change,
                GroupEventKind::Conflict | GroupEventKind::ConflictResolved => {
                    &config.hooks.on_conflict
                }
            },
        }
    }

    fn timeout(&self) -> Duration {
        match &self.what {
            What::Target { config, .. } => config.hook_timeout.get(),
            What::Group { config, .. } => config.hook_timeout.get(),
        }
    }

    /// What the hooks are given: the variables, and the JSON for standard input and
    /// webhook bodies.
    fn render(&self) -> (Vec<command::Var>, Vec<u8>) {
        match &self.what {
            What::Target { transition, config } => {
                let payload = Payload::new(config, transition);
                (payload.env().into(), payload.to_json())
            }
            What::Group { payload, .. } => (payload.env().into(), payload.to_json()),
        }
    }

    /// Counts one action's result where it belongs.
    fn report(&self, to: &dyn Observer, result: HookResult, elapsed: Duration) {
        self.reporter().report(to, result, elapsed);
    }

    fn reporter(&self) -> Reporter {
        match &self.what {
            What::Target { transition, config } => {
                Reporter::Target(config.clone(), transition.event)
            }
            What::Group { event, config, .. } => Reporter::Group(config.clone(), *event),
        }
    }
}

/// Whose hook a result is counted for.
enum Reporter {
    Target(Arc<Target>, Event),
    Group(Arc<Group>, GroupEventKind),
}

impl Reporter {
    fn report(&self, to: &dyn Observer, result: HookResult, elapsed: Duration) {
        match self {
            Reporter::Target(config, event) => to.hook_run(config, *event, result, elapsed),
            Reporter::Group(config, event) => to.group_hook_run(config, *event, result, elapsed),
        }
    }
}

impl HookRunner {
    /// Reads every webhook secret the config names from the environment, so a missing
    /// one stops the start instead of surfacing at the first outage.
    pub fn new(
        config: &Config,
        loaded: &secrets::Loaded,
        report: Arc<dyn Observer>,
    ) -> Result<HookRunner, HooksError> {
        let secrets = keys(config, loaded)?;
        Ok(HookRunner {
            inner: Arc::new(Inner {
                queues: RwLock::new(queues(config)),
                limit: Arc::new(Semaphore::new(config.defaults.max_concurrent_hooks)),
                ready: Mutex::default(),
                secrets: RwLock::new(Arc::new(secrets)),
                http: OnceLock::new(),
                report,
                tracker: TaskTracker::new(),
                busy: AtomicUsize::new(0),
                busiest: AtomicUsize::new(0),
                burst: burst::Burst::new(),
                releasing: AtomicBool::new(false),
            }),
        })
    }

    /// Reads the secrets a new config names; on error the running ones stay, and the
    /// reload must be refused.
    /// The queues of targets the new config removed go with them, except those still
    /// being served: their events run to the end, and the queue goes at a later
    /// reload. Kept, a queue per name ever configured would grow across reloads.
    pub fn reload(&self, config: &Config, loaded: &secrets::Loaded) -> Result<(), HooksError> {
        let secrets = keys(config, loaded)?;
        *self
            .inner
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(secrets);
        let wanted: std::collections::HashSet<&str> = config
            .targets
            .iter()
            .filter(|t| !t.hooks.is_empty())
            .map(|t| t.name.as_str())
            .chain(
                config
                    .groups
                    .iter()
                    .filter(|g| !g.hooks.is_empty())
                    .map(|g| g.name.as_str()),
            )
            .collect();
        self.inner
            .queues
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, queue| wanted.contains(name.as_str()) || lock(queue).running);
        Ok(())
    }

    /// Stops taking new work and waits up to `grace` for hooks in flight and the
    /// events already queued (each run that ends starts the next one waiting), so the
    /// application is left in the mode of each target's last known state; returns
    /// whether they all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    fn enqueue(&self, name: &str, what: What) {
        let inner = &self.inner;
        let queue = {
            let existing = inner
                .queues
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(name)
                .cloned();
            match existing {
                Some(q) => q,
                None => inner
                    .queues
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(name.to_owned())
                    .or_default()
                    .clone(),
            }
        };
        let keys = inner
            .secrets
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let target = match &what {
            What::Target { config, .. } => Some(config.clone()),
            What::Group { .. } => None,
        };
        let (dropped, start) = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = q.pending.push(Job { what, keys });
            let start = !q.running;
            q.running = true;
            (dropped, start)
        };
        if dropped > 0 {
            tracing::warn!(
                target_name = %name,
                dropped,
                "hooks are slower than the changes they announce: coalesced pending events (the latest is kept)"
            );
            if let Some(target) = target {
                inner.report.hooks_coalesced(&target, dropped);
            }
        }
        if start {
            let busy = inner.busy.fetch_add(1, Ordering::AcqRel) + 1;
            inner.busiest.fetch_max(busy, Ordering::AcqRel);
            self.wait_for_slot(queue);
        }
    }

    /// Puts a target with pending events in line for a slot.
    fn wait_for_slot(&self, queue: Arc<Mutex<TargetQueue>>) {
        lock(&self.inner.ready).push_back(queue);
        self.dispatch();
    }

    /// Starts the next event of each waiting target while slots are free. Called
    /// whenever a target gets in line and whenever a run gives its slot back, so no
    /// event waits while a slot is free, except while a burst of transitions is being
    /// recorded ([`burst`]).
    fn dispatch(&self) {
        if self.inner.burst.hold().is_some() {
            self.release_after_burst();
            return;
        }
        loop {
            let Ok(permit) = self.inner.limit.clone().try_acquire_owned() else {
                return;
            };
            let Some(queue) = lock(&self.inner.ready).pop_front() else {
                return;
            };
            let job = lock(&queue).pending.pop();
            match job {
                Some(job) => self.start(queue, job, permit),
                None => self.idle(&queue),
            }
        }
    }

    /// Dispatches once the burst under way ends; one task waits for that, whatever the
    /// number of events held. Tracked, so a shutdown waits for the events it holds.
    fn release_after_burst(&self) {
        if self.inner.releasing.swap(true, Ordering::AcqRel) {
            return;
        }
        let runner = self.clone();
        self.inner.tracker.spawn(async move {
            while let Some(until) = runner.inner.burst.hold() {
                tokio::time::sleep_until(until).await;
            }
            runner.inner.releasing.store(false, Ordering::Release);
            runner.dispatch();
        });
    }

    /// Runs one event in `permit`'s slot, then hands the slot on.
    fn start(&self, queue: Arc<Mutex<TargetQueue>>, job: Job, permit: OwnedSemaphorePermit) {
        let name = job.name().to_owned();
        let hook = job.hook_key();
        let report = job.reporter();
        let runner = self.clone();
        self.inner.tracker.spawn(async move {
            let started = Instant::now();
            // Its own task, so that a panic while running one event is contained and
            // the queue keeps being served.
            let run = tokio::spawn({
                let runner = runner.clone();
                async move { runner.run(job).await }
            });
            if let Err(e) = run.await {
                tracing::error!(
                    target_name = %name,
                    hook,
                    error = %e,
                    "running hooks failed; the next events' hooks will still run"
                );
                report.report(&*runner.inner.report, HookResult::Error, started.elapsed());
            }
            drop(permit);
            // The target's next event waits behind those already in line: one slot
            // per event, taken in turn, so a flapping target cannot hold on to a slot.
            let more = !lock(&queue).pending.is_empty();
            if more {
                runner.wait_for_slot(queue);
            } else {
                runner.idle(&queue);
                runner.dispatch();
            }
        });
    }

    /// Marks a target's queue served, unless an event arrived meanwhile.
    fn idle(&self, queue: &Arc<Mutex<TargetQueue>>) {
        let mut q = lock(queue);
        if !q.pending.is_empty() {
            drop(q);
            lock(&self.inner.ready).push_back(queue.clone());
            return;
        }
        q.running = false;
        // Made again at the next event: an idle target keeps no queue buffer. Kept,
        // these small blocks allocated in the middle of a burst would pin the pages
        // the burst used, and the heap could not shrink back.
        q.pending = queue::Pending::default();
        drop(q);
        if self.inner.busy.fetch_sub(1, Ordering::AcqRel) == 1 {
            // After a burst (a mass outage, a mass return), the code that started its
            // processes is not needed until the next one either, and goes back with
            // the heap; a lone hook keeps it.
            if self.inner.busiest.swap(0, Ordering::AcqRel) >= BURST {
                crate::resident::release_in_background("a burst of hooks");
            } else {
                crate::allocator::release_free_memory();
            }
        }
    }

    /// Runs one event's actions in order, in the slot the worker took for it: at most
    /// `max_concurrent_hooks` actions run at once.
    async fn run(&self, job: Job) {
        #[cfg(feature = "fault-injection")]
        crate::fault::check_hook(job.name());
        let (env, json) = job.render();
        let event_id = job.event_id();
        for (i, action) in job.actions().iter().enumerate() {
            let started = Instant::now();
            let (result, status, output) = self.run_action(action, &job, &env, &json).await;
            let elapsed = started.elapsed();
            job.report(&*self.inner.report, result, elapsed);
            let kind = kind(action);
            if result == HookResult::Ok {
                tracing::info!(
                    target_name = %job.name(),
                    event_id = %event_id,
                    hook = %job.hook_key(),
                    action = i,
                    kind,
                    elapsed = ?elapsed,
                    "hook ran: {status}"
                );
            } else {
                tracing::warn!(
                    target_name = %job.name(),
                    event_id = %event_id,
                    hook = %job.hook_key(),
                    action = i,
                    kind,
                    result = result.as_str(),
                    elapsed = ?elapsed,
                    output = %output,
                    "hook failed: {status}"
                );
            }
        }
    }

    /// Runs one action; returns its result, a status line and the output for the log.
    async fn run_action(
        &self,
        action: &HookAction,
        job: &Job,
        env: &[command::Var],
        json: &[u8],
    ) -> (HookResult, String, String) {
        match action {
            HookAction::Command { command } => {
                let o = command::run_argv(command, env, json, job.timeout()).await;
                (o.result, o.status.clone(), o.output())
            }
            HookAction::Shell { shell } => {
                let o = command::run_shell(shell, env, json, job.timeout()).await;
                (o.result, o.status.clone(), o.output())
            }
            HookAction::Webhook {
                webhook, headers, ..
            } => {
                let secret = match action.key() {
                    None => None,
                    Some(source) => match job.keys.get(&source) {
                        Some(key) => Some(key),
                        // Validated at load, so this cannot happen; if it did, an unsigned
                        // delivery would be accepted as genuine by no receiver worth the
                        // name, and trusted by a careless one: it is never sent.
                        None => {
                            return (
                                HookResult::Error,
                                format!("no key was read from {source}: not sent unsigned"),
                                String::new(),
                            );
                        }
                    },
                };
                let o = webhook::deliver(
                    self.inner.http.get_or_init(webhook::Client::new),
                    webhook,
                    headers,
                    secret,
                    &job.event_id(),
                    json.to_vec(),
                    job.timeout(),
                )
                .await;
                let status = format!("{} after {} attempt(s)", o.status, o.attempts);
                (o.result, status, o.body)
            }
        }
    }
}

impl Observer for HookRunner {
    fn transition(&self, target: &Arc<Target>, transition: &Transition) {
        // Every target's transition, with hooks or not, is work of the burst.
        self.inner.burst.record();
        if target.hooks.is_empty() || self.inner.tracker.is_closed() {
            return;
        }
        self.enqueue(
            &target.name,
            What::Target {
                transition: transition.clone(),
                config: target.clone(),
            },
        );
    }

    fn group_event(&self, group: &Arc<Group>, e: &GroupEvent) {
        if group.hooks.is_empty() || self.inner.tracker.is_closed() {
            return;
        }
        let active = |name: &str, fallback: bool| {
            if fallback {
                Some(Active::Fallback)
            } else {
                group
                    .members
                    .iter()
                    .position(|m| m == name)
                    .map(Active::Member)
            }
        };
        let after = GroupView {
            active: active(&e.active, e.fallback),
            conflict: e.conflict,
        };
        let before = match e.kind {
            GroupEventKind::Change => GroupView {
                active: e
                    .previous_active
                    .as_deref()
                    .and_then(|p| active(p, p == group.fallback)),
                conflict: e.conflict,
            },
            GroupEventKind::Conflict | GroupEventKind::ConflictResolved => GroupView {
                active: after.active,
                conflict: !e.conflict,
            },
        };
        self.enqueue(
            &group.name,
            What::Group {
                event: e.kind,
                payload: Box::new(GroupPayload::new(group, e)),
                config: group.clone(),
                story: (before, after),
            },
        );
    }
}

/// An empty queue for every target that has hooks, allocated together at start rather
/// than one by one amid the first burst of events, where each would pin a page of the
/// burst's memory.
fn queues(config: &Config) -> HashMap<String, Arc<Mutex<TargetQueue>>> {
    let targets = config
        .targets
        .iter()
        .filter(|t| !t.hooks.is_empty())
        .map(|t| t.name.clone());
    let groups = config
        .groups
        .iter()
        .filter(|g| !g.hooks.is_empty())
        .map(|g| g.name.clone());
    targets
        .chain(groups)
        .map(|name| (name, Arc::default()))
        .collect()
}

/// Checks that every webhook secret the config names is set, before anything starts.
pub fn check_environment(config: &Config, loaded: &secrets::Loaded) -> Result<(), HooksError> {
    keys(config, loaded).map(drop)
}

/// Every webhook key the config names, as this start or reload read it (so a rotated
/// key is taken up by SIGHUP). A key the load could not read stops the start or
/// refuses the reload.
fn keys(config: &Config, loaded: &secrets::Loaded) -> Result<Keys, HooksError> {
    let targets = config.targets.iter().flat_map(|t| {
        Event::ALL.into_iter().flat_map(move |event| {
            t.hooks
                .for_event(event)
                .iter()
                .map(move |a| (format!("target \"{}\"", t.name), event.hook_key(), a))
        })
    });
    let groups = config.groups.iter().flat_map(|g| {
        let owner = format!("group \"{}\"", g.name);
        let change = g
            .hooks
            .on_change
            .iter()
            .map(move |a| (owner.clone(), "on_change", a));
        let owner = format!("group \"{}\"", g.name);
        let conflict = g
            .hooks
            .on_conflict
            .iter()
            .map(move |a| (owner.clone(), "on_conflict", a));
        change.chain(conflict)
    });
    let mut keys = HashMap::new();
    for (owner, event, action) in targets.chain(groups) {
        let (HookAction::Webhook { webhook, .. }, Some(source)) = (action, action.key()) else {
            continue;
        };
        if keys.contains_key(&source) {
            continue;
        }
        let missing = |error| HooksError::MissingSecret {
            owner: owner.clone(),
            event,
            url: webhook.clone(),
            error,
        };
        let value = match loaded.get(&source) {
            Some(Ok(value)) => value.clone(),
            Some(Err(error)) => return Err(missing(error.clone())),
            // Not part of the load (a caller that loaded another config's
            // sources): read it now rather than run unsigned.
            None => secrets::read(&source).map_err(missing)?,
        };
        keys.insert(source, Secret::new(value.to_vec()));
    }
    Ok(keys)
}

/// Locks a queue or the line of waiting targets. Each change under these locks is a
/// single step, so a lock poisoned by a panic still guards consistent data.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn kind(action: &HookAction) -> &'static str {
    match action {
        HookAction::Command { .. } => "command",
        HookAction::Shell { .. } => "shell",
        HookAction::Webhook { .. } => "webhook",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::observe::Observers;

    fn config(names: &[&str]) -> Config {
        let mut text =
            String::from("[defaults.hooks]\non_connect = { command = [\"/bin/true\"] }\n");
        for name in names {
            text.push_str(&format!(
                "[[targets]]\nname = \"{name}\"\naddress = \"127.0.0.1:1\"\n"
            ));
        }
        Config::parse(&text, std::path::Path::new("t.toml")).unwrap()
    }

    /// These configs read no secrets.
    fn none() -> secrets::Loaded {
        secrets::Loaded::default()
    }

    fn queued(runner: &HookRunner) -> Vec<String> {
        let mut names: Vec<String> = runner
            .inner
            .queues
            .read()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_reload_that_removes_a_target_drops_its_hook_queue() {
        let runner = HookRunner::new(
            &config(&["a", "b", "c"]),
            &none(),
            Arc::new(Observers::new()),
        )
        .unwrap();
        assert_eq!(queued(&runner), ["a", "b", "c"]);
        runner.reload(&config(&["a"]), &none()).unwrap();
        assert_eq!(queued(&runner), ["a"], "no queue outlives its target");
    }

    #[test]
    fn a_queue_still_being_served_stays_until_its_events_ran() {
        let runner =
            HookRunner::new(&config(&["a", "b"]), &none(), Arc::new(Observers::new())).unwrap();
        let b = runner.inner.queues.read().unwrap()["b"].clone();
        lock(&b).running = true;
        runner.reload(&config(&["a"]), &none()).unwrap();
        assert_eq!(queued(&runner), ["a", "b"]);
        lock(&b).running = false;
        runner.reload(&config(&["a"]), &none()).unwrap();
        assert_eq!(queued(&runner), ["a"]);
    }

    /// Loading the webpki roots and building a TLS client config is memory and code
    /// every sidecar would page in at start; one whose hooks are commands never needs it.
    #[test]
    fn a_sidecar_whose_hooks_are_commands_builds_no_webhook_client() {
        let runner = HookRunner::new(&config(&["a"]), &none(), Arc::new(Observers::new())).unwrap();
        assert!(runner.inner.http.get().is_none());
    }

    /// When each hook action of each target started, by its report.
    #[derive(Default)]
    struct Starts {
        runs: Mutex<Vec<(String, Instant)>>,
        ran: tokio::sync::Notify,
    }

    impl Observer for Starts {
        fn transition(&self, _: &Arc<Target>, _: &Transition) {}

        fn hook_run(&self, target: &Target, _: Event, result: HookResult, elapsed: Duration) {
            assert_eq!(result, HookResult::Ok);
            let started = Instant::now() - elapsed;
            lock(&self.runs).push((target.name.clone(), started));
            self.ran.notify_one();
        }
    }

    impl Starts {
        async fn wait_for(&self, n: usize) -> Vec<(String, Instant)> {
            loop {
                let notified = self.ran.notified();
                let runs = lock(&self.runs).clone();
                if runs.len() >= n {
                    return runs;
                }
                tokio::time::timeout(Duration::from_secs(10), notified)
                    .await
                    .expect("the hooks ran within 10 s");
            }
        }
    }

    fn connected() -> Transition {
        Transition {
            seq: 1,
            event: Event::Connect,
            previous: crate::watch::machine::State::Connecting,
            state: crate::watch::machine::State::Up,
            failures: 0,
            last_error: None,
            at: std::time::SystemTime::now(),
        }
    }

    /// A mass outage's hooks would take the cores its actors need to record the
    /// outage; they wait until it is recorded. A lone transition's hooks do not.
    #[tokio::test]
    async fn the_hooks_of_a_burst_start_once_its_transitions_are_recorded() {
        let config = config(&["a", "b", "c"]);
        let target = |name: &str| {
            Arc::new(
                config
                    .targets
                    .iter()
                    .find(|t| t.name == name)
                    .unwrap()
                    .clone(),
            )
        };
        // The three transitions must come within the burst's gap of each other; a test
        // thread descheduled between two of them (a loaded machine) tries again.
        for _ in 0..10 {
            let starts = Arc::new(Starts::default());
            let runner = HookRunner::new(&config, &none(), starts.clone()).unwrap();
            let slots = runner.inner.limit.available_permits();
            let first = Instant::now();
            runner.transition(&target("a"), &connected());
            // On this test's single thread, no hook task runs before the next await.
            let a_started = runner.inner.limit.available_permits() == slots - 1;
            let before_last = Instant::now();
            runner.transition(&target("b"), &connected());
            runner.transition(&target("c"), &connected());
            let held = runner.inner.limit.available_permits() == slots - 1;
            let within_gap = first.elapsed() < burst::GAP;

            let runs = starts.wait_for(3).await;
            runner.drain(Duration::from_secs(10)).await;
            if !within_gap {
                continue;
            }
            assert!(a_started, "a lone transition's hook takes a slot at once");
            assert!(held, "the hooks of a burst wait");
            for (name, started) in &runs[..] {
                if name != "a" {
                    assert!(
                        *started >= before_last + burst::GAP,
                        "{name}'s hook started {:?} after its transition, before the burst paused",
                        started.saturating_duration_since(before_last)
                    );
                }
            }
            return;
        }
        panic!(
            "ten tries, and never three transitions within {:?}",
            burst::GAP
        );
    }

    /// After a mass outage every target with hooks has an event waiting for a slot: at
    /// 10,000 targets each 100 bytes of a waiting event are a megabyte of peak memory.
    /// A target's event waits as its transition (the error shared with the actor), and
    /// its payload's strings are made when its hooks run.
    #[test]
    fn an_event_waiting_for_a_hook_slot_is_a_few_words() {
        const BUDGET: usize = 96;
        let size = std::mem::size_of::<Job>();
        eprintln!("a waiting event: {size} bytes (budget {BUDGET})");
        assert!(
            size <= BUDGET,
            "a waiting event is {size} bytes, over {BUDGET}"
        );
    }
}
