//! The `mysql` probe, for MySQL and MariaDB: the server speaks first, with an initial
//! handshake packet of protocol version 10, before any authentication.
//!
//! tether sends nothing. Like PostgreSQL's, the connection cannot carry a second check
//! (the server now waits for a login, and closes the connection after `connect_timeout`),
//! so it is held until the next check opens a fresh one (see [`Afterwards::Hold`]).
//!
//! A server may send an error packet instead of the handshake, and then closes the
//! connection. `1040 Too many connections` means the server is alive but saturated: that
//! is counted as healthy (failing every client over because the server is busy would add
//! a stampede to the overload), and the connection is dropped rather than held. Every
//! other error packet (a blocked host, a host not allowed to connect) is unhealthy.

use super::{Afterwards, Healthy, ProbeError, Protocol, quote};
use crate::tls::Stream;
use tokio::io::AsyncReadExt;

/// The first payload byte of the handshake every MySQL since 3.21 and MariaDB sends.
const PROTOCOL_VERSION: u8 = 10;
/// The first payload byte of an error packet.
const ERR_PACKET: u8 = 0xff;
/// `ER_CON_COUNT_ERROR`: the server is at `max_connections`.
const TOO_MANY_CONNECTIONS: u16 = 1040;
/// `ER_HOST_IS_BLOCKED`: too many interrupted connections from this host.
const HOST_IS_BLOCKED: u16 = 1129;
/// A handshake is about a hundred bytes; a larger first packet is not one.
const MAX_PACKET: usize = 16 * 1024;

#[derive(Debug)]
pub struct Mysql;

impl Protocol for Mysql {
    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        // Packet header: 3-byte little-endian payload length, then a sequence number.
        let mut header = [0u8; 4];
        read_exact(stream, &mut header).await?;
        let length = u32::from_le_bytes([header[0], header[1], header[2], 0]) as usize;
        if length == 0 || length > MAX_PACKET {
            return Err(ProbeError::Garbled {
                protocol: "MySQL",
                detail: format!("a first packet of {length} bytes"),
            });
        }
        let mut payload = vec![0u8; length];
        read_exact(stream, &mut payload).await?;
        let after = classify(&payload)?;
        if after == Afterwards::Drop {
            tracing::warn!(
                peer = ?stream.peer_addr().ok(),
                "mysql server has too many connections; it answers, so it counts as healthy"
            );
        }
        Ok(after.into())
    }
}

async fn read_exact(stream: &mut Stream, buf: &mut [u8]) -> Result<(), ProbeError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProbeError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// Decides on the first packet's payload.
fn classify(payload: &[u8]) -> Result<Afterwards, ProbeError> {
    match payload[0] {
        PROTOCOL_VERSION => Ok(Afterwards::Hold),
        ERR_PACKET => {
            let code = payload
                .get(1..3)
                .map_or(0, |code| u16::from_le_bytes([code[0], code[1]]));
            let mut message = payload.get(3..).unwrap_or_default();
            // Servers that already speak protocol 4.1 put `#` and a SQLSTATE first.
            if message.first() == Some(&b'#') && message.len() >= 6 {
                message = &message[6..];
            }
            match code {
                TOO_MANY_CONNECTIONS => Ok(Afterwards::Drop),
                HOST_IS_BLOCKED => Err(ProbeError::Unhealthy(format!(
                    "refused the connection: {code} {} (FLUSH HOSTS unblocks it; \
                     raise max_connect_errors)",
                    quote(message)
                ))),
                _ => Err(ProbeError::Unhealthy(format!(
                    "refused the connection: {code} {}",
                    quote(message)
                ))),
            }
        }
        other => Err(ProbeError::Garbled {
            protocol: "MySQL",
            detail: format!("protocol version {other}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_packet(code: u16, message: &str) -> Vec<u8> {
        let mut p = vec![ERR_PACKET];
        p.extend_from_slice(&code.to_le_bytes());
        p.extend_from_slice(message.as_bytes());
        p
    }

    #[test]
    fn a_protocol_10_handshake_is_healthy_and_held() {
        assert_eq!(
            classify(b"\x0a5.5.5-10.11.6-MariaDB\0").unwrap(),
            Afterwards::Hold
        );
    }

    #[test]
    fn too_many_connections_is_a_busy_but_healthy_server_whose_connection_is_dropped() {
        assert_eq!(
            classify(&err_packet(1040, "Too many connections")).unwrap(),
            Afterwards::Drop
        );
    }

    #[test]
    fn other_error_packets_are_unhealthy_with_the_servers_words() {
        let e = classify(&err_packet(
            1130,
            "Host '10.0.0.7' is not allowed to connect",
        ))
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "refused the connection: 1130 Host '10.0.0.7' is not allowed to connect"
        );
        let e = classify(&err_packet(1129, "#HY000Host 'x' is blocked")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("refused the connection: 1129 Host 'x' is blocked (FLUSH HOSTS"),
            "{e}"
        );
    }

    #[test]
    fn another_protocol_is_garbled() {
        assert_eq!(
            classify(b"SSH-2.0-OpenSSH").unwrap_err().to_string(),
            "not a MySQL answer: protocol version 83"
        );
    }
}
