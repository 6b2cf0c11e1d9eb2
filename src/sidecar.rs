//! The running sidecar: wires the config to the supervisor and the listeners, and
//! runs until told to stop.

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::observe::{LogObserver, Observers};
use crate::supervisor::Supervisor;
use crate::telemetry::{Telemetry, TelemetryError};

/// Runs the sidecar for `config` until `shutdown` resolves, then stops every actor.
/// Fails at start, before connecting anywhere, if the HTTP port cannot be bound or the
/// state file cannot be written.
pub async fn run(
    config: Config,
    extra: Observers,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TelemetryError> {
    raise_open_files_limit(config.targets.len());
    let telemetry = Telemetry::start(&config).await?;
    let observers = extra
        .with(Arc::new(telemetry.observers()))
        .with(Arc::new(LogObserver));
    let supervisor = Supervisor::start(&config, Arc::new(observers));
    tracing::info!(
        targets = supervisor.len(),
        version = env!("CARGO_PKG_VERSION"),
        "tether started"
    );
    shutdown.await;
    tracing::info!("shutting down");
    telemetry.stopping();
    supervisor.shutdown().await;
    telemetry.stop().await;
    tracing::info!("stopped");
    Ok(())
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
