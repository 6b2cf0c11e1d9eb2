//! The Prometheus metrics of the SPEC, kept in a private registry and fed by the
//! checkers through the [`Observer`] trait.
//!
//! Labels come only from configured targets and from closed sets (states, results,
//! events), never from errors or addresses, so the number of series is bounded by the
//! config. Each target's label combinations are created up front so counters exist at 0
//! (a `rate()` or `increase()` then sees the first increment), and are removed when the
//! target stops for good. Per-target handles are resolved once, so a report costs a
//! map lookup under a read lock and a few atomic operations.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::{Config, Target};
use crate::machine::{Event, State, Transition};
use crate::observe::{HookResult, Observer};

/// The Content-Type of the exposition; Prometheus 3 rejects a scrape without it.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Connect attempts take from tens of microseconds (loopback) to `connect_timeout`.
const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// Hooks take from a millisecond (a local webhook) to `hook_timeout` (30 s by default).
const HOOK_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The values of `connect_attempts_total{result}`.
const ATTEMPT_RESULTS: [&str; 2] = ["ok", "failed"];

/// Failed to build or encode the metrics.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric: {0}")]
    Register(#[source] prometheus::Error),
    #[error("cannot encode metrics: {0}")]
    Encode(#[source] prometheus::Error),
}

/// Every metric family of tether.
struct Families {
    up: IntGaugeVec,
    state: IntGaugeVec,
    consecutive_failures: IntGaugeVec,
    connect_attempts: IntCounterVec,
    disconnects: IntCounterVec,
    connect_duration: HistogramVec,
    state_changes: IntCounterVec,
    hook_runs: IntCounterVec,
    hook_duration: HistogramVec,
    address_changes: IntCounterVec,
    actor_restarts: IntCounterVec,
    hooks_coalesced: IntCounterVec,
}

/// The metrics registry of one sidecar.
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// The resolved series of each live target.
    targets: RwLock<HashMap<String, Arc<TargetSeries>>>,
    /// Config reloads by outcome: `[applied, rejected]`.
    reloads: [IntCounter; 2],
}

/// One target's series, resolved once.
struct TargetSeries {
    /// The actor incarnation that owns the series (see `status::Slot::owner`).
    owner: AtomicUsize,
    up: IntGauge,
    /// Indexed like [`State::ALL`].
    state: [IntGauge; 4],
    consecutive_failures: IntGauge,
    attempts_ok: IntCounter,
    attempts_failed: IntCounter,
    disconnects: IntCounter,
    connect_duration: Histogram,
    /// Indexed like [`State::ALL`].
    state_changes: [IntCounter; 4],
    address_changes: IntCounter,
    actor_restarts: IntCounter,
    hooks_coalesced: IntCounter,
}

fn state_index(state: State) -> usize {
    State::ALL
        .iter()
        .position(|s| *s == state)
        .expect("State::ALL lists every state")
}

fn owner_of(target: &Target) -> usize {
    std::ptr::from_ref(target) as usize
}

impl Metrics {
    /// Registers every family and the series of every target of `config`.
    pub fn new(config: &Config) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let families = Families::register(&registry)?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                "tether_build_info",
                "Always 1; the label carries the running version of tether.",
            ),
            &["version"],
        )
        .map_err(MetricsError::Register)?;
        registry
            .register(Box::new(build_info.clone()))
            .map_err(MetricsError::Register)?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let reloads = IntCounterVec::new(
            Opts::new(
                "tether_config_reloads_total",
                "Config reloads (SIGHUP), by result: applied, or rejected and the running config kept.",
            ),
            &["result"],
        )
        .map_err(MetricsError::Register)?;
        registry
            .register(Box::new(reloads.clone()))
            .map_err(MetricsError::Register)?;
        let metrics = Metrics {
            registry,
            families,
            targets: RwLock::new(HashMap::new()),
            reloads: [
                reloads.with_label_values(&["applied"]),
                reloads.with_label_values(&["rejected"]),
            ],
        };
        for target in &config.targets {
            metrics.add(target, 0);
        }
        Ok(metrics)
    }

    /// The text exposition of every series.
    pub fn encode(&self) -> Result<Vec<u8>, MetricsError> {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .map_err(MetricsError::Encode)?;
        Ok(out)
    }

    /// Creates the series of `target` at their initial values.
    fn add(&self, target: &Target, owner: usize) -> Arc<TargetSeries> {
        let f = &self.families;
        let name = target.name.as_str();
        let series = Arc::new(TargetSeries {
            owner: AtomicUsize::new(owner),
            up: f.up.with_label_values(&[name]),
            state: State::ALL.map(|s| f.state.with_label_values(&[name, s.as_str()])),
            consecutive_failures: f.consecutive_failures.with_label_values(&[name]),
            attempts_ok: f
                .connect_attempts
                .with_label_values(&[name, ATTEMPT_RESULTS[0]]),
            attempts_failed: f
                .connect_attempts
                .with_label_values(&[name, ATTEMPT_RESULTS[1]]),
            disconnects: f.disconnects.with_label_values(&[name]),
            connect_duration: f.connect_duration.with_label_values(&[name]),
            state_changes: State::ALL
                .map(|s| f.state_changes.with_label_values(&[name, s.as_str()])),
            address_changes: f.address_changes.with_label_values(&[name]),
            actor_restarts: f.actor_restarts.with_label_values(&[name]),
            hooks_coalesced: f.hooks_coalesced.with_label_values(&[name]),
        });
        series.set_state(State::Connecting);
        // Hook series only for events that have hooks: a target without hooks should not
        // carry 20 series that can never move.
        for event in Event::ALL {
            if !hooks_of(target, event) {
                continue;
            }
            for result in HookResult::ALL {
                f.hook_runs
                    .with_label_values(&[name, event.as_str(), result.as_str()]);
            }
            f.hook_duration.with_label_values(&[name, event.as_str()]);
        }
        self.write_targets()
            .insert(target.name.clone(), series.clone());
        series
    }

    /// Removes every series of `name`.
    fn remove(&self, name: &str) {
        let f = &self.families;
        // Absent combinations (hook series never created) are not an error here.
        let _ = f.up.remove_label_values(&[name]);
        let _ = f.consecutive_failures.remove_label_values(&[name]);
        let _ = f.disconnects.remove_label_values(&[name]);
        let _ = f.connect_duration.remove_label_values(&[name]);
        let _ = f.address_changes.remove_label_values(&[name]);
        let _ = f.actor_restarts.remove_label_values(&[name]);
        let _ = f.hooks_coalesced.remove_label_values(&[name]);
        for result in ATTEMPT_RESULTS {
            let _ = f.connect_attempts.remove_label_values(&[name, result]);
        }
        for state in State::ALL {
            let _ = f.state.remove_label_values(&[name, state.as_str()]);
            let _ = f.state_changes.remove_label_values(&[name, state.as_str()]);
        }
        for event in Event::ALL {
            for result in HookResult::ALL {
                let _ = f
                    .hook_runs
                    .remove_label_values(&[name, event.as_str(), result.as_str()]);
            }
            let _ = f.hook_duration.remove_label_values(&[name, event.as_str()]);
        }
    }

    fn series(&self, target: &Target) -> Option<Arc<TargetSeries>> {
        self.read_targets().get(&target.name).cloned()
    }

    fn read_targets(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<TargetSeries>>> {
        // Inserts and removes are single calls: a poisoned map is still consistent.
        self.targets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_targets(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<TargetSeries>>> {
        self.targets.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn hooks_of(target: &Target, event: Event) -> bool {
    let h = &target.hooks;
    !match event {
        Event::Connect => &h.on_connect,
        Event::Disconnect => &h.on_disconnect,
        Event::Failure => &h.on_failure,
        Event::Recover => &h.on_recover,
    }
    .is_empty()
}

impl TargetSeries {
    /// Sets the one-hot state gauges and `up`.
    fn set_state(&self, state: State) {
        let now = state_index(state);
        for (i, gauge) in self.state.iter().enumerate() {
            gauge.set(i64::from(i == now));
        }
        self.up.set(i64::from(state == State::Up));
    }
}

impl Families {
    fn register(registry: &Registry) -> Result<Families, MetricsError> {
        let target = &["target"];
        let reg = MetricsError::Register;
        let families = Families {
            up: IntGaugeVec::new(
                Opts::new("tether_target_up", "1 while the target is up, else 0."),
                target,
            ).map_err(reg)?,
            state: IntGaugeVec::new(
                Opts::new(
                    "tether_target_state",
                    "1 for the target's current state (connecting, up, down, failed), 0 for the others.",
                ),
                &["target", "state"],
            ).map_err(reg)?,
            consecutive_failures: IntGaugeVec::new(
                Opts::new(
                    "tether_target_consecutive_failures",
                    "Connect attempts that failed in a row; 0 once a connection is held.",
                ),
                target,
            ).map_err(reg)?,
            connect_attempts: IntCounterVec::new(
                Opts::new(
                    "tether_connect_attempts_total",
                    "Connect attempts, by result (ok, failed).",
                ),
                &["target", "result"],
            ).map_err(reg)?,
            disconnects: IntCounterVec::new(
                Opts::new(
                    "tether_disconnects_total",
                    "Held connections lost (closed, reset, timed out or failing the probe), including those replaced at once by a reconnect.",
                ),
                target,
            ).map_err(reg)?,
            connect_duration: HistogramVec::new(
                HistogramOpts::new(
                    "tether_connect_duration_seconds",
                    "Time taken by connect attempts, successful or not.",
                )
                .buckets(CONNECT_BUCKETS.to_vec()),
                target,
            ).map_err(reg)?,
            state_changes: IntCounterVec::new(
                Opts::new(
                    "tether_state_changes_total",
                    "Changes of the target's state, by the state entered.",
                ),
                &["target", "to"],
            ).map_err(reg)?,
            hook_runs: IntCounterVec::new(
                Opts::new(
                    "tether_hook_runs_total",
                    "Hook actions run, by event and result (ok, failed, timeout, error).",
                ),
                &["target", "event", "result"],
            ).map_err(reg)?,
            hook_duration: HistogramVec::new(
                HistogramOpts::new(
                    "tether_hook_duration_seconds",
                    "Time taken by hook actions, including webhook retries.",
                )
                .buckets(HOOK_BUCKETS.to_vec()),
                &["target", "event"],
            ).map_err(reg)?,
            address_changes: IntCounterVec::new(
                Opts::new(
                    "tether_address_changes_total",
                    "Times the held connection moved to another address because the target's name resolved elsewhere.",
                ),
                target,
            ).map_err(reg)?,
            actor_restarts: IntCounterVec::new(
                Opts::new(
                    "tether_actor_restarts_total",
                    "Times the target's checker crashed and was restarted.",
                ),
                target,
            ).map_err(reg)?,
            hooks_coalesced: IntCounterVec::new(
                Opts::new(
                    "tether_hooks_coalesced_total",
                    "Pending hook events dropped because the target changed state faster than its hooks ran.",
                ),
                target,
            ).map_err(reg)?,
        };
        families.register_all(registry)?;
        Ok(families)
    }
}

impl Families {
    fn register_all(&self, registry: &Registry) -> Result<(), MetricsError> {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.up.clone()),
            Box::new(self.state.clone()),
            Box::new(self.consecutive_failures.clone()),
            Box::new(self.connect_attempts.clone()),
            Box::new(self.disconnects.clone()),
            Box::new(self.connect_duration.clone()),
            Box::new(self.state_changes.clone()),
            Box::new(self.hook_runs.clone()),
            Box::new(self.hook_duration.clone()),
            Box::new(self.address_changes.clone()),
            Box::new(self.actor_restarts.clone()),
            Box::new(self.hooks_coalesced.clone()),
        ];
        for c in collectors {
            registry.register(c).map_err(MetricsError::Register)?;
        }
        Ok(())
    }
}

// === impl Observer ===

impl Observer for Metrics {
    fn started(&self, target: &Target) {
        match self.series(target) {
            Some(series) => {
                // A restarted or replaced actor resumes where the last one stopped:
                // its series go on as they are.
                series.owner.store(owner_of(target), Ordering::Release);
            }
            None => {
                self.add(target, owner_of(target));
            }
        }
    }

    fn attempt(&self, target: &Target, ok: bool, elapsed: Duration) {
        let Some(s) = self.series(target) else {
            return;
        };
        s.connect_duration.observe(elapsed.as_secs_f64());
        if ok {
            s.attempts_ok.inc();
            s.consecutive_failures.set(0);
        } else {
            s.attempts_failed.inc();
            s.consecutive_failures.inc();
        }
    }

    fn lost(&self, target: &Target, _error: &str) {
        if let Some(s) = self.series(target) {
            s.disconnects.inc();
        }
    }

    fn transition(&self, target: &Target, t: &Transition) {
        let Some(s) = self.series(target) else {
            return;
        };
        s.consecutive_failures.set(i64::from(t.failures));
        // `recover` keeps the target up: an event, not a change of state.
        if t.previous != t.state {
            s.state_changes[state_index(t.state)].inc();
        }
        s.set_state(t.state);
    }

    fn address_changed(
        &self,
        target: &Target,
        _from: std::net::SocketAddr,
        _to: std::net::SocketAddr,
    ) {
        if let Some(s) = self.series(target) {
            s.address_changes.inc();
        }
    }

    fn hook_run(&self, target: &Target, event: Event, result: HookResult, elapsed: Duration) {
        // A hook finishing after its target was removed must not bring its series back.
        if self.series(target).is_none() {
            return;
        }
        let name = target.name.as_str();
        let f = &self.families;
        f.hook_runs
            .with_label_values(&[name, event.as_str(), result.as_str()])
            .inc();
        f.hook_duration
            .with_label_values(&[name, event.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    fn hooks_coalesced(&self, target: &Target, count: u64) {
        if let Some(s) = self.series(target) {
            s.hooks_coalesced.inc_by(count);
        }
    }

    fn restarted(&self, target: &Target) {
        if let Some(s) = self.series(target) {
            s.actor_restarts.inc();
        }
    }

    fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
    }

    fn stopped(&self, target: &Target) {
        let mut targets = self.write_targets();
        let Some(series) = targets.get(&target.name) else {
            return;
        };
        let owner = series.owner.load(Ordering::Acquire);
        if owner != 0 && owner != owner_of(target) {
            return;
        }
        targets.remove(&target.name);
        // Under the write lock, so a concurrent `started` of a new incarnation cannot
        // create series that this removal would then delete.
        self.remove(&target.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn config() -> Config {
        Config::parse(
            r#"
            [[targets]]
            name = "db"
            address = "127.0.0.1:5432"
            hooks.on_failure = { command = ["true"] }
            [[targets]]
            name = "cache"
            address = "127.0.0.1:6379"
            "#,
            "test.toml".as_ref(),
        )
        .unwrap()
    }

    fn text(m: &Metrics) -> String {
        String::from_utf8(m.encode().unwrap()).unwrap()
    }

    /// The value of the sample whose name and labels are exactly `series`.
    fn value(m: &Metrics, series: &str) -> Option<f64> {
        text(m).lines().find_map(|l| {
            let (name, v) = l.rsplit_once(' ')?;
            (name == series).then(|| v.parse().unwrap())
        })
    }

    fn transition(event: Event, previous: State, state: State, failures: u32) -> Transition {
        Transition {
            seq: 0,
            event,
            previous,
            state,
            failures,
            last_error: None,
            at: SystemTime::now(),
        }
    }

    #[test]
    fn every_series_of_a_configured_target_exists_before_anything_happens() {
        let m = Metrics::new(&config()).unwrap();
        for state in ["connecting", "up", "down", "failed"] {
            let expected = if state == "connecting" { 1.0 } else { 0.0 };
            let series = format!("tether_target_state{{state=\"{state}\",target=\"db\"}}");
            assert_eq!(value(&m, &series), Some(expected), "{series}");
            let series = format!("tether_state_changes_total{{target=\"db\",to=\"{state}\"}}");
            assert_eq!(value(&m, &series), Some(0.0), "{series}");
        }
        for result in ["ok", "failed"] {
            let series =
                format!("tether_connect_attempts_total{{result=\"{result}\",target=\"cache\"}}");
            assert_eq!(value(&m, &series), Some(0.0), "{series}");
        }
        assert_eq!(
            value(
                &m,
                "tether_hook_runs_total{event=\"failure\",result=\"timeout\",target=\"db\"}"
            ),
            Some(0.0)
        );
        assert!(
            !text(&m).contains(
                "tether_hook_runs_total{event=\"failure\",result=\"ok\",target=\"cache\"}"
            ),
            "cache has no hooks"
        );
        let build = format!(
            "tether_build_info{{version=\"{}\"}}",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(value(&m, &build), Some(1.0));
    }

    #[test]
    fn transitions_move_the_state_gauges_and_counters() {
        let config = config();
        let db = &config.targets[0];
        let m = Metrics::new(&config).unwrap();
        m.attempt(db, true, Duration::from_micros(300));
        m.transition(
            db,
            &transition(Event::Connect, State::Connecting, State::Up, 0),
        );
        assert_eq!(value(&m, "tether_target_up{target=\"db\"}"), Some(1.0));
        m.lost(db, "connection reset");
        m.attempt(db, false, Duration::from_millis(2));
        m.transition(
            db,
            &transition(Event::Disconnect, State::Up, State::Down, 1),
        );
        m.attempt(db, false, Duration::from_millis(2));
        assert_eq!(
            value(&m, "tether_target_consecutive_failures{target=\"db\"}"),
            Some(2.0)
        );
        assert_eq!(value(&m, "tether_target_up{target=\"db\"}"), Some(0.0));
        assert_eq!(
            value(&m, "tether_target_state{state=\"down\",target=\"db\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&m, "tether_target_state{state=\"up\",target=\"db\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&m, "tether_disconnects_total{target=\"db\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(
                &m,
                "tether_connect_attempts_total{result=\"failed\",target=\"db\"}"
            ),
            Some(2.0)
        );
        assert_eq!(
            value(&m, "tether_connect_duration_seconds_count{target=\"db\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(
                &m,
                "tether_connect_duration_seconds_bucket{target=\"db\",le=\"0.0005\"}"
            ),
            Some(1.0)
        );
        m.transition(db, &transition(Event::Connect, State::Down, State::Up, 0));
        m.transition(db, &transition(Event::Recover, State::Up, State::Up, 0));
        assert_eq!(
            value(&m, "tether_state_changes_total{target=\"db\",to=\"up\"}"),
            Some(2.0),
            "recover is not a change of state"
        );
    }

    #[test]
    fn hook_runs_and_listener_reports_are_counted() {
        let config = config();
        let db = &config.targets[0];
        let m = Metrics::new(&config).unwrap();
        m.hook_run(
            db,
            Event::Failure,
            HookResult::Failed,
            Duration::from_millis(40),
        );
        m.hooks_coalesced(db, 3);
        m.restarted(db);
        m.address_changed(
            db,
            "10.0.0.1:1".parse().unwrap(),
            "10.0.0.2:1".parse().unwrap(),
        );
        assert_eq!(
            value(
                &m,
                "tether_hook_runs_total{event=\"failure\",result=\"failed\",target=\"db\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(
                &m,
                "tether_hook_duration_seconds_bucket{event=\"failure\",target=\"db\",le=\"0.05\"}"
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&m, "tether_hooks_coalesced_total{target=\"db\"}"),
            Some(3.0)
        );
        assert_eq!(
            value(&m, "tether_actor_restarts_total{target=\"db\"}"),
            Some(1.0)
        );
        assert_eq!(
            value(&m, "tether_address_changes_total{target=\"db\"}"),
            Some(1.0)
        );
    }

    #[test]
    fn a_stopped_target_leaves_no_series_behind() {
        let config = config();
        let db = &config.targets[0];
        let m = Metrics::new(&config).unwrap();
        m.started(db);
        m.hook_run(db, Event::Connect, HookResult::Ok, Duration::from_millis(1));
        m.stopped(db);
        let text = text(&m);
        assert!(!text.contains("target=\"db\""), "{text}");
        assert!(text.contains("target=\"cache\""));
        m.hook_run(db, Event::Connect, HookResult::Ok, Duration::from_millis(1));
        assert!(
            !self::text(&m).contains("target=\"db\""),
            "a late hook run revived db"
        );
    }

    #[test]
    fn a_restart_counts_the_restart_and_keeps_the_state_the_actor_resumes_from() {
        let config = config();
        let db = &config.targets[0];
        let m = Metrics::new(&config).unwrap();
        m.started(db);
        m.transition(
            db,
            &transition(Event::Connect, State::Connecting, State::Up, 0),
        );
        m.restarted(db);
        m.started(db);
        assert_eq!(
            value(&m, "tether_target_state{state=\"up\",target=\"db\"}"),
            Some(1.0)
        );
        assert_eq!(value(&m, "tether_target_up{target=\"db\"}"), Some(1.0));
        assert_eq!(
            value(&m, "tether_actor_restarts_total{target=\"db\"}"),
            Some(1.0)
        );
    }
}
