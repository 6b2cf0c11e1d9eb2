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
//!
//! Lines that come in bursts (a transition per target when many change at once) are
//! also formatted by a thread of their own once the burst is over ([`later`]), stamped
//! with the time of their event.

mod later;
mod writer;

use std::io::IsTerminal;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::time::FormatTime;
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

/// Where lines formatted after their burst are queued (`tether run`).
static LATER: OnceLock<&'static later::Later> = OnceLock::new();

/// Ends the formatting thread once it has logged what is queued; taken by [`flush`].
static LATER_GUARD: Mutex<Option<later::Guard>> = Mutex::new(None);

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
            // Without the thread, lines are formatted in place.
            if let Ok((later, guard)) = later::start("tether-log-fmt") {
                let _ = LATER.set(later);
                *LATER_GUARD.lock().unwrap_or_else(|p| p.into_inner()) = Some(guard);
            }
            BoxMakeWriter::new(writer)
        }
    };
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_timer(EventTime)
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

/// Logs the lines still waiting to be formatted, writes out those queued and ends both
/// threads, waiting for them at most about a second and a half (the writer may be
/// blocked on a stderr nobody reads). Called before
/// the process exits and before it prints a last message of its own; lines logged
/// afterwards are dropped.
pub fn flush() {
    let later = LATER_GUARD.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(later) = later {
        later.finish(Duration::from_millis(500));
    }
    let writer = WRITER.lock().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(writer) = writer {
        writer.finish(Duration::from_secs(1));
    }
}

/// Lines dropped so far because the writer thread could not keep up.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, writer::Writer::dropped)
}

/// Logs with `log` once the burst it may be part of is over, every line it logs
/// stamped `at`: for lines that come one per target when many targets change at once.
/// In place where no formatting thread runs (every command but `tether run`).
pub fn later(at: SystemTime, log: impl FnOnce() + Send + 'static) {
    match LATER.get() {
        Some(later) => later.log(at, Box::new(log)),
        None => later::stamped(at, log),
    }
}

/// The time a line carries: its event's for a line logged [`later`], else now. In the
/// format of RFC 3339 with microseconds, as the default timer writes it.
struct EventTime;

impl FormatTime for EventTime {
    fn format_time(&self, w: &mut Writer<'_>) -> std::fmt::Result {
        write!(w, "{}", humantime::format_rfc3339_micros(later::now()))
    }
}
