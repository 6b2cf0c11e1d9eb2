//! Owns the set of checker actors, OTP-style: one actor per target, each restarted
//! when it crashes without touching the others, within a restart intensity beyond
//! which its target is marked `failed` and left to cool down; reloads apply a config
//! by difference, so unchanged targets keep their connections.

use std::borrow::Borrow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, Supervision, Target};
use crate::watch::checker::Checker;
use crate::watch::loss::Loss;
use crate::watch::machine::{Machine, Snapshot};
use crate::watch::observe::{ActorId, Observer, panic_message};

/// The running actors.
pub struct Supervisor {
    /// Parent of every actor's token: cancelling it stops them all.
    root: CancellationToken,
    /// Tracks the supervising tasks, so shutdown can wait for every actor to end.
    tracker: TaskTracker,
    observer: Arc<dyn Observer>,
    policy: Supervision,
    /// By target name, which each actor's target holds: no second copy of every name.
    actors: HashSet<Actor>,
    /// Removed targets, by name: one added again continues its event numbering, so a
    /// receiver that drops duplicate ids never drops its new events. One entry per
    /// name ever removed, a snapshot and a finished task handle.
    retired: HashMap<String, Retired>,
}

/// What is kept of a removed target's actor.
struct Retired {
    memory: Arc<Mutex<Snapshot>>,
    /// The stopped actor's task; a successor waits for it before it reads `memory`.
    task: JoinHandle<()>,
}

/// Where a new actor starts from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Start {
    /// Where the previous incarnation left the target (a restart or a replacement).
    Continue,
    /// As a new target, keeping only the numbering of a removed one.
    Fresh,
}

/// What the supervisor keeps of one actor.
struct Actor {
    target: Arc<Target>,
    cancel: CancellationToken,
    /// What the application was last told about this target; survives restarts and
    /// reloads so event ids continue and no event repeats.
    memory: Arc<Mutex<Snapshot>>,
    /// The supervising task; a replacement waits for it so two incarnations never
    /// publish for the same target at once.
    task: JoinHandle<()>,
    /// Set when a reload replaces the actor: its target lives on in the replacement,
    /// so listeners must not be told it stopped.
    replaced: Arc<AtomicBool>,
}

/// An actor is known by its target's name.
impl PartialEq for Actor {
    fn eq(&self, other: &Actor) -> bool {
        self.target.name == other.target.name
    }
}

impl Eq for Actor {}

impl Hash for Actor {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.target.name.as_str().hash(state);
    }
}

impl Borrow<str> for Actor {
    fn borrow(&self) -> &str {
        &self.target.name
    }
}

/// What a reload changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadSummary {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

impl Supervisor {
    /// Starts one actor per target of `config`, on copies of its targets.
    pub fn start(config: &Config, observer: Arc<dyn Observer>) -> Supervisor {
        Supervisor::start_targets(
            config.targets.iter().cloned().map(Arc::new),
            config.supervisor.clone(),
            observer,
        )
    }

    /// Starts one actor per target, taking the targets over: a caller with no further
    /// use for them hands them to their actors instead of keeping a second copy of
    /// each, which with thousands of targets is megabytes.
    pub fn start_targets(
        targets: impl ExactSizeIterator<Item = Arc<Target>>,
        policy: Supervision,
        observer: Arc<dyn Observer>,
    ) -> Supervisor {
        let mut sup = Supervisor {
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            observer,
            policy,
            actors: HashSet::with_capacity(targets.len()),
            retired: HashMap::new(),
        };
        for target in targets {
            sup.spawn(target, Arc::default(), None, Start::Continue);
        }
        sup
    }

    pub fn len(&self) -> usize {
        self.actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    fn spawn(
        &mut self,
        target: Arc<Target>,
        memory: Arc<Mutex<Snapshot>>,
        after: Option<JoinHandle<()>>,
        start: Start,
    ) {
        let cancel = self.root.child_token();
        let replaced = Arc::new(AtomicBool::new(false));
        let task = self.tracker.spawn(supervise(Incarnation {
            actor: ActorId::next(),
            target: target.clone(),
            observer: self.observer.clone(),
            cancel: cancel.clone(),
            memory: memory.clone(),
            policy: self.policy.clone(),
            after,
            start,
            replaced: replaced.clone(),
        }));
        self.actors.replace(Actor {
            target,
            cancel,
            memory,
            task,
            replaced,
        });
    }

    /// Applies a new config: starts new targets, stops removed ones, replaces changed
    /// ones (continuing their event numbering) and leaves the rest untouched.
    pub fn reload(&mut self, config: &Config) -> ReloadSummary {
        let mut summary = ReloadSummary::default();
        self.policy = config.supervisor.clone();
        let wanted: HashMap<&str, &Target> = config
            .targets
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let removed: Vec<String> = self
            .actors
            .iter()
            .filter(|a| !wanted.contains_key(a.target.name.as_str()))
            .map(|a| a.target.name.clone())
            .collect();
        for name in removed {
            let actor = self.actors.take(name.as_str()).expect("listed above");
            actor.cancel.cancel();
            self.retired.insert(
                name.clone(),
                Retired {
                    memory: actor.memory,
                    task: actor.task,
                },
            );
            summary.removed.push(name);
        }
        for target in &config.targets {
            match self.actors.get(target.name.as_str()) {
                None => {
                    let (memory, after) = match self.retired.remove(&target.name) {
                        Some(r) => (r.memory, Some(r.task)),
                        None => (Arc::default(), None),
                    };
                    self.spawn(Arc::new(target.clone()), memory, after, Start::Fresh);
                    summary.added.push(target.name.clone());
                }
                Some(actor) if *actor.target.as_ref() == *target => summary.unchanged += 1,
                Some(_) => {
                    let old = self
                        .actors
                        .take(target.name.as_str())
                        .expect("matched above");
                    old.replaced.store(true, Ordering::Release);
                    old.cancel.cancel();
                    self.spawn(
                        Arc::new(target.clone()),
                        old.memory,
                        Some(old.task),
                        Start::Continue,
                    );
                    summary.changed.push(target.name.clone());
                }
            }
        }
        summary.added.sort();
        summary.removed.sort();
        summary.changed.sort();
        summary
    }

    /// Stops every actor and waits until all have closed their connections.
    pub async fn shutdown(self) {
        self.root.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// What the supervising task of one actor runs with.
struct Incarnation {
    /// Its own id: what it owns is its successor's once a reload replaces it.
    actor: ActorId,
    target: Arc<Target>,
    observer: Arc<dyn Observer>,
    cancel: CancellationToken,
    memory: Arc<Mutex<Snapshot>>,
    policy: Supervision,
    /// The predecessor's task, waited for before `memory` is read or reset.
    after: Option<JoinHandle<()>>,
    start: Start,
    replaced: Arc<AtomicBool>,
}

/// Runs one target's checker, restarting it when it crashes. Each incarnation runs as
/// its own task so that a panic unwinds only that task.
///
/// A plain function around an `async` block: an `async fn` keeps its arguments in its
/// future beside the locals they are moved into, and this future is every watched
/// target's task, for the life of the sidecar (128 bytes a target).
fn supervise(incarnation: Incarnation) -> impl Future<Output = ()> {
    let Incarnation {
        actor,
        target,
        observer,
        cancel,
        memory,
        policy,
        after,
        start,
        replaced,
    } = incarnation;
    async move {
        if let Some(previous) = after {
            let _ = previous.await;
        }
        if start == Start::Fresh {
            // The predecessor has ended: nothing else writes this memory any more.
            let mut memory = memory.lock().unwrap_or_else(|p| p.into_inner());
            *memory = Snapshot {
                next_seq: memory.next_seq,
                ..Snapshot::default()
            };
        }
        let window = Duration::from_secs(u64::from(policy.max_seconds));
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        loop {
            // The checker lives only in this block, inside this task behind a catch of its
            // panics: a target costs one task, not two, and a checker that panicked (and
            // its connection) is dropped before the next one starts.
            let outcome = {
                let mut checker = Checker::new(
                    target.clone(),
                    observer.clone(),
                    cancel.clone(),
                    memory.clone(),
                );
                observer.started(&target, actor);
                CatchUnwind(pin!(checker.run())).await
            };
            let reason = match outcome {
                Ok(()) => break,
                Err(payload) => panic_message(payload),
            };
            if cancel.is_cancelled() {
                break;
            }
            observer.restarted(&target);
            record_crash(&mut crashes, window);
            if crashes.len() <= policy.max_restarts as usize {
                tracing::error!(
                    target_name = %target.name,
                    error = %reason,
                    restarts = crashes.len(),
                    "checker crashed; restarting it"
                );
                continue;
            }
            tracing::error!(
                target_name = %target.name,
                error = %reason,
                max_restarts = policy.max_restarts,
                max_seconds = policy.max_seconds,
                cooldown = %policy.cooldown,
                "checker crashed too often; marking the target failed and pausing it"
            );
            give_up(&target, &*observer, &memory, &reason, crashes.len(), window);
            crashes.clear();
            tokio::select! {
                () = cancel.cancelled() => break,
                () = sleep(policy.cooldown.get()) => {}
            }
        }
        if !replaced.load(Ordering::Acquire) {
            observer.stopped(&target, actor);
        }
    }
}

/// Adds a crash now to `crashes`, forgetting those older than `window`: only the
/// recent ones count toward the restart intensity.
fn record_crash(crashes: &mut VecDeque<Instant>, window: Duration) {
    let now = Instant::now();
    crashes.push_back(now);
    while crashes
        .front()
        .is_some_and(|t| now.duration_since(*t) > window)
    {
        crashes.pop_front();
    }
}

/// Publishes the transitions that mark a target failed after too many crashes.
fn give_up(
    target: &Arc<Target>,
    observer: &dyn Observer,
    memory: &Mutex<Snapshot>,
    reason: &str,
    crashes: usize,
    window: Duration,
) {
    let mut memory = memory.lock().unwrap_or_else(|p| p.into_inner());
    let mut machine = Machine::resume(target, &memory);
    let reason = Loss::gave_up(crashes, window, reason.to_owned());
    let transitions = machine.give_up(reason, SystemTime::now());
    *memory = machine.snapshot();
    drop(memory);
    for t in &transitions {
        observer.transition(target, t);
    }
}

/// Polls a future, turning a panic inside it into `Err` as a task's join handle
/// would, without the cost of a task of its own.
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match panic::catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => Poll::Ready(Ok(output)),
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::observe::Observers;

    /// Every watched target is one task for the life of the sidecar, and the task is
    /// as large as the largest state its future can be in: at 10,000 targets each
    /// 100 bytes here are a megabyte of resident memory. Holding a connection (where
    /// an actor spends its life) must not carry the connect attempt's, the backoff's
    /// or a TLS probe's state.
    #[test]
    fn a_watched_targets_task_stays_within_its_memory_budget() {
        const BUDGET: usize = 1024;
        let config = Config::parse(
            "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\n",
            "test.toml".as_ref(),
        )
        .unwrap();
        let task = supervise(Incarnation {
            actor: ActorId::next(),
            target: Arc::new(config.targets[0].clone()),
            observer: Arc::new(Observers::new()),
            cancel: CancellationToken::new(),
            memory: Arc::default(),
            policy: config.supervisor.clone(),
            after: None,
            start: Start::Continue,
            replaced: Arc::default(),
        });
        let size = std::mem::size_of_val(&task);
        eprintln!("an actor's future: {size} bytes (budget {BUDGET})");
        assert!(
            size <= BUDGET,
            "an actor's future is {size} bytes, over {BUDGET}"
        );
    }
}
