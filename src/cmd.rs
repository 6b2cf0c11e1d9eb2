//! The one-shot commands: `tether probe` and `tether wait`, `tether status` (a
//! person's view of a running sidecar) and `tether demo`. `tether run` is the sidecar
//! itself ([`crate::sidecar`]).

pub mod demo;
pub mod probe;
pub mod status;
