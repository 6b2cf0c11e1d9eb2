//! The `tcp` probe: a completed handshake is healthy, and the held connection is watched
//! by readiness and the kernel's keepalive alone.

use tokio::net::TcpStream;

use super::{Afterwards, Healthy, ProbeError, Protocol};

/// Nothing to say on the wire: the handshake already happened.
#[derive(Debug)]
pub struct Tcp;

impl Protocol for Tcp {
    async fn check(&self, _stream: &mut TcpStream, _fresh: bool) -> Result<Healthy, ProbeError> {
        Ok(Afterwards::Reuse.into())
    }
}
