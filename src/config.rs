//! The config file: parsed as written (`raw`), then validated into the types the rest
//! of tether runs on, so that an invalid setting cannot reach a running actor.
//!
//! Every error names the file, line, column and key; all semantic errors of a file are
//! reported at once (the first hundred printed), so an operator fixes them in one pass.

mod address;
pub mod duration;
mod group;
pub mod kinds;
mod raw;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::secrets::Source;

pub use address::{Address, AddressError};
pub use duration::HumanDuration;
pub use group::{Failback, Group, GroupHooks, Role};
pub use validate::{builtin, check_http_path};

/// The largest config file read. Ten thousand targets take about 1 MiB.
pub const MAX_SIZE: u64 = 16 * 1024 * 1024;

/// Where `tether run` looks when neither `-c` nor `$TETHER_CONFIG` is given.
pub const DEFAULT_PATH: &str = "tether.toml";

/// A validated config: every value is in range and every target is complete.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub server: Server,
    pub defaults: Globals,
    pub supervisor: Supervision,
    pub targets: Vec<Target>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
}

/// `[supervisor]`: how crashed actors are restarted, and how long shutdown may take.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Supervision {
    /// An actor may be restarted this many times within `max_seconds`; one more crash
    /// marks its target `failed` and pauses it for `cooldown` (OTP's intensity/period).
    pub max_restarts: u32,
    pub max_seconds: u32,
    pub cooldown: HumanDuration,
    /// How long SIGTERM waits for hooks in flight and the events queued for them;
    /// defaults to the largest `hook_timeout`.
    pub shutdown_grace: HumanDuration,
}

/// `[server]`: the HTTP endpoints and the optional state file.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Server {
    /// The TCP listener; `None` is `listen = false`, printed that way so the effective
    /// config reads back as the same config.
    #[serde(serialize_with = "listen_or_false")]
    pub listen: Option<SocketAddr>,
    /// The unix-socket listener: the same endpoints, reachable only through file
    /// permissions, and the only one admin actions are served on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket: Option<PathBuf>,
    /// The socket file's group (a name or a numeric gid), looked up at start: a group
    /// that does not exist on this host is an error of the host, not of the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_socket_group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_file: Option<PathBuf>,
    /// Events `/events` keeps for subscribers that reconnect.
    pub events_history: usize,
    /// How often an idle `/events` stream gets a comment, so proxies keep it open.
    pub events_heartbeat: HumanDuration,
    /// `/events` streams open at once; past it a newcomer gets 503.
    pub max_subscribers: usize,
}

fn listen_or_false<S: serde::Serializer>(
    listen: &Option<SocketAddr>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match listen {
        Some(addr) => s.collect_str(addr),
        None => s.serialize_bool(false),
    }
}

/// The process-wide settings of `[defaults]` that no target can override.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Globals {
    /// Bounds the hook processes and deliveries running at once across all targets,
    /// so a mass outage cannot fork thousands of processes.
    pub max_concurrent_hooks: usize,
}

/// One watched dependency with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Target {
    pub name: String,
    pub address: Address,
    pub probe: Probe,
    /// Whether this target counts toward `/readyz`.
    pub required: bool,
    /// Bounds the TCP handshake only; the first probe answer has `check_timeout`.
    pub connect_timeout: HumanDuration,
    /// The timing of a protocol probe; `None` for `tcp`, which has nothing to ask (its
    /// connection is watched by the kernel's keepalive).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub check: Option<Check>,
    /// Consecutive failed attempts before `on_failure`.
    pub failure_threshold: u32,
    pub backoff: Backoff,
    pub keepalive: Keepalive,
    pub hook_timeout: HumanDuration,
    /// Fail-back damping: how long the target must stay up before `on_recover`.
    pub recover_after: HumanDuration,
    /// How often a held connection's host name is resolved again to follow moves.
    pub resolve_interval: HumanDuration,
    /// Shared by every target that inherits the same actions: 10,000 targets with the
    /// hooks of `[defaults]` hold one copy, not 10,000.
    pub hooks: Arc<Hooks>,
    /// TLS on the probe's connection; `None`: plain TCP.
    /// Boxed: most targets have none, and should not carry its size.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Box<Tls>>,
}

/// `tls`: the probe speaks through TLS (PostgreSQL after its `SSLRequest`, every other
/// kind from the first byte), verifying the server's certificate.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Tls {
    /// The name the certificate must carry: as written, else the address's host.
    pub server_name: String,
    /// The CA certificates to trust; `None`: the bundled public (Mozilla) roots.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key, both or neither.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// A certificate that expires sooner than this is warned about (once a day).
    pub warn_before: HumanDuration,
    /// The files above, loaded when the config was read: equal only if their contents are.
    #[serde(skip)]
    pub client: crate::tls::TlsClient,
}

/// When a protocol probe asks, and how long its answer may take: a frozen server is
/// noticed within `interval + timeout`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// How often the server is asked again while its connection is held.
    #[serde(rename = "check_interval")]
    pub interval: HumanDuration,
    /// Bounds every answer, the first one on a new connection included.
    #[serde(rename = "check_timeout")]
    pub timeout: HumanDuration,
}

/// The reconnect schedule: `initial * multiplier^n`, capped at `max`, each delay spread
/// by `± jitter` so that many sidecars do not reconnect in lockstep.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Backoff {
    pub initial: HumanDuration,
    pub max: HumanDuration,
    pub multiplier: f64,
    pub jitter: f64,
}

/// TCP keepalive settings: a peer that vanishes without a FIN or RST is noticed after
/// `idle + interval * count` (the kernel does the probing, tether holds no timer).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Keepalive {
    pub idle: HumanDuration,
    pub interval: HumanDuration,
    pub count: u32,
}

impl Keepalive {
    /// How long an unanswered peer may stay silent before the kernel gives up on it;
    /// also used as `TCP_USER_TIMEOUT` so unacknowledged data fails just as fast.
    pub fn dead_after(&self) -> Duration {
        self.idle.get() + self.interval.get() * self.count
    }
}

/// What "healthy" means on the wire for a target: a registered kind and the settings
/// it takes.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    #[serde(serialize_with = "kind_name")]
    pub kind: &'static kinds::Kind,
    /// Shared: every target whose probe takes no settings holds the one empty set, so a
    /// fleet of `tcp` targets carries none of their size.
    #[serde(flatten)]
    pub settings: Arc<ProbeSettings>,
}

fn kind_name<S: serde::Serializer>(kind: &&'static kinds::Kind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.name)
}

impl PartialEq for Probe {
    fn eq(&self, other: &Probe) -> bool {
        self.kind.name == other.kind.name && self.settings == other.settings
    }
}

impl Eq for Probe {}

/// The settings of `probe = { kind = ..., ... }`, each validated on its own by the same
/// rule whatever the kind (see [`kinds::Kind::settings`] for which kind takes which).
/// Unset keys stay `None`; a kind's defaults are filled in by [`kinds::Kind::finish`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProbeSettings {
    /// The path an HTTP check requests.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The HTTP status that means healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect_status: Option<u16>,
    /// The HTTP `Host` header, when not the target's address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The name the probe logs in as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The database a PostgreSQL session connects to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// Environment variable holding the password.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// File holding the password (a Kubernetes Secret volume); at most one of the two is
    /// set. Either is read at start and on each reload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// What a generic probe sends, as written (escapes are turned into bytes when the
    /// probe is built).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send: Option<String>,
    /// The regular expression a generic probe's answer must match.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expect: Option<String>,
    /// The service a gRPC health check asks about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

impl ProbeSettings {
    /// Every key a probe table may hold besides `kind`.
    pub const KEYS: &'static [&'static str] = &[
        "path",
        "expect_status",
        "host",
        "user",
        "database",
        "password_env",
        "password_file",
        "send",
        "expect",
        "service",
    ];

    /// Where the probe's password comes from, if it has one.
    pub fn password(&self) -> Option<Source> {
        source(&self.password_env, &self.password_file)
    }

    /// The keys that are set, in the order of [`ProbeSettings::KEYS`].
    pub fn given(&self) -> Vec<&'static str> {
        let set = [
            self.path.is_some(),
            self.expect_status.is_some(),
            self.host.is_some(),
            self.user.is_some(),
            self.database.is_some(),
            self.password_env.is_some(),
            self.password_file.is_some(),
            self.send.is_some(),
            self.expect.is_some(),
            self.service.is_some(),
        ];
        Self::KEYS
            .iter()
            .zip(set)
            .filter_map(|(k, set)| set.then_some(*k))
            .collect()
    }
}

impl Probe {
    /// The TCP handshake alone: a target's probe when none is given.
    pub fn tcp() -> Probe {
        Probe::new(&crate::probe::tcp::KIND, ProbeSettings::default())
    }

    pub fn new(kind: &'static kinds::Kind, settings: ProbeSettings) -> Probe {
        static NONE: std::sync::LazyLock<Arc<ProbeSettings>> =
            std::sync::LazyLock::new(Arc::default);
        let settings = if settings == ProbeSettings::default() {
            NONE.clone()
        } else {
            Arc::new(settings)
        };
        Probe { kind, settings }
    }

    pub fn is_tcp(&self) -> bool {
        self.kind.name == crate::probe::tcp::KIND.name
    }

    /// Where the probe's password comes from, if it has one.
    pub fn password(&self) -> Option<Source> {
        self.settings.password()
    }

    /// Whether each check learns the server's replication role, so the target can be
    /// a member of a group with a `role`.
    pub fn learns_roles(&self) -> bool {
        (self.kind.learns_roles)(&self.settings)
    }

    /// The kind of this probe, as registered in [`kinds`].
    pub fn kind(&self) -> &'static kinds::Kind {
        self.kind
    }
}

/// The hook actions of one target, per event, in the order written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Hooks {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_connect: Vec<HookAction>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_disconnect: Vec<HookAction>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_failure: Vec<HookAction>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_recover: Vec<HookAction>,
}

impl Hooks {
    /// The actions of one event, in the order written.
    pub fn for_event(&self, event: crate::watch::machine::Event) -> &[HookAction] {
        use crate::watch::machine::Event;
        match event {
            Event::Connect => &self.on_connect,
            Event::Disconnect => &self.on_disconnect,
            Event::Failure => &self.on_failure,
            Event::Recover => &self.on_recover,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.on_connect.is_empty()
            && self.on_disconnect.is_empty()
            && self.on_failure.is_empty()
            && self.on_recover.is_empty()
    }
}

/// One hook action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum HookAction {
    /// Executed directly: target data can never be interpreted by a shell.
    Command { command: Vec<String> },
    /// Run by `sh -c`; the user wrote the shell text, target data arrives as variables.
    Shell { shell: String },
    /// POST of the JSON payload.
    Webhook {
        webhook: String,
        #[serde(skip_serializing_if = "BTreeMap::is_empty")]
        headers: BTreeMap<String, String>,
        /// Name of the environment variable holding the HMAC key; the key itself is
        /// never stored here, so printing the config cannot leak it.
        #[serde(skip_serializing_if = "Option::is_none")]
        secret_env: Option<String>,
        /// Or the file holding it; at most one of the two is set.
        #[serde(skip_serializing_if = "Option::is_none")]
        secret_file: Option<PathBuf>,
    },
}

impl HookAction {
    /// Where a webhook's signing key comes from, if it is signed.
    pub fn key(&self) -> Option<Source> {
        match self {
            HookAction::Webhook {
                secret_env,
                secret_file,
                ..
            } => source(secret_env, secret_file),
            _ => None,
        }
    }
}

fn source(env: &Option<String>, file: &Option<PathBuf>) -> Option<Source> {
    env.clone()
        .map(Source::Env)
        .or_else(|| file.clone().map(Source::File))
}

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: cannot read config file: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: the config file is {size} bytes; at most {MAX_SIZE} are read", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("{}", Diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

/// One problem in a config file, at a position an editor can jump to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    /// The dotted path of the offending key, e.g. `targets[1].backoff.initial`.
    pub key: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file.display(), self.line, self.column)?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

struct Diagnostics<'a>(&'a [Diagnostic]);

/// How many problems of one file are printed; the rest are counted. A file mangled
/// throughout would otherwise bury the first, most useful lines under thousands.
pub const SHOWN_DIAGNOSTICS: usize = 100;

impl fmt::Display for Diagnostics<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().take(SHOWN_DIAGNOSTICS).enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        if let Some(more) = self
            .0
            .len()
            .checked_sub(SHOWN_DIAGNOSTICS)
            .filter(|n| *n > 0)
        {
            write!(f, "\nand {more} more")?;
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a config file. Blocking: the sidecar calls it off its
    /// runtime, so a huge or slow file never stalls detection.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        // Read one byte past the limit: a file that grows while it is read, or whose
        // size the metadata does not tell (a pipe), is bounded all the same.
        let mut bytes = Vec::new();
        file.take(MAX_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_SIZE {
            let size = std::fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
            return Err(ConfigError::TooLarge {
                path: path.to_owned(),
                size,
            });
        }
        let text = String::from_utf8(bytes)
            .map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` is only used to name the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, path).map_err(ConfigError::Invalid)
    }

    /// The effective config as TOML, for `tether check-config`.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a validated config always serializes")
    }

    /// The environment variables this config reads secrets from: probe passwords and
    /// webhook keys.
    pub fn secret_variables(&self) -> impl Iterator<Item = String> + '_ {
        self.secret_sources().filter_map(|s| match s {
            Source::Env(var) => Some(var),
            Source::File(_) => None,
        })
    }

    /// Every source this config reads a secret from.
    pub fn secret_sources(&self) -> impl Iterator<Item = Source> + '_ {
        let targets = self.targets.iter().flat_map(|t| {
            let password = t.probe.password();
            let keys = crate::watch::machine::Event::ALL
                .into_iter()
                .flat_map(|e| t.hooks.for_event(e))
                .filter_map(HookAction::key);
            password.into_iter().chain(keys)
        });
        let groups = self
            .groups
            .iter()
            .flat_map(|g| g.hooks.all().filter_map(HookAction::key));
        targets.chain(groups)
    }

    pub fn target(&self, name: &str) -> Option<&Target> {
        self.targets.iter().find(|t| t.name == name)
    }

    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }
}

/// Resolves the config path: `-c`, then `$TETHER_CONFIG` (both handled by clap), then
/// `./tether.toml`.
pub fn resolve_path(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_owned)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH))
}
