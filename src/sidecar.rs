//! The running sidecar: wires the config to the supervisor, the hook runner and the
//! listeners, and runs until told to stop.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::{Config, ConfigError};
use crate::hooks::{self, HookRunner, HooksError, reaper};
use crate::notify::Notifier;
use crate::resident;
use crate::telemetry::status::Status;
use crate::telemetry::{Telemetry, TelemetryError};
use crate::watch::groups::{Groups, MemberNow};
use crate::watch::observe::{LogObserver, Observer, Observers};
use crate::watch::supervisor::Supervisor;

/// Why the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// The config is valid but cannot be used in this environment (exit 2, like a bad
    /// config).
    #[error(transparent)]
    Hooks(#[from] HooksError),
    /// The HTTP port cannot be bound or the state file cannot be written (exit 1).
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

impl SidecarError {
    /// Whether the error lies in the config (exit 2) rather than the environment (1).
    pub fn is_config(&self) -> bool {
        matches!(self, SidecarError::Hooks(_))
    }
}

/// What the process asks of a running sidecar.
#[derive(Debug)]
pub enum Control {
    /// Apply a new config (SIGHUP); a config that failed to load is logged and counted,
    /// and the running one kept.
    Reload(Box<Result<Config, ConfigError>>),
    /// Stop (SIGTERM, SIGINT): close connections and let hooks in flight finish.
    Shutdown,
}

/// Runs the sidecar for `config` until told to stop (or until `control` closes),
/// then stops every actor and lets hooks in flight finish within the shutdown grace.
/// Fails at start, before connecting anywhere, if a webhook secret is missing, the
/// HTTP port cannot be bound or the state file cannot be written.
pub async fn run(
    mut config: Config,
    extra: Observers,
    mut control: mpsc::Receiver<Control>,
) -> Result<(), SidecarError> {
    raise_open_files_limit(config.targets.len());
    warn_if_probes_may_overflow_the_input_backlog(&config);
    let loaded = withhold_secrets(&config);
    hooks::check_environment(&config, &loaded)?;
    let telemetry = Telemetry::start(&config).await?;
    let notifier = Notifier::start(telemetry.status().clone());
    // The caller's listeners (the demo, tests) come last: when they hear of a change,
    // the registry and the metrics have recorded it, so what they read back shows it.
    // So does the service manager's status line, read from the registry.
    let listeners = Observers::new()
        .with(Arc::new(telemetry.observers()))
        .with(Arc::new(notifier.clone()))
        .with(Arc::new(LogObserver))
        .with(Arc::new(extra));
    // Hook results go to the listeners (metrics, logs), never back into the runner.
    let report: Arc<dyn Observer> = Arc::new(listeners.clone());
    let hooks = HookRunner::new(&config, &loaded, report.clone())?;
    drop(loaded);
    let decisions = listeners.with(Arc::new(hooks.clone()));
    // Groups decide on what the members' checkers report, after the registry and the
    // members' own hooks have heard it, and announce to the same listeners.
    let status = telemetry.status().clone();
    let groups = Groups::start(&config, Arc::new(decisions.clone()), |name| {
        member_now(&status, name)
    });
    telemetry.serve_groups(groups.clone());
    let observers = decisions.with(Arc::new(groups.clone()));
    // The targets move into the actors that watch them rather than staying here as
    // well: the sidecar keeps nothing per target beyond what its actor needs.
    let targets = std::mem::take(&mut config.targets);
    let supervisor = Supervisor::start_targets(
        targets.into_iter().map(Arc::new),
        config.supervisor.clone(),
        Arc::new(observers),
    );
    tracing::info!(
        targets = supervisor.len(),
        version = env!("CARGO_PKG_VERSION"),
        "tether started"
    );
    release_startup_pages_once_started(telemetry.status().clone());
    let mut running = Running {
        current: config,
        telemetry,
        hooks,
        groups,
        supervisor,
        report,
        notifier,
    };
    while let Some(Control::Reload(loaded)) = control.recv().await {
        running.reload(*loaded);
    }
    running.stop().await;
    Ok(())
}

/// How often startup is checked for its end, and how long it may take before the pages
/// it used are released anyway (a target whose first attempt is still unanswered then
/// runs the same code as the others).
const STARTUP_POLL: Duration = Duration::from_millis(250);
const STARTUP_PAGES_KEPT_AT_MOST: Duration = Duration::from_secs(30);

/// Once every target has had its first answer (and the keepalives of the connections
/// made together have been moved apart), the code only startup ran is given back (see
/// [`resident`]): at a few targets it is most of tether's resident set.
fn release_startup_pages_once_started(status: Arc<Status>) {
    tokio::spawn(async move {
        let deadline = Instant::now() + STARTUP_PAGES_KEPT_AT_MOST;
        while !status.startup_complete() && Instant::now() < deadline {
            tokio::time::sleep(STARTUP_POLL).await;
        }
        // Connections made together restart their keepalive within `idle` of the
        // connect (see `net::phase`); that code is start-up's too.
        if let Some(due) = crate::net::phase::restarts_due_by() {
            tokio::time::sleep_until(due.min(deadline) + STARTUP_POLL).await;
        }
        resident::release_in_background("startup");
    });
}

/// What a group member's checker last reported, read back from the registry.
fn member_now(status: &Status, name: &str) -> Option<MemberNow> {
    status.target(name).map(|t| MemberNow {
        state: t.state,
        role: t.role,
    })
}

/// A started sidecar: what a reload changes and what stopping has to wind down.
struct Running {
    /// The process-wide settings in force; the actors hold the targets.
    current: Config,
    telemetry: Telemetry,
    hooks: HookRunner,
    groups: Groups,
    supervisor: Supervisor,
    /// Where reload outcomes are counted (the listeners, not the hook runner).
    report: Arc<dyn Observer>,
    /// Tells systemd of reloads and shutdown.
    notifier: Notifier,
}

impl Running {
    /// A config that failed to load or that the hook runner refuses leaves the running
    /// one in force; either way systemd hears that the reload is over.
    fn reload(&mut self, loaded: Result<Config, ConfigError>) {
        self.notifier.reloading();
        self.reload_config(loaded);
        self.notifier.reloaded();
    }

    fn reload_config(&mut self, loaded: Result<Config, ConfigError>) {
        match loaded {
            Ok(new) => {
                let loaded = withhold_secrets(&new);
                match self.hooks.reload(&new, &loaded) {
                    Ok(()) => self.apply(new),
                    Err(e) => {
                        tracing::error!(error = %e, "config reload refused; keeping the running config");
                        self.report.reloaded(false);
                    }
                }
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!("config reload failed: {line}");
                }
                tracing::error!("keeping the running config");
                self.report.reloaded(false);
            }
        }
    }

    /// Applies a config the hook runner has already taken.
    fn apply(&mut self, new: Config) {
        self.telemetry.apply(&new);
        let summary = self.supervisor.reload(&new);
        let status = self.telemetry.status().clone();
        self.groups.apply(&new, |name| member_now(&status, name));
        self.telemetry
            .targets_changed(&summary.added, &summary.removed);
        tracing::info!(
            added = ?summary.added,
            removed = ?summary.removed,
            changed = ?summary.changed,
            unchanged = summary.unchanged,
            "config reloaded"
        );
        warn_restart_only(&self.current, &new);
        self.report.reloaded(true);
        // Reading and comparing the config ran code the running sidecar does not need.
        resident::release_in_background("reload");
        // The actors hold the targets; keep only the process-wide settings.
        self.current = Config {
            targets: Vec::new(),
            ..new
        };
    }

    /// Stops every actor, then lets hooks in flight finish within the shutdown grace.
    async fn stop(self) {
        tracing::info!("shutting down");
        self.notifier.stopping();
        self.telemetry.stopping();
        self.supervisor.shutdown().await;
        self.groups.stop();
        let grace = self.current.supervisor.shutdown_grace.get();
        if !self.hooks.drain(grace).await {
            let killed = hooks::kill_everything();
            tracing::warn!(
                ?grace,
                killed,
                "hooks still running after the shutdown grace were killed"
            );
        }
        self.telemetry.stop().await;
        self.notifier.stopped();
        tracing::info!("stopped");
    }
}

/// Hooks never inherit the variables a config reads secrets from; done before the
/// config is used, so no hook of it ever sees one. Then every secret the config names
/// is read, once for this start or reload: the probes' next connections use these
/// values, and the hook runner takes its webhook keys from the result.
fn withhold_secrets(config: &Config) -> crate::secrets::Loaded {
    for var in config.secret_variables() {
        crate::secrets::withhold(&var);
    }
    let sources: Vec<_> = config.secret_sources().collect();
    let loaded = crate::secrets::load(&sources);
    // A probe whose password cannot be read fails its checks saying so; a webhook key
    // that cannot be read stops the start or refuses the reload (the hook runner).
    for error in loaded.errors() {
        tracing::warn!(%error, "a secret cannot be read");
    }
    loaded
}

/// Settings that a running sidecar cannot change in place.
fn warn_restart_only(old: &Config, new: &Config) {
    let listeners =
        |s: &crate::config::Server| (s.listen, s.unix_socket.clone(), s.unix_socket_group.clone());
    if listeners(&old.server) != listeners(&new.server) {
        // Closing a listener on a reload would cut the clients (and the admin socket)
        // the reload was maybe meant for; the listeners keep serving as they are.
        tracing::warn!(
            "server.listen, unix_socket or unix_socket_group changed: the listeners stay as they are until the next start"
        );
    }
    if old.server != new.server {
        tracing::warn!("[server] changed: takes effect at the next start");
    }
    if old.defaults != new.defaults {
        tracing::warn!("max_concurrent_hooks changed: takes effect at the next start");
    }
}

/// Hook commands may leave orphans behind; tether adopts and reaps them, so it is safe
/// as PID 1 of a container and leaves no zombies under a service manager.
///
/// Process-wide: only the `tether` binary calls this. A program embedding the library
/// reaps its own children.
pub fn adopt_orphans() {
    if let Err(e) = reaper::become_subreaper() {
        tracing::warn!(error = %e, "cannot become a child subreaper; orphans of hooks go to init");
    }
    if let Err(e) = reaper::spawn_orphan_reaper() {
        tracing::warn!(error = %e, "cannot watch SIGCHLD; orphans of hooks may linger as zombies");
    }
}

/// Over loopback and veth every packet passes a per-CPU input queue of
/// `net.core.netdev_max_backlog` packets (1,000 by default); probes beyond it are
/// dropped, and a connection whose probes are all dropped is declared dead: its target
/// goes `down` though its server is fine. Connections made together have their probes
/// spread over `keepalive.idle` (see [`crate::net::phase`]), but only over the slots of
/// the kernel's timer wheel, 256 ms apart for timers seconds away (at HZ 250): a slot
/// may still hold more probes than the queue takes.
fn warn_if_probes_may_overflow_the_input_backlog(config: &Config) {
    let Some(idle) = config.targets.iter().map(|t| t.keepalive.idle.get()).min() else {
        return;
    };
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/core/netdev_max_backlog") else {
        return;
    };
    let targets = config.targets.len();
    if let Some((backlog, at_once)) = backlog_too_small(targets, idle, &text) {
        tracing::warn!(
            targets,
            netdev_max_backlog = backlog,
            probes_at_once = at_once,
            "keepalive probes of this many targets may overflow the kernel's input queue on \
             loopback or veth and raise false outages; raise net.core.netdev_max_backlog to at \
             least {at_once}"
        );
    }
}

/// How far apart the kernel's timer wheel fires timers seconds away, at HZ 250 (the
/// coarsest of the usual configurations for timers of a few seconds).
const TIMER_SLOT: Duration = Duration::from_millis(256);

/// The backlog `text` (the sysctl's file) holds and how many probes may go out at
/// once, if the backlog is below that: `targets` spread over the timer slots within
/// the shortest `idle`.
fn backlog_too_small(targets: usize, idle: Duration, text: &str) -> Option<(u64, u64)> {
    let backlog: u64 = text.trim().parse().ok()?;
    let slots = (idle.as_millis() / TIMER_SLOT.as_millis()).max(1) as u64;
    let at_once = (targets as u64).div_ceil(slots);
    (backlog < at_once).then_some((backlog, at_once))
}

/// Each target holds a socket and a few more may be open while reconnecting; the
/// default soft limit (often 1024) is too small for large fleets, the hard limit
/// rarely is.
fn raise_open_files_limit(targets: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let mut limit = soft;
    if soft < hard {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => limit = hard,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
    // Room for the HTTP server, hooks and reconnects in flight.
    let needed = (targets as u64).saturating_mul(2).saturating_add(64);
    if limit < needed {
        tracing::warn!(
            limit,
            needed,
            targets,
            "the open-files limit may be too small for this many targets; raise `ulimit -n`"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_input_backlog_warning_fires_when_a_timer_slot_may_hold_more_probes_than_it_takes() {
        let idle = |s| Duration::from_secs(s);
        // The default idle of 3 s spreads probes over 11 slots.
        assert_eq!(backlog_too_small(10_000, idle(3), "1000\n"), None);
        assert_eq!(
            backlog_too_small(20_000, idle(3), "1000\n"),
            Some((1000, 1819))
        );
        assert_eq!(backlog_too_small(20_000, idle(3), "4096\n"), None);
        // Within 1 s there are only 3.
        assert_eq!(
            backlog_too_small(10_000, idle(1), "1000\n"),
            Some((1000, 3334))
        );
        assert_eq!(backlog_too_small(1_000, idle(1), "1000\n"), None);
        assert_eq!(backlog_too_small(10_000, idle(1), "garbage"), None);
    }
}
