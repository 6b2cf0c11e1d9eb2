//! tether: a sidecar that holds a connection to each dependency of an application,
//! notices the moment it dies, reconnects with backoff and runs the user's hooks so the
//! application can fail over to a fallback and back.

pub mod allocator;
pub mod backoff;
pub mod check;
pub mod checker;
pub mod cli;
pub mod config;
pub mod demo;
pub mod exit;
#[cfg(feature = "fault-injection")]
pub mod fault;
pub mod hooks;
pub mod http;
pub mod instance;
pub mod logging;
pub mod machine;
pub mod metrics;
pub mod net;
pub mod observe;
pub mod probe;
pub mod resolve;
pub mod secrets;
pub mod sidecar;
pub mod signals;
pub mod state_file;
pub mod status;
pub mod status_view;
pub mod supervisor;
pub mod telemetry;
