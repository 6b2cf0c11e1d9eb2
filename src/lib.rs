//! tether: a sidecar that holds a connection to each dependency of an application,
//! notices the moment it dies, reconnects with backoff and runs the user's hooks so the
//! application can fail over to a fallback and back.

pub mod allocator;
pub mod cli;
pub mod cmd;
pub mod config;
pub mod connect;
pub mod exit;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod handoff;
pub mod hooks;
pub mod http2;
pub mod instance;
pub mod logging;
pub mod net;
pub mod notify;
pub mod probe;
pub mod resident;
pub mod resolve;
pub mod secrets;
pub mod sidecar;
pub mod signals;
pub mod telemetry;
pub mod tls;
pub mod watch;
