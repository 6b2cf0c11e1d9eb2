//! Runs the user's hooks on the transitions checkers publish.
//!
//! A checker only enqueues: the transition goes into its target's queue and the call
//! returns, so no hook, however slow, hung or broken, delays detection. Each target
//! has at most one worker, which runs that target's events one at a time and in order
//! (actions of one event in the order written); workers of different targets run
//! concurrently, bounded by `max_concurrent_hooks`.

mod command;
mod descendants;
mod payload;
mod queue;
pub mod reaper;
mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::config::{Config, HookAction, Target};
use crate::machine::{Event, State, Transition};
use crate::observe::{HookResult, Observer};

pub use descendants::kill_everything;
pub use payload::Payload;
pub use webhook::{Secret, signature};

/// A problem found before any hook runs.
#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error(
        "target \"{target}\": {event} webhook {url}: secret_env names {var}, which is not set in the environment"
    )]
    MissingSecret {
        target: String,
        event: &'static str,
        url: String,
        var: String,
    },
    #[error("cannot build the webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
}

/// The hook runner: an [`Observer`] that queues transitions for execution.
#[derive(Clone)]
pub struct HookRunner {
    inner: Arc<Inner>,
}

struct Inner {
    /// One queue per target that has hooks, created on its first event.
    queues: RwLock<HashMap<String, Arc<Mutex<TargetQueue>>>>,
    /// Bounds hook runs in flight across all targets.
    limit: Arc<Semaphore>,
    /// Webhook keys by environment variable name, read at start and on reload.
    secrets: RwLock<HashMap<String, Secret>>,
    http: reqwest::Client,
    /// Receives hook results (metrics); never this runner itself.
    report: Arc<dyn Observer>,
    /// The workers, so shutdown can wait for hooks in flight.
    tracker: TaskTracker,
}

#[derive(Default)]
struct TargetQueue {
    pending: queue::Pending<Job>,
    /// Whether a worker is draining this queue; at most one per target.
    running: bool,
}

/// One event to run, with the actions configured when it happened.
struct Job {
    target: Arc<str>,
    event: Event,
    payload: Payload,
    actions: Vec<HookAction>,
    timeout: Duration,
    /// Kept for reporting results to listeners.
    config: Arc<Target>,
}

impl queue::Queued for Job {
    fn event(&self) -> Event {
        self.event
    }
    fn previous(&self) -> State {
        self.payload.previous_state
    }
    fn state(&self) -> State {
        self.payload.state
    }
}

impl HookRunner {
    /// Reads every webhook secret the config names from the environment, so a missing
    /// one stops the start instead of surfacing at the first outage.
    pub fn new(config: &Config, report: Arc<dyn Observer>) -> Result<HookRunner, HooksError> {
        let secrets = read_secrets(config)?;
        let http = reqwest::Client::builder()
            .user_agent(concat!("tether/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(30))
            .dns_resolver(Arc::new(crate::resolve::ForWebhooks))
            .build()
            .map_err(HooksError::Client)?;
        Ok(HookRunner {
            inner: Arc::new(Inner {
                queues: RwLock::default(),
                limit: Arc::new(Semaphore::new(config.defaults.max_concurrent_hooks)),
                secrets: RwLock::new(secrets),
                http,
                report,
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// Reads the secrets a new config names; on error the running ones stay, and the
    /// reload must be refused.
    pub fn reload(&self, config: &Config) -> Result<(), HooksError> {
        let secrets = read_secrets(config)?;
        *self
            .inner
            .secrets
            .write()
            .unwrap_or_else(|p| p.into_inner()) = secrets;
        Ok(())
    }

    /// Stops taking new work and waits up to `grace` for hooks in flight; returns
    /// whether they all finished.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.inner.tracker.close();
        tokio::time::timeout(grace, self.inner.tracker.wait())
            .await
            .is_ok()
    }

    fn enqueue(&self, target: &Target, t: &Transition) {
        let inner = &self.inner;
        let queue = {
            let existing = inner
                .queues
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&target.name)
                .cloned();
            match existing {
                Some(q) => q,
                None => inner
                    .queues
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(target.name.clone())
                    .or_default()
                    .clone(),
            }
        };
        let job = Job {
            target: target.name.as_str().into(),
            event: t.event,
            payload: Payload::new(target, t),
            actions: actions(target, t.event).to_vec(),
            timeout: target.hook_timeout.get(),
            config: Arc::new(target.clone()),
        };
        let (dropped, start) = {
            let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
            let dropped = q.pending.push(job);
            let start = !q.running;
            q.running = true;
            (dropped, start)
        };
        if dropped > 0 {
            tracing::warn!(
                target_name = %target.name,
                dropped,
                "hooks are slower than the target's changes: coalesced pending events (the latest is kept)"
            );
            inner.report.hooks_coalesced(target, dropped);
        }
        if start {
            let runner = self.clone();
            inner.tracker.spawn(async move { runner.work(queue).await });
        }
    }

    /// Drains one target's queue, one event at a time.
    async fn work(self, queue: Arc<Mutex<TargetQueue>>) {
        loop {
            let job = {
                let mut q = queue.lock().unwrap_or_else(|p| p.into_inner());
                match q.pending.pop() {
                    Some(job) => job,
                    None => {
                        q.running = false;
                        return;
                    }
                }
            };
            let (config, event) = (job.config.clone(), job.event);
            // Its own task, so that a panic while running one event is contained and the
            // queue keeps being served.
            let runner = self.clone();
            let started = Instant::now();
            if let Err(e) = tokio::spawn(async move { runner.run(job).await }).await {
                tracing::error!(
                    target_name = %config.name,
                    event = %event,
                    error = %e,
                    "running hooks failed; the next events' hooks will still run"
                );
                self.inner
                    .report
                    .hook_run(&config, event, HookResult::Error, started.elapsed());
            }
        }
    }

    async fn run(&self, job: Job) {
        #[cfg(feature = "fault-injection")]
        crate::fault::check_hook(&job.target);
        let json = job.payload.to_json();
        for (i, action) in job.actions.iter().enumerate() {
            let _permit = self
                .inner
                .limit
                .clone()
                .acquire_owned()
                .await
                .expect("the hook semaphore is never closed");
            let started = Instant::now();
            let (result, status, output) = self.run_action(action, &job, &json).await;
            let elapsed = started.elapsed();
            self.inner
                .report
                .hook_run(&job.config, job.event, result, elapsed);
            let kind = kind(action);
            if result == HookResult::Ok {
                tracing::info!(
                    target_name = %job.target,
                    event_id = %job.payload.event_id,
                    hook = %job.event.hook_key(),
                    action = i,
                    kind,
                    elapsed = ?elapsed,
                    "hook ran: {status}"
                );
            } else {
                tracing::warn!(
                    target_name = %job.target,
                    event_id = %job.payload.event_id,
                    hook = %job.event.hook_key(),
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
        json: &[u8],
    ) -> (HookResult, String, String) {
        match action {
            HookAction::Command { command } => {
                let o = command::run_argv(command, &job.payload, json, job.timeout).await;
                (o.result, o.status.clone(), o.output())
            }
            HookAction::Shell { shell } => {
                let o = command::run_shell(shell, &job.payload, json, job.timeout).await;
                (o.result, o.status.clone(), o.output())
            }
            HookAction::Webhook {
                webhook,
                headers,
                secret_env,
            } => {
                let secret = secret_env.as_ref().and_then(|v| {
                    self.inner
                        .secrets
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(v)
                        .cloned()
                });
                let o = webhook::deliver(
                    &self.inner.http,
                    webhook,
                    headers,
                    secret.as_ref(),
                    &job.payload.event_id,
                    json.to_vec(),
                    job.timeout,
                )
                .await;
                let status = format!("{} after {} attempt(s)", o.status, o.attempts);
                (o.result, status, o.body)
            }
        }
    }
}

impl Observer for HookRunner {
    fn transition(&self, target: &Target, transition: &Transition) {
        if target.hooks.is_empty() || self.inner.tracker.is_closed() {
            return;
        }
        self.enqueue(target, transition);
    }
}

/// Checks that every webhook secret the config names is set, before anything starts.
pub fn check_environment(config: &Config) -> Result<(), HooksError> {
    read_secrets(config).map(drop)
}

/// Every webhook secret the config names, from the environment.
fn read_secrets(config: &Config) -> Result<HashMap<String, Secret>, HooksError> {
    let mut secrets = HashMap::new();
    for target in &config.targets {
        for event in Event::ALL {
            for action in actions(target, event) {
                let HookAction::Webhook {
                    webhook,
                    secret_env: Some(var),
                    ..
                } = action
                else {
                    continue;
                };
                let Some(value) = std::env::var_os(var) else {
                    return Err(HooksError::MissingSecret {
                        target: target.name.clone(),
                        event: event.hook_key(),
                        url: webhook.clone(),
                        var: var.clone(),
                    });
                };
                secrets.insert(var.clone(), Secret::new(value.into_encoded_bytes()));
            }
        }
    }
    Ok(secrets)
}

fn actions(target: &Target, event: Event) -> &[HookAction] {
    let h = &target.hooks;
    match event {
        Event::Connect => &h.on_connect,
        Event::Disconnect => &h.on_disconnect,
        Event::Failure => &h.on_failure,
        Event::Recover => &h.on_recover,
    }
}

fn kind(action: &HookAction) -> &'static str {
    match action {
        HookAction::Command { .. } => "command",
        HookAction::Shell { .. } => "shell",
        HookAction::Webhook { .. } => "webhook",
    }
}
