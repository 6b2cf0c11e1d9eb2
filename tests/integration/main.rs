//! tether's integration tests: one crate, one module per area, run against real
//! listeners and real servers on loopback.

mod cli;
mod config_errors;
mod config_examples;
mod harness;
mod servers;
mod supervision;
mod support;
mod watcher;
