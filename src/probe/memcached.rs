//! The `memcached` probe: `version`, answered by `VERSION <x>`, on the held connection at
//! every interval. It is the cheapest command memcached has: no key is read or written,
//! no item is touched, and it needs no credentials (ASCII protocol without SASL).

use crate::tls::Stream;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote, read_line};
use crate::config::kinds::{self, Kind};

pub const KIND: Kind = Kind {
    name: "memcached",
    summary: "version is answered by VERSION",
    healthy: "`version` answered by `VERSION x` (one command, served from memory, no item touched)",
    repeats: "on the held connection",
    settings: &[],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |_, _| Check::Memcached(Memcached),
};

/// A `VERSION` line is about twenty bytes.
const MAX_LINE: usize = 1024;

#[derive(Debug)]
pub struct Memcached;

impl Protocol for Memcached {
    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        version(stream).await
    }
}

/// One `version` round trip on `stream`, plain or not.
pub async fn version<S>(stream: &mut S) -> Result<Healthy, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    stream.write_all(b"version\r\n").await?;
    let mut reader = BufReader::new(stream);
    let reply = read_line(&mut reader, MAX_LINE, "memcached").await?;
    classify(&reply)?;
    // Anything beyond the one line would be read as the next check's answer.
    Ok(if reader.buffer().is_empty() {
        Afterwards::Reuse
    } else {
        Afterwards::Hold
    }
    .into())
}

/// `VERSION x` is healthy; memcached's own errors are unhealthy; anything else is
/// another protocol.
fn classify(reply: &[u8]) -> Result<(), ProbeError> {
    if reply.starts_with(b"VERSION ") {
        return Ok(());
    }
    if reply.starts_with(b"SERVER_ERROR") {
        return Err(ProbeError::Unhealthy(format!(
            "version answered {}",
            quote(reply)
        )));
    }
    Err(ProbeError::Garbled {
        protocol: "memcached",
        detail: format!("version answered {}", quote(reply)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_version_line_is_healthy_and_anything_else_is_not() {
        classify(b"VERSION 1.6.18").unwrap();
        assert_eq!(
            classify(b"SERVER_ERROR out of memory")
                .unwrap_err()
                .to_string(),
            "version answered SERVER_ERROR out of memory"
        );
        assert_eq!(
            classify(b"-ERR unknown command 'version'")
                .unwrap_err()
                .to_string(),
            "not a memcached answer: version answered -ERR unknown command 'version'"
        );
        assert!(classify(b"VERSION").is_err());
    }
}
