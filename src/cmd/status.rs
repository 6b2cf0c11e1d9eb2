//! `tether status`: a person's view of a running sidecar, read from its `/status`.
//!
//! One row per target with its state, for how long, its failures and its last error,
//! then one per failover group with what it uses; coloured on a terminal and plain when
//! piped, so scripts can `grep` it. The exit code answers "is everything required up?"
//! for shell scripts: 0 yes, 1 no (a required group in its fallback or undecided counts
//! as no), 2 the sidecar could not be asked.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::timeout;

use crate::cmd::client::{self, ClientError, Url};
use crate::exit;
use crate::telemetry::status::{Document, GroupStatus};
use crate::watch::machine::State;

/// Every required target is up.
pub const EXIT_UP: u8 = exit::OK;
/// Some required target is not up (or the sidecar is stopping).
pub const EXIT_NOT_UP: u8 = exit::FAILURE;
/// The sidecar could not be reached or did not answer with a status document.
pub const EXIT_UNREACHABLE: u8 = exit::UNREACHABLE;

/// How long one fetch of `/status` may take, connect included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often `--watch` refreshes.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// A status document larger than this is not a status document.
const MAX_DOCUMENT_BYTES: usize = 64 * 1024 * 1024;

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
    #[error("the answer is not a status document: {0}")]
    Json(#[from] serde_json::Error),
}

/// What `tether status` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// The table, with colours.
    Terminal,
    /// The table, plain.
    Plain,
    /// The document as it came.
    Json,
}

impl Output {
    /// The table is coloured only on a terminal, and never with `NO_COLOR` set.
    pub fn detect(json: bool) -> Output {
        if json {
            Output::Json
        } else if std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
            && std::env::var("TERM").map_or(true, |t| t != "dumb")
        {
            Output::Terminal
        } else {
            Output::Plain
        }
    }
}

/// Fetches and parses the status document; the raw body comes along for `--json`.
pub async fn fetch(url: &Url) -> Result<(Document, Bytes), FetchError> {
    timeout(FETCH_TIMEOUT, fetch_inner(url))
        .await
        .map_err(|_| FetchError::TimedOut(FETCH_TIMEOUT))?
}

async fn fetch_inner(url: &Url) -> Result<(Document, Bytes), FetchError> {
    let (status, body) = client::get_body(url, MAX_DOCUMENT_BYTES).await?;
    if status != StatusCode::OK {
        return Err(FetchError::Status(status));
    }
    let document = serde_json::from_slice(&body)?;
    Ok((document, body))
}

/// The exit code for a fetch result.
pub fn exit_code(result: &Result<(Document, Bytes), FetchError>) -> u8 {
    match result {
        Ok((doc, _)) if doc.required_up() && !doc.stopping => EXIT_UP,
        Ok(_) => EXIT_NOT_UP,
        Err(_) => EXIT_UNREACHABLE,
    }
}

/// Runs `tether status`: once, or with `watch` until interrupted. Returns the exit code
/// of the last fetch.
pub async fn run(url: &Url, output: Output, watch: bool) -> u8 {
    let mut stdout = std::io::stdout();
    let mut first = true;
    // Created before the first fetch, so an interrupt that arrives while fetching is
    // kept for the wait that follows instead of being lost.
    let mut interrupt = watch
        .then(|| signal(SignalKind::interrupt()).ok())
        .flatten();
    loop {
        let result = fetch(url).await;
        let code = exit_code(&result);
        let mut screen = String::new();
        if watch && output == Output::Terminal {
            // Home and clear: the table is redrawn in place.
            screen.push_str("\x1b[H\x1b[2J");
        } else if watch && !first {
            screen.push('\n');
        }
        first = false;
        match &result {
            Ok((_, body)) if output == Output::Json => {
                screen.push_str(&String::from_utf8_lossy(body));
            }
            Ok((doc, _)) => screen.push_str(&render(doc, url, output == Output::Terminal)),
            Err(e) => {
                // On stderr when run once, so `--json` output stays parseable; in the
                // watched screen otherwise, where it replaces the table.
                let message = format!("tether: cannot read {url}: {e}\n");
                if watch {
                    screen.push_str(&message);
                } else {
                    eprint!("{message}");
                }
            }
        }
        // A closed pipe (`| head`) ends the command like an interrupt would.
        if stdout
            .write_all(screen.as_bytes())
            .and_then(|()| stdout.flush())
            .is_err()
            || !watch
        {
            return code;
        }
        tokio::select! {
            () = tokio::time::sleep(WATCH_INTERVAL) => {}
            () = interrupted(&mut interrupt) => return code,
        }
    }
}

async fn interrupted(interrupt: &mut Option<Signal>) {
    match interrupt {
        Some(signal) => {
            signal.recv().await;
        }
        // No handler could be installed: the default action ends the process.
        None => std::future::pending().await,
    }
}

/// The columns of the table; [`ROLE`] goes after `STATE` when some target has a role.
const HEADER: [&str; 7] = [
    "TARGET",
    "STATE",
    "FOR",
    "FAILURES",
    "REQUIRED",
    "ADDRESS",
    "LAST ERROR",
];

/// The column shown only when it says something: most sidecars watch no replicated
/// servers, or probes that cannot tell roles.
const ROLE: &str = "ROLE";

/// The columns of the groups' table.
const GROUP_HEADER: [&str; 5] = ["GROUP", "ACTIVE", "FOR", "CONFLICT", "REASON"];

/// One line of a table: its cells, and the colour of each on a terminal.
struct Row {
    cells: Vec<String>,
    colours: Vec<Option<&'static str>>,
}

/// The tables for `doc`, fetched from `url`: the targets, then the groups if any.
pub fn render(doc: &Document, url: &Url, colour: bool) -> String {
    let mut out = headline(doc, url);
    print_rows(&mut out, &rows(doc), colour);
    if !doc.groups.is_empty() {
        out.push('\n');
        print_rows(&mut out, &group_rows(doc), colour);
    }
    out
}

/// The line above the table: the verdict, how many required targets are up (members of
/// groups count through their groups) and how many required groups use a member.
fn headline(doc: &Document, url: &Url) -> String {
    let grouped: std::collections::HashSet<&str> = doc
        .groups
        .iter()
        .flat_map(|g| g.members.iter().map(String::as_str))
        .collect();
    let counted = || {
        doc.targets
            .iter()
            .filter(|t| t.required && !grouped.contains(t.name.as_str()))
    };
    let required = counted().count();
    let required_up = counted().filter(|t| t.state == State::Up).count();
    let groups = if doc.groups.is_empty() {
        String::new()
    } else {
        let required = doc.groups.iter().filter(|g| g.required).count();
        let serving = doc
            .groups
            .iter()
            .filter(|g| g.required && g.serving())
            .count();
        format!(", {serving}/{required} required groups on a member")
    };
    let verdict = if doc.stopping {
        "stopping"
    } else if doc.ready {
        "ready"
    } else {
        "not ready"
    };
    format!(
        "tether {} at {url}: {verdict}, {required_up}/{required} required targets up{groups}\n",
        doc.version
    )
}

/// The header row, then one row per group.
fn group_rows(doc: &Document) -> Vec<Row> {
    let header = Row {
        cells: GROUP_HEADER.map(str::to_owned).to_vec(),
        colours: vec![Some("1"); GROUP_HEADER.len()],
    };
    let groups = doc.groups.iter().map(|g| {
        let (active, active_colour) = active_cell(g);
        let (conflict, conflict_colour) = if g.conflict {
            (format!("yes: {}", g.claimants.join(", ")), Some("31"))
        } else {
            ("no".to_owned(), None)
        };
        Row {
            cells: vec![
                g.name.clone(),
                active,
                format_age(g.since.until(doc.generated_at)),
                conflict,
                g.reason.clone().unwrap_or_else(|| "-".to_owned()),
            ],
            colours: vec![None, Some(active_colour), None, conflict_colour, None],
        }
    });
    std::iter::once(header).chain(groups).collect()
}

/// What a group uses, and its colour: a member in green, the fallback in red, nothing
/// yet in cyan (like a target still connecting).
fn active_cell(g: &GroupStatus) -> (String, &'static str) {
    match &g.active {
        None => ("undecided".to_owned(), "36"),
        Some(name) if g.fallback_active => (format!("{name} (fallback)"), "31"),
        Some(name) => (name.clone(), "32"),
    }
}

/// The header row, then one row per target.
fn rows(doc: &Document) -> Vec<Row> {
    let with_role = doc.targets.iter().any(|t| t.role.is_some());
    let mut header = Row {
        cells: HEADER.map(str::to_owned).to_vec(),
        colours: vec![Some("1"); HEADER.len()],
    };
    if with_role {
        header.cells.insert(2, ROLE.to_owned());
        header.colours.insert(2, Some("1"));
    }
    let targets = doc.targets.iter().map(|t| {
        let state = if t.fallback {
            format!("{} (fallback)", t.state)
        } else {
            t.state.to_string()
        };
        let state_colour = match t.state {
            State::Up => "32",
            State::Connecting => "36",
            State::Down => "33",
            State::Failed => "31",
        };
        let error_colour = t.last_error.as_ref().and(Some("2"));
        let mut row = Row {
            cells: vec![
                t.name.clone(),
                state,
                format_age(t.since.until(doc.generated_at)),
                t.failures.to_string(),
                if t.required { "yes" } else { "no" }.to_owned(),
                t.address.clone(),
                t.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            ],
            colours: vec![
                None,
                Some(state_colour),
                None,
                None,
                None,
                None,
                error_colour,
            ],
        };
        if with_role {
            row.cells
                .insert(2, crate::probe::role::name(t.role).replace("unknown", "-"));
            row.colours.insert(2, None);
        }
        row
    });
    std::iter::once(header).chain(targets).collect()
}

/// Writes `rows` in aligned columns, coloured only when `colour`.
fn print_rows(out: &mut String, rows: &[Row], colour: bool) {
    let mut widths = vec![0; rows.first().map_or(0, |r| r.cells.len())];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(&row.cells) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in rows {
        for (i, cell) in row.cells.iter().enumerate() {
            let last = i == row.cells.len() - 1;
            let padded = if last {
                cell.clone()
            } else {
                format!("{cell:<w$}  ", w = widths[i])
            };
            match row.colours[i].filter(|_| colour) {
                Some(c) => {
                    let _ = write!(out, "\x1b[{c}m{}\x1b[0m", padded.trim_end());
                    out.push_str(&" ".repeat(padded.len() - padded.trim_end().len()));
                }
                None => out.push_str(&padded),
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    }
}

/// A coarse age: `450ms`, `12s`, `3m 2s`, `2h 5m`, `3d 4h`.
pub fn format_age(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{}ms", d.as_millis()),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h", s / 86400, s % 86400 / 3600),
    }
}

/// `tether status`: the sidecar at `url`, or the one `tether run` would start with
/// `config`.
pub fn command(
    config: &crate::cli::ConfigArg,
    url: Option<Url>,
    json: bool,
    watch: bool,
) -> std::process::ExitCode {
    let url = match url {
        Some(url) => url,
        None => match client::url_from_config(config) {
            Ok(url) => url,
            Err(code) => return code,
        },
    }
    .or_path("/status");
    super::block_on(async {
        Ok::<_, std::convert::Infallible>(std::process::ExitCode::from(
            run(&url, Output::detect(json), watch).await,
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::status::{TargetStatus, Timestamp};
    use crate::watch::machine::Event;
    use std::time::SystemTime;

    #[test]
    fn ages_are_coarse() {
        assert_eq!(format_age(Duration::from_millis(450)), "450ms");
        assert_eq!(format_age(Duration::from_secs(12)), "12s");
        assert_eq!(format_age(Duration::from_secs(182)), "3m 2s");
        assert_eq!(format_age(Duration::from_secs(7500)), "2h 5m");
        assert_eq!(
            format_age(Duration::from_secs(3 * 86400 + 4 * 3600)),
            "3d 4h"
        );
    }

    fn doc() -> Document {
        let now = SystemTime::now();
        let target = |name: &str, state, required, error: Option<&str>| TargetStatus {
            name: name.to_owned(),
            address: "127.0.0.1:5432".to_owned(),
            probe: "tcp".to_owned(),
            required,
            state,
            since: Timestamp(now - Duration::from_secs(75)),
            failures: if state == State::Up { 0 } else { 7 },
            last_error: error.map(str::to_owned),
            event_id: Some(format!("{name}:1")),
            event: Some(Event::Connect),
            fallback: state == State::Failed,
            role: None,
            tls_not_after: None,
        };
        Document {
            version: "0.1.0".to_owned(),
            instance: "8f3a51c09e27d4b6".to_owned(),
            generated_at: Timestamp(now),
            ready: false,
            stopping: false,
            targets: vec![
                target("cache", State::Failed, false, Some("connection refused")),
                target("db", State::Up, true, None),
            ],
            groups: Vec::new(),
        }
    }

    #[test]
    fn the_plain_table_has_one_aligned_row_per_target_and_no_escapes() {
        let url = Url::from_listen("127.0.0.1:9464".parse().unwrap()).or_path("/status");
        let table = render(&doc(), &url, false);
        assert!(!table.contains('\x1b'), "{table}");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 4, "{table}");
        assert!(
            lines[0].contains("not ready, 1/1 required targets up"),
            "{table}"
        );
        assert!(lines[1].starts_with("TARGET  STATE"), "{table}");
        let state_column = lines[1].find("STATE").unwrap();
        assert_eq!(
            &lines[2][state_column..state_column + 17],
            "failed (fallback)"
        );
        assert!(lines[2].contains("1m 15s") && lines[2].ends_with("connection refused"));
        assert_eq!(&lines[3][state_column..state_column + 3], "up ");
        assert!(lines[3].ends_with(" -"), "{table}");
    }

    #[test]
    fn a_role_column_appears_only_when_some_target_has_a_role() {
        let url = Url::from_listen("127.0.0.1:9464".parse().unwrap());
        let mut d = doc();
        assert!(!render(&d, &url, false).contains("ROLE"));
        d.targets[1].role = Some(crate::probe::Role::Primary);
        let table = render(&d, &url, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("TARGET  STATE"), "{table}");
        let role_column = lines[1].find("ROLE").unwrap();
        assert_eq!(&lines[2][role_column..role_column + 2], "- ", "{table}");
        assert_eq!(
            &lines[3][role_column..role_column + 7],
            "primary",
            "{table}"
        );
    }

    #[test]
    fn the_terminal_table_colours_states() {
        let url = Url::from_listen("127.0.0.1:9464".parse().unwrap()).or_path("/status");
        let table = render(&doc(), &url, true);
        assert!(
            table.contains("\x1b[31mfailed (fallback)\x1b[0m"),
            "{table:?}"
        );
        assert!(table.contains("\x1b[32mup\x1b[0m"), "{table:?}");
    }

    #[test]
    fn exit_codes_follow_required_targets() {
        let body = Bytes::new();
        let mut d = doc();
        assert_eq!(
            exit_code(&Ok((d.clone(), body.clone()))),
            EXIT_UP,
            "cache is optional"
        );
        d.targets[1].state = State::Down;
        assert_eq!(exit_code(&Ok((d.clone(), body.clone()))), EXIT_NOT_UP);
        let err = FetchError::TimedOut(Duration::from_secs(1));
        assert_eq!(exit_code(&Err(err)), EXIT_UNREACHABLE);
    }

    /// db and cache in the group "store", on `active`.
    fn grouped(active: Option<&str>, fallback: bool) -> Document {
        let mut d = doc();
        d.groups.push(GroupStatus {
            name: "store".to_owned(),
            members: vec!["db".to_owned(), "cache".to_owned()],
            role: None,
            fallback: "memory".to_owned(),
            failback: crate::config::Failback::Immediate,
            active: active.map(str::to_owned),
            fallback_active: fallback,
            since: Timestamp(d.generated_at.0 - Duration::from_secs(12)),
            conflict: false,
            claimants: Vec::new(),
            reason: active.map(|_| "active-lost".to_owned()),
            event_id: active.map(|_| "store:3".to_owned()),
            required: true,
        });
        d
    }

    #[test]
    fn a_group_gets_a_row_under_the_targets_and_decides_the_exit_code() {
        let url = Url::from_listen("127.0.0.1:9464".parse().unwrap());
        let body = Bytes::new();
        let mut d = grouped(Some("cache"), false);
        d.targets[1].state = State::Down;
        let table = render(&d, &url, false);
        let lines: Vec<&str> = table.lines().collect();
        assert!(
            lines[0].ends_with("0/0 required targets up, 1/1 required groups on a member"),
            "{table}"
        );
        assert_eq!(lines[4], "", "{table}");
        assert!(
            lines[5].starts_with("GROUP  ACTIVE  FOR  CONFLICT  REASON"),
            "{table}"
        );
        assert_eq!(
            lines[6], "store  cache   12s  no        active-lost",
            "{table}"
        );
        assert_eq!(
            exit_code(&Ok((d.clone(), body.clone()))),
            EXIT_UP,
            "db is down but counts only through its group"
        );

        let fallback = grouped(Some("memory"), true);
        assert_eq!(
            exit_code(&Ok((fallback.clone(), body.clone()))),
            EXIT_NOT_UP
        );
        let table = render(&fallback, &url, true);
        assert!(
            table.contains("\x1b[31mmemory (fallback)\x1b[0m"),
            "{table:?}"
        );
        let undecided = grouped(None, false);
        assert_eq!(
            exit_code(&Ok((undecided.clone(), body.clone()))),
            EXIT_NOT_UP
        );
        assert!(render(&undecided, &url, false).contains("store  undecided"));

        let mut conflict = grouped(Some("db"), false);
        conflict.groups[0].conflict = true;
        conflict.groups[0].claimants = vec!["db".to_owned(), "cache".to_owned()];
        let table = render(&conflict, &url, true);
        assert!(table.contains("\x1b[31myes: db, cache\x1b[0m"), "{table:?}");
    }
}
