//! The `tcp` probe: a completed handshake is healthy (with `tls`, the TLS handshake too:
//! the server's certificate is the check), and the held connection is watched by
//! readiness and the kernel's keepalive alone.

use super::{Afterwards, Healthy, ProbeError, Protocol};
use crate::tls::Stream;

/// Nothing to say on the wire: the handshake already happened.
#[derive(Debug)]
pub struct Tcp;

impl Protocol for Tcp {
    async fn check(&self, _stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        Ok(Afterwards::Reuse.into())
    }
}
