//! The `tcp` probe: a completed handshake is healthy (with `tls`, the TLS handshake too:
//! the server's certificate is the check), and the held connection is watched by
//! readiness and the kernel's keepalive alone.

use super::{Afterwards, Check, Healthy, ProbeError, Protocol};
use crate::config::kinds::{self, Kind};
use crate::tls::Stream;

pub const KIND: Kind = Kind {
    name: "tcp",
    summary: "The TCP handshake completes",
    healthy: "the handshake completes (with `tls`, the TLS handshake too)",
    repeats: "nothing is repeated: readiness and keepalive watch the held connection",
    settings: &[],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |_, _| Check::Tcp(Tcp),
};

/// Nothing to say on the wire: the handshake already happened.
#[derive(Debug)]
pub struct Tcp;

impl Protocol for Tcp {
    async fn check(&self, _stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        Ok(Afterwards::Reuse.into())
    }
}
