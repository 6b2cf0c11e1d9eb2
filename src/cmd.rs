//! The one-shot commands: `tether probe` and `tether wait`, `tether status` (a
//! person's view of a running sidecar), `tether demo`, and the shell completions and
//! man page; and what every command shares: its runtime, loading the config, and
//! reporting an error with the exit status of the CLI contract. `tether run` is the sidecar
//! itself ([`crate::sidecar`]).

pub mod client;
pub mod demo;
pub mod events;
pub mod failback;
pub mod probe;
pub mod shell;
pub mod status;

use std::fmt::Display;
use std::process::ExitCode;

use crate::cli::ConfigArg;
use crate::config::{self, Config, ConfigError};
use crate::exit;

/// Worker threads: a sidecar's work is waiting on sockets and on hook processes, which
/// two threads keep up with at 10,000 targets; one per core of a large host would
/// only add stacks and allocator arenas.
const WORKER_THREADS: usize = 2;
/// Threads for blocking calls (name resolution, files); idle ones exit after a while.
const BLOCKING_THREADS: usize = 16;

/// The runtime every command runs on, `tether run` included.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    crate::allocator::limit_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
}

/// Runs a command's async part on a runtime of its own. An error none of them handles
/// is reported once the runtime is gone, with the generic failure code.
pub fn block_on<E: Display>(work: impl Future<Output = Result<ExitCode, E>>) -> ExitCode {
    let runtime = match runtime() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tether: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    let outcome = runtime.block_on(work);
    drop(runtime);
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tether: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

/// Loads the config, printing every problem; the error is the exit code to use.
pub fn load(arg: &ConfigArg) -> Result<Config, ExitCode> {
    let path = config::resolve_path(arg.path.as_deref());
    Config::load(&path).map_err(|e| {
        match &e {
            ConfigError::Invalid(_) => eprintln!("{e}"),
            ConfigError::Read { .. } | ConfigError::TooLarge { .. } => eprintln!("tether: {e}"),
        }
        ExitCode::from(exit::BAD_CONFIG)
    })
}

/// `tether check-config`: the effective config, or every problem with exit status 2.
pub fn check_config(arg: &ConfigArg) -> ExitCode {
    match load(arg) {
        Ok(config) => {
            print!("{}", config.to_toml());
            ExitCode::from(exit::OK)
        }
        Err(code) => code,
    }
}

/// A command line that makes no sense: said like clap says it, with its exit code.
pub fn usage_error(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(exit::USAGE)
}
