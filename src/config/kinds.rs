//! The kinds of probe, registered once: each protocol module in [`crate::probe`]
//! declares its [`Kind`], and config validation, the command line's `--probe`, the
//! prober and the README's table of probes all take them from [`ALL`].

use super::{Address, ProbeSettings};
use crate::probe::Check;

/// A kind of probe as users name it.
#[derive(Debug)]
pub struct Kind {
    /// In `probe = "..."`, `probe = { kind = "..." }` and `--probe`.
    pub name: &'static str,
    /// What a healthy answer is, in a line of `--help`.
    pub summary: &'static str,
    /// What a healthy answer is, in the README's table.
    pub healthy: &'static str,
    /// Where the check runs again while the connection is held, in the README's table.
    pub repeats: &'static str,
    /// The keys of `probe = { kind = ..., ... }` that this kind takes. Each key is
    /// checked on its own, the same way for every kind that takes it (see
    /// [`ProbeSettings`]); [`Kind::finish`] judges them together.
    pub settings: &'static [&'static str],
    /// Fills this kind's defaults in, and refuses combinations that no single key can
    /// be blamed for alone (a PostgreSQL password without a user).
    pub finish: fn(&mut ProbeSettings) -> Result<(), Misfit>,
    /// Whether each check learns the server's replication role with these settings, so
    /// the target can be a member of a group with a `role`.
    pub learns_roles: fn(&ProbeSettings) -> bool,
    /// The ready probe, from settings that passed validation and [`Kind::finish`];
    /// `address` is the target's (the HTTP `Host` header).
    pub build: fn(&ProbeSettings, &Address) -> Check,
}

/// Settings that do not fit together, and the key to blame (`None`: the kind itself,
/// for a setting it needs and did not get).
#[derive(Debug, PartialEq, Eq)]
pub struct Misfit {
    pub key: Option<&'static str>,
    pub message: String,
}

/// For kinds with no defaults and no rule across their settings.
pub fn fits(_: &mut ProbeSettings) -> Result<(), Misfit> {
    Ok(())
}

/// For kinds that cannot ask for a role.
pub fn no_roles(_: &ProbeSettings) -> bool {
    false
}

/// Every kind, in the order the docs and the command line list them.
pub const ALL: &[&Kind] = crate::probe::KINDS;

/// The kind called `name`.
pub fn find(name: &str) -> Option<&'static Kind> {
    ALL.iter().copied().find(|k| k.name == name)
}

/// The kinds that take the setting `key`.
pub fn taking(key: &str) -> impl Iterator<Item = &'static Kind> + '_ {
    ALL.iter()
        .copied()
        .filter(move |k| k.settings.contains(&key))
}

/// The README's table of probes, as it must read.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| probe | healthy means | where the repeated check runs |\n|---|---|---|\n");
    for k in ALL {
        out.push_str(&format!(
            "| `{}` | {} | {} |\n",
            k.name, k.healthy, k.repeats
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_lists_every_probe_kind_as_registered() {
        let readme = include_str!("../../README.md");
        assert!(
            readme.contains(&markdown_table()),
            "README.md's table of probes must read:\n{}",
            markdown_table()
        );
    }

    #[test]
    fn each_setting_belongs_to_the_kinds_that_declare_it() {
        assert_eq!(taking("path").map(|k| k.name).collect::<Vec<_>>(), ["http"]);
        assert_eq!(
            taking("password_file").map(|k| k.name).collect::<Vec<_>>(),
            ["redis", "postgres", "nats", "mqtt"]
        );
        assert!(find("no-such-kind").is_none());
    }

    #[test]
    fn every_setting_a_kind_takes_is_one_validation_knows() {
        for kind in ALL {
            for key in kind.settings {
                assert!(
                    ProbeSettings::KEYS.contains(key),
                    "{}: `{key}` is not a known probe setting",
                    kind.name
                );
            }
        }
    }
}
