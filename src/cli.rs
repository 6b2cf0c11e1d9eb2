//! The command line, as clap definitions.

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cmd::client::{Url, UrlError};
use crate::config::{self, Address, ProbeSettings, duration, kinds};

/// Holds a connection to each dependency of an application, notices the moment it
/// dies, reconnects with backoff, and runs hooks so the application can switch to a
/// fallback and back.
#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, e.g. "info" or "tether=debug" (overrides RUST_LOG).
    #[arg(long, global = true, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Config file [default: $TETHER_CONFIG, then ./tether.toml]
    #[arg(
        short = 'c',
        long = "config",
        env = "TETHER_CONFIG",
        value_name = "FILE"
    )]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar until SIGTERM or SIGINT
    ///
    /// Exit status: 0 after a clean shutdown, 2 for a bad config, 1 for any other
    /// fatal error.
    Run(ConfigArg),

    /// Validate a config file and print the effective config, defaults filled in
    ///
    /// Exit status: 0 valid, 2 invalid.
    CheckConfig(ConfigArg),

    /// Check one address once, for scripts and exec probes
    ///
    /// Exit status: 0 healthy, 1 not, 2 bad usage.
    Probe {
        /// host:port to check
        #[arg(value_parser = parse_address)]
        address: Address,

        #[command(flatten)]
        check: CheckArgs,

        /// How long the check may take
        #[arg(long, value_name = "DUR", default_value = "1s", value_parser = parse_duration)]
        timeout: Duration,
    },

    /// Wait until every address is healthy, retrying with backoff (for init containers)
    ///
    /// Exit status: 0 all healthy, 1 timed out, 2 bad usage.
    Wait {
        /// host:port addresses to wait for
        #[arg(required = true, value_parser = parse_address)]
        addresses: Vec<Address>,

        #[command(flatten)]
        check: CheckArgs,

        /// How long to wait for all of them in total
        #[arg(long, value_name = "DUR", default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
    },

    /// Show a running sidecar's targets, read from its /status
    ///
    /// Exit status: 0 every required target is up, 1 not, 2 the sidecar cannot be
    /// reached.
    Status {
        #[command(flatten)]
        config: ConfigArg,

        /// The sidecar's /status: http://HOST:PORT[/PATH] or unix:/PATH [default: from
        /// the config's server.listen, else its server.unix_socket]
        #[arg(long, value_name = "URL", value_parser = parse_url)]
        url: Option<Url>,

        /// Print the /status document as it came, instead of a table
        #[arg(long)]
        json: bool,

        /// Refresh every second until interrupted
        #[arg(long)]
        watch: bool,
    },

    /// Follow a running sidecar's event stream, resuming after a dropped connection
    ///
    /// One line per event (time, target, event, state change, event id; a snapshot as
    /// one line per target), or with --json one JSON object per line, flushed as it
    /// comes. Reconnects by itself with backoff and resumes after the last event printed.
    ///
    /// Exit status: 0 on SIGINT or SIGTERM (or when standard output closes), 2 the
    /// sidecar cannot be reached at the first attempt.
    Events {
        #[command(flatten)]
        config: ConfigArg,

        /// The sidecar: http://HOST:PORT or unix:/PATH [default: from the config's
        /// server.listen, else its server.unix_socket]
        #[arg(long, value_name = "URL", value_parser = parse_url)]
        url: Option<Url>,

        /// One JSON object per line: the event's data with its `type` and `id`
        #[arg(long)]
        json: bool,

        /// Resume after this stream position (an event's id, `<instance>:<position>`)
        #[arg(long, value_name = "POS")]
        since: Option<String>,

        /// Only these targets' events (repeatable, or a comma-separated list)
        #[arg(long = "target", value_name = "NAME", value_delimiter = ',')]
        targets: Vec<String>,
    },

    /// Return a group with failback = "manual" to its most preferred eligible member
    ///
    /// An admin action: sent over the sidecar's unix socket (server.unix_socket) only,
    /// never over TCP.
    ///
    /// Exit status: 0 the group switched, 1 refused (not manual, a conflict, no better
    /// member eligible, no such group; the message says which), 2 the sidecar cannot
    /// be reached.
    Failback {
        #[command(flatten)]
        config: ConfigArg,

        /// The sidecar's socket: unix:/PATH [default: the config's server.unix_socket]
        #[arg(long, value_name = "URL", value_parser = parse_url)]
        url: Option<Url>,

        /// The group's name
        group: String,
    },

    /// Print a completion script for SHELL to standard output
    ///
    /// bash: `tether completions bash > /etc/bash_completion.d/tether`;
    /// zsh: into a directory of `$fpath` as `_tether`;
    /// fish: `~/.config/fish/completions/tether.fish`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Print the man page (roff) to standard output: `tether man | man -l -`
    Man,

    /// Start hook processes for a running `tether run` (started by it; not for users)
    #[command(name = crate::hooks::spawner::SUBCOMMAND, hide = true)]
    Spawner,

    /// A 15-second tour: watch a throwaway local service, break it, restore it
    ///
    /// Needs no config and no server: it starts a TCP service on loopback, watches
    /// it with hooks that print, kills it until the failure threshold passes,
    /// restores it, and shows each event, hook output and changed metric.
    Demo,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// What "healthy" means on the wire
    #[arg(long, default_value = "tcp", value_parser = probe_kinds())]
    pub probe: String,

    /// With --probe http: the path to GET [default: /]
    #[arg(long, value_name = "PATH", value_parser = parse_path)]
    pub path: Option<String>,

    /// With --probe http: the status that means healthy [default: 200]
    #[arg(long, value_name = "CODE", value_parser = clap::value_parser!(u16).range(100..600))]
    pub expect_status: Option<u16>,

    /// With --probe postgres/nats/mqtt: the user to log in as
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,

    /// With --probe redis/postgres/nats/mqtt: the environment variable holding the password
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,

    /// With --probe expect: what to send (\r \n \t \\ \xHH escapes); without it the
    /// server's greeting is read
    #[arg(long, value_name = "TEXT", value_parser = parse_send)]
    pub send: Option<String>,

    /// With --probe expect: the regular expression a healthy answer matches
    #[arg(long, value_name = "REGEX", value_parser = parse_pattern)]
    pub expect: Option<String>,

    /// With --probe grpc: the service to ask about [default: the whole server]
    #[arg(long, value_name = "NAME", value_parser = parse_service)]
    pub service: Option<String>,

    /// Speak TLS (PostgreSQL and MySQL after their SSLRequest, NATS after its INFO),
    /// verifying the server's certificate against the public roots, or --ca-file
    #[arg(long)]
    pub tls: bool,

    /// With --tls: the PEM file of the CA certificates to trust instead of the public
    /// roots
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub ca_file: Option<PathBuf>,

    /// With --tls: the name the certificate must carry [default: the address's host]
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub server_name: Option<String>,
}

impl CheckArgs {
    /// The probe these arguments describe, with the defaults a config file gets.
    /// Settings given to a kind that does not take them are an error, not silently
    /// ignored.
    pub fn probe(&self) -> Result<config::Probe, String> {
        let kind =
            kinds::find(&self.probe).ok_or_else(|| format!("unknown probe {}", self.probe))?;
        let mut settings = ProbeSettings {
            path: self.path.clone(),
            expect_status: self.expect_status,
            user: self.user.clone(),
            password_env: self.password_env.clone(),
            send: self.send.clone(),
            expect: self.expect.clone(),
            service: self.service.clone(),
            ..ProbeSettings::default()
        };
        for key in settings.given() {
            if !kind.settings.contains(&key) {
                let takers: Vec<&str> = kinds::taking(key).map(|k| k.name).collect();
                return Err(format!(
                    "--{} applies only to --probe {}",
                    key.replace('_', "-"),
                    takers.join("/")
                ));
            }
        }
        (kind.finish)(&mut settings)
            .map_err(|m| format!("--probe {}: {}", kind.name, m.message))?;
        Ok(config::Probe::new(kind, settings))
    }

    /// The TLS settings of `address`, loaded once as [`crate::tls::TlsClient`] by the
    /// caller; `None` without --tls.
    pub fn tls(&self, address: &Address, client: &crate::tls::TlsClient) -> Option<config::Tls> {
        self.tls.then(|| config::Tls {
            server_name: self
                .server_name
                .clone()
                .unwrap_or_else(|| address.host().to_owned()),
            ca_file: self.ca_file.clone(),
            cert_file: None,
            key_file: None,
            warn_before: config::HumanDuration(config::builtin::TLS_WARN_BEFORE),
            client: client.clone(),
        })
    }

    /// The TLS client settings of --tls and --ca-file; `None` without --tls.
    pub fn tls_client(&self) -> Result<Option<crate::tls::TlsClient>, String> {
        if !self.tls {
            return Ok(None);
        }
        crate::tls::TlsClient::load(self.ca_file.as_deref(), None)
            .map(Some)
            .map_err(|e| e.to_string())
    }
}

/// The registered probe kinds, each with its line of help.
fn probe_kinds() -> PossibleValuesParser {
    PossibleValuesParser::new(
        kinds::ALL
            .iter()
            .map(|kind| PossibleValue::new(kind.name).help(kind.summary)),
    )
}

fn parse_path(s: &str) -> Result<String, String> {
    config::check_http_path(s)
        .map(|()| s.to_owned())
        .map_err(str::to_owned)
}

fn parse_send(s: &str) -> Result<String, String> {
    crate::probe::expect::unescape(s).map(|_| s.to_owned())
}

fn parse_pattern(s: &str) -> Result<String, String> {
    crate::probe::expect::pattern(s).map(|_| s.to_owned())
}

fn parse_service(s: &str) -> Result<String, String> {
    crate::probe::grpc::check_service(s).map(|()| s.to_owned())
}

fn parse_url(s: &str) -> Result<Url, String> {
    s.parse().map_err(|e: UrlError| e.to_string())
}

fn parse_address(s: &str) -> Result<Address, String> {
    s.parse().map_err(|e: config::AddressError| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    match duration::parse(s)? {
        d if d.is_zero() => Err("must be greater than zero".to_owned()),
        d => Ok(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
