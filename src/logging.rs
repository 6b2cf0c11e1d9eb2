//! Log output: human text by default, JSON lines for log pipelines; the filter comes
//! from `--log-level`, else `RUST_LOG`, else `info`. Filters are `RUST_LOG`-style
//! directives (`warn`, `tether=debug,hyper=warn`) matched on targets, which needs no
//! regular-expression engine in the binary.
//!
//! The sidecar's lines are written by a thread of their own ([`writer`]): a write to
//! stderr blocks while its reader (a log collector, journald, a pipe into a stalled
//! process) does not read, and a runtime worker blocked there would stop every actor it
//! serves. A line that does not fit the queue is dropped and counted
//! (`tether_log_lines_dropped_total`) rather than waited for. The other commands are
//! short-lived and write their lines in place, in order with what they print.

mod writer;

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Bytes waiting for the writer thread before new lines are dropped: some 3,000 lines
/// of transitions, which the thread writes out in one go unless stderr is stuck.
const QUEUED_BYTES: usize = 1024 * 1024;

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Written to stderr by the thread that logs, in order with anything else it prints.
    InPlace,
    /// Queued for a writer thread of their own (`tether run`).
    Background,
}

/// Ends the writer thread once it has written what is queued; taken by [`flush`].
static WRITER: Mutex<Option<writer::Guard>> = Mutex::new(None);

/// The writer thread's handle, for the count of lines it dropped.
static DROPPED: OnceLock<writer::Writer> = OnceLock::new();

/// Installs the global subscriber. Logs go to stderr so that commands printing
/// results (`check-config`) keep stdout clean.
pub fn init(format: LogFormat, level: Option<&str>, output: Output) -> Result<(), String> {
    let filter: Targets = match level {
        Some(l) => l
            .parse()
            .map_err(|e| format!("invalid --log-level \"{l}\": {e}"))?,
        None => std::env::var("RUST_LOG")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| "info".parse().expect("a valid filter")),
    };
    // Colour only for a person at a terminal, never into a log pipeline.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let writer = match output {
        Output::InPlace => BoxMakeWriter::new(std::io::stderr),
        Output::Background => {
            let (writer, guard) = writer::start("tether-log", QUEUED_BYTES, std::io::stderr())
                .map_err(|e| format!("cannot start the log writer thread: {e}"))?;
            let _ = DROPPED.set(writer.clone());
            *WRITER.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
            BoxMakeWriter::new(writer)
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}

/// Writes out the lines still queued and ends the writer thread, waiting for it at
/// most about a second (it may be blocked on a stderr nobody reads). Called before
/// the process exits and before it prints a last message of its own; lines logged
/// afterwards are dropped.
pub fn flush() {
    let writer = WRITER.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(writer) = writer {
        writer.finish(Duration::from_secs(1));
    }
}

/// Lines dropped so far because the writer thread could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, writer::Writer::dropped)
}
