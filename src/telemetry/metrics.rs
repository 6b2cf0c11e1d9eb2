//! The Prometheus metrics of the SPEC, fed by the checkers through the [`Observer`]
//! trait.
//!
//! Labels come only from configured targets and from closed sets (states, results,
//! events), never from errors or addresses, so the number of series is bounded by the
//! config. Each target's series exist from the start at their initial values (a
//! `rate()` or `increase()` then sees the first increment) and are removed when the
//! target stops for good. A failover group's series likewise exist from the config
//! that adds the group and go with the config that removes it.
//!
//! Per-target series are plain atomics, written out in the text format at scrape
//! time: as children of the `prometheus` crate's vectors, the twenty-odd series of a
//! target cost about 9 KiB (94 MiB measured for 10,000 targets, beyond the sidecar's
//! whole memory budget); as atomics they cost a few hundred bytes. The process-wide
//! series (`tether_build_info`, `tether_config_reloads_total`) live in the crate's
//! registry and are encoded by its `TextEncoder` after them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use once_cell::race::OnceBox;
use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::config::{Config, Group, Target};
use crate::probe::Role;
use crate::watch::groups::{GroupEvent, GroupEventKind};
use crate::watch::machine::{Event, State, Transition};
use crate::watch::observe::{ActorId, HookResult, Observer};

/// The Content-Type of the exposition; Prometheus 3 rejects a scrape without it.
pub const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

/// Connect attempts take from tens of microseconds (loopback) to `connect_timeout`.
const CONNECT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

const CONNECT_SLOTS: usize = CONNECT_BUCKETS.len() + 1;

/// Hooks take from a millisecond (a local webhook) to `hook_timeout` (30 s by default).
const HOOK_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const HOOK_SLOTS: usize = HOOK_BUCKETS.len() + 1;

/// The values of `tether_target_role{role}`: [`Role::ALL`], then unknown.
const ROLES: [&str; 3] = ["primary", "replica", "unknown"];

fn role_index(role: Option<Role>) -> usize {
    match role {
        Some(Role::Primary) => 0,
        Some(Role::Replica) => 1,
        None => 2,
    }
}

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

/// The metrics of one sidecar.
pub struct Metrics {
    /// The process-wide series.
    registry: Registry,
    /// Config reloads by outcome: `[applied, rejected]`.
    reloads: [IntCounter; 2],
    /// 1 unless the last reload was rejected: a counter alone cannot say whether the
    /// running config is the one on disk.
    last_reload_ok: IntGauge,
    /// Log lines dropped because their writer could not keep up; brought up to date
    /// from [`crate::logging::dropped_lines`] at each scrape.
    log_lines_dropped: IntCounter,
    /// The series of each live target, by name (the exposition lists them in order).
    targets: RwLock<BTreeMap<String, Arc<TargetSeries>>>,
    /// The series of each configured group, by name.
    groups: RwLock<BTreeMap<String, Arc<GroupSeries>>>,
}

/// One group's series.
struct GroupSeries {
    /// The values of `member` in `tether_group_active`: the members, then the fallback,
    /// escaped. Replaced when a reload changes them.
    names: Mutex<Vec<String>>,
    /// The escaped name of what is active; `None` before the first decision.
    active: Mutex<Option<String>>,
    changes: AtomicU64,
    conflict: AtomicU64,
    /// 1 while the group uses its fallback.
    fallback: AtomicU64,
    /// Indexed like [`GroupEventKind::ALL`], then [`HookResult::ALL`].
    hook_runs: [[AtomicU64; 4]; 3],
    /// Indexed like [`GroupEventKind::ALL`]: whether the event has hook series, set for
    /// the events the group has hooks for (at start, on a reload that adds some, or at a
    /// first run).
    hooked: [std::sync::atomic::AtomicBool; 3],
}

impl GroupSeries {
    fn new(group: &Group) -> GroupSeries {
        let series = GroupSeries {
            names: Mutex::new(Vec::new()),
            active: Mutex::new(None),
            changes: AtomicU64::new(0),
            conflict: AtomicU64::new(0),
            fallback: AtomicU64::new(0),
            hook_runs: Default::default(),
            hooked: Default::default(),
        };
        series.configure(group);
        series
    }

    /// Takes over a reloaded group's members, fallback and hooks; the counters go on.
    fn configure(&self, group: &Group) {
        let names = group
            .members
            .iter()
            .chain(std::iter::once(&group.fallback))
            .map(|n| escape(n))
            .collect();
        *lock(&self.names) = names;
        for (kind, hooked) in GroupEventKind::ALL.iter().zip(&self.hooked) {
            let actions = match kind {
                GroupEventKind::Change => &group.hooks.on_change,
                GroupEventKind::Conflict | GroupEventKind::ConflictResolved => {
                    &group.hooks.on_conflict
                }
            };
            if !actions.is_empty() {
                hooked.store(true, Ordering::Relaxed);
            }
        }
    }

    /// The hook run counters that exist, with their events.
    fn hook_runs_set(&self) -> impl Iterator<Item = (GroupEventKind, &[AtomicU64; 4])> {
        GroupEventKind::ALL
            .iter()
            .zip(&self.hook_runs)
            .zip(&self.hooked)
            .filter(|(_, hooked)| hooked.load(Ordering::Relaxed))
            .map(|((kind, runs), _)| (*kind, runs))
    }
}

fn kind_index(kind: GroupEventKind) -> usize {
    GroupEventKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("GroupEventKind::ALL lists every kind")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each value behind these locks is replaced whole.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One target's series.
struct TargetSeries {
    /// The actor incarnation that owns the series ([`ActorId`]; 0 for none yet): the late
    /// stop of an incarnation a reload replaced must not remove its successor's series.
    owner: AtomicU64,
    /// Index into [`State::ALL`] of the current state.
    state: AtomicUsize,
    /// Index into [`ROLES`] of the role last reported.
    role: AtomicUsize,
    /// The server certificate's notAfter in Unix seconds; 0 before any TLS connection.
    cert_not_after: AtomicU64,
    consecutive_failures: AtomicU64,
    /// Indexed like [`ATTEMPT_RESULTS`].
    attempts: [AtomicU64; 2],
    disconnects: AtomicU64,
    connect_duration: Histogram<Connect, CONNECT_SLOTS>,
    /// Indexed like [`State::ALL`].
    state_changes: [AtomicU64; 4],
    address_changes: AtomicU64,
    actor_restarts: AtomicU64,
    hooks_coalesced: AtomicU64,
    /// The events the running config has hooks for, a bit each, indexed like
    /// [`Event::ALL`]: their series are shown from the start, at zero.
    hooked: AtomicU8,
    /// Indexed like [`Event::ALL`]; made at the first run of the event's hooks, and
    /// shown as [`UNRUN`] until then. Made at start for every hooked event, they were
    /// 7 MB at 10,000 targets with hooks on every event, mostly for events that had
    /// never happened. A pointer each: a `OnceLock<Box<_>>` is twice that.
    hooks: [OnceBox<HookSeries>; 4],
}

/// The series of an event whose hooks have not run yet.
static UNRUN: HookSeries = HookSeries {
    runs: [const { AtomicU64::new(0) }; 4],
    duration: Histogram::new(),
};

/// The hook series of one event of one target.
struct HookSeries {
    /// Indexed like [`HookResult::ALL`].
    runs: [AtomicU64; 4],
    duration: Histogram<Hook, HOOK_SLOTS>,
}

/// The bucket bounds of a kind of histogram, known from its type rather than held by
/// each histogram: at 10,000 targets a slice reference in each was 320 KB.
trait Buckets {
    const BOUNDS: &'static [f64];
}

/// [`CONNECT_BUCKETS`].
struct Connect;

impl Buckets for Connect {
    const BOUNDS: &'static [f64] = CONNECT_BUCKETS;
}

/// [`HOOK_BUCKETS`].
struct Hook;

impl Buckets for Hook {
    const BOUNDS: &'static [f64] = HOOK_BUCKETS;
}

/// A fixed-bucket histogram of durations with `N - 1` bounds, `B`'s. Its counts are
/// held in place: every target has one, and one for each event whose hooks ran, so a
/// separate allocation each would cost a pointer and an allocator header thousands of
/// times.
struct Histogram<B, const N: usize> {
    /// Observations per bucket (not cumulative); the last one is `+Inf`.
    counts: [AtomicU64; N],
    sum_nanos: AtomicU64,
    bounds: PhantomData<B>,
}

impl<B: Buckets, const N: usize> Histogram<B, N> {
    const fn new() -> Histogram<B, N> {
        assert!(
            B::BOUNDS.len() + 1 == N,
            "a count per bound, and one for +Inf"
        );
        Histogram {
            counts: [const { AtomicU64::new(0) }; N],
            sum_nanos: AtomicU64::new(0),
            bounds: PhantomData,
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = B::BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(B::BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Writes `_bucket`, `_sum` and `_count` lines; `labels` ends without a comma.
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, count) in self.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = match B::BOUNDS.get(i) {
                Some(b) => format_float(*b),
                None => "+Inf".to_owned(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", format_float(sum));
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
    }
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        v.to_string()
    }
}

fn state_index(state: State) -> usize {
    State::ALL
        .iter()
        .position(|s| *s == state)
        .expect("State::ALL lists every state")
}

fn event_index(event: Event) -> usize {
    Event::ALL
        .iter()
        .position(|e| *e == event)
        .expect("Event::ALL lists every event")
}

fn result_index(result: HookResult) -> usize {
    HookResult::ALL
        .iter()
        .position(|r| *r == result)
        .expect("HookResult::ALL lists every result")
}

/// Registers a process-wide metric just made, and returns it for its owner to update.
fn register<M>(registry: &Registry, made: prometheus::Result<M>) -> Result<M, MetricsError>
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = made.map_err(MetricsError::Register)?;
    registry
        .register(Box::new(metric.clone()))
        .map_err(MetricsError::Register)?;
    Ok(metric)
}

/// A label value in the text format: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    /// Registers the process-wide series and creates the series of every target.
    pub fn new(config: &Config) -> Result<Metrics, MetricsError> {
        let registry = Registry::new();
        let build_info = register(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "tether_build_info",
                    "Always 1; the label carries the running version of tether.",
                ),
                &["version"],
            ),
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let reloads = register(
            &registry,
            IntCounterVec::new(
                Opts::new(
                    "tether_config_reloads_total",
                    "Config reloads (SIGHUP), by result: applied, or rejected and the running config kept.",
                ),
                &["result"],
            ),
        )?;
        let last_reload_ok = register(
            &registry,
            IntGauge::new(
                "tether_config_last_reload_successful",
                "1 if the last config reload was applied (or none was tried), 0 if it was rejected and an older config runs.",
            ),
        )?;
        last_reload_ok.set(1);
        let log_lines_dropped = register(
            &registry,
            IntCounter::new(
                "tether_log_lines_dropped_total",
                "Log lines dropped because stderr was not read fast enough; the watching never waits for the log.",
            ),
        )?;
        let metrics = Metrics {
            registry,
            reloads: [
                reloads.with_label_values(&["applied"]),
                reloads.with_label_values(&["rejected"]),
            ],
            last_reload_ok,
            log_lines_dropped,
            targets: RwLock::new(BTreeMap::new()),
            groups: RwLock::new(BTreeMap::new()),
        };
        for target in &config.targets {
            metrics.add(target, 0);
        }
        metrics.apply_groups(config);
        Ok(metrics)
    }

    /// Takes over the groups of a (reloaded) config: added groups get their series at
    /// their initial values, removed ones lose theirs, kept ones go on counting.
    pub fn apply_groups(&self, config: &Config) {
        let mut groups = self.groups.write().unwrap_or_else(|e| e.into_inner());
        let mut next = BTreeMap::new();
        for g in &config.groups {
            let series = match groups.remove(&g.name) {
                Some(kept) => {
                    kept.configure(g);
                    kept
                }
                None => Arc::new(GroupSeries::new(g)),
            };
            next.insert(g.name.clone(), series);
        }
        *groups = next;
    }

    fn group_series(&self, group: &Group) -> Option<Arc<GroupSeries>> {
        self.groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group.name)
            .cloned()
    }

    /// The text exposition of every series, whole.
    pub fn encode(&self) -> Result<Vec<u8>, MetricsError> {
        Ok(self.exposition()?.flatten().collect())
    }

    /// The text exposition of every series, written a part at a time as it is read:
    /// the page takes about 2 MB per 1,000 targets (more with hooks), which a scrape
    /// would otherwise hold whole, twice over while it grows, at the moment a mass
    /// outage already fills memory. The process-wide series are encoded first, so that
    /// an error is known before the first byte goes out.
    pub fn exposition(&self) -> Result<Exposition, MetricsError> {
        let dropped = crate::logging::dropped_lines();
        let shown = self.log_lines_dropped.get();
        if dropped > shown {
            self.log_lines_dropped.inc_by(dropped - shown);
        }
        let mut tail = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut tail)
            .map_err(MetricsError::Encode)?;
        let targets: Vec<(String, Arc<TargetSeries>)> = self
            .read_targets()
            .iter()
            .map(|(n, s)| (escape(n), s.clone()))
            .collect();
        let groups: Vec<(String, Arc<GroupSeries>)> = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(n, s)| (escape(n), s.clone()))
            .collect();
        let any_hooks = targets
            .iter()
            .any(|(_, s)| s.hook_series_set().next().is_some());
        let any_certificate = targets.iter().any(|(_, s)| load(&s.cert_not_after) != 0);
        Ok(Exposition {
            targets,
            groups,
            tail,
            any_hooks,
            any_certificate,
            at: Part::Family { index: 0, next: 0 },
        })
    }

    /// Creates the series of `target` at their initial values.
    fn add(&self, target: &Target, owner: u64) -> Arc<TargetSeries> {
        let series = Arc::new(TargetSeries {
            owner: AtomicU64::new(owner),
            state: AtomicUsize::new(state_index(State::Connecting)),
            role: AtomicUsize::new(role_index(None)),
            cert_not_after: AtomicU64::new(0),
            consecutive_failures: AtomicU64::new(0),
            attempts: Default::default(),
            disconnects: AtomicU64::new(0),
            connect_duration: Histogram::new(),
            state_changes: Default::default(),
            address_changes: AtomicU64::new(0),
            actor_restarts: AtomicU64::new(0),
            hooks_coalesced: AtomicU64::new(0),
            hooked: AtomicU8::new(hooked(target)),
            hooks: Default::default(),
        });
        self.write_targets()
            .insert(target.name.clone(), series.clone());
        series
    }

    fn series(&self, target: &Target) -> Option<Arc<TargetSeries>> {
        self.read_targets().get(&target.name).cloned()
    }

    fn read_targets(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<TargetSeries>>> {
        // Inserts and removes are single calls: a poisoned map is still consistent.
        self.targets.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_targets(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<TargetSeries>>> {
        self.targets.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl TargetSeries {
    fn hook_series(&self, event: Event) -> &HookSeries {
        self.hooks[event_index(event)].get_or_init(|| {
            Box::new(HookSeries {
                runs: Default::default(),
                duration: Histogram::new(),
            })
        })
    }

    /// The hook series to show, with their events, in the order of [`Event::ALL`]: those
    /// of the events the target has hooks for, and of any event whose hooks ran before a
    /// reload took them away (a counter does not vanish while its target lives). Hook
    /// series only for those: a target without hooks should not carry 20 series that
    /// can never move.
    fn hook_series_set(&self) -> impl Iterator<Item = (Event, &HookSeries)> {
        let hooked = self.hooked.load(Ordering::Relaxed);
        Event::ALL
            .iter()
            .zip(&self.hooks)
            .enumerate()
            .filter_map(move |(i, (e, h))| match h.get() {
                Some(h) => Some((*e, h)),
                None => (hooked & 1 << i != 0).then_some((*e, &UNRUN)),
            })
    }
}

/// One per-target family of the exposition; a new metric is a new row of [`FAMILIES`].
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Samples,
}

/// How a family reads the samples of one target.
enum Samples {
    /// One sample, labelled by the target alone.
    Value(fn(&TargetSeries) -> u64),
    /// One sample where the target has one (a certificate seen), none elsewhere.
    Some(fn(&TargetSeries) -> Option<u64>),
    /// One sample per value of a closed label set, written whole by the function
    /// (`out`, family name, escaped target, series): labels go in name order, so
    /// where `target` falls differs from family to family.
    Each(fn(&mut String, &str, &str, &TargetSeries)),
    /// One histogram, labelled by the target alone.
    Histogram(fn(&TargetSeries) -> &Histogram<Connect, CONNECT_SLOTS>),
    /// One sample per event the target has hooks for and per hook result.
    HookRuns,
    /// One histogram per event the target has hooks for.
    HookHistogram,
}

/// The per-target families, in the order of the exposition.
const FAMILIES: &[Family] = &[
    Family {
        name: "tether_target_up",
        kind: "gauge",
        help: "1 while the target is up, else 0.",
        samples: Samples::Value(|s| {
            u64::from(s.state.load(Ordering::Relaxed) == state_index(State::Up))
        }),
    },
    Family {
        name: "tether_target_state",
        kind: "gauge",
        help: "1 for the target's current state (connecting, up, down, failed), 0 for the others.",
        samples: Samples::Each(|out, name, t, s| {
            let now = s.state.load(Ordering::Relaxed);
            for (i, state) in State::ALL.iter().enumerate() {
                let v = u8::from(i == now);
                let _ = writeln!(out, "{name}{{state=\"{state}\",target=\"{t}\"}} {v}");
            }
        }),
    },
    Family {
        name: "tether_target_role",
        kind: "gauge",
        help: "1 for the replication role the target reported at its last check (primary, replica, or unknown: not reported, or no connection held), 0 for the others.",
        samples: Samples::Each(|out, name, t, s| {
            let now = s.role.load(Ordering::Relaxed);
            for (i, role) in ROLES.iter().enumerate() {
                let v = u8::from(i == now);
                let _ = writeln!(out, "{name}{{role=\"{role}\",target=\"{t}\"}} {v}");
            }
        }),
    },
    Family {
        name: "tether_tls_cert_expiry_timestamp_seconds",
        kind: "gauge",
        help: "When the certificate of the target's server expires (its notAfter), in Unix seconds, as seen at the last TLS connection; only for targets with tls.",
        samples: Samples::Some(|s| Some(load(&s.cert_not_after)).filter(|v| *v != 0)),
    },
    Family {
        name: "tether_target_consecutive_failures",
        kind: "gauge",
        help: "Connect attempts that failed in a row; 0 once a connection is held.",
        samples: Samples::Value(|s| load(&s.consecutive_failures)),
    },
    Family {
        name: "tether_connect_attempts_total",
        kind: "counter",
        help: "Connect attempts, by result (ok, failed).",
        samples: Samples::Each(|out, name, t, s| {
            for (result, v) in ATTEMPT_RESULTS.iter().zip(&s.attempts) {
                let v = load(v);
                let _ = writeln!(out, "{name}{{result=\"{result}\",target=\"{t}\"}} {v}");
            }
        }),
    },
    Family {
        name: "tether_disconnects_total",
        kind: "counter",
        help: "Held connections lost (closed, reset, timed out or failing the probe), including those replaced at once by a reconnect.",
        samples: Samples::Value(|s| load(&s.disconnects)),
    },
    Family {
        name: "tether_connect_duration_seconds",
        kind: "histogram",
        help: "Time taken by connect attempts, successful or not.",
        samples: Samples::Histogram(|s| &s.connect_duration),
    },
    Family {
        name: "tether_state_changes_total",
        kind: "counter",
        help: "Changes of the target's state, by the state entered.",
        samples: Samples::Each(|out, name, t, s| {
            for (state, v) in State::ALL.iter().zip(&s.state_changes) {
                let v = load(v);
                let _ = writeln!(out, "{name}{{target=\"{t}\",to=\"{state}\"}} {v}");
            }
        }),
    },
    Family {
        name: "tether_hook_runs_total",
        kind: "counter",
        help: "Hook actions run, by event and result (ok, failed, timeout, error).",
        samples: Samples::HookRuns,
    },
    Family {
        name: "tether_hook_duration_seconds",
        kind: "histogram",
        help: "Time taken by hook actions, including webhook retries.",
        samples: Samples::HookHistogram,
    },
    Family {
        name: "tether_address_changes_total",
        kind: "counter",
        help: "Times the held connection moved to another address because the target's name resolved elsewhere.",
        samples: Samples::Value(|s| load(&s.address_changes)),
    },
    Family {
        name: "tether_actor_restarts_total",
        kind: "counter",
        help: "Times the target's checker crashed and was restarted.",
        samples: Samples::Value(|s| load(&s.actor_restarts)),
    },
    Family {
        name: "tether_hooks_coalesced_total",
        kind: "counter",
        help: "Pending hook events dropped because the target changed state faster than its hooks ran.",
        samples: Samples::Value(|s| load(&s.hooks_coalesced)),
    },
];

fn load(v: &AtomicU64) -> u64 {
    v.load(Ordering::Relaxed)
}

impl Samples {
    /// Hook families are left out while no target has a hook series, as a
    /// family with a header and no samples would be.
    fn is_hooks(&self) -> bool {
        matches!(self, Samples::HookRuns | Samples::HookHistogram)
    }

    /// Writes the samples of one target; `t` is its escaped name.
    fn write(&self, out: &mut String, name: &str, t: &str, s: &TargetSeries) {
        match self {
            Samples::Value(read) => {
                let _ = writeln!(out, "{name}{{target=\"{t}\"}} {}", read(s));
            }
            Samples::Some(read) => {
                if let Some(v) = read(s) {
                    let _ = writeln!(out, "{name}{{target=\"{t}\"}} {v}");
                }
            }
            Samples::Each(write) => write(out, name, t, s),
            Samples::Histogram(read) => read(s).write(out, name, &format!("target=\"{t}\"")),
            Samples::HookRuns => {
                for (event, h) in s.hook_series_set() {
                    for (result, v) in HookResult::ALL.iter().zip(&h.runs) {
                        let _ = writeln!(
                            out,
                            "{name}{{event=\"{event}\",result=\"{}\",target=\"{t}\"}} {}",
                            result.as_str(),
                            load(v)
                        );
                    }
                }
            }
            Samples::HookHistogram => {
                for (event, h) in s.hook_series_set() {
                    let labels = format!("event=\"{event}\",target=\"{t}\"");
                    h.duration.write(out, name, &labels);
                }
            }
        }
    }
}

/// How much of the exposition is written at a time: enough for a socket write to be
/// worth it, little enough to cost nothing to hold.
const CHUNK: usize = 32 * 1024;

/// The exposition being written (see [`Metrics::exposition`]): each item is the next
/// part of the page, about [`CHUNK`] bytes, with the values as they are when it is
/// written. Every family stays one block, as the text format requires.
pub struct Exposition {
    targets: Vec<(String, Arc<TargetSeries>)>,
    groups: Vec<(String, Arc<GroupSeries>)>,
    /// The process-wide series, already encoded.
    tail: Vec<u8>,
    any_hooks: bool,
    any_certificate: bool,
    at: Part,
}

/// Where the writing of an [`Exposition`] stands.
enum Part {
    /// Within the per-target family `index` of [`FAMILIES`], at target `next`.
    Family {
        index: usize,
        next: usize,
    },
    /// The groups' families and the process-wide series are left.
    Rest,
    Done,
}

impl Exposition {
    /// Whether a family has no sample to show, so is left out whole (a family with a
    /// header and no samples would be).
    fn skips(&self, family: &Family) -> bool {
        (family.samples.is_hooks() && !self.any_hooks)
            || (matches!(family.samples, Samples::Some(_)) && !self.any_certificate)
    }
}

impl Iterator for Exposition {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        let mut out = String::with_capacity(CHUNK + CHUNK / 4);
        while out.len() < CHUNK {
            match self.at {
                Part::Family { index, next } => {
                    let Some(family) = FAMILIES.get(index) else {
                        self.at = Part::Rest;
                        continue;
                    };
                    if self.skips(family) {
                        self.at = Part::Family {
                            index: index + 1,
                            next: 0,
                        };
                        continue;
                    }
                    let Family {
                        name,
                        kind,
                        help,
                        samples,
                    } = family;
                    if next == 0 {
                        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                    }
                    // At least one target after the header, so that a part ending
                    // right after it does not have the next part write it again.
                    let mut next = next;
                    while let Some((t, s)) = self.targets.get(next) {
                        samples.write(&mut out, name, t, s);
                        next += 1;
                        if out.len() >= CHUNK {
                            break;
                        }
                    }
                    self.at = if next == self.targets.len() {
                        Part::Family {
                            index: index + 1,
                            next: 0,
                        }
                    } else {
                        Part::Family { index, next }
                    };
                }
                Part::Rest => {
                    write_group_families(&mut out, &self.groups);
                    self.at = Part::Done;
                    let mut bytes = out.into_bytes();
                    bytes.append(&mut self.tail);
                    return Some(bytes);
                }
                Part::Done => break,
            }
        }
        (!out.is_empty()).then(|| out.into_bytes())
    }
}

/// Writes the group families; none while no group is configured.
fn write_group_families(out: &mut String, groups: &[(String, Arc<GroupSeries>)]) {
    if groups.is_empty() {
        return;
    }
    let header = |out: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let name = "tether_group_active";
    header(
        out,
        name,
        "gauge",
        "1 for the member the group uses (or its fallback), 0 for the others; all 0 before the group's first decision.",
    );
    for (g, s) in groups {
        let active = lock(&s.active).clone();
        for member in lock(&s.names).iter() {
            let v = u8::from(active.as_ref() == Some(member));
            let _ = writeln!(out, "{name}{{group=\"{g}\",member=\"{member}\"}} {v}");
        }
    }
    let name = "tether_group_changes_total";
    header(
        out,
        name,
        "counter",
        "Changes of the group's active member, the first decision included.",
    );
    for (g, s) in groups {
        let _ = writeln!(out, "{name}{{group=\"{g}\"}} {}", load(&s.changes));
    }
    let name = "tether_group_conflict";
    header(
        out,
        name,
        "gauge",
        "1 while two or more members of the group claim to be primary, else 0.",
    );
    for (g, s) in groups {
        let _ = writeln!(out, "{name}{{group=\"{g}\"}} {}", load(&s.conflict));
    }
    let name = "tether_group_fallback";
    header(
        out,
        name,
        "gauge",
        "1 while no member of the group is eligible and it uses its fallback, else 0 (0 before its first decision).",
    );
    for (g, s) in groups {
        let _ = writeln!(out, "{name}{{group=\"{g}\"}} {}", load(&s.fallback));
    }
    if groups
        .iter()
        .all(|(_, s)| s.hook_runs_set().next().is_none())
    {
        return;
    }
    let name = "tether_group_hook_runs_total";
    header(
        out,
        name,
        "counter",
        "Group hook actions run, by event (change, conflict, conflict_resolved) and result (ok, failed, timeout, error).",
    );
    for (g, s) in groups {
        for (kind, runs) in s.hook_runs_set() {
            for (result, v) in HookResult::ALL.iter().zip(runs) {
                let _ = writeln!(
                    out,
                    "{name}{{event=\"{}\",group=\"{g}\",result=\"{}\"}} {}",
                    kind.as_str(),
                    result.as_str(),
                    load(v)
                );
            }
        }
    }
}

/// The events `target` has hooks for, a bit each, indexed like [`Event::ALL`].
fn hooked(target: &Target) -> u8 {
    Event::ALL
        .iter()
        .enumerate()
        .filter(|(_, e)| !target.hooks.for_event(**e).is_empty())
        .fold(0, |bits, (i, _)| bits | 1 << i)
}

// === impl Observer ===

impl Observer for Metrics {
    fn started(&self, target: &Target, actor: ActorId) {
        match self.series(target) {
            Some(series) => {
                // A restarted or replaced actor resumes where the last one stopped:
                // its series go on as they are, but for the role of a connection it
                // does not hold yet.
                series.owner.store(actor.0, Ordering::Release);
                series.role.store(role_index(None), Ordering::Relaxed);
                // A reload may have added hooks or taken some away.
                series.hooked.store(hooked(target), Ordering::Relaxed);
                if target.tls.is_none() {
                    // A reload took TLS away: there is no certificate to tell of.
                    series.cert_not_after.store(0, Ordering::Relaxed);
                }
            }
            None => {
                self.add(target, actor.0);
            }
        }
    }

    fn attempt(&self, target: &Target, ok: bool, elapsed: Duration) {
        let Some(s) = self.series(target) else {
            return;
        };
        s.connect_duration.observe(elapsed);
        s.attempts[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
        if ok {
            s.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            s.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn lost(&self, target: &Target, _error: &str) {
        if let Some(s) = self.series(target) {
            s.disconnects.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        let Some(s) = self.series(target) else {
            return;
        };
        s.consecutive_failures
            .store(u64::from(t.failures), Ordering::Relaxed);
        // `recover` keeps the target up: an event, not a change of state.
        if t.previous != t.state {
            s.state_changes[state_index(t.state)].fetch_add(1, Ordering::Relaxed);
        }
        s.state.store(state_index(t.state), Ordering::Relaxed);
    }

    fn role(&self, target: &Arc<Target>, role: Option<Role>) {
        if let Some(s) = self.series(target) {
            s.role.store(role_index(role), Ordering::Relaxed);
        }
    }

    fn certificate(&self, target: &Target, not_after: SystemTime) {
        if let Some(s) = self.series(target) {
            let secs = not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            s.cert_not_after.store(secs, Ordering::Relaxed);
        }
    }

    fn address_changed(
        &self,
        target: &Target,
        _from: std::net::SocketAddr,
        _to: std::net::SocketAddr,
    ) {
        if let Some(s) = self.series(target) {
            s.address_changes.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn hook_run(&self, target: &Target, event: Event, result: HookResult, elapsed: Duration) {
        // A hook finishing after its target was removed must not bring its series back.
        let Some(s) = self.series(target) else {
            return;
        };
        let h = s.hook_series(event);
        h.runs[result_index(result)].fetch_add(1, Ordering::Relaxed);
        h.duration.observe(elapsed);
    }

    fn hooks_coalesced(&self, target: &Target, count: u64) {
        if let Some(s) = self.series(target) {
            s.hooks_coalesced.fetch_add(count, Ordering::Relaxed);
        }
    }

    fn restarted(&self, target: &Target) {
        if let Some(s) = self.series(target) {
            s.actor_restarts.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].inc();
        self.last_reload_ok.set(i64::from(ok));
    }

    fn group_event(&self, group: &Arc<Group>, e: &GroupEvent) {
        // A group a reload removed, deciding late, gets no series back.
        let Some(s) = self.group_series(group) else {
            return;
        };
        if e.kind == GroupEventKind::Change {
            s.changes.fetch_add(1, Ordering::Relaxed);
        }
        *lock(&s.active) = Some(escape(&e.active));
        s.conflict.store(u64::from(e.conflict), Ordering::Relaxed);
        s.fallback.store(u64::from(e.fallback), Ordering::Relaxed);
    }

    fn group_hook_run(
        &self,
        group: &Group,
        event: GroupEventKind,
        result: HookResult,
        _elapsed: Duration,
    ) {
        let Some(s) = self.group_series(group) else {
            return;
        };
        let i = kind_index(event);
        s.hooked[i].store(true, Ordering::Relaxed);
        s.hook_runs[i][result_index(result)].fetch_add(1, Ordering::Relaxed);
    }

    fn stopped(&self, target: &Target, actor: ActorId) {
        let mut targets = self.write_targets();
        let Some(series) = targets.get(&target.name) else {
            return;
        };
        let owner = series.owner.load(Ordering::Acquire);
        if owner != 0 && owner != actor.0 {
            return;
        }
        targets.remove(&target.name);
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

    /// The metrics of [`config`], and its target `db` (which has an `on_failure` hook).
    fn db_metrics() -> (Metrics, Arc<Target>) {
        let config = config();
        let db = Arc::new(config.targets[0].clone());
        (Metrics::new(&config).unwrap(), db)
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

    /// A scrape at 1,000 targets is written in parts of bounded size, and the parts
    /// make one valid page: each family once, as one block, every target in each.
    #[test]
    fn a_large_exposition_is_written_in_bounded_parts_that_keep_each_family_whole() {
        let mut text = String::new();
        for i in 0..1_000 {
            let hooks = if i % 2 == 0 {
                "hooks.on_disconnect = { command = [\"true\"] }"
            } else {
                ""
            };
            let _ = writeln!(
                text,
                "[[targets]]\nname = \"t{i}\"\naddress = \"127.0.0.1:{}\"\n{hooks}",
                1_000 + i
            );
        }
        let m = Metrics::new(&Config::parse(&text, "test.toml".as_ref()).unwrap()).unwrap();
        let parts: Vec<Vec<u8>> = m.exposition().unwrap().collect();
        assert!(parts.len() > 10, "{} parts", parts.len());
        let largest = parts.iter().map(Vec::len).max().unwrap();
        assert!(largest < CHUNK + 4 * 1024, "a part of {largest} bytes");

        let page = String::from_utf8(parts.concat()).unwrap();
        let mut seen = Vec::new();
        let mut current = String::new();
        for line in page.lines() {
            if let Some(family) = line.strip_prefix("# TYPE ") {
                let family = family.split(' ').next().unwrap().to_owned();
                assert!(!seen.contains(&family), "{family} written twice");
                seen.push(family.clone());
                current = family;
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s).filter(|f| *f == current))
                    .unwrap_or(name);
                assert_eq!(family, current, "{line:?} outside its family's block");
            }
        }
        let samples = |prefix: &str| page.lines().filter(|l| l.starts_with(prefix)).count();
        assert_eq!(samples("tether_target_up{"), 1_000);
        assert_eq!(samples("tether_actor_restarts_total{"), 1_000);
        assert_eq!(
            samples("tether_hook_runs_total{event=\"disconnect\""),
            500 * HookResult::ALL.len()
        );
        assert!(
            page.contains("tether_build_info{"),
            "the process-wide series come last"
        );
        assert_eq!(page.as_bytes(), m.encode().unwrap());
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
    fn the_role_gauge_is_one_hot_and_starts_unknown() {
        let (m, ref db) = db_metrics();
        let role = |r: &str| {
            value(
                &m,
                &format!("tether_target_role{{role=\"{r}\",target=\"db\"}}"),
            )
        };
        assert_eq!(
            [role("primary"), role("replica"), role("unknown")],
            [Some(0.0), Some(0.0), Some(1.0)]
        );
        m.role(db, Some(Role::Replica));
        assert_eq!(
            [role("primary"), role("replica"), role("unknown")],
            [Some(0.0), Some(1.0), Some(0.0)]
        );
        m.role(db, Some(Role::Primary));
        assert_eq!(role("primary"), Some(1.0));
        // A restarted actor holds no connection yet.
        m.started(db, ActorId::next());
        assert_eq!(role("unknown"), Some(1.0));
        assert_eq!(role("primary"), Some(0.0));
    }

    #[test]
    fn transitions_move_the_state_gauges_and_counters() {
        let (m, ref db) = db_metrics();
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
    fn a_hook_series_takes_memory_only_once_its_hooks_have_run() {
        let (m, ref db) = db_metrics();
        let made = |m: &Metrics| {
            let s = m.series(db).unwrap();
            s.hooks.iter().filter(|h| h.get().is_some()).count()
        };
        assert_eq!(made(&m), 0, "shown at zero, held by no target");
        let failed = "tether_hook_runs_total{event=\"failure\",result=\"failed\",target=\"db\"}";
        assert_eq!(value(&m, failed), Some(0.0));
        m.hook_run(
            db,
            Event::Failure,
            HookResult::Failed,
            Duration::from_millis(1),
        );
        assert_eq!(made(&m), 1);
        assert_eq!(value(&m, failed), Some(1.0));
    }

    #[test]
    fn hook_series_follow_a_reload_that_adds_hooks_and_keep_their_counts_when_hooks_go() {
        let (m, ref db) = db_metrics();
        m.started(db, ActorId(1));
        m.hook_run(db, Event::Failure, HookResult::Ok, Duration::from_millis(1));
        let reloaded = Config::parse(
            r#"
            [[targets]]
            name = "db"
            address = "127.0.0.1:5432"
            hooks.on_connect = { command = ["true"] }
            "#,
            "test.toml".as_ref(),
        )
        .unwrap();
        let db = &Arc::new(reloaded.targets[0].clone());
        m.started(db, ActorId(2));
        assert_eq!(
            value(
                &m,
                "tether_hook_runs_total{event=\"connect\",result=\"ok\",target=\"db\"}"
            ),
            Some(0.0),
            "an added hook is shown before it runs"
        );
        assert_eq!(
            value(
                &m,
                "tether_hook_runs_total{event=\"failure\",result=\"ok\",target=\"db\"}"
            ),
            Some(1.0),
            "a counter does not vanish with its hook"
        );
    }

    #[test]
    fn hook_runs_and_listener_reports_are_counted() {
        let (m, ref db) = db_metrics();
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
    fn the_late_stop_of_a_replaced_actor_leaves_its_successors_series() {
        let (m, ref db) = db_metrics();
        m.started(db, ActorId(1));
        // A reload replaces the actor; the old one's stop arrives after the new start.
        m.started(db, ActorId(2));
        m.stopped(db, ActorId(1));
        assert!(
            text(&m).contains("target=\"db\""),
            "the successor's series went"
        );
        m.stopped(db, ActorId(2));
        assert!(!text(&m).contains("target=\"db\""));
    }

    #[test]
    fn a_stopped_target_leaves_no_series_behind() {
        let (m, ref db) = db_metrics();
        m.started(db, ActorId(1));
        m.hook_run(db, Event::Connect, HookResult::Ok, Duration::from_millis(1));
        m.stopped(db, ActorId(1));
        let text = text(&m);
        assert!(!text.contains("target=\"db\""), "{text}");
        assert!(text.contains("target=\"cache\""));
        m.hook_run(db, Event::Connect, HookResult::Ok, Duration::from_millis(1));
        assert!(
            !self::text(&m).contains("target=\"db\""),
            "a late hook run revived db"
        );
    }

    fn grouped(extra: &str) -> Config {
        Config::parse(
            &format!(
                r#"
                [[targets]]
                name = "a"
                address = "127.0.0.1:6379"
                [[targets]]
                name = "b"
                address = "127.0.0.1:6380"
                [[groups]]
                name = "store"
                members = ["a", "b"]
                fallback = "memory"
                {extra}
                "#
            ),
            "test.toml".as_ref(),
        )
        .unwrap()
    }

    fn change(seq: u64, active: &str, conflict: bool) -> GroupEvent {
        GroupEvent {
            seq,
            kind: GroupEventKind::Change,
            active: active.to_owned(),
            fallback: active == "memory",
            previous_active: None,
            reason: crate::watch::group::Reason::ActiveLost,
            claimants: Vec::new(),
            conflict,
            at: SystemTime::now(),
        }
    }

    fn active(m: &Metrics, member: &str) -> Option<f64> {
        value(
            m,
            &format!("tether_group_active{{group=\"store\",member=\"{member}\"}}"),
        )
    }

    #[test]
    fn a_groups_series_exist_from_the_start_and_follow_its_decisions() {
        let config = grouped("");
        let store = &Arc::new(config.groups[0].clone());
        let m = Metrics::new(&config).unwrap();
        for member in ["a", "b", "memory"] {
            assert_eq!(active(&m, member), Some(0.0), "undecided: all 0");
        }
        assert_eq!(
            value(&m, "tether_group_changes_total{group=\"store\"}"),
            Some(0.0)
        );
        assert_eq!(
            value(&m, "tether_group_conflict{group=\"store\"}"),
            Some(0.0)
        );
        assert!(
            !text(&m).contains("tether_group_hook_runs_total"),
            "no hooks"
        );

        let fallback = |m: &Metrics| value(m, "tether_group_fallback{group=\"store\"}");
        assert_eq!(fallback(&m), Some(0.0), "undecided is not the fallback");
        m.group_event(store, &change(0, "a", false));
        assert_eq!(
            [active(&m, "a"), active(&m, "b"), active(&m, "memory")],
            [Some(1.0), Some(0.0), Some(0.0)]
        );
        assert_eq!(fallback(&m), Some(0.0));
        m.group_event(store, &change(1, "memory", true));
        assert_eq!(
            [active(&m, "a"), active(&m, "b"), active(&m, "memory")],
            [Some(0.0), Some(0.0), Some(1.0)]
        );
        assert_eq!(fallback(&m), Some(1.0), "on its fallback");
        assert_eq!(
            value(&m, "tether_group_changes_total{group=\"store\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&m, "tether_group_conflict{group=\"store\"}"),
            Some(1.0)
        );
        // A conflict ending is no change of member.
        let mut resolved = change(2, "memory", false);
        resolved.kind = GroupEventKind::ConflictResolved;
        m.group_event(store, &resolved);
        assert_eq!(
            value(&m, "tether_group_changes_total{group=\"store\"}"),
            Some(2.0)
        );
        assert_eq!(
            value(&m, "tether_group_conflict{group=\"store\"}"),
            Some(0.0)
        );
    }

    #[test]
    fn group_hook_runs_are_counted_by_event_and_result() {
        let config = grouped("hooks.on_change = { command = [\"true\"] }");
        let store = &Arc::new(config.groups[0].clone());
        let m = Metrics::new(&config).unwrap();
        let series = |event: &str, result: &str| {
            format!(
                "tether_group_hook_runs_total{{event=\"{event}\",group=\"store\",result=\"{result}\"}}"
            )
        };
        assert_eq!(value(&m, &series("change", "ok")), Some(0.0));
        assert_eq!(value(&m, &series("conflict", "ok")), None, "no on_conflict");
        m.group_hook_run(
            store,
            GroupEventKind::Change,
            HookResult::Timeout,
            Duration::from_secs(1),
        );
        assert_eq!(value(&m, &series("change", "timeout")), Some(1.0));
    }

    #[test]
    fn a_reload_adds_and_removes_group_series_and_keeps_the_counts_of_kept_groups() {
        let config = grouped("");
        let store = &Arc::new(config.groups[0].clone());
        let m = Metrics::new(&config).unwrap();
        m.group_event(store, &change(0, "b", false));
        let reloaded =
            grouped("[[groups]]\nname = \"jobs\"\nmembers = [\"a\"]\nfallback = \"inline\"");
        m.apply_groups(&reloaded);
        assert_eq!(
            value(&m, "tether_group_changes_total{group=\"store\"}"),
            Some(1.0)
        );
        assert_eq!(active(&m, "b"), Some(1.0));
        assert_eq!(
            value(&m, "tether_group_active{group=\"jobs\",member=\"inline\"}"),
            Some(0.0)
        );
        m.apply_groups(&self::config());
        assert!(!text(&m).contains("tether_group_"), "{}", text(&m));
        m.group_event(store, &change(1, "a", false));
        assert!(
            !text(&m).contains("group=\"store\""),
            "a late decision revived store"
        );
    }

    #[test]
    fn a_restart_counts_the_restart_and_keeps_the_state_the_actor_resumes_from() {
        let (m, ref db) = db_metrics();
        m.started(db, ActorId(1));
        m.transition(
            db,
            &transition(Event::Connect, State::Connecting, State::Up, 0),
        );
        m.restarted(db);
        m.started(db, ActorId(1));
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
