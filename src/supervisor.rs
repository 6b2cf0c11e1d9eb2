//! Owns the set of checker actors: starts one per target, restarts one that panics
//! without touching the others, and stops them all on shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::panic::{self, AssertUnwindSafe};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};

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

/// Runs one target's checker, restarting it if it panics. The checker runs inside
/// this task behind a catch of its panics, so that a target costs one task, not two:
/// a panic still unwinds only that checker's future, and the event numbering survives.
async fn supervise(target: Arc<Target>, observer: Arc<dyn Observer>, cancel: CancellationToken) {
    let seq = Arc::new(AtomicU64::new(0));
    // Pace restarts like reconnects, so a checker that panics at once cannot spin.
    let mut pace = ReconnectBackoff::new(&target.backoff);
    loop {
        // The checker and its future live only in this block, so the restart delay
        // below reuses their space in this task; one that panicked is never polled again.
        let outcome = {
            let mut checker = Checker::new(
                target.clone(),
                observer.clone(),
                cancel.clone(),
                seq.clone(),
            );
            CatchUnwind(pin!(checker.run())).await
        };
        match outcome {
            Ok(()) => break,
            Err(_) => {
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
        }
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
