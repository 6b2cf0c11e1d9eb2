//! Signals as the sidecar sees them: SIGHUP reloads the config, the first SIGTERM or
//! SIGINT stops gracefully, a second one exits at once.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::exit;
use crate::sidecar::Control;

/// Turns signals into requests to the sidecar: SIGHUP reloads `path`, the first
/// SIGTERM or SIGINT stops gracefully, a second one exits at once.
///
/// The task that waits for signals never waits for anything else, so every signal is
/// handled whatever the sidecar is busy with: reloads are loaded and handed over by a
/// task of their own (SIGHUPs arriving meanwhile fold into one more reload, which reads
/// the file as it is then), and SIGHUP is ignored once shutdown has begun.
pub fn install(path: PathBuf) -> std::io::Result<mpsc::Receiver<Control>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = mpsc::channel(4);
    let reload = Arc::new(Notify::new());
    let stopping = CancellationToken::new();
    tokio::spawn(reloader(path, reload.clone(), tx.clone(), stopping.clone()));
    tokio::spawn(async move {
        loop {
            let (name, code) = tokio::select! {
                _ = term.recv() => ("SIGTERM", exit::SECOND_SIGTERM),
                _ = int.recv() => ("SIGINT", exit::SECOND_SIGINT),
                _ = hup.recv() => {
                    if stopping.is_cancelled() {
                        tracing::info!("received SIGHUP while shutting down: ignored");
                    } else {
                        reload.notify_one();
                    }
                    continue;
                }
            };
            if stopping.is_cancelled() {
                // Nothing a hook started may outlive tether, even now.
                let killed = crate::hooks::kill_everything();
                tracing::warn!(
                    killed,
                    "received {name} again: killed the hooks still running; exiting at once"
                );
                crate::logging::flush();
                std::process::exit(code);
            }
            tracing::info!("received {name}: shutting down (send it again to exit at once)");
            stopping.cancel();
            // Handed over by a task of its own: the sidecar may be busy with a reload.
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(Control::Shutdown).await });
        }
    });
    Ok(rx)
}

/// Loads the config at each reload request and hands it to the sidecar, until shutdown.
async fn reloader(
    path: PathBuf,
    requested: Arc<Notify>,
    tx: mpsc::Sender<Control>,
    stopping: CancellationToken,
) {
    loop {
        tokio::select! {
            () = requested.notified() => {}
            () = stopping.cancelled() => return,
        }
        tracing::info!(config = %path.display(), "received SIGHUP: reloading");
        // Reading and checking a file (up to 16 MiB, with any number of mistakes) is
        // blocking work: off the runtime, so detection, HTTP and signals go on meanwhile.
        let loaded = match tokio::task::spawn_blocking({
            let path = path.clone();
            move || Config::load(&path)
        })
        .await
        {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(error = %e, "loading the config failed; keeping the running config");
                continue;
            }
        };
        tokio::select! {
            _ = tx.send(Control::Reload(Box::new(loaded))) => {}
            () = stopping.cancelled() => return,
        }
    }
}
