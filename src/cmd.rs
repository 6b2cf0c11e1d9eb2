//! The one-shot commands: `tether probe` and `tether wait`, `tether status` (a
//! person's view of a running sidecar), `tether demo`, and the shell completions and
//! man page. `tether run` is the sidecar
//! itself ([`crate::sidecar`]).

pub mod demo;
pub mod probe;
pub mod shell;
pub mod status;
