//! tether's integration tests: one crate, one module per area, run against real
//! listeners and real servers on loopback.

// These tests wait on real servers, processes and sockets, often from plain threads, in
// real time: there is no paused clock for tokio's `Instant` to keep exact.
#![allow(clippy::disallowed_types)]

mod cli;
mod config_errors;
mod config_examples;
mod config_fuzz;
mod dns_outage;
mod endpoint;
mod events;
mod events_cmd;
mod events_process;
mod group_status;
mod groups;
mod hooks;
mod http;
mod keepalive;
mod logs;
mod metrics;
mod moves;
mod netns;
mod notify;
mod probes;
mod probes_more;
mod restarts;
mod roles;
mod secrets;
mod servers;
mod spawner;
mod sse_client;
mod status_cmd;
mod status_page;
mod supervision;
mod support;
mod tls;
mod tls_probes;
mod unix_socket;
mod watcher;
