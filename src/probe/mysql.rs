//! The `mysql` probe, for MySQL and MariaDB: the server speaks first, with an initial
//! handshake packet of protocol version 10, before any authentication.
//!
//! tether sends nothing. Like PostgreSQL's, the connection cannot carry a second check
//! (the server now waits for a login, and closes the connection after `connect_timeout`),
//! so it is held until the next check opens a fresh one (see [`Afterwards::Hold`]).
//!
//! **With `tls`** the greeting is read in plain text (MySQL sends it before any TLS), and
//! must offer `CLIENT_SSL`; tether answers with an `SSLRequest` packet and the TLS
//! handshake follows, which is then the check: a server that offers no TLS fails the
//! attempt rather than being talked to in plain text. The server then waits for a login
//! over TLS, which tether never sends, and the connection is held like a plain one.
//!
//! A server may send an error packet instead of the handshake, and then closes the
//! connection. `1040 Too many connections` means the server is alive but saturated: that
//! is counted as healthy (failing every client over because the server is busy would add
//! a stampede to the overload), and the connection is dropped rather than held. Every
//! other error packet (a blocked host, a host not allowed to connect) is unhealthy.

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote};
use crate::config::kinds::{self, Kind};
use crate::tls::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const KIND: Kind = Kind {
    name: "mysql",
    summary: "The server greets with a protocol-10 handshake (MySQL, MariaDB)",
    healthy: "the server's initial handshake packet, protocol version 10 (MySQL, MariaDB)",
    repeats: "on a fresh connection, which then replaces the held one",
    settings: &[],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |_, _| Check::Mysql(Mysql),
};

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
/// Capability flags (MySQL protocol, "Capabilities"): the server can switch to TLS.
const CLIENT_SSL: u32 = 0x0800;
/// The 4.1 protocol, which every server since 4.1 speaks and an `SSLRequest` needs.
const CLIENT_PROTOCOL_41: u32 = 0x0200;
/// 4.1 authentication; sent as a real client would, though tether never logs in.
const CLIENT_SECURE_CONNECTION: u32 = 0x8000;
/// `utf8mb4_general_ci`, the character set an `SSLRequest` announces.
const UTF8MB4: u8 = 45;

#[derive(Debug)]
pub struct Mysql;

impl Protocol for Mysql {
    async fn start_tls(&self, tcp: &mut TcpStream) -> Result<(), ProbeError> {
        start_tls(tcp).await
    }

    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        if stream.is_tls() {
            // The greeting was read and the handshake made on the way in
            // ([`start_tls`]): that was the check.
            return Ok(Afterwards::Hold.into());
        }
        let payload = greeting(stream).await?;
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

/// Reads the server's first packet and returns its payload.
async fn greeting(stream: &mut (impl AsyncRead + Unpin)) -> Result<Vec<u8>, ProbeError> {
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
    Ok(payload)
}

/// Reads the greeting of a fresh connection in plain text and asks for TLS: the
/// handshake may begin on `tcp` once this returns.
async fn start_tls(tcp: &mut TcpStream) -> Result<(), ProbeError> {
    let payload = greeting(tcp).await?;
    if classify(&payload)? != Afterwards::Hold {
        // A server at max_connections answers and closes: nothing to negotiate with.
        return Err(ProbeError::Unhealthy(
            "the server has too many connections to start TLS".to_owned(),
        ));
    }
    if capabilities(&payload) & CLIENT_SSL == 0 {
        return Err(ProbeError::Unhealthy(
            "the server does not support TLS (its greeting does not offer CLIENT_SSL; \
             are ssl_cert and ssl_key set?)"
                .to_owned(),
        ));
    }
    tcp.write_all(&ssl_request()).await?;
    Ok(())
}

/// The lower two bytes of the greeting's capability flags (all a TLS switch needs):
/// after the protocol version, the server version (NUL-terminated), a 4-byte
/// connection id, 8 bytes of the auth challenge and a filler byte.
fn capabilities(payload: &[u8]) -> u32 {
    let Some(end) = payload.iter().skip(1).position(|&b| b == 0) else {
        return 0;
    };
    let at = 1 + end + 1 + 4 + 8 + 1;
    payload
        .get(at..at + 2)
        .map_or(0, |b| u32::from(u16::from_le_bytes([b[0], b[1]])))
}

/// An `SSLRequest`: the first 32 bytes of a login, with `CLIENT_SSL` set, as packet 1.
fn ssl_request() -> [u8; 36] {
    let mut packet = [0u8; 36];
    packet[..4].copy_from_slice(&[32, 0, 0, 1]);
    let flags = CLIENT_SSL | CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION;
    packet[4..8].copy_from_slice(&flags.to_le_bytes());
    packet[8..12].copy_from_slice(&(MAX_PACKET as u32).to_le_bytes());
    packet[12] = UTF8MB4;
    packet
}

async fn read_exact(
    stream: &mut (impl AsyncRead + Unpin),
    buf: &mut [u8],
) -> Result<(), ProbeError> {
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

    /// The greeting of a MariaDB 10.11 with TLS configured (capabilities 0xfffe).
    const GREETING: &[u8] =
        b"\x0a5.5.5-10.11.6-MariaDB-0+deb12u1\0\x2a\0\0\0abcdefgh\0\xfe\xff\x2d\x02\0";

    #[test]
    fn the_capabilities_are_read_after_the_version_the_id_and_the_challenge() {
        assert_eq!(capabilities(GREETING), 0xfffe);
        assert_ne!(capabilities(GREETING) & CLIENT_SSL, 0);
        assert_eq!(capabilities(b"\x0a5.5.5\0\x01\0\0\0"), 0, "cut short");
        assert_eq!(capabilities(b"\x0ano terminator"), 0);
    }

    #[test]
    fn an_ssl_request_is_a_32_byte_packet_1_asking_for_tls() {
        let p = ssl_request();
        assert_eq!(&p[..4], &[32, 0, 0, 1]);
        let flags = u32::from_le_bytes([p[4], p[5], p[6], p[7]]);
        assert_ne!(flags & CLIENT_SSL, 0);
        assert_ne!(flags & CLIENT_PROTOCOL_41, 0);
        assert!(p[13..].iter().all(|&b| b == 0), "the filler is zeros");
    }

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
