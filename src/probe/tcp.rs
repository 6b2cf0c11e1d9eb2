//! The `tcp` probe: a completed handshake is healthy, and the held connection is watched
//! by readiness and the kernel's keepalive alone.

use tokio::net::TcpStream;

use super::{Afterwards, Healthy, ProbeError, Prober, Protocol};
use crate::config::kinds::{self, Kind};

pub const KIND: Kind = Kind {
    name: "tcp",
    summary: "The TCP handshake completes",
    healthy: "the handshake completes",
    repeats: "nothing is repeated: readiness and keepalive watch the held connection",
    settings: &[],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |_, _| Prober::Tcp(Tcp),
};

/// Nothing to say on the wire: the handshake already happened.
#[derive(Debug)]
pub struct Tcp;

impl Protocol for Tcp {
    async fn check(&self, _stream: &mut TcpStream, _fresh: bool) -> Result<Healthy, ProbeError> {
        Ok(Afterwards::Reuse.into())
    }
}
