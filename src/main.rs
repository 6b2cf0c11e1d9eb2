//! The `tether` binary: parses the command line, calls into the library and maps the
//! outcome to the exit codes of the CLI contract.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};

use tether::cli::{Cli, Command, ConfigArg};
use tether::config::{self, Address, Config, ConfigError};
use tether::observe::Observers;
use tether::status_view::{self, Output, Url};
use tether::{check, logging, sidecar};

/// Exit status for an invalid config (the CLI contract).
const EXIT_BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = logging::init(cli.log.log_format, cli.log.log_level.as_deref()) {
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
            runtime()?.block_on(async {
                let shutdown = shutdown_signal().context("cannot install signal handlers")?;
                sidecar::run(config, Observers::new(), shutdown).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Probe {
            address, timeout, ..
        } => {
            let address = parse_address(&address)?;
            let result = runtime()?.block_on(check::probe_once(&address, timeout));
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
            addresses, timeout, ..
        } => {
            let addresses = addresses
                .iter()
                .map(|a| parse_address(a))
                .collect::<anyhow::Result<Vec<Address>>>()?;
            let result = runtime()?.block_on(check::wait_all(&addresses, timeout));
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

/// Loads the config, printing every problem; the error is the exit code to use.
fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::resolve_path(arg.path.as_deref());
    Config::load(&path).map_err(|e| {
        match &e {
            ConfigError::Invalid(_) => eprintln!("{e}"),
            ConfigError::Read { .. } => eprintln!("tether: {e}"),
        }
        ExitCode::from(EXIT_BAD_CONFIG)
    })
}

fn parse_address(s: &str) -> anyhow::Result<Address> {
    s.parse::<Address>().map_err(anyhow::Error::from)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("received SIGTERM"),
            _ = int.recv() => tracing::info!("received SIGINT"),
        }
    })
}
