//! Log output: human text by default, JSON lines for log pipelines; the filter comes
//! from `--log-level`, else `RUST_LOG`, else `info`. Filters are `RUST_LOG`-style
//! directives (`warn`, `tether=debug,hyper=warn`) matched on targets, which needs no
//! regular-expression engine in the binary.

use std::io::IsTerminal;

use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// Installs the global subscriber. Logs go to stderr so that commands printing
/// results (`check-config`) keep stdout clean.
pub fn init(format: LogFormat, level: Option<&str>) -> Result<(), String> {
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
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Text => registry.with(layer).try_init(),
        LogFormat::Json => registry
            .with(layer.json().flatten_event(true).with_current_span(false))
            .try_init(),
    };
    result.map_err(|e| e.to_string())
}
