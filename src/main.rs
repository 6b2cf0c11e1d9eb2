//! The `tether` binary: parses the command line, calls into the library and maps the
//! outcome to the exit codes of the CLI contract.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use tether::cli::{Cli, Command, ConfigArg};
use tether::config::{self, Config, ConfigError};
use tether::observe::Observers;
use tether::sidecar::Control;
use tether::status_view::{self, Output, Url};
use tether::{check, demo, logging, sidecar};

/// Exit status for an invalid config (the CLI contract).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own account of what happens; logs would only repeat it.
    let level = match (&cli.command, cli.log.log_level.as_deref()) {
        (Command::Demo, None) => Some("error"),
        (_, level) => level,
    };
    if let Err(e) = logging::init(cli.log.log_format, level) {
        eprintln!("tether: {e}");
        return ExitCode::from(EXIT_BAD_CONFIG);
    }
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckConfig(arg) => Ok(match load(&arg) {
            Ok(config) => {
                print!("{}", config.to_toml());
                ExitCode::SUCCESS
            }
            Err(code) => code,
        }),
        Command::Run(arg) => {
            let config = match load(&arg) {
                Ok(config) => config,
                Err(code) => return Ok(code),
            };
            let path = config::resolve_path(arg.path.as_deref());
            runtime()?.block_on(async {
                let control = signals(path).context("cannot install signal handlers")?;
                sidecar::adopt_orphans();
                match sidecar::run(config, Observers::new(), control).await {
                    Ok(()) => Ok(ExitCode::SUCCESS),
                    Err(e) if e.is_config() => {
                        eprintln!("tether: {e}");
                        Ok(ExitCode::from(EXIT_BAD_CONFIG))
                    }
                    Err(e) => Err(e.into()),
                }
            })
        }
        Command::Probe {
            address,
            check: args,
            timeout,
        } => {
            let probe = match args.probe() {
                Ok(probe) => probe,
                Err(e) => return Ok(usage_error(&e)),
            };
            let result = runtime()?.block_on(check::probe_once(&address, &probe, timeout));
            Ok(match result {
                Ok(()) => {
                    println!("{address} is healthy");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    println!("{address} is not healthy: {e}");
                    ExitCode::FAILURE
                }
            })
        }
        Command::Wait {
            addresses,
            check: args,
            timeout,
        } => {
            let probe = match args.probe() {
                Ok(probe) => probe,
                Err(e) => return Ok(usage_error(&e)),
            };
            let result = runtime()?.block_on(check::wait_all(&addresses, &probe, timeout));
            Ok(match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(failed) => {
                    for (address, error) in failed {
                        eprintln!("{address} not healthy after {timeout:?}: {error}");
                    }
                    ExitCode::FAILURE
                }
            })
        }
        Command::Demo => {
            runtime()?.block_on(demo::run())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            url,
            json,
            watch,
        } => {
            let url = match url {
                Some(url) => url,
                None => match status_url_from_config(&config) {
                    Ok(url) => url,
                    Err(code) => return Ok(code),
                },
            };
            let code = runtime()?.block_on(status_view::run(&url, Output::detect(json), watch));
            Ok(ExitCode::from(code))
        }
    }
}

/// The `/status` of the sidecar `tether run` would start: the config's `server.listen`,
/// or the built-in default when no config was named and `./tether.toml` does not exist.
fn status_url_from_config(arg: &ConfigArg) -> Result<Url, ExitCode> {
    let path = config::resolve_path(arg.path.as_deref());
    if arg.path.is_none() && !path.exists() {
        return Ok(status_view::DEFAULT_URL
            .parse()
            .expect("the default URL is valid"));
    }
    load(arg).map(|c| Url::from_listen(c.server.listen))
}

/// A command line that makes no sense: said like clap says it, with its exit code.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Loads the config, printing every problem; the error is the exit code to use.
fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::resolve_path(arg.path.as_deref());
    Config::load(&path).map_err(|e| {
        match &e {
            ConfigError::Invalid(_) => eprintln!("{e}"),
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => eprintln!("tether: {e}"),
        }
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Turns signals into requests to the sidecar: SIGHUP reloads `path`, the first
/// SIGTERM or SIGINT stops gracefully, a second one exits at once.
///
/// The task that waits for signals never waits for anything else, so every signal is
/// handled whatever the sidecar is busy with: reloads are loaded and handed over by a
/// task of their own (SIGHUPs arriving meanwhile fold into one more reload, which reads
/// the file as it is then), and SIGHUP is ignored once shutdown has begun.
fn signals(path: PathBuf) -> std::io::Result<mpsc::Receiver<Control>> {
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
                _ = term.recv() => ("SIGTERM", 143),
                _ = int.recv() => ("SIGINT", 130),
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
                tracing::warn!("received {name} again: exiting at once");
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
        let loaded = Config::load(&path);
        tokio::select! {
            _ = tx.send(Control::Reload(Box::new(loaded))) => {}
            () = stopping.cancelled() => return,
        }
    }
}
