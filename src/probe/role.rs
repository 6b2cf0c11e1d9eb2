//! A server's replication role, as its probe learns it on the held connection.
//!
//! Failover groups pick the member that is up *and* reports the role the group wants, so
//! the role is part of what a check learns, not a separate poll. "Unknown" is not a role
//! of its own: it is `Option<Role>::None` (a probe that cannot ask, a check without the
//! credentials to ask, a server that refused the question, no connection held).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The replication role a server reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Accepts writes: a Redis master, a PostgreSQL server not in recovery.
    Primary,
    /// Follows a primary: a Redis replica, a PostgreSQL standby.
    Replica,
}

impl Role {
    /// Every role, in the order docs and metrics list them.
    pub const ALL: [Role; 2] = [Role::Primary, Role::Replica];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role name the config vocabulary does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role \"{0}\": expected one of primary, replica")]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    /// Only the names tether shows: a config written with `master` or `slave` would
    /// read differently from every status it is compared against.
    fn from_str(s: &str) -> Result<Role, UnknownRole> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// `role` as shown where unknown is a value of its own (a metric's label, a table cell).
pub fn name(role: Option<Role>) -> &'static str {
    role.map_or("unknown", Role::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_read_and_print_as_the_config_vocabulary() {
        for role in Role::ALL {
            assert_eq!(role.to_string().parse::<Role>().unwrap(), role);
            assert_eq!(serde_json::to_string(&role).unwrap(), format!("\"{role}\""));
        }
        assert_eq!(name(None), "unknown");
    }

    #[test]
    fn an_unknown_role_name_lists_the_valid_ones() {
        assert_eq!(
            "master".parse::<Role>().unwrap_err().to_string(),
            "unknown role \"master\": expected one of primary, replica"
        );
        assert!("Primary".parse::<Role>().is_err());
    }
}
