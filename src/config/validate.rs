//! Turns the raw file into a [`Config`]: fills defaults, checks every value, and maps
//! each problem to the line, column and key it came from.

use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use toml::Spanned;

mod groups;

use super::raw::{
    RawAction, RawActions, RawBackoff, RawConfig, RawDefaults, RawHooks, RawKeepalive, RawListen,
    RawProbe, RawProbeTable, RawTarget, RawTls, RawTlsTable,
};
use super::{
    Address, Backoff, Check, Config, Diagnostic, Globals, HookAction, Hooks, HumanDuration,
    Keepalive, Probe, ProbeSettings, Server, Supervision, Target, Tls, kinds,
};
use crate::tls::TlsClient;

/// The built-in defaults, documented in the README's config reference.
pub mod builtin {
    use std::time::Duration;

    pub const LISTEN: &str = "127.0.0.1:9464";
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
    pub const FAILURE_THRESHOLD: u32 = 5;
    pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
    /// Delays reach the cap after about 1.5 s of outage; from then on a target is
    /// tried at most once every 1.2 s, and a returning dependency is seen within 1.5 s.
    pub const BACKOFF_MAX: Duration = Duration::from_millis(1500);
    pub const BACKOFF_MULTIPLIER: f64 = 2.0;
    pub const BACKOFF_JITTER: f64 = 0.2;
    /// Silent peer death is noticed within `idle + interval * count` = 6 s.
    pub const KEEPALIVE_IDLE: Duration = Duration::from_secs(3);
    pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
    pub const KEEPALIVE_COUNT: u32 = 3;
    /// A frozen server is noticed by a probe within `check_interval + check_timeout` = 3 s.
    pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);
    pub const CHECK_TIMEOUT: Duration = Duration::from_secs(1);
    pub const HOOK_TIMEOUT: Duration = Duration::from_secs(30);
    pub const RECOVER_AFTER: Duration = Duration::ZERO;
    pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(30);
    pub const MAX_CONCURRENT_HOOKS: usize = 64;
    pub const HTTP_PATH: &str = "/";
    pub const HTTP_STATUS: u16 = 200;
    pub const MAX_RESTARTS: u32 = 5;
    pub const MAX_SECONDS: u32 = 60;
    pub const COOLDOWN: Duration = Duration::from_secs(30);
    pub const EVENTS_HISTORY: usize = 4096;
    pub const EVENTS_HEARTBEAT: Duration = Duration::from_secs(15);
    pub const MAX_SUBSCRIBERS: usize = 1024;
    pub const FAILBACK_AFTER: Duration = Duration::from_secs(30);
    pub const GROUP_FALLBACK: &str = "fallback";
    /// Two weeks: room for a renewal that failed to be noticed and redone by hand.
    pub const TLS_WARN_BEFORE: Duration = Duration::from_secs(14 * 24 * 3600);
}

/// The kernel takes keepalive times in whole seconds up to this value.
const MAX_KEEPALIVE_SECS: u64 = 32767;
/// The kernel's limit on `TCP_KEEPCNT`.
const MAX_KEEPALIVE_COUNT: i64 = 127;
const MAX_NAME_LEN: usize = 128;
const MAX_CONCURRENT_HOOKS: i64 = 4096;
/// Bounds of the `/events` settings: a history and a subscriber count that fit memory.
const MAX_EVENTS_HISTORY: i64 = 1_000_000;
const MAX_SUBSCRIBERS: i64 = 65_536;

pub fn parse(text: &str, file: &Path) -> Result<Config, Vec<Diagnostic>> {
    let mut ctx = Ctx {
        text,
        file,
        lines: OnceCell::new(),
        diags: Vec::new(),
        last_hooks: None,
        tls_clients: HashMap::new(),
    };
    let raw = match deserialize(text) {
        Ok(raw) => raw,
        Err((span, key, message)) => {
            ctx.err(span, key, message);
            return Err(ctx.diags);
        }
    };
    let config = ctx.config(raw);
    if ctx.diags.is_empty() {
        Ok(config)
    } else {
        // Inherited values are checked once on their own and again through each target:
        // report each problem once.
        ctx.diags.sort_by(|a, b| {
            (a.line, a.column, &a.key, &a.message).cmp(&(b.line, b.column, &b.key, &b.message))
        });
        ctx.diags.dedup();
        Err(ctx.diags)
    }
}

/// Deserializes while tracking the key path, which serde errors alone do not name.
fn deserialize(text: &str) -> Result<RawConfig, (Option<Range<usize>>, String, String)> {
    let de = toml::Deserializer::parse(text).map_err(|e| {
        // Name the key a duplicate-key error points at.
        let key = match (e.message(), e.span()) {
            ("duplicate key", Some(span)) => text.get(span).unwrap_or_default().trim().to_owned(),
            _ => String::new(),
        };
        (e.span(), key, e.message().to_owned())
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        // `Spanned` values show up as a private field name in the path.
        let key = match e
            .path()
            .to_string()
            .replace(".$__serde_spanned_private_value", "")
        {
            p if p == "." => String::new(),
            p => p,
        };
        let inner = e.into_inner();
        let message = reword(&key, inner.message());
        (inner.span(), key, message)
    })
}

/// Serde's messages name Rust types; operators think in TOML.
fn reword(key: &str, message: &str) -> String {
    if key == "targets" && message.starts_with("invalid type: map") {
        return "targets must be an array of tables: write each one as [[targets]], not [targets]"
            .to_owned();
    }
    message
        .replace("expected i64", "expected an integer")
        .replace("expected f64", "expected a number")
        .replace("expected a sequence", "expected an array")
        .replace("expected a boolean", "expected true or false")
}

struct Ctx<'a> {
    text: &'a str,
    file: &'a Path,
    /// Built on the first error, so a valid file never pays for it.
    lines: OnceCell<LineIndex>,
    diags: Vec<Diagnostic>,
    /// The hooks of the target before, shared with the next target if its are the same
    /// (inherited from `[defaults]`, the usual case).
    last_hooks: Option<Arc<Hooks>>,
    /// The TLS settings loaded so far, by their files: 10,000 targets with the `tls` of
    /// `[defaults]` read and parse the files once. A failure is kept as its diagnostic
    /// (whether it blames `key_file`, and the message) to repeat at each place it is used.
    tls_clients: HashMap<TlsFiles, Result<TlsClient, (bool, String)>>,
}

/// `ca_file`, `cert_file` and `key_file` of a `tls` table.
type TlsFiles = (Option<PathBuf>, Option<PathBuf>, Option<PathBuf>);

/// A value and where it was written; `key` names it in messages.
struct At<T> {
    value: T,
    span: Range<usize>,
    key: String,
}

impl Ctx<'_> {
    fn err(
        &mut self,
        span: Option<Range<usize>>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) {
        let (line, column) = span.map_or((1, 1), |s| {
            self.lines
                .get_or_init(|| LineIndex::new(self.text))
                .line_col(self.text, s.start)
        });
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line,
            column,
            key: key.into(),
            message: message.into(),
        });
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let server = self.server(&raw);
        let defaults = &raw.defaults;
        let max_concurrent_hooks = match &defaults.max_concurrent_hooks {
            None => builtin::MAX_CONCURRENT_HOOKS,
            Some(v) => {
                let n = *v.get_ref();
                if !(1..=MAX_CONCURRENT_HOOKS).contains(&n) {
                    self.err(
                        Some(v.span()),
                        "defaults.max_concurrent_hooks",
                        format!("must be between 1 and {MAX_CONCURRENT_HOOKS}, got {n}"),
                    );
                }
                n.clamp(1, MAX_CONCURRENT_HOOKS) as usize
            }
        };
        self.check_defaults(defaults);
        if raw.targets.is_empty() {
            self.err(
                None,
                "targets",
                "no [[targets]] defined: add at least one target to watch",
            );
        }
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut targets = Vec::with_capacity(raw.targets.len());
        for (i, t) in raw.targets.iter().enumerate() {
            let name = t.get_ref().name.get_ref();
            let first = *seen.entry(name.clone()).or_insert(i);
            if first != i {
                self.err(
                    Some(t.get_ref().name.span()),
                    format!("targets[{i}].name"),
                    format!("duplicate target name \"{name}\" (first used by targets[{first}])"),
                );
            }
            targets.push(self.target(i, t.get_ref(), defaults));
        }
        let supervisor = self.supervision(&raw, &targets);
        let groups = self.groups(&raw.groups, &targets, defaults);
        Config {
            server,
            defaults: Globals {
                max_concurrent_hooks,
            },
            supervisor,
            targets,
            groups,
        }
    }

    fn supervision(&mut self, raw: &RawConfig, targets: &[Target]) -> Supervision {
        let s = &raw.supervisor;
        let mut int = |v: &Option<Spanned<i64>>, key: &str, max: i64, default: u32| match v {
            None => default,
            Some(v) if (1..=max).contains(v.get_ref()) => *v.get_ref() as u32,
            Some(v) => {
                self.err(
                    Some(v.span()),
                    format!("supervisor.{key}"),
                    format!("must be between 1 and {max}, got {}", v.get_ref()),
                );
                default
            }
        };
        let max_restarts = int(&s.max_restarts, "max_restarts", 1000, builtin::MAX_RESTARTS);
        let max_seconds = int(&s.max_seconds, "max_seconds", 86400, builtin::MAX_SECONDS);
        let cooldown = self.duration(
            s.cooldown
                .as_ref()
                .map(|v| at(v, "supervisor.cooldown".to_owned())),
            builtin::COOLDOWN,
            false,
        );
        let largest_hook_timeout = targets
            .iter()
            .map(|t| t.hook_timeout.get())
            .max()
            .unwrap_or(builtin::HOOK_TIMEOUT);
        let shutdown_grace = self.duration(
            s.shutdown_grace
                .as_ref()
                .map(|v| at(v, "supervisor.shutdown_grace".to_owned())),
            largest_hook_timeout,
            true,
        );
        Supervision {
            max_restarts,
            max_seconds,
            cooldown,
            shutdown_grace,
        }
    }

    fn server(&mut self, raw: &RawConfig) -> Server {
        let builtin_listen = || {
            builtin::LISTEN
                .parse()
                .expect("the built-in listen address parses")
        };
        let listen = match &raw.server.listen {
            None => Some(builtin_listen()),
            Some(v) => match v.get_ref() {
                RawListen::Enabled(false) => None,
                RawListen::Enabled(true) => {
                    self.err(
                        Some(v.span()),
                        "server.listen",
                        "listen = true names no address: write an address such as \"127.0.0.1:9464\", or false for no TCP listener",
                    );
                    Some(builtin_listen())
                }
                RawListen::Address(a) => Some(a.parse().unwrap_or_else(|_| {
                    self.err(
                        Some(v.span()),
                        "server.listen",
                        format!(
                            "invalid listen address \"{a}\": expected IP:port, e.g. \"127.0.0.1:9464\", or false"
                        ),
                    );
                    builtin_listen()
                })),
            },
        };
        let unix_socket = raw.server.unix_socket.as_ref().and_then(|v| {
            let path = v.get_ref();
            if path.trim().is_empty() {
                self.err(Some(v.span()), "server.unix_socket", "must not be empty");
                None
            } else if !Path::new(path).is_absolute() {
                // Relative to whatever directory tether was started in is never where a
                // client looks for it.
                self.err(
                    Some(v.span()),
                    "server.unix_socket",
                    format!(
                        "\"{path}\" is a relative path: give an absolute one, e.g. \"/run/tether/tether.sock\""
                    ),
                );
                None
            } else {
                Some(PathBuf::from(path))
            }
        });
        let unix_socket_group = raw.server.unix_socket_group.as_ref().and_then(|v| {
            if v.get_ref().trim().is_empty() {
                self.err(
                    Some(v.span()),
                    "server.unix_socket_group",
                    "must not be empty",
                );
                None
            } else if raw.server.unix_socket.is_none() {
                self.err(
                    Some(v.span()),
                    "server.unix_socket_group",
                    "applies to server.unix_socket, which is not set",
                );
                None
            } else {
                Some(v.get_ref().clone())
            }
        });
        let state_file = raw.server.state_file.as_ref().and_then(|v| {
            if v.get_ref().trim().is_empty() {
                self.err(Some(v.span()), "server.state_file", "must not be empty");
                None
            } else {
                Some(v.get_ref().into())
            }
        });
        let s = &raw.server;
        let events_history = self.count(
            s.events_history.as_ref(),
            "server.events_history",
            builtin::EVENTS_HISTORY,
            MAX_EVENTS_HISTORY,
        );
        let max_subscribers = self.count(
            s.max_subscribers.as_ref(),
            "server.max_subscribers",
            builtin::MAX_SUBSCRIBERS,
            MAX_SUBSCRIBERS,
        );
        let events_heartbeat = self.duration(
            s.events_heartbeat.as_ref().map(|v| At {
                value: *v.get_ref(),
                span: v.span(),
                key: "server.events_heartbeat".to_owned(),
            }),
            builtin::EVENTS_HEARTBEAT,
            false,
        );
        Server {
            listen,
            unix_socket,
            unix_socket_group,
            state_file,
            events_history,
            events_heartbeat,
            max_subscribers,
        }
    }

    /// A whole number from 1 to `max`, `default` when unset.
    fn count(&mut self, v: Option<&Spanned<i64>>, key: &str, default: usize, max: i64) -> usize {
        let Some(v) = v else {
            return default;
        };
        let n = *v.get_ref();
        if !(1..=max).contains(&n) {
            self.err(
                Some(v.span()),
                key,
                format!("must be between 1 and {max}, got {n}"),
            );
        }
        usize::try_from(n.clamp(1, max)).unwrap_or(default)
    }

    fn target(&mut self, i: usize, t: &RawTarget, d: &RawDefaults) -> Target {
        let key = |k: &str| format!("targets[{i}].{k}");
        let name = t.name.get_ref().clone();
        if !valid_name(&name) {
            self.err(
                Some(t.name.span()),
                key("name"),
                format!(
                    "invalid target name \"{name}\": use 1 to {MAX_NAME_LEN} of A-Z a-z 0-9 _ . -"
                ),
            );
        }
        let address = t.address.get_ref().parse::<Address>().unwrap_or_else(|e| {
            self.err(Some(t.address.span()), key("address"), e.to_string());
            Address::new("invalid", 1)
        });

        let connect_timeout = self.duration(
            pick(&t.connect_timeout, &d.connect_timeout, i, "connect_timeout"),
            builtin::CONNECT_TIMEOUT,
            false,
        );
        let hook_timeout = self.duration(
            pick(&t.hook_timeout, &d.hook_timeout, i, "hook_timeout"),
            builtin::HOOK_TIMEOUT,
            false,
        );
        let recover_after = self.duration(
            pick(&t.recover_after, &d.recover_after, i, "recover_after"),
            builtin::RECOVER_AFTER,
            true,
        );
        let resolve_interval = self.duration(
            pick(
                &t.resolve_interval,
                &d.resolve_interval,
                i,
                "resolve_interval",
            ),
            builtin::RESOLVE_INTERVAL,
            false,
        );
        let probe = match (&t.probe, &d.probe) {
            (Some(p), _) => self.probe(p, &key("probe")),
            (None, Some(p)) => self.probe(p, "defaults.probe"),
            (None, None) => Probe::tcp(),
        };
        let check = self.check(i, t, d, &probe);
        let failure_threshold = self.threshold(pick(
            &t.failure_threshold,
            &d.failure_threshold,
            i,
            "failure_threshold",
        ));
        let backoff = self.backoff(i, t.backoff.as_ref(), d.backoff.as_ref());
        let keepalive = self.keepalive(i, t.keepalive.as_ref(), d.keepalive.as_ref());
        let tls = match (&t.tls, &d.tls) {
            (Some(v), _) => self.tls(v, &key("tls"), &address),
            (None, Some(v)) => self.tls(v, "defaults.tls", &address),
            (None, None) => None,
        };
        let hooks = self.hooks(i, t.hooks.as_ref(), d.hooks.as_ref());
        let hooks = match &self.last_hooks {
            Some(last) if **last == hooks => last.clone(),
            _ => self.last_hooks.insert(Arc::new(hooks)).clone(),
        };
        Target {
            name,
            address,
            probe,
            required: t.required.or(d.required).unwrap_or(true),
            connect_timeout,
            check,
            failure_threshold,
            backoff,
            keepalive,
            hook_timeout,
            recover_after,
            resolve_interval,
            hooks,
            tls: tls.map(Box::new),
        }
    }

    /// A `tls` value, whole: a target's replaces the inherited one, keys and all, so
    /// that what a target's table says is all there is to it. `None` for `tls = false`
    /// or an error.
    fn tls(&mut self, v: &Spanned<RawTls>, key: &str, address: &Address) -> Option<Tls> {
        let default_table = RawTlsTable::default();
        let table = match v.get_ref() {
            RawTls::Enabled(false) => return None,
            RawTls::Enabled(true) => &default_table,
            RawTls::Table(t) => t,
        };
        let mut ok = true;
        let server_name = match &table.server_name {
            Some(n) => {
                let name = n.get_ref();
                if rustls::pki_types::ServerName::try_from(name.as_str()).is_err() {
                    self.err(
                        Some(n.span()),
                        format!("{key}.server_name"),
                        format!("\"{name}\" is neither a DNS name nor an IP address"),
                    );
                    ok = false;
                }
                name.clone()
            }
            None => address.host().to_owned(),
        };
        let mut path = |v: &Option<Spanned<String>>, name: &str| -> Option<PathBuf> {
            let v = v.as_ref()?;
            if v.get_ref().trim().is_empty() {
                self.err(
                    Some(v.span()),
                    format!("{key}.{name}"),
                    "must be the path of a file",
                );
                ok = false;
            }
            Some(PathBuf::from(v.get_ref()))
        };
        let ca_file = path(&table.ca_file, "ca_file");
        let cert_file = path(&table.cert_file, "cert_file");
        let key_file = path(&table.key_file, "key_file");
        match (&table.cert_file, &table.key_file) {
            (Some(c), None) => {
                self.err(
                    Some(c.span()),
                    format!("{key}.cert_file"),
                    "a client certificate needs its key: set `key_file` too",
                );
                ok = false;
            }
            (None, Some(k)) => {
                self.err(
                    Some(k.span()),
                    format!("{key}.key_file"),
                    "a client key needs its certificate: set `cert_file` too",
                );
                ok = false;
            }
            _ => {}
        }
        let warn_before = self.duration(
            table
                .warn_before
                .as_ref()
                .map(|w| at(w, format!("{key}.warn_before"))),
            builtin::TLS_WARN_BEFORE,
            true,
        );
        if !ok {
            return None;
        }
        let files = (ca_file.clone(), cert_file.clone(), key_file.clone());
        let loaded = self
            .tls_clients
            .entry(files)
            .or_insert_with(|| {
                let client = cert_file.as_deref().zip(key_file.as_deref());
                TlsClient::load(ca_file.as_deref(), client)
                    .map_err(|e| (e.is_key_file(), e.to_string()))
            })
            .clone();
        match loaded {
            Ok(client) => Some(Tls {
                server_name,
                ca_file,
                cert_file,
                key_file,
                warn_before,
                client,
            }),
            Err((blame_key, message)) => {
                // Blame the key naming the file that failed, as written.
                let blamed = [
                    ("key_file", &table.key_file),
                    ("cert_file", &table.cert_file),
                    ("ca_file", &table.ca_file),
                ]
                .into_iter()
                .filter(|(name, _)| !blame_key || *name == "key_file")
                .find_map(|(name, v)| {
                    v.as_ref()
                        .filter(|v| blame_key || message.contains(v.get_ref().as_str()))
                        .map(|v| (name, v.span()))
                });
                let (span, k) = match blamed {
                    Some((name, span)) => (span, format!("{key}.{name}")),
                    None => (v.span(), key.to_owned()),
                };
                self.err(Some(span), k, message);
                None
            }
        }
    }

    /// Checks `[defaults]` on its own, so that a bad inherited value is reported even
    /// when every target overrides it, or when there is no target yet.
    fn check_defaults(&mut self, d: &RawDefaults) {
        for (v, name, zero_ok) in [
            (&d.connect_timeout, "connect_timeout", false),
            (&d.hook_timeout, "hook_timeout", false),
            (&d.recover_after, "recover_after", true),
            (&d.resolve_interval, "resolve_interval", false),
        ] {
            self.duration(pick(&None, v, 0, name), Duration::ZERO, zero_ok);
        }
        self.threshold(pick(&None, &d.failure_threshold, 0, "failure_threshold"));
        self.check_pair(
            pick(&None, &d.check_interval, 0, "check_interval"),
            pick(&None, &d.check_timeout, 0, "check_timeout"),
        );
        self.backoff(0, None, d.backoff.as_ref());
        self.keepalive(0, None, d.keepalive.as_ref());
        if let Some(p) = &d.probe {
            self.probe(p, "defaults.probe");
        }
        self.hooks(0, None, d.hooks.as_ref());
        if let Some(v) = &d.tls {
            // Checked as a target at a placeholder address would use it: the server
            // name and files are the same for every target that inherits it.
            self.tls(v, "defaults.tls", &Address::new("localhost", 1));
        }
    }

    /// `check_interval` and `check_timeout` of a target. Written on a `tcp` target they
    /// are a mistake (nothing would ever use them); inherited from `[defaults]` they
    /// are not, since the defaults serve every kind of target.
    fn check(&mut self, i: usize, t: &RawTarget, d: &RawDefaults, probe: &Probe) -> Option<Check> {
        if probe.is_tcp() {
            for (v, name) in [
                (&t.check_interval, "check_interval"),
                (&t.check_timeout, "check_timeout"),
            ] {
                if let Some(v) = v {
                    self.err(
                        Some(v.span()),
                        format!("targets[{i}].{name}"),
                        format!(
                            "`{name}` is a setting of protocol probes; a tcp target has no check to time (its connection is watched by keepalive)"
                        ),
                    );
                }
            }
        }
        let (interval, timeout) = self.check_pair(
            pick(&t.check_interval, &d.check_interval, i, "check_interval"),
            pick(&t.check_timeout, &d.check_timeout, i, "check_timeout"),
        );
        (!probe.is_tcp()).then_some(Check { interval, timeout })
    }

    /// Both above zero, and the answer due before the next check is.
    fn check_pair(
        &mut self,
        interval: Option<At<HumanDuration>>,
        timeout: Option<At<HumanDuration>>,
    ) -> (HumanDuration, HumanDuration) {
        // Blame the value closest to the target, as for the backoff's bounds.
        let blame = match (&interval, &timeout) {
            (Some(iv), Some(to))
                if iv.key.starts_with("targets") && !to.key.starts_with("targets") =>
            {
                Some((iv.span.clone(), iv.key.clone()))
            }
            (_, Some(to)) => Some((to.span.clone(), to.key.clone())),
            (Some(iv), None) => Some((iv.span.clone(), iv.key.clone())),
            (None, None) => None,
        };
        let interval = self.duration(interval, builtin::CHECK_INTERVAL, false);
        // Unset, the timeout follows a short interval down, so that `check_interval`
        // alone can be tightened.
        let timeout = self.duration(
            timeout,
            builtin::CHECK_TIMEOUT.min(interval.get() / 2),
            false,
        );
        if let (true, Some((span, key))) = (timeout >= interval, blame) {
            self.err(
                Some(span),
                key,
                format!(
                    "check_timeout ({timeout}) must be below check_interval ({interval}): an answer is due before the next check"
                ),
            );
        }
        (interval, timeout)
    }

    fn threshold(&mut self, v: Option<At<i64>>) -> u32 {
        match v {
            None => builtin::FAILURE_THRESHOLD,
            Some(at) => match u32::try_from(at.value) {
                Ok(n) if n >= 1 => n,
                _ => {
                    self.err(
                        Some(at.span),
                        at.key,
                        format!("must be between 1 and {}, got {}", u32::MAX, at.value),
                    );
                    builtin::FAILURE_THRESHOLD
                }
            },
        }
    }

    fn duration(
        &mut self,
        v: Option<At<HumanDuration>>,
        default: Duration,
        zero_ok: bool,
    ) -> HumanDuration {
        match v {
            None => HumanDuration(default),
            Some(at) if at.value.get().is_zero() && !zero_ok => {
                self.err(Some(at.span), at.key, "duration must be greater than zero");
                HumanDuration(default)
            }
            Some(at) => at.value,
        }
    }

    fn backoff(
        &mut self,
        i: usize,
        t: Option<&Spanned<RawBackoff>>,
        d: Option<&Spanned<RawBackoff>>,
    ) -> Backoff {
        let t = t.map(Spanned::get_ref);
        let d = d.map(Spanned::get_ref);
        let field = |f: fn(&RawBackoff) -> Option<&Spanned<HumanDuration>>, name: &str| {
            pick_nested(t.and_then(f), d.and_then(f), i, "backoff", name)
        };
        let initial = field(|b| b.initial.as_ref(), "initial");
        let max = field(|b| b.max.as_ref(), "max");
        // Blame the value closest to the target: a target's own `max` below an inherited
        // `initial` is that target's mistake, not the defaults'.
        let blame = match (&initial, &max) {
            (Some(i), Some(m)) if m.key.starts_with("targets") && !i.key.starts_with("targets") => {
                Some((m.span.clone(), m.key.clone()))
            }
            (Some(i), _) => Some((i.span.clone(), i.key.clone())),
            (None, Some(m)) => Some((m.span.clone(), m.key.clone())),
            (None, None) => None,
        };
        let initial = self.duration(initial, builtin::BACKOFF_INITIAL, false);
        let max = self.duration(max, builtin::BACKOFF_MAX, false);
        if let (true, Some((span, key))) = (initial > max, blame) {
            self.err(
                Some(span),
                key,
                format!("initial ({initial}) must not be greater than max ({max})"),
            );
        }
        let float = |f: fn(&RawBackoff) -> Option<&Spanned<f64>>, name: &str| {
            pick_nested(t.and_then(f), d.and_then(f), i, "backoff", name)
        };
        let multiplier = match float(|b| b.multiplier.as_ref(), "multiplier") {
            None => builtin::BACKOFF_MULTIPLIER,
            Some(at) if at.value.is_finite() && (1.0..=100.0).contains(&at.value) => at.value,
            Some(at) => {
                self.err(
                    Some(at.span),
                    at.key,
                    format!("must be between 1.0 and 100.0, got {}", at.value),
                );
                builtin::BACKOFF_MULTIPLIER
            }
        };
        let jitter = match float(|b| b.jitter.as_ref(), "jitter") {
            None => builtin::BACKOFF_JITTER,
            Some(at) if at.value.is_finite() && (0.0..=1.0).contains(&at.value) => at.value,
            Some(at) => {
                self.err(
                    Some(at.span),
                    at.key,
                    format!("must be between 0.0 and 1.0, got {}", at.value),
                );
                builtin::BACKOFF_JITTER
            }
        };
        Backoff {
            initial,
            max,
            multiplier,
            jitter,
        }
    }

    fn keepalive(
        &mut self,
        i: usize,
        t: Option<&Spanned<RawKeepalive>>,
        d: Option<&Spanned<RawKeepalive>>,
    ) -> Keepalive {
        let t = t.map(Spanned::get_ref);
        let d = d.map(Spanned::get_ref);
        let mut seconds = |at: Option<At<HumanDuration>>, default: Duration| -> HumanDuration {
            let Some(at) = at else {
                return HumanDuration(default);
            };
            let v = at.value.get();
            if v.subsec_nanos() != 0 || v.as_secs() == 0 || v.as_secs() > MAX_KEEPALIVE_SECS {
                self.err(
                    Some(at.span),
                    at.key,
                    format!(
                        "must be a whole number of seconds from 1s to {MAX_KEEPALIVE_SECS}s (the kernel's unit), got {}",
                        at.value
                    ),
                );
                return HumanDuration(default);
            }
            at.value
        };
        let idle = seconds(
            pick_nested(
                t.and_then(|k| k.idle.as_ref()),
                d.and_then(|k| k.idle.as_ref()),
                i,
                "keepalive",
                "idle",
            ),
            builtin::KEEPALIVE_IDLE,
        );
        let interval = seconds(
            pick_nested(
                t.and_then(|k| k.interval.as_ref()),
                d.and_then(|k| k.interval.as_ref()),
                i,
                "keepalive",
                "interval",
            ),
            builtin::KEEPALIVE_INTERVAL,
        );
        let count = match pick_nested(
            t.and_then(|k| k.count.as_ref()),
            d.and_then(|k| k.count.as_ref()),
            i,
            "keepalive",
            "count",
        ) {
            None => builtin::KEEPALIVE_COUNT,
            Some(at) if (1..=MAX_KEEPALIVE_COUNT).contains(&at.value) => at.value as u32,
            Some(at) => {
                self.err(
                    Some(at.span),
                    at.key,
                    format!(
                        "must be between 1 and {MAX_KEEPALIVE_COUNT}, got {}",
                        at.value
                    ),
                );
                builtin::KEEPALIVE_COUNT
            }
        };
        Keepalive {
            idle,
            interval,
            count,
        }
    }

    fn probe(&mut self, p: &Spanned<RawProbe>, key: &str) -> Probe {
        let span = p.span();
        let (kind, kind_span, table) = match p.get_ref() {
            RawProbe::Kind(k) => (k.as_str(), span.clone(), None),
            RawProbe::Table(t) => (t.kind.get_ref().as_str(), t.kind.span(), Some(&**t)),
        };
        let kind_key = if table.is_some() {
            format!("{key}.kind")
        } else {
            key.to_owned()
        };
        // Settings that only make sense for some kinds are rejected elsewhere, so a
        // misplaced `path` cannot be silently ignored.
        if let Some(t) = table {
            for (name, span) in t.given() {
                let allowed: Vec<&str> = kinds::taking(name).map(|k| k.name).collect();
                if !allowed.contains(&kind) {
                    self.err(
                        Some(span),
                        format!("{key}.{name}"),
                        format!(
                            "`{name}` is a setting of the {} probe, not of \"{kind}\"",
                            allowed.join("/")
                        ),
                    );
                }
            }
        }
        let Some(registered) = kinds::find(kind) else {
            let names: Vec<&str> = kinds::ALL.iter().map(|k| k.name).collect();
            self.err(
                Some(kind_span),
                kind_key,
                format!(
                    "unknown probe kind \"{kind}\": expected one of {}",
                    names.join(", ")
                ),
            );
            return Probe::tcp();
        };
        let mut settings = match table {
            Some(t) => self.probe_settings(t, registered, key),
            None => ProbeSettings::default(),
        };
        if let Err(misfit) = (registered.finish)(&mut settings) {
            let blamed = misfit.key.and_then(|name| {
                let span = table?.given().into_iter().find(|(n, _)| *n == name)?.1;
                Some((span, format!("{key}.{name}")))
            });
            let (span, blamed_key) = blamed.unwrap_or((kind_span, kind_key));
            self.err(Some(span), blamed_key, misfit.message);
        }
        Probe::new(registered, settings)
    }

    /// The settings `kind` takes, each checked by the one rule for its key, whatever the
    /// kind: what a request line, a status line, a login or an environment can carry.
    fn probe_settings(
        &mut self,
        t: &RawProbeTable,
        kind: &kinds::Kind,
        key: &str,
    ) -> ProbeSettings {
        let takes = |name: &str| kind.settings.contains(&name);
        let (password_env, password_file) = if takes("password_env") {
            self.secret_source(
                t.password_env.as_ref(),
                t.password_file.as_ref(),
                key,
                "password",
            )
        } else {
            (None, None)
        };
        let path = t.path.as_ref().filter(|_| takes("path")).map(|v| {
            let p = v.get_ref();
            if let Err(why) = check_http_path(p) {
                self.err(
                    Some(v.span()),
                    format!("{key}.path"),
                    format!("\"{p}\" {why}"),
                );
            }
            p.clone()
        });
        let expect_status = t
            .expect_status
            .as_ref()
            .filter(|_| takes("expect_status"))
            .map(|v| match u16::try_from(*v.get_ref()) {
                Ok(s) if (100..=599).contains(&s) => s,
                _ => {
                    self.err(
                        Some(v.span()),
                        format!("{key}.expect_status"),
                        format!(
                            "must be an HTTP status from 100 to 599, got {}",
                            v.get_ref()
                        ),
                    );
                    builtin::HTTP_STATUS
                }
            });
        let host = t.host.as_ref().filter(|_| takes("host")).map(|v| {
            if v.get_ref().is_empty()
                || v.get_ref()
                    .bytes()
                    .any(|b| b.is_ascii_control() || b == b' ')
            {
                self.err(
                    Some(v.span()),
                    format!("{key}.host"),
                    "must be a non-empty host name without spaces",
                );
            }
            v.get_ref().clone()
        });
        let mut name = |field: &str, value: Option<&Spanned<String>>| {
            value.filter(|_| takes(field)).map(|v| {
                let text = v.get_ref();
                if text.is_empty() || text.contains('\0') {
                    self.err(
                        Some(v.span()),
                        format!("{key}.{field}"),
                        "must be a non-empty name without NUL characters",
                    );
                }
                text.clone()
            })
        };
        let user = name("user", t.user.as_ref());
        let database = name("database", t.database.as_ref());
        let mut text =
            |field: &str, value: Option<&Spanned<String>>, rule: fn(&str) -> Result<(), String>| {
                value.filter(|_| takes(field)).map(|v| {
                    if let Err(why) = rule(v.get_ref()) {
                        self.err(Some(v.span()), format!("{key}.{field}"), why);
                    }
                    v.get_ref().clone()
                })
            };
        let send = text("send", t.send.as_ref(), |s| {
            crate::probe::expect::unescape(s).map(drop)
        });
        let expect = text("expect", t.expect.as_ref(), |s| {
            crate::probe::expect::pattern(s).map(drop)
        });
        let service = text(
            "service",
            t.service.as_ref(),
            crate::probe::grpc::check_service,
        );
        ProbeSettings {
            path,
            expect_status,
            host,
            user,
            database,
            password_env,
            password_file,
            send,
            expect,
            service,
        }
    }

    fn hooks(&mut self, i: usize, t: Option<&RawHooks>, d: Option<&RawHooks>) -> Hooks {
        let event =
            |this: &mut Self, f: fn(&RawHooks) -> Option<&Spanned<RawActions>>, name: &str| {
                // A target's list for an event replaces the inherited one as a whole:
                // merging two lists would leave the order of actions ambiguous.
                match (t.and_then(f), d.and_then(f)) {
                    (Some(v), _) => this.actions(v, &format!("targets[{i}].hooks.{name}")),
                    (None, Some(v)) => this.actions(v, &format!("defaults.hooks.{name}")),
                    (None, None) => Vec::new(),
                }
            };
        Hooks {
            on_connect: event(self, |h| h.on_connect.as_ref(), "on_connect"),
            on_disconnect: event(self, |h| h.on_disconnect.as_ref(), "on_disconnect"),
            on_failure: event(self, |h| h.on_failure.as_ref(), "on_failure"),
            on_recover: event(self, |h| h.on_recover.as_ref(), "on_recover"),
        }
    }

    fn actions(&mut self, v: &Spanned<RawActions>, key: &str) -> Vec<HookAction> {
        match v.get_ref() {
            RawActions::One(a) => self.action(a, v.span(), key).into_iter().collect(),
            RawActions::Many(list) => list
                .iter()
                .enumerate()
                .filter_map(|(n, a)| self.action(a.get_ref(), a.span(), &format!("{key}[{n}]")))
                .collect(),
        }
    }

    fn action(&mut self, a: &RawAction, span: Range<usize>, key: &str) -> Option<HookAction> {
        let set = [a.command.is_some(), a.shell.is_some(), a.webhook.is_some()]
            .iter()
            .filter(|b| **b)
            .count();
        if set != 1 {
            self.err(
                Some(span),
                key,
                "a hook action needs exactly one of `command`, `shell` or `webhook`",
            );
            return None;
        }
        if a.webhook.is_none() {
            for (name, s) in [
                ("headers", a.headers.as_ref().map(Spanned::span)),
                ("secret_env", a.secret_env.as_ref().map(Spanned::span)),
                ("secret_file", a.secret_file.as_ref().map(Spanned::span)),
            ] {
                if let Some(s) = s {
                    self.err(
                        Some(s),
                        format!("{key}.{name}"),
                        format!("`{name}` applies only to `webhook` actions"),
                    );
                }
            }
        }
        if let Some(c) = &a.command {
            if c.get_ref().first().is_none_or(|p| p.is_empty()) {
                self.err(
                    Some(c.span()),
                    format!("{key}.command"),
                    "must name a program: an array like [\"/path/to/program\", \"arg\"]",
                );
                return None;
            }
            return Some(HookAction::Command {
                command: c.get_ref().clone(),
            });
        }
        if let Some(s) = &a.shell {
            if s.get_ref().trim().is_empty() {
                self.err(Some(s.span()), format!("{key}.shell"), "must not be empty");
                return None;
            }
            return Some(HookAction::Shell {
                shell: s.get_ref().clone(),
            });
        }
        let w = a.webhook.as_ref().expect("exactly one action kind is set");
        if let Err(why) = check_url(w.get_ref()) {
            self.err(Some(w.span()), format!("{key}.webhook"), why);
            return None;
        }
        let headers: BTreeMap<String, String> = a
            .headers
            .as_ref()
            .map(|h| h.get_ref().clone())
            .unwrap_or_default();
        if let Some(h) = &a.headers {
            for (name, value) in h.get_ref() {
                if let Err(why) = check_header(name, value) {
                    self.err(
                        Some(h.span()),
                        format!("{key}.headers"),
                        format!("invalid HTTP header \"{name}\": {why}"),
                    );
                }
            }
        }
        let (secret_env, secret_file) =
            self.secret_source(a.secret_env.as_ref(), a.secret_file.as_ref(), key, "secret");
        Some(HookAction::Webhook {
            webhook: w.get_ref().clone(),
            headers,
            secret_env,
            secret_file,
        })
    }

    /// `{name}_env` or `{name}_file`, at most one of them: a variable's name, or a path.
    fn secret_source(
        &mut self,
        env: Option<&Spanned<String>>,
        file: Option<&Spanned<String>>,
        key: &str,
        name: &str,
    ) -> (Option<String>, Option<PathBuf>) {
        if let (Some(_), Some(f)) = (env, file) {
            self.err(
                Some(f.span()),
                format!("{key}.{name}_file"),
                format!("set `{name}_env` or `{name}_file`, not both"),
            );
        }
        let env = env.map(|v| {
            if !valid_env_name(v.get_ref()) {
                self.err(
                    Some(v.span()),
                    format!("{key}.{name}_env"),
                    format!(
                        "\"{}\" is not a valid environment variable name",
                        v.get_ref()
                    ),
                );
            }
            v.get_ref().clone()
        });
        let file = file.map(|v| {
            if v.get_ref().trim().is_empty() {
                self.err(
                    Some(v.span()),
                    format!("{key}.{name}_file"),
                    "must be the path of a file",
                );
            }
            PathBuf::from(v.get_ref())
        });
        (env, file)
    }
}

/// The target's own value if set, else the inherited one, remembering which it was so
/// that an error points at the line that actually holds the value.
fn pick<T: Clone>(
    t: &Option<Spanned<T>>,
    d: &Option<Spanned<T>>,
    i: usize,
    name: &str,
) -> Option<At<T>> {
    match (t, d) {
        (Some(v), _) => Some(at(v, format!("targets[{i}].{name}"))),
        (None, Some(v)) => Some(at(v, format!("defaults.{name}"))),
        (None, None) => None,
    }
}

fn pick_nested<T: Clone>(
    t: Option<&Spanned<T>>,
    d: Option<&Spanned<T>>,
    i: usize,
    table: &str,
    name: &str,
) -> Option<At<T>> {
    match (t, d) {
        (Some(v), _) => Some(at(v, format!("targets[{i}].{table}.{name}"))),
        (None, Some(v)) => Some(at(v, format!("defaults.{table}.{name}"))),
        (None, None) => None,
    }
}

fn at<T: Clone>(v: &Spanned<T>, key: String) -> At<T> {
    At {
        value: v.get_ref().clone(),
        span: v.span(),
        key,
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The rule for an http probe's path, in the config and on the command line alike.
pub fn check_http_path(path: &str) -> Result<(), &'static str> {
    if path.starts_with('/') && !path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        Ok(())
    } else {
        Err("must start with '/' and contain no spaces or control characters")
    }
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Headers that tether writes itself: the request's framing and routing, and its own
/// `X-Tether-*`. A user's value would contradict them (a `Content-Length` of 5 sent 5
/// bytes of a longer body, and the delivery was logged as a success).
const OWNED_HEADERS: [&str; 10] = [
    "content-length",
    "transfer-encoding",
    "host",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "proxy-connection",
];

/// A header a webhook may carry: a token for a name, visible characters (and spaces,
/// tabs) for a value, and none of the headers tether owns.
fn check_header(name: &str, value: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err("a name is a token: letters, digits and !#$%&'*+-.^_`|~".to_owned());
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err("the value holds a control character".to_owned());
    }
    let lower = name.to_ascii_lowercase();
    if OWNED_HEADERS.contains(&lower.as_str()) || lower.starts_with("x-tether-") {
        return Err("tether sets this header itself".to_owned());
    }
    Ok(())
}

/// A webhook URL as the HTTP client will parse it (the `http` crate's `Uri`, which hyper
/// builds requests from), so that a URL accepted here can always be sent to.
fn check_url(url: &str) -> Result<(), String> {
    if url.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(format!("\"{url}\" contains spaces or control characters"));
    }
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .ok_or_else(|| format!("\"{url}\" must be an http:// or https:// URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let named = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if named.is_empty() || named.starts_with(':') {
        return Err(format!("\"{url}\" has no host"));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("\"{url}\" is not a valid URL: {e}"))?;
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(format!("\"{url}\" has no host"));
    }
    if let Some(literal) = host.strip_prefix('[') {
        let inner = literal.strip_suffix(']').unwrap_or(literal);
        if inner.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("\"{url}\" has an invalid IPv6 address \"{host}\""));
        }
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(format!(
            "\"{url}\" carries credentials: use secret_env to sign, or headers"
        ));
    }
    Ok(())
}

/// Where each line of the file starts, so that placing an error costs a binary search
/// rather than a scan of the text before it: a file with thousands of mistakes is
/// reported in linear time.
struct LineIndex {
    starts: Vec<usize>,
}

impl LineIndex {
    fn new(text: &str) -> LineIndex {
        let mut starts = vec![0];
        starts.extend(
            text.bytes()
                .enumerate()
                .filter(|(_, b)| *b == b'\n')
                .map(|(i, _)| i + 1),
        );
        LineIndex { starts }
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn line_col(&self, text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        (line, text[start..offset].chars().count() + 1)
    }
}

#[cfg(test)]
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    LineIndex::new(text).line_col(text, offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(text: &str) -> Vec<Target> {
        parse(text, Path::new("t.toml"))
            .unwrap_or_else(|d| panic!("{d:?}"))
            .targets
    }

    #[test]
    fn targets_with_the_same_hooks_share_one_copy_and_others_have_their_own() {
        let t = targets(
            r#"
            [defaults.hooks]
            on_failure = { command = ["/usr/local/bin/fallback", "on"] }
            [[targets]]
            name = "a"
            address = "127.0.0.1:1"
            [[targets]]
            name = "b"
            address = "127.0.0.1:2"
            [[targets]]
            name = "c"
            address = "127.0.0.1:3"
            [targets.hooks]
            on_failure = { shell = "echo c" }
            "#,
        );
        assert!(Arc::ptr_eq(&t[0].hooks, &t[1].hooks));
        assert!(!Arc::ptr_eq(&t[1].hooks, &t[2].hooks));
        assert_eq!(
            t[2].hooks.on_failure,
            [HookAction::Shell {
                shell: "echo c".into()
            }]
        );
        assert_eq!(t[0].hooks.on_failure.len(), 1);
    }

    /// Every watched target keeps its settings for life: at 10,000 targets each byte of
    /// them is 10 KB. What most targets do not use (probe settings, TLS) is shared or
    /// boxed, and two `tcp` targets hold the same empty probe settings.
    #[test]
    fn a_targets_settings_stay_small_and_empty_probe_settings_are_shared() {
        const BUDGET: usize = 320;
        let size = std::mem::size_of::<Target>();
        eprintln!("a target's settings: {size} bytes (budget {BUDGET})");
        assert!(size <= BUDGET, "a target's settings are {size} bytes");
        let t = targets(
            "[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
             [[targets]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n",
        );
        assert!(Arc::ptr_eq(&t[0].probe.settings, &t[1].probe.settings));
    }

    #[test]
    fn a_tcp_target_inherits_check_settings_without_error_and_has_no_check() {
        let t = targets(
            r#"
            [defaults]
            check_interval = "300ms"
            check_timeout = "100ms"
            [[targets]]
            name = "db"
            address = "127.0.0.1:5432"
            [[targets]]
            name = "cache"
            address = "127.0.0.1:6379"
            probe = "redis"
            "#,
        );
        assert_eq!(t[0].check, None);
        let check = t[1].check.expect("a redis target has a check");
        assert_eq!(check.interval.get(), Duration::from_millis(300));
        assert_eq!(check.timeout.get(), Duration::from_millis(100));
    }

    #[test]
    fn an_unset_check_timeout_follows_a_short_check_interval_down() {
        let t = targets(
            r#"
            [[targets]]
            name = "fast"
            address = "127.0.0.1:6379"
            probe = "redis"
            check_interval = "100ms"
            [[targets]]
            name = "default"
            address = "127.0.0.1:6379"
            probe = "redis"
            "#,
        );
        let fast = t[0].check.unwrap();
        assert_eq!(fast.timeout.get(), Duration::from_millis(50));
        let default = t[1].check.unwrap();
        assert_eq!(default.interval.get(), builtin::CHECK_INTERVAL);
        assert_eq!(default.timeout.get(), builtin::CHECK_TIMEOUT);
    }

    #[test]
    fn a_postgres_session_takes_a_user_a_database_and_a_password() {
        let t = targets(
            r#"
            [[targets]]
            name = "db"
            address = "127.0.0.1:5432"
            probe = { kind = "postgres", user = "tether", password_env = "PGPASS" }
            [[targets]]
            name = "trust"
            address = "127.0.0.1:5432"
            probe = { kind = "postgres", user = "tether", database = "orders" }
            "#,
        );
        assert_eq!(t[0].probe.kind.name, "postgres");
        assert_eq!(
            *t[0].probe.settings,
            ProbeSettings {
                user: Some("tether".into()),
                password_env: Some("PGPASS".into()),
                ..ProbeSettings::default()
            }
        );
        assert_eq!(
            t[0].probe.password(),
            Some(crate::secrets::Source::Env("PGPASS".into()))
        );
        assert!(t[1].probe.password().is_none());
    }

    #[test]
    fn a_targets_tls_replaces_the_inherited_one_whole_and_true_means_public_roots() {
        let t = targets(
            r#"
            [defaults]
            tls = { server_name = "cache.example", warn_before = "30d" }
            [[targets]]
            name = "inherits"
            address = "10.0.0.7:6380"
            [[targets]]
            name = "own"
            address = "cache.internal:6380"
            tls = true
            [[targets]]
            name = "off"
            address = "10.0.0.8:6379"
            tls = false
            "#,
        );
        let inherited = t[0].tls.as_ref().unwrap();
        assert_eq!(inherited.server_name, "cache.example");
        assert_eq!(inherited.warn_before.get(), Duration::from_secs(30 * 86400));
        // Nothing of the defaults' table is merged in: the address's host, the built-in
        // warning.
        let own = t[1].tls.as_ref().unwrap();
        assert_eq!(own.server_name, "cache.internal");
        assert_eq!(own.warn_before.get(), builtin::TLS_WARN_BEFORE);
        assert!(own.ca_file.is_none());
        assert!(t[2].tls.is_none());
    }

    #[test]
    fn tls_settings_are_equal_only_while_their_files_hold_the_same_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        let cert = |name: &str| {
            let key = rcgen::KeyPair::generate().unwrap();
            let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.self_signed(&key).unwrap().pem()
        };
        let text = format!(
            "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\ntls = {{ ca_file = \"{}\" }}\n",
            ca.display()
        );
        std::fs::write(&ca, cert("one.example")).unwrap();
        let first = targets(&text);
        assert_eq!(
            first,
            targets(&text),
            "the same files load as the same settings"
        );
        std::fs::write(&ca, cert("two.example")).unwrap();
        assert_ne!(first, targets(&text), "a rotated CA is a changed target");
        std::fs::write(&ca, "not PEM").unwrap();
        let e = parse(&text, Path::new("t.toml")).unwrap_err();
        assert_eq!(e[0].key, "targets[0].tls.ca_file");
        assert!(
            e[0].message.contains(&ca.display().to_string()),
            "{}",
            e[0].message
        );
    }

    #[test]
    fn line_and_column_count_characters_from_one() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, text.find('=').unwrap()), (1, 3));
        let second_eq = text.rfind('=').unwrap();
        assert_eq!(line_col(text, second_eq), (2, 4));
    }
}
