//! The `tether` binary: parses the command line and hands each command to its
//! function, which returns the exit status of the CLI contract. `tether run` is the
//! one place errors travel as `anyhow`, for their context.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use tether::cli::{Cli, Command, ConfigArg};
use tether::cmd::{self, demo, events, failback, probe, shell, status};
use tether::hooks::spawner;
use tether::watch::observe::Observers;
use tether::{config, exit, logging, sidecar, signals};

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo prints its own account of what happens; logs would only repeat it.
    let level = match (&cli.command, cli.log.log_level.as_deref()) {
        (Command::Demo, None) => Some("error"),
        (_, level) => level,
    };
    // The sidecar keeps watching whatever happens to its stderr; a command's lines stay
    // in order with what it prints.
    let output = match cli.command {
        Command::Run(_) => logging::Output::Background,
        _ => logging::Output::InPlace,
    };
    if let Err(e) = logging::init(cli.log.log_format, level, output) {
        eprintln!("tether: {e}");
        return ExitCode::from(exit::BAD_CONFIG);
    }
    match cli.command {
        Command::Run(arg) => run(&arg),
        Command::CheckConfig(arg) => cmd::check_config(&arg),
        Command::Probe {
            address,
            check,
            timeout,
        } => probe::once_command(&address, &check, timeout),
        Command::Wait {
            addresses,
            check,
            timeout,
        } => probe::wait_command(&addresses, &check, timeout),
        Command::Status {
            config,
            url,
            json,
            watch,
        } => status::command(&config, url, json, watch),
        Command::Events {
            config,
            url,
            json,
            since,
            targets,
        } => events::command(&config, url, json, since, targets),
        Command::Failback { config, url, group } => failback::command(&config, url, &group),
        Command::Demo => demo::command(),
        Command::Completions { shell } => {
            shell::completions(shell, &mut std::io::stdout().lock());
            ExitCode::from(exit::OK)
        }
        Command::Man => shell::man_command(),
        Command::Spawner => ExitCode::from(spawner::serve() as u8),
    }
}

/// `tether run`: the sidecar until SIGTERM or SIGINT.
fn run(arg: &ConfigArg) -> ExitCode {
    let config = match cmd::load(arg) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let path = config::resolve_path(arg.path.as_deref());
    // Hooks start from a process of this very executable, whatever replaces the file
    // on disk meanwhile.
    spawner::enable("/proc/self/exe".into());
    let code = cmd::block_on(async {
        let control = signals::install(path).context("cannot install signal handlers")?;
        sidecar::adopt_orphans();
        let result = sidecar::run(config, Observers::new(), control).await;
        // What was logged comes out before the last word, and before the exit.
        logging::flush();
        match result {
            Ok(()) => Ok(ExitCode::from(exit::OK)),
            Err(e) if e.is_config() => {
                eprintln!("tether: {e}");
                Ok(ExitCode::from(exit::BAD_CONFIG))
            }
            Err(e) => Err(anyhow::Error::from(e)),
        }
    });
    logging::flush();
    code
}
