//! What a running sidecar shows the outside world: the status registry, the metrics,
//! the HTTP server that serves both, and the state file. Started before the checkers
//! (so a port that cannot be bound stops tether before it connects anywhere) and stopped
//! after them (so the last state is still served and written).

pub mod events;
pub mod http;
pub mod metrics;
pub mod page;
pub mod state_file;
pub mod status;
pub mod stream;
pub mod unix_socket;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::watch::observe::{Observer, Observers};
use events::Events;
use http::{Admin, App, HttpError, HttpServer, Limits};
use metrics::{Metrics, MetricsError};
use state_file::StateFileError;
use status::Status;

/// The observability side of the sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    StateFile(#[from] StateFileError),
}

/// The running endpoints.
pub struct Telemetry {
    status: Arc<Status>,
    metrics: Arc<Metrics>,
    events: Arc<Events>,
    admin: Arc<Admin>,
    /// Where the TCP listener listens (the real port when `listen` asked for port 0);
    /// `None` with `listen = false`.
    http_addr: Option<SocketAddr>,
    /// Stops the HTTP server and the state-file writer.
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Telemetry {
    /// Binds `[server] listen` and `unix_socket`, writes the state file once, and
    /// starts serving.
    pub async fn start(config: &Config) -> Result<Telemetry, TelemetryError> {
        Telemetry::start_with(config, Limits::default()).await
    }

    /// [`Telemetry::start`] with other HTTP limits.
    pub async fn start_with(config: &Config, limits: Limits) -> Result<Telemetry, TelemetryError> {
        let status = Arc::new(Status::new(config));
        let metrics = Arc::new(Metrics::new(config)?);
        let events = Arc::new(Events::of(&config.server));
        let admin = Arc::new(Admin::default());
        let app = App {
            status: status.clone(),
            metrics: metrics.clone(),
            events: events.clone(),
            admin: admin.clone(),
        };
        let tcp = match config.server.listen {
            Some(addr) => Some(HttpServer::bind(addr, app.clone(), limits).await?),
            None => None,
        };
        let unix = match &config.server.unix_socket {
            Some(path) => Some(
                HttpServer::bind_unix(
                    path,
                    config.server.unix_socket_group.as_deref(),
                    app,
                    limits,
                )
                .await?,
            ),
            None => None,
        };
        let http_addr = tcp.as_ref().and_then(HttpServer::local_addr);
        if let Some(path) = &config.server.state_file {
            state_file::write_now(path, &status).await?;
        }
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        log_listeners(tcp.as_ref(), unix.as_ref());
        for server in tcp.into_iter().chain(unix) {
            tasks.spawn(server.run(stop.clone().cancelled_owned()));
        }
        if let Some(path) = &config.server.state_file {
            tasks.spawn(state_file::keep_written(
                path.clone(),
                status.clone(),
                stop.clone(),
            ));
        }
        tasks.close();
        Ok(Telemetry {
            status,
            metrics,
            events,
            admin,
            http_addr,
            stop,
            tasks,
        })
    }

    /// Hands the running groups to the admin actions (`tether failback`).
    pub fn serve_groups(&self, groups: crate::watch::groups::Groups) {
        let _ = self.admin.groups.set(groups);
    }

    /// The listeners the checkers must report to: the status registry first, so
    /// `/status` is current before anything else reacts, and the stream's position
    /// last, so it moves only once the change can be read.
    pub fn observers(&self) -> Observers {
        Observers::new()
            .with(self.status.clone() as Arc<dyn Observer>)
            .with(self.metrics.clone() as Arc<dyn Observer>)
            .with(self.events.clone() as Arc<dyn Observer>)
    }

    /// The TCP listener's address; `None` with `listen = false`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    pub fn status(&self) -> &Arc<Status> {
        &self.status
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A reload's targets and groups, taken over by the status registry in one step and
    /// by the group series of the metrics; before the groups decide on the new config,
    /// so their first decisions land on entries that exist.
    pub fn apply(&self, config: &Config) {
        self.status.apply(config);
        self.metrics.apply_groups(config);
    }

    /// A reload has been applied: the targets it added and removed are events of the
    /// stream, after the status registry shows the new set.
    pub fn targets_changed(&self, added: &[String], removed: &[String]) {
        self.events.targets_changed(added, removed);
    }

    /// The sidecar is stopping: `/readyz` turns 503 while the endpoints keep serving.
    pub fn stopping(&self) {
        self.status.set_stopping();
    }

    /// Writes the state file a last time and closes the HTTP server.
    pub async fn stop(self) {
        self.status.set_stopping();
        self.events.close();
        self.stop.cancel();
        self.tasks.wait().await;
    }
}

/// What is served where, said once at start: with both listeners off, that nothing is
/// (hooks and the state file still work).
fn log_listeners(tcp: Option<&HttpServer>, unix: Option<&HttpServer>) {
    match tcp.and_then(HttpServer::local_addr) {
        Some(addr) => tracing::info!(address = %addr, "listening on {addr}"),
        None => tracing::info!("no TCP listener (server.listen = false)"),
    }
    if let Some(path) = unix.and_then(HttpServer::socket_path) {
        tracing::info!(path = %path.display(), "serving HTTP on unix socket {}", path.display());
    }
    if tcp.is_none() && unix.is_none() {
        tracing::info!(
            "no HTTP endpoints: listen = false and no unix_socket; hooks and the state file still work"
        );
    }
}
