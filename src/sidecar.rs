//! The running sidecar: wires the config to the supervisor and the listeners, and
//! runs until told to stop.

use std::future::Future;
use std::sync::Arc;

use crate::config::Config;
use crate::observe::{LogObserver, Observers};
use crate::supervisor::Supervisor;

/// Runs the sidecar for `config` until `shutdown` resolves, then stops every actor.
pub async fn run(mut config: Config, extra: Observers, shutdown: impl Future<Output = ()>) {
    raise_open_files_limit(config.targets.len());
    let observers = extra.with(Arc::new(LogObserver));
    // The targets move into the actors that watch them rather than staying here as
    // well: the sidecar must keep nothing per target beyond what its actor needs.
    let targets = std::mem::take(&mut config.targets);
    let supervisor =
        Supervisor::start_targets(targets.into_iter().map(Arc::new), Arc::new(observers));
    tracing::info!(
        targets = supervisor.len(),
        version = env!("CARGO_PKG_VERSION"),
        "tether started"
    );
    shutdown.await;
    tracing::info!("shutting down");
    supervisor.shutdown().await;
    tracing::info!("stopped");
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
