//! The `amqp` probe (AMQP 0-9-1: RabbitMQ, LavinMQ, Qpid): the protocol header
//! `AMQP\x00\x00\x09\x01` is answered by a `Connection.Start` method frame (class 10,
//! method 10) on channel 0, before any authentication.
//!
//! tether answers nothing: the server now waits for `Connection.Start-Ok`, and closes
//! the connection when its handshake timeout passes (RabbitMQ's `handshake_timeout`,
//! 10 s by default). So, as with the `mysql` probe, the connection is held until the next
//! check opens a fresh one ([`Afterwards::Hold`]); with a `check_interval` above the
//! handshake timeout, the server's closing it in between is a reconnect, not an outage.
//!
//! A server that speaks another version answers with its own protocol header and closes:
//! that is unhealthy, naming the version it wants.

use crate::tls::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote};
use crate::config::kinds::{self, Kind};

pub const KIND: Kind = Kind {
    name: "amqp",
    summary: "The AMQP 0-9-1 header is answered by Connection.Start (RabbitMQ)",
    healthy: "the AMQP 0-9-1 protocol header answered by a `Connection.Start` frame (no credentials; the server logs a connection closed before its handshake, once per check)",
    repeats: "on a fresh connection, which then replaces the held one",
    settings: &[],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |_, _| Check::Amqp(Amqp),
};

pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";
const FRAME_METHOD: u8 = 1;
const FRAME_END: u8 = 0xce;
/// `Connection.Start`: class 10, method 10.
const CONNECTION_START: [u8; 4] = [0, 10, 0, 10];
/// `Connection.Start` lists the server's properties and capabilities: under 2 KiB from
/// RabbitMQ. A larger first frame is not one.
const MAX_FRAME: usize = 64 * 1024;

#[derive(Debug)]
pub struct Amqp;

impl Protocol for Amqp {
    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        start(stream).await
    }
}

/// Sends the protocol header and reads the server's first frame.
pub async fn start<S>(stream: &mut S) -> Result<Healthy, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    stream.write_all(PROTOCOL_HEADER).await?;
    let mut header = [0u8; 7];
    read_exact(stream, &mut header).await?;
    if header.starts_with(b"AMQP") {
        // The server's own protocol header: it speaks another version, and closes.
        let mut rest = [0u8; 1];
        let _ = read_exact(stream, &mut rest).await;
        return Err(ProbeError::Unhealthy(format!(
            "the server speaks AMQP {}-{}-{}, not 0-9-1",
            header[5], header[6], rest[0]
        )));
    }
    let size = u32::from_be_bytes([header[3], header[4], header[5], header[6]]) as usize;
    if header[0] != FRAME_METHOD || header[1..3] != [0, 0] || !(4..=MAX_FRAME).contains(&size) {
        return Err(ProbeError::Garbled {
            protocol: "AMQP",
            detail: format!("the header answered {}", quote(&header)),
        });
    }
    let mut payload = vec![0u8; size + 1];
    read_exact(stream, &mut payload).await?;
    if payload[size] != FRAME_END || payload[..4] != CONNECTION_START {
        return Err(ProbeError::Garbled {
            protocol: "AMQP",
            detail: format!(
                "a method frame other than Connection.Start: {}",
                quote(&payload[..size.min(16)])
            ),
        });
    }
    Ok(Afterwards::Hold.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn answer(bytes: &[u8]) -> Result<Healthy, ProbeError> {
        let (mut client, mut server) = tokio::io::duplex(4096);
        server.write_all(bytes).await.unwrap();
        // Kept open: the header tether sends must find a reader.
        let result = start(&mut client).await;
        drop(server);
        result
    }

    #[tokio::test]
    async fn connection_start_is_healthy_and_held() {
        let frame = [&[1, 0, 0, 0, 0, 0, 6][..], &[0, 10, 0, 10, 0, 9, FRAME_END]].concat();
        assert_eq!(answer(&frame).await.unwrap().afterwards, Afterwards::Hold);
    }

    #[tokio::test]
    async fn another_version_or_protocol_is_refused_saying_which() {
        assert_eq!(
            answer(b"AMQP\x01\x01\x00\x0a")
                .await
                .unwrap_err()
                .to_string(),
            "the server speaks AMQP 1-0-10, not 0-9-1"
        );
        assert!(matches!(
            answer(b"-ERR unknown command\r\n").await,
            Err(ProbeError::Garbled { .. })
        ));
        let close = [&[1, 0, 0, 0, 0, 0, 4][..], &[0, 10, 0, 50, FRAME_END]].concat();
        assert!(matches!(
            answer(&close).await,
            Err(ProbeError::Garbled { .. })
        ));
    }
}
