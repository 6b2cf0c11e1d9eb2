//! The `mqtt` probe (MQTT 3.1.1): `CONNECT` with a clean session, answered by
//! `CONNACK`; then each check sends `PINGREQ` on the held connection, answered by
//! `PINGRESP`. Nothing is subscribed to or published.
//!
//! The client id is `tether-<instance>-<n>`, 23 characters at most (the length every
//! 3.1.1 broker must accept): unique per process and per probe, since a broker drops
//! the older of two connections with the same id, and two targets on one broker would
//! otherwise take turns dropping each other.
//!
//! `CONNACK` return code 0 is healthy. Without credentials configured, 4 (bad user name
//! or password) and 5 (not authorized) are healthy too: the broker parsed the request
//! and answered, and refuses only credentials the application has and tether need not
//! (like Redis's `-NOAUTH`); it closes the connection then, so each check uses a fresh
//! one. With `user` set, a refusal is unhealthy. Codes 1 to 3 (protocol version,
//! client id, server unavailable) are unhealthy.
//!
//! The keep-alive announced is [`KEEP_ALIVE`]: the broker closes a connection silent
//! for one and a half times that, which checks every `check_interval` never are.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::tls::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote};
use crate::config::ProbeSettings;
use crate::config::kinds::{self, Kind, Misfit};
use crate::secrets::{self, Source};

pub const KIND: Kind = Kind {
    name: "mqtt",
    summary: "CONNECT answered by CONNACK (or a refusal of credentials), then PINGREQ by PINGRESP",
    healthy: "`CONNECT` (clean session) answered by `CONNACK`, accepted or refusing only missing credentials; then `PINGREQ` answered by `PINGRESP` (one connection held, nothing subscribed)",
    repeats: "on the held connection; on a fresh one for each check when the broker refused the credentials",
    settings: &["user", "password_env", "password_file"],
    finish: password_needs_user,
    learns_roles: kinds::no_roles,
    build: |s, _| Check::Mqtt(Mqtt::new(s.user.clone(), s.password())),
};

/// Seconds of silence the broker allows (times one and a half): ten minutes.
pub const KEEP_ALIVE: u16 = 600;
/// The longest client id every MQTT 3.1.1 broker must accept.
const MAX_CLIENT_ID: usize = 23;
/// Packets skipped while waiting for `PINGRESP`; the broker has nothing to send a
/// client that subscribed to nothing, so a few is plenty.
const MAX_PACKETS: usize = 8;
/// The largest packet skipped.
const MAX_PACKET: usize = 64 * 1024;

const CONNACK: u8 = 0x20;
const PINGREQ: [u8; 2] = [0xc0, 0x00];
const PINGRESP: u8 = 0xd0;

/// MQTT 3.1.1 sends a password only with a user name.
fn password_needs_user(s: &mut ProbeSettings) -> Result<(), Misfit> {
    if s.user.is_some() {
        return Ok(());
    }
    let given = [
        ("password_env", s.password_env.is_some()),
        ("password_file", s.password_file.is_some()),
    ];
    match given.into_iter().find(|(_, set)| *set) {
        None => Ok(()),
        Some((field, _)) => Err(Misfit {
            key: Some(field),
            message: format!("`{field}` needs `user`: MQTT sends a password only with a user name"),
        }),
    }
}

#[derive(Debug)]
pub struct Mqtt {
    user: Option<String>,
    password: Option<Source>,
    client_id: String,
}

impl Mqtt {
    pub fn new(user: Option<String>, password: Option<Source>) -> Mqtt {
        static PROBES: AtomicU32 = AtomicU32::new(0);
        let n = PROBES.fetch_add(1, Ordering::Relaxed);
        let instance = crate::instance::id();
        let mut client_id = format!("tether-{}-{n:x}", &instance[..instance.len().min(10)]);
        client_id.truncate(MAX_CLIENT_ID);
        Mqtt {
            user,
            password,
            client_id,
        }
    }

    fn connect_packet(&self) -> Result<Vec<u8>, ProbeError> {
        let password = match &self.password {
            None => None,
            Some(source) => Some(secrets::current(source).map_err(|e| {
                ProbeError::Unhealthy(format!("no password: {e} (unset, empty or unreadable)"))
            })?),
        };
        Ok(connect_packet(
            &self.client_id,
            self.user.as_deref(),
            password.as_deref(),
        ))
    }
}

impl Protocol for Mqtt {
    async fn check(&self, stream: &mut Stream, fresh: bool) -> Result<Healthy, ProbeError> {
        if fresh {
            let connect = self.connect_packet()?;
            handshake(stream, &connect, self.user.is_some()).await
        } else {
            ping(stream).await
        }
    }
}

/// `CONNECT` (MQTT 3.1.1, clean session), with a user name and password if given.
pub fn connect_packet(client_id: &str, user: Option<&str>, password: Option<&[u8]>) -> Vec<u8> {
    let mut flags = 0x02; // clean session
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(&[0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04]);
    if user.is_some() {
        flags |= 0x80;
        if password.is_some() {
            flags |= 0x40;
        }
    }
    body.push(flags);
    body.extend_from_slice(&KEEP_ALIVE.to_be_bytes());
    let mut field = |bytes: &[u8]| {
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        body.extend_from_slice(&len.to_be_bytes());
        body.extend_from_slice(&bytes[..usize::from(len)]);
    };
    field(client_id.as_bytes());
    if let Some(user) = user {
        field(user.as_bytes());
        if let Some(password) = password {
            field(password);
        }
    }
    let mut packet = vec![0x10];
    remaining_length(&mut packet, body.len());
    packet.extend_from_slice(&body);
    packet
}

/// MQTT's variable-length integer: seven bits a byte, low bits first.
fn remaining_length(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let mut byte = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if n == 0 {
            return;
        }
    }
}

/// Sends `connect` on a fresh connection and judges the `CONNACK`.
pub async fn handshake<S>(
    stream: &mut S,
    connect: &[u8],
    with_credentials: bool,
) -> Result<Healthy, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    stream.write_all(connect).await?;
    let mut ack = [0u8; 4];
    read_exact(stream, &mut ack).await?;
    if ack[0] != CONNACK || ack[1] != 2 {
        return Err(ProbeError::Garbled {
            protocol: "MQTT",
            detail: format!("CONNECT answered {}", quote(&ack)),
        });
    }
    match ack[3] {
        0 => Ok(Afterwards::Reuse.into()),
        4 | 5 if !with_credentials => Ok(Afterwards::Drop.into()),
        code => Err(ProbeError::Unhealthy(format!(
            "CONNACK refused the connection: {} ({code})",
            refusal(code)
        ))),
    }
}

/// `PINGREQ` on the held connection, answered by `PINGRESP`.
pub async fn ping<S>(stream: &mut S) -> Result<Healthy, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    stream.write_all(&PINGREQ).await?;
    for _ in 0..MAX_PACKETS {
        let mut kind = [0u8; 1];
        read_exact(stream, &mut kind).await?;
        let length = read_length(stream).await?;
        if kind[0] == PINGRESP && length == 0 {
            return Ok(Afterwards::Reuse.into());
        }
        if length > MAX_PACKET {
            return Err(ProbeError::Garbled {
                protocol: "MQTT",
                detail: format!("a packet of {length} bytes"),
            });
        }
        let mut skipped = vec![0u8; length];
        read_exact(stream, &mut skipped).await?;
    }
    Err(ProbeError::Garbled {
        protocol: "MQTT",
        detail: format!("no PINGRESP within {MAX_PACKETS} packets"),
    })
}

async fn read_length<S: AsyncRead + Unpin>(stream: &mut S) -> Result<usize, ProbeError> {
    let mut n = 0usize;
    for shift in [0, 7, 14, 21] {
        let mut byte = [0u8; 1];
        read_exact(stream, &mut byte).await?;
        n |= usize::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(n);
        }
    }
    Err(ProbeError::Garbled {
        protocol: "MQTT",
        detail: "a remaining length over four bytes".to_owned(),
    })
}

async fn read_exact<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), ProbeError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProbeError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// The meaning of a `CONNACK` return code (MQTT 3.1.1, 3.2.2.3).
fn refusal(code: u8) -> &'static str {
    match code {
        1 => "unacceptable protocol version",
        2 => "client identifier rejected",
        3 => "server unavailable",
        4 => "bad user name or password",
        5 => "not authorized",
        _ => "unknown return code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_is_mqtt_3_1_1_with_a_clean_session() {
        let packet = connect_packet("tether-x", None, None);
        assert_eq!(
            packet,
            [
                &[
                    0x10, 20, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0x02, 0x58, 0, 8
                ][..],
                b"tether-x"
            ]
            .concat()
        );
        let packet = connect_packet("c", Some("u"), Some(b"pw"));
        assert_eq!(packet[9], 0x02 | 0x80 | 0x40);
        assert!(packet.ends_with(&[0, 1, b'u', 0, 2, b'p', b'w']));
    }

    #[test]
    fn long_packets_have_multi_byte_lengths() {
        let mut out = Vec::new();
        remaining_length(&mut out, 321);
        assert_eq!(out, [0xc1, 0x02]);
    }

    #[test]
    fn client_ids_are_unique_and_short_enough_for_every_broker() {
        let (a, b) = (Mqtt::new(None, None), Mqtt::new(None, None));
        assert_ne!(a.client_id, b.client_id);
        assert!(a.client_id.len() <= MAX_CLIENT_ID, "{}", a.client_id);
        assert!(a.client_id.starts_with("tether-"));
    }

    #[tokio::test]
    async fn a_refusal_of_missing_credentials_is_healthy_and_others_are_not() {
        for (code, with_credentials, healthy) in [
            (0, false, true),
            (5, false, true),
            (4, true, false),
            (3, false, false),
        ] {
            let (mut client, mut server) = tokio::io::duplex(256);
            server.write_all(&[CONNACK, 2, 0, code]).await.unwrap();
            let result = handshake(&mut client, b"x", with_credentials).await;
            assert_eq!(
                result.is_ok(),
                healthy,
                "{code} {with_credentials}: {result:?}"
            );
        }
    }
}
