//! The kinds of probe, registered once: config validation, the command line's
//! `--probe`, the prober and the README's table of probes all take them from here.

use super::{Probe, builtin};

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
    /// The keys of `probe = { kind = ..., ... }` that only this kind takes.
    pub settings: &'static [&'static str],
    /// The probe written bare (`probe = "redis"`, `--probe redis`): every setting at
    /// its default.
    pub bare: fn() -> Probe,
}

pub const TCP: Kind = Kind {
    name: "tcp",
    summary: "The TCP handshake completes",
    healthy: "the handshake completes (with `tls`, the TLS handshake too)",
    repeats: "nothing is repeated: readiness and keepalive watch the held connection",
    settings: &[],
    bare: || Probe::Tcp,
};

pub const REDIS: Kind = Kind {
    name: "redis",
    summary: "ROLE and PING, PING answered by +PONG (or -NOAUTH); learns the role",
    healthy: "`ROLE` and `PING` pipelined (one round trip, two O(1) commands): `PING` answered by `+PONG`, `-NOAUTH` also counts (see below); `ROLE` tells the role",
    repeats: "on the held connection",
    settings: &["password_env", "password_file"],
    bare: || Probe::Redis {
        password_env: None,
        password_file: None,
    },
};

pub const POSTGRES: Kind = Kind {
    name: "postgres",
    summary: "An SSLRequest is answered by S or N; with a user, SELECT pg_is_in_recovery() in a session",
    healthy: "without `user`: an `SSLRequest` answered by `S` or `N` (no credentials); with `user`: a logged-in session that answers `SELECT pg_is_in_recovery()` (one backend held, one trivial query per check), which tells the role",
    repeats: "without `user`: on a fresh connection, which then replaces the held one; with `user`: on the held session",
    settings: &["user", "database", "password_env", "password_file"],
    bare: || Probe::Postgres {
        user: None,
        database: None,
        password_env: None,
        password_file: None,
    },
};

pub const MYSQL: Kind = Kind {
    name: "mysql",
    summary: "The server greets with a protocol-10 handshake (MySQL, MariaDB)",
    healthy: "the server's initial handshake packet, protocol version 10 (MySQL, MariaDB)",
    repeats: "on a fresh connection, which then replaces the held one",
    settings: &[],
    bare: || Probe::Mysql,
};

pub const HTTP: Kind = Kind {
    name: "http",
    summary: "GET --path is answered by --expect-status (default: GET / answered by 200)",
    healthy: "`GET path` answered with `expect_status`",
    repeats: "on the held connection (keep-alive); on a fresh one for each check when the server closes",
    settings: &["path", "expect_status", "host"],
    bare: || Probe::Http {
        path: builtin::HTTP_PATH.to_owned(),
        expect_status: builtin::HTTP_STATUS,
        host: None,
    },
};

/// Every kind, in the order the docs and the command line list them.
pub const ALL: [&Kind; 5] = [&TCP, &REDIS, &POSTGRES, &MYSQL, &HTTP];

/// The kind called `name`.
pub fn find(name: &str) -> Option<&'static Kind> {
    ALL.into_iter().find(|k| k.name == name)
}

/// The kinds that take the setting `key`.
pub fn taking(key: &str) -> impl Iterator<Item = &'static Kind> + '_ {
    ALL.into_iter().filter(move |k| k.settings.contains(&key))
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
            ["redis", "postgres"]
        );
        assert!(find("memcached").is_none());
    }
}
