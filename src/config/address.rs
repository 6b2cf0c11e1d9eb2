//! `host:port` addresses. The host stays a name, not an IP, because it is resolved again
//! on every connect attempt: a dependency that moves (DNS failover, a re-pointed
//! Kubernetes service) is followed without a restart.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A validated `host:port`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Address {
    host: String,
    port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error(
        "invalid address \"{0}\": expected host:port (e.g. \"db.internal:5432\" or \"[::1]:6379\")"
    )]
    Shape(String),
    #[error("invalid address \"{0}\": port must be a number from 1 to 65535")]
    Port(String),
    #[error("invalid address \"{0}\": \"{1}\" is neither an IP address nor a valid host name")]
    Host(String, String),
}

impl Address {
    pub fn new(host: impl Into<String>, port: u16) -> Address {
        Address {
            host: host.into(),
            port,
        }
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP when it is a literal, so resolution can be skipped.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Address, AddressError> {
        let shape = || AddressError::Shape(s.to_owned());
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (host, port) = rest.split_once("]:").ok_or_else(shape)?;
            if host.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(AddressError::Host(s.to_owned(), host.to_owned()));
            }
            (host, port)
        } else {
            let (host, port) = s.rsplit_once(':').ok_or_else(shape)?;
            if host.contains(':') {
                // A bare IPv6 literal is ambiguous: which colon starts the port?
                return Err(shape());
            }
            if !valid_host(host) {
                return Err(AddressError::Host(s.to_owned(), host.to_owned()));
            }
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 && !port.starts_with('+') => p,
            _ => return Err(AddressError::Port(s.to_owned())),
        };
        Ok(Address::new(host, port))
    }
}

/// RFC 1123 host names (plus `_`, which real service names use) and IPv4 literals.
fn valid_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl Serialize for Address {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_ipv4_and_bracketed_ipv6() {
        let a: Address = "db.internal:5432".parse().unwrap();
        assert_eq!((a.host(), a.port()), ("db.internal", 5432));
        let a: Address = "127.0.0.1:6379".parse().unwrap();
        assert_eq!(a.ip(), Some("127.0.0.1".parse().unwrap()));
        let a: Address = "[::1]:6379".parse().unwrap();
        assert_eq!(a.host(), "::1");
        assert_eq!(a.to_string(), "[::1]:6379");
    }

    #[test]
    fn rejects_what_cannot_be_connected_to() {
        for bad in [
            "db",
            "db:",
            ":5432",
            "db:0",
            "db:65536",
            "db:+5",
            "::1:6379",
            "[::1]6379",
            "[db]:5",
            "d b:5",
            "db;rm -rf /:5",
            "-db:5",
            "a..b:5",
        ] {
            assert!(bad.parse::<Address>().is_err(), "{bad} was accepted");
        }
    }
}
