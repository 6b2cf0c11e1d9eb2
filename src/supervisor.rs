//! Owns the set of checker actors: starts one per target, restarts one that panics
//! without touching the others, and stops them all on shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use tokio::time::sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backoff::ReconnectBackoff;
use crate::checker::Checker;
use crate::config::{Config, Target};
use crate::observe::Observer;

/// The running actors.
pub struct Supervisor {
    /// Parent of every actor's token: cancelling it stops them all.
    root: CancellationToken,
    /// Tracks the supervising tasks, so shutdown can wait for every actor to end.
    tracker: TaskTracker,
    observer: Arc<dyn Observer>,
    actors: HashMap<String, Actor>,
}

/// What the supervisor keeps of one actor.
struct Actor {
    target: Arc<Target>,
}

impl Supervisor {
    /// Starts one actor per target of `config`, on copies of its targets.
    pub fn start(config: &Config, observer: Arc<dyn Observer>) -> Supervisor {
        Supervisor::start_targets(config.targets.iter().cloned().map(Arc::new), observer)
    }

    /// Starts one actor per target, taking the targets over: a caller with no further
    /// use for them hands them to their actors instead of keeping a second copy of
    /// each, which with thousands of targets is megabytes.
    pub fn start_targets(
        targets: impl ExactSizeIterator<Item = Arc<Target>>,
        observer: Arc<dyn Observer>,
    ) -> Supervisor {
        let mut sup = Supervisor {
            root: CancellationToken::new(),
            tracker: TaskTracker::new(),
            observer,
            actors: HashMap::with_capacity(targets.len()),
        };
        for target in targets {
            sup.spawn(target);
        }
        sup
    }

    pub fn len(&self) -> usize {
        self.actors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actors.is_empty()
    }

    /// The targets being watched.
    pub fn targets(&self) -> impl Iterator<Item = &Arc<Target>> {
        self.actors.values().map(|a| &a.target)
    }

    fn spawn(&mut self, target: Arc<Target>) {
        let cancel = self.root.child_token();
        self.tracker
            .spawn(supervise(target.clone(), self.observer.clone(), cancel));
        self.actors.insert(target.name.clone(), Actor { target });
    }

    /// Stops every actor and waits until all have closed their connections.
    pub async fn shutdown(self) {
        self.root.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// Runs one target's checker, restarting it if it panics. Each incarnation runs as its
/// own task so that a panic unwinds only that task; the event numbering survives.
async fn supervise(target: Arc<Target>, observer: Arc<dyn Observer>, cancel: CancellationToken) {
    let seq = Arc::new(AtomicU64::new(0));
    // Pace restarts like reconnects, so a checker that panics at once cannot spin.
    let mut pace = ReconnectBackoff::new(&target.backoff);
    loop {
        let checker = Checker::new(
            target.clone(),
            observer.clone(),
            cancel.clone(),
            seq.clone(),
        );
        let outcome = tokio::spawn(checker.run()).await;
        match outcome {
            Ok(()) => break,
            Err(e) if e.is_panic() => {
                observer.restarted(&target);
                let delay = pace.next_delay();
                tracing::error!(
                    target_name = %target.name,
                    restart_in = ?delay,
                    "checker panicked; restarting it from connecting"
                );
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = sleep(delay) => {}
                }
            }
            // Cancelled from outside: the runtime is shutting down.
            Err(_) => break,
        }
    }
}
