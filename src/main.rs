//! The `tether` binary: parses the command line, calls into the library and maps the
//! outcome to the exit codes of the CLI contract.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use tether::cli::{CheckArgs, Cli, Command, ConfigArg};
use tether::cmd::status::{self, Output, Url};
use tether::cmd::{demo, probe};
use tether::config::{self, Address, Config, ConfigError};
use tether::watch::observe::Observers;
use tether::{exit, logging, sidecar, signals};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own account of what happens; logs would only repeat it.
    let level = match (&cli.command, cli.log.log_level.as_deref()) {
        (Command::Demo, None) => Some("error"),
        (_, level) => level,
    };
    if let Err(e) = logging::init(cli.log.log_format, level) {
        eprintln!("tether: {e}");
        return ExitCode::from(exit::BAD_CONFIG);
    }
    match cli.command {
        Command::CheckConfig(arg) => check_config(&arg),
        Command::Run(arg) => run(&arg),
        Command::Probe {
            address,
            check,
            timeout,
        } => probe_once(&address, &check, timeout),
        Command::Wait {
            addresses,
            check,
            timeout,
        } => wait(&addresses, &check, timeout),
        Command::Demo => run_demo(),
        Command::Completions { shell } => {
            tether::cmd::shell::completions(shell, &mut std::io::stdout().lock());
            ExitCode::from(exit::OK)
        }
        Command::Man => match tether::cmd::shell::man(&mut std::io::stdout().lock()) {
            Ok(()) => ExitCode::from(exit::OK),
            Err(e) => {
                eprintln!("tether: {e}");
                ExitCode::from(exit::FAILURE)
            }
        },
        Command::Status {
            config,
            url,
            json,
            watch,
        } => show_status(&config, url, json, watch),
    }
}

/// Runs a command's async part on a runtime of its own. An error none of them handles
/// is reported once the runtime is gone, with the generic failure code.
fn block_on(work: impl Future<Output = anyhow::Result<ExitCode>>) -> ExitCode {
    match runtime().and_then(|runtime| runtime.block_on(work)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn check_config(arg: &ConfigArg) -> ExitCode {
    match load(arg) {
        Ok(config) => {
            print!("{}", config.to_toml());
            ExitCode::from(exit::OK)
        }
        Err(code) => code,
    }
}

fn run(arg: &ConfigArg) -> ExitCode {
    let config = match load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let path = config::resolve_path(arg.path.as_deref());
    block_on(async {
        let control = signals::install(path).context("cannot install signal handlers")?;
        sidecar::adopt_orphans();
        match sidecar::run(config, Observers::new(), control).await {
            Ok(()) => Ok(ExitCode::from(exit::OK)),
            Err(e) if e.is_config() => {
                eprintln!("tether: {e}");
                Ok(ExitCode::from(exit::BAD_CONFIG))
            }
            Err(e) => Err(e.into()),
        }
    })
}

fn probe_once(address: &Address, args: &CheckArgs, timeout: Duration) -> ExitCode {
    let probe = match args.probe() {
        Ok(probe) => probe,
        Err(e) => return usage_error(&e),
    };
    block_on(async {
        Ok(match probe::probe_once(address, &probe, timeout).await {
            Ok(()) => {
                println!("{address} is healthy");
                ExitCode::from(exit::OK)
            }
            Err(e) => {
                println!("{address} is not healthy: {e}");
                ExitCode::from(exit::FAILURE)
            }
        })
    })
}

fn wait(addresses: &[Address], args: &CheckArgs, timeout: Duration) -> ExitCode {
    let probe = match args.probe() {
        Ok(probe) => probe,
        Err(e) => return usage_error(&e),
    };
    block_on(async {
        Ok(match probe::wait_all(addresses, &probe, timeout).await {
            Ok(()) => ExitCode::from(exit::OK),
            Err(failed) => {
                for (address, error) in failed {
                    eprintln!("{address} not healthy after {timeout:?}: {error}");
                }
                ExitCode::from(exit::FAILURE)
            }
        })
    })
}

fn run_demo() -> ExitCode {
    block_on(async {
        demo::run().await?;
        Ok(ExitCode::from(exit::OK))
    })
}

fn show_status(config: &ConfigArg, url: Option<Url>, json: bool, watch: bool) -> ExitCode {
    let url = match url {
        Some(url) => url,
        None => match status_url_from_config(config) {
            Ok(url) => url,
            Err(code) => return code,
        },
    };
    block_on(async {
        Ok(ExitCode::from(
            status::run(&url, Output::detect(json), watch).await,
        ))
    })
}

/// The `/status` of the sidecar `tether run` would start: the config's `server.listen`,
/// or the built-in default when no config was named and `./tether.toml` does not exist.
fn status_url_from_config(arg: &ConfigArg) -> Result<Url, ExitCode> {
    let path = config::resolve_path(arg.path.as_deref());
    if arg.path.is_none() && !path.exists() {
        return Ok(status::DEFAULT_URL
            .parse()
            .expect("the default URL is valid"));
    }
    load(arg).map(|c| Url::from_listen(c.server.listen))
}

/// A command line that makes no sense: said like clap says it, with its exit code.
fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::USAGE)
}

/// Loads the config, printing every problem; the error is the exit code to use.
fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::resolve_path(arg.path.as_deref());
    Config::load(&path).map_err(|e| {
        match &e {
            ConfigError::Invalid(_) => eprintln!("{e}"),
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => eprintln!("tether: {e}"),
        }
        ExitCode::from(exit::BAD_CONFIG)
    })
}

/// Worker threads: a sidecar's work is waiting on sockets and on hook processes, which
/// two threads keep up with at 10,000 targets; one per core of a large host would
/// only add stacks and allocator arenas.
const WORKER_THREADS: usize = 2;
/// Threads for blocking calls (name resolution, files); idle ones exit after a while.
const BLOCKING_THREADS: usize = 16;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tether::allocator::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
