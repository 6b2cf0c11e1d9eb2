//! The config file exactly as written: serde structs that keep the position of every
//! value, so that validation can point at the line and column of the offending key.

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

use super::duration::HumanDuration;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default)]
    pub defaults: RawDefaults,
    #[serde(default)]
    pub supervisor: RawSupervisor,
    /// Boxed: a parsed target is large (every key optional, each with its position),
    /// and a growing `Vec` of them would reserve room for thousands more at once.
    #[serde(default)]
    pub targets: Vec<Spanned<Box<RawTarget>>>,
    #[serde(default)]
    pub groups: Vec<Spanned<RawGroup>>,
}

/// `[[groups]]`: members in order of preference and how to choose among them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroup {
    pub name: Spanned<String>,
    pub members: Spanned<Vec<Spanned<String>>>,
    pub role: Option<Spanned<String>>,
    pub fallback: Option<Spanned<String>>,
    pub failback: Option<Spanned<String>>,
    pub failback_after: Option<Spanned<HumanDuration>>,
    pub required: Option<bool>,
    pub hook_timeout: Option<Spanned<HumanDuration>>,
    pub hooks: Option<RawGroupHooks>,
}

/// `[groups.hooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGroupHooks {
    pub on_change: Option<Spanned<RawActions>>,
    pub on_conflict: Option<Spanned<RawActions>>,
}

/// `[supervisor]`: restart intensity of crashed actors, and shutdown.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSupervisor {
    pub max_restarts: Option<Spanned<i64>>,
    pub max_seconds: Option<Spanned<i64>>,
    pub cooldown: Option<Spanned<HumanDuration>>,
    pub shutdown_grace: Option<Spanned<HumanDuration>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub listen: Option<Spanned<RawListen>>,
    pub unix_socket: Option<Spanned<String>>,
    pub unix_socket_group: Option<Spanned<String>>,
    pub state_file: Option<Spanned<String>>,
    pub events_history: Option<Spanned<i64>>,
    pub events_heartbeat: Option<Spanned<HumanDuration>>,
    pub max_subscribers: Option<Spanned<i64>>,
}

/// `listen = "IP:port"`, or `listen = false` for no TCP listener. `true` is kept as
/// written so validation can say what to write instead.
#[derive(Debug)]
pub enum RawListen {
    Address(String),
    Enabled(bool),
}

impl<'de> Deserialize<'de> for RawListen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ListenVisitor;

        impl Visitor<'_> for ListenVisitor {
            type Value = RawListen;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address (\"127.0.0.1:9464\") or false")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawListen, E> {
                Ok(RawListen::Address(v.to_owned()))
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawListen, E> {
                Ok(RawListen::Enabled(v))
            }
        }

        deserializer.deserialize_any(ListenVisitor)
    }
}

/// `[defaults]`: the settings every target inherits, plus the process-wide ones.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDefaults {
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub failure_threshold: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<RawBackoff>>,
    pub keepalive: Option<Spanned<RawKeepalive>>,
    pub hook_timeout: Option<Spanned<HumanDuration>>,
    pub recover_after: Option<Spanned<HumanDuration>>,
    pub resolve_interval: Option<Spanned<HumanDuration>>,
    pub check_interval: Option<Spanned<HumanDuration>>,
    pub check_timeout: Option<Spanned<HumanDuration>>,
    pub probe: Option<Spanned<RawProbe>>,
    pub required: Option<bool>,
    pub hooks: Option<RawHooks>,
    pub max_concurrent_hooks: Option<Spanned<i64>>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `[[targets]]`: one watched dependency; every key of `[defaults]` but the
/// process-wide ones may be overridden here.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTarget {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub probe: Option<Spanned<RawProbe>>,
    pub required: Option<bool>,
    pub connect_timeout: Option<Spanned<HumanDuration>>,
    pub failure_threshold: Option<Spanned<i64>>,
    pub backoff: Option<Spanned<RawBackoff>>,
    pub keepalive: Option<Spanned<RawKeepalive>>,
    pub hook_timeout: Option<Spanned<HumanDuration>>,
    pub recover_after: Option<Spanned<HumanDuration>>,
    pub resolve_interval: Option<Spanned<HumanDuration>>,
    pub check_interval: Option<Spanned<HumanDuration>>,
    pub check_timeout: Option<Spanned<HumanDuration>>,
    pub hooks: Option<RawHooks>,
    pub tls: Option<Spanned<RawTls>>,
}

/// `tls = true` (the bundled roots, the address's host as server name), `tls = false`
/// (none, also to turn off what `[defaults]` set), or a table.
#[derive(Debug)]
pub enum RawTls {
    Enabled(bool),
    Table(Box<RawTlsTable>),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTlsTable {
    pub server_name: Option<Spanned<String>>,
    pub ca_file: Option<Spanned<String>>,
    pub cert_file: Option<Spanned<String>>,
    pub key_file: Option<Spanned<String>>,
    pub warn_before: Option<Spanned<HumanDuration>>,
}

impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TlsVisitor;

        impl<'de> Visitor<'de> for TlsVisitor {
            type Value = RawTls;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table (`{ ca_file = \"...\" }`)")
            }

            fn visit_bool<E: de::Error>(self, v: bool) -> Result<RawTls, E> {
                Ok(RawTls::Enabled(v))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawTls::Table(Box::new(t)))
            }
        }

        deserializer.deserialize_any(TlsVisitor)
    }
}

/// Every field optional: a target may override just `max` and inherit the rest.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBackoff {
    pub initial: Option<Spanned<HumanDuration>>,
    pub max: Option<Spanned<HumanDuration>>,
    pub multiplier: Option<Spanned<f64>>,
    pub jitter: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeepalive {
    pub idle: Option<Spanned<HumanDuration>>,
    pub interval: Option<Spanned<HumanDuration>>,
    pub count: Option<Spanned<i64>>,
}

/// `probe = "redis"` or `probe = { kind = "http", path = "/healthz" }`.
#[derive(Debug)]
pub enum RawProbe {
    Kind(String),
    Table(Box<RawProbeTable>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawProbeTable {
    pub kind: Spanned<String>,
    pub path: Option<Spanned<String>>,
    pub expect_status: Option<Spanned<i64>>,
    pub host: Option<Spanned<String>>,
    pub password_env: Option<Spanned<String>>,
    pub password_file: Option<Spanned<String>>,
    pub user: Option<Spanned<String>>,
    pub database: Option<Spanned<String>>,
    pub send: Option<Spanned<String>>,
    pub expect: Option<Spanned<String>>,
    pub service: Option<Spanned<String>>,
}

impl RawProbeTable {
    /// The settings written, besides `kind`, and where.
    pub fn given(&self) -> Vec<(&'static str, Range<usize>)> {
        let span = |v: Option<Range<usize>>, name| v.map(|s| (name, s));
        [
            span(self.path.as_ref().map(Spanned::span), "path"),
            span(
                self.expect_status.as_ref().map(Spanned::span),
                "expect_status",
            ),
            span(self.host.as_ref().map(Spanned::span), "host"),
            span(
                self.password_env.as_ref().map(Spanned::span),
                "password_env",
            ),
            span(
                self.password_file.as_ref().map(Spanned::span),
                "password_file",
            ),
            span(self.user.as_ref().map(Spanned::span), "user"),
            span(self.database.as_ref().map(Spanned::span), "database"),
            span(self.send.as_ref().map(Spanned::span), "send"),
            span(self.expect.as_ref().map(Spanned::span), "expect"),
            span(self.service.as_ref().map(Spanned::span), "service"),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

impl<'de> Deserialize<'de> for RawProbe {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ProbeVisitor;

        impl<'de> Visitor<'de> for ProbeVisitor {
            type Value = RawProbe;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a probe kind (\"tcp\", \"redis\", ...) or a table with `kind`")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawProbe, E> {
                Ok(RawProbe::Kind(v.to_owned()))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawProbe, A::Error> {
                RawProbeTable::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|t| RawProbe::Table(Box::new(t)))
            }
        }

        deserializer.deserialize_any(ProbeVisitor)
    }
}

/// `[targets.hooks]` / `[defaults.hooks]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHooks {
    pub on_connect: Option<Spanned<RawActions>>,
    pub on_disconnect: Option<Spanned<RawActions>>,
    pub on_failure: Option<Spanned<RawActions>>,
    pub on_recover: Option<Spanned<RawActions>>,
}

/// One hook action; validation checks that exactly one of `command`, `shell` and
/// `webhook` is set, which gives better messages than an untagged enum would.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAction {
    pub command: Option<Spanned<Vec<String>>>,
    pub shell: Option<Spanned<String>>,
    pub webhook: Option<Spanned<String>>,
    pub headers: Option<Spanned<BTreeMap<String, String>>>,
    pub secret_env: Option<Spanned<String>>,
    pub secret_file: Option<Spanned<String>>,
}

/// A single action table, or an array of them, so the common one-action case needs no
/// brackets. Array items keep their own positions for error messages; a single table
/// is positioned by the enclosing `Spanned`.
#[derive(Debug)]
pub enum RawActions {
    One(Box<RawAction>),
    Many(Vec<Spanned<RawAction>>),
}

impl<'de> Deserialize<'de> for RawActions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ActionsVisitor;

        impl<'de> Visitor<'de> for ActionsVisitor {
            type Value = RawActions;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a hook action table or an array of them")
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                RawAction::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|a| RawActions::One(Box::new(a)))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut all = Vec::new();
                while let Some(item) = seq.next_element()? {
                    all.push(item);
                }
                Ok(RawActions::Many(all))
            }
        }

        deserializer.deserialize_any(ActionsVisitor)
    }
}
