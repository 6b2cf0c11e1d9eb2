//! The `postgres` probe: an `SSLRequest`, which every PostgreSQL server answers with one
//! byte, `S` or `N`, before any authentication, so no credentials are needed.
//!
//! After that answer the server waits for a TLS handshake or a startup message, which
//! tether never sends: the connection cannot carry a second check, and the server closes
//! it after `authentication_timeout`. So the connection is held until the next check,
//! which opens a fresh one and holds that instead (see [`Afterwards::Hold`]). A client
//! that hangs up after `N` is not logged by the server.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Afterwards, ProbeError, Protocol, quote};

/// The request code of an `SSLRequest` (PostgreSQL protocol, "Message Formats").
const SSL_REQUEST_CODE: u32 = 80_877_103;

#[derive(Debug)]
pub struct Postgres;

impl Protocol for Postgres {
    async fn check(&self, stream: &mut TcpStream, _fresh: bool) -> Result<Afterwards, ProbeError> {
        let mut request = [0u8; 8];
        request[..4].copy_from_slice(&8u32.to_be_bytes());
        request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
        stream.write_all(&request).await?;
        let mut answer = [0u8; 1];
        match stream.read(&mut answer).await? {
            0 => Err(ProbeError::Closed),
            _ => classify(answer[0]),
        }
    }
}

/// `S` (TLS available) and `N` (not) both mean a postmaster is accepting connections.
/// `E` is an ErrorResponse, which only servers that predate SSL negotiation send.
fn classify(answer: u8) -> Result<Afterwards, ProbeError> {
    match answer {
        b'S' | b'N' => Ok(Afterwards::Hold),
        b'E' => Err(ProbeError::Unhealthy(
            "SSLRequest answered with an error".to_owned(),
        )),
        other => Err(ProbeError::Garbled {
            protocol: "PostgreSQL",
            detail: format!("SSLRequest answered {}", quote(&[other])),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_and_n_are_healthy_anything_else_is_not() {
        assert_eq!(classify(b'S').unwrap(), Afterwards::Hold);
        assert_eq!(classify(b'N').unwrap(), Afterwards::Hold);
        assert_eq!(
            classify(b'E').unwrap_err().to_string(),
            "SSLRequest answered with an error"
        );
        assert_eq!(
            classify(b'H').unwrap_err().to_string(),
            "not a PostgreSQL answer: SSLRequest answered H"
        );
    }
}
