//! `[[groups]]`: targets that stand in for one another, so the application asks
//! "which store now" rather than "is db up". The decision itself is
//! [`crate::watch::group`]; this is what the user configured.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::{HookAction, HumanDuration};
pub use crate::probe::Role;

/// One failover group with every default filled in.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Group {
    pub name: String,
    /// Target names, in order of preference.
    pub members: Vec<String>,
    /// The role members must report to be eligible; any member that is up will do
    /// without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// What `TETHER_ACTIVE` says while no member is eligible.
    pub fallback: String,
    pub failback: Failback,
    /// How long a preferred member must stay eligible before `hold` returns to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failback_after: Option<HumanDuration>,
    /// Whether the group counts toward `/readyz` (ready while a member is active). Its
    /// members then count only through it.
    pub required: bool,
    pub hook_timeout: HumanDuration,
    pub hooks: GroupHooks,
}

impl Group {
    /// The name hooks and metrics give the active member, or the fallback.
    pub fn active_name(&self, active: crate::watch::group::Active) -> &str {
        match active {
            crate::watch::group::Active::Member(i) => &self.members[i],
            crate::watch::group::Active::Fallback => &self.fallback,
        }
    }

    /// The decision machine's settings; `recover_after` of each member from `targets`.
    pub fn policy(&self, config: &super::Config) -> crate::watch::group::Policy {
        use crate::watch::group::{Failback as Machine, Policy};
        let failback = match self.failback {
            Failback::Immediate => Machine::Immediate,
            Failback::Hold => Machine::Hold(
                self.failback_after
                    .map_or(super::validate::builtin::FAILBACK_AFTER, HumanDuration::get),
            ),
            Failback::Manual => Machine::Manual,
        };
        Policy {
            failback,
            recover_after: self
                .members
                .iter()
                .map(|m| {
                    config
                        .target(m)
                        .map_or(std::time::Duration::ZERO, |t| t.recover_after.get())
                })
                .collect(),
            needs_role: self.role.is_some(),
            detects_conflicts: self.role == Some(Role::Primary),
        }
    }
}

/// When a more preferred member takes over from an eligible active one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Failback {
    Immediate,
    Hold,
    Manual,
}

impl Failback {
    pub const NAMES: &'static str = "\"immediate\", \"hold\" or \"manual\"";
}

impl FromStr for Failback {
    type Err = ();

    fn from_str(s: &str) -> Result<Failback, ()> {
        match s {
            "immediate" => Ok(Failback::Immediate),
            "hold" => Ok(Failback::Hold),
            "manual" => Ok(Failback::Manual),
            _ => Err(()),
        }
    }
}

/// The hook actions of one group.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct GroupHooks {
    /// Once per change of the active member.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_change: Vec<HookAction>,
    /// When members start and stop disagreeing on which is primary.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub on_conflict: Vec<HookAction>,
}

impl GroupHooks {
    pub fn is_empty(&self) -> bool {
        self.on_change.is_empty() && self.on_conflict.is_empty()
    }

    pub fn all(&self) -> impl Iterator<Item = &HookAction> {
        self.on_change.iter().chain(&self.on_conflict)
    }
}
