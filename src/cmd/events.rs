//! `tether events`: follows a running sidecar's `/events` for a person (one line per
//! event) or a shell loop (`--json`, one object per line), and keeps following across
//! dropped connections and restarts of the sidecar.
//!
//! After a dropped connection it reconnects with backoff and sends the id of the last
//! event it printed as `Last-Event-ID`: tether replays what came after from its
//! history, so nothing is printed twice and nothing is skipped; when tether cannot
//! (its history moved on, or it is a new run) it says `reset` and sends a fresh
//! snapshot, and both are printed as they come.

use std::io::Write;
use std::time::{Duration, SystemTime};

use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use hyper::StatusCode;
use hyper::header::{HeaderName, HeaderValue};
use serde_json::{Map, Value};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{sleep, timeout};

use crate::cmd::client::{self, ClientError, Url};
use crate::config::{self, HumanDuration};
use crate::exit;
use crate::watch::backoff::ReconnectBackoff;

/// Interrupted (SIGINT, SIGTERM), or standard output closed.
pub const EXIT_DONE: u8 = exit::OK;
/// The first connection failed or was not answered with a stream.
pub const EXIT_UNREACHABLE: u8 = exit::UNREACHABLE;

/// How long a connection may take to answer with the stream's head.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// An event larger than this is not one of tether's: the connection is dropped.
const MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

/// Reconnects start quickly (a restarted sidecar is back within a second) and settle
/// at a few seconds, as target reconnects do.
fn reconnect_schedule() -> config::Backoff {
    config::Backoff {
        initial: HumanDuration(Duration::from_millis(100)),
        max: HumanDuration(Duration::from_secs(3)),
        multiplier: 2.0,
        jitter: 0.2,
    }
}

/// What to follow and how to print it.
#[derive(Clone, Debug)]
pub struct Options {
    pub url: Url,
    pub json: bool,
    /// Resume after this position (`<instance>:<position>`).
    pub since: Option<String>,
    /// Only these targets' events; every target when empty.
    pub targets: Vec<String>,
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sse {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
}

/// Splits a byte stream into events as the SSE format does: fields up to a blank line,
/// comments (heartbeats) skipped.
#[derive(Default)]
pub struct Parser {
    buf: BytesMut,
    current: Sse,
    has_data: bool,
}

impl Parser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, if one has arrived.
    pub fn next_event(&mut self) -> Option<Sse> {
        while let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
            let line = self.buf.split_to(end + 1);
            let line = String::from_utf8_lossy(&line[..end]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.is_empty() {
                let done = std::mem::take(&mut self.current);
                let had_data = std::mem::take(&mut self.has_data);
                if had_data || !done.event.is_empty() {
                    let event = if done.event.is_empty() {
                        "message".to_owned()
                    } else {
                        done.event
                    };
                    return Some(Sse { event, ..done });
                }
                continue;
            }
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = value.to_owned(),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        None
    }

    /// Bytes held for an event not complete yet.
    fn pending(&self) -> usize {
        self.buf.remaining() + self.current.data.len()
    }
}

/// How a connection ended.
enum End {
    /// Interrupted, or nobody reads standard output any more: the command is done.
    Done,
    /// The stream broke: reconnect.
    Dropped(String),
}

/// `tether events`.
pub fn command(
    config: &crate::cli::ConfigArg,
    url: Option<Url>,
    json: bool,
    since: Option<String>,
    targets: Vec<String>,
) -> std::process::ExitCode {
    let url = match url {
        Some(url) => url,
        None => match client::url_from_config(config) {
            Ok(url) => url,
            Err(code) => return code,
        },
    }
    .or_path("/events");
    let options = Options {
        url,
        json,
        since,
        targets,
    };
    super::block_on(async {
        Ok::<_, std::convert::Infallible>(std::process::ExitCode::from(run(&options).await))
    })
}

/// Follows the stream until interrupted; returns the exit code.
pub async fn run(options: &Options) -> u8 {
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("tether: cannot install signal handlers");
        return exit::FAILURE;
    };
    let url = match options.targets.as_slice() {
        [] => options.url.clone(),
        names => options
            .url
            .with_query(&format!("target={}", names.join(","))),
    };
    let mut printer = Printer {
        json: options.json,
        targets: options.targets.clone(),
    };
    let mut last_id = options.since.clone();
    let mut backoff = ReconnectBackoff::new(&reconnect_schedule());
    let mut first = true;
    loop {
        let since = last_id.clone();
        let followed = follow(&url, since.as_deref(), &mut printer, &mut last_id);
        let end = tokio::select! {
            _ = interrupt.recv() => return EXIT_DONE,
            _ = terminate.recv() => return EXIT_DONE,
            end = followed => end,
        };
        match end {
            Ok(End::Done) => return EXIT_DONE,
            Ok(End::Dropped(why)) => {
                // Some event came through: the next outage starts the schedule over.
                backoff.reset();
                eprintln!(
                    "tether: the stream from {} ended ({why}); reconnecting",
                    options.url
                );
            }
            Err(why) if first => {
                eprintln!("tether: cannot follow {}: {why}", options.url);
                return EXIT_UNREACHABLE;
            }
            Err(why) => eprintln!("tether: cannot reconnect to {}: {why}", options.url),
        }
        first = false;
        tokio::select! {
            _ = interrupt.recv() => return EXIT_DONE,
            _ = terminate.recv() => return EXIT_DONE,
            () = sleep(backoff.next_delay()) => {}
        }
    }
}

/// Why a connection gave no stream.
#[derive(Debug, thiserror::Error)]
enum FollowError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    #[error("answered {0}")]
    Status(StatusCode),
}

/// One connection: prints its events until it ends, keeping `last_id` at the id of
/// the last event printed.
async fn follow(
    url: &Url,
    since: Option<&str>,
    printer: &mut Printer,
    last_id: &mut Option<String>,
) -> Result<End, FollowError> {
    let mut headers = Vec::new();
    if let Some(value) = since.and_then(|s| HeaderValue::from_str(s).ok()) {
        headers.push((HeaderName::from_static("last-event-id"), value));
    }
    let mut answer = timeout(CONNECT_TIMEOUT, client::get(url, &headers))
        .await
        .map_err(|_| FollowError::TimedOut(CONNECT_TIMEOUT))??;
    let status = answer.response.status();
    if status != StatusCode::OK {
        return Err(FollowError::Status(status));
    }
    let body = answer.response.body_mut();
    let mut parser = Parser::default();
    loop {
        let frame = match body.frame().await {
            None => return Ok(End::Dropped("closed by the sidecar".to_owned())),
            Some(Err(e)) => return Ok(End::Dropped(e.to_string())),
            Some(Ok(frame)) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        parser.push(&data);
        while let Some(event) = parser.next_event() {
            if printer.print(&event).is_err() {
                return Ok(End::Done);
            }
            if event.id.is_some() {
                last_id.clone_from(&event.id);
            }
        }
        if parser.pending() > MAX_EVENT_BYTES {
            return Ok(End::Dropped("an event too large".to_owned()));
        }
    }
}

/// Writes events to standard output, a line at a time and flushed, so a pipe reader
/// gets each as it comes.
struct Printer {
    json: bool,
    targets: Vec<String>,
}

impl Printer {
    fn print(&mut self, event: &Sse) -> std::io::Result<()> {
        let lines = if self.json {
            vec![json_line(event, &self.targets)]
        } else {
            human_lines(event, &self.targets)
        };
        let mut out = std::io::stdout().lock();
        for line in lines {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// The event's data with its SSE event name as `type` and its `id`; a snapshot keeps
/// only the wanted targets. (`event` stays what the data says: for a transition, the
/// hook event.)
pub fn json_line(event: &Sse, targets: &[String]) -> String {
    let mut object = match serde_json::from_str(&event.data) {
        Ok(Value::Object(object)) => object,
        Ok(other) => Map::from_iter([("data".to_owned(), other)]),
        Err(_) => Map::from_iter([("data".to_owned(), Value::String(event.data.clone()))]),
    };
    if event.event == "snapshot" && !targets.is_empty() {
        if let Some(Value::Array(list)) =
            object.get_mut("status").and_then(|s| s.get_mut("targets"))
        {
            list.retain(|t| wanted(t, targets));
        }
    }
    object.insert("type".to_owned(), Value::String(event.event.clone()));
    if let Some(id) = &event.id {
        object.insert("id".to_owned(), Value::String(id.clone()));
    }
    Value::Object(object).to_string()
}

fn wanted(target: &Value, targets: &[String]) -> bool {
    let name = target.get("name").and_then(Value::as_str).unwrap_or("");
    targets.is_empty() || targets.iter().any(|t| t == name)
}

/// A person's lines for one event: a transition on one line, a snapshot as one line
/// per target, `reset` plainly.
pub fn human_lines(event: &Sse, targets: &[String]) -> Vec<String> {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let s = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("-").to_owned();
    let now = || humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    match event.event.as_str() {
        "transition" => {
            let mut line = format!(
                "{}  {}  {}  {} -> {}  {}",
                s(&data, "timestamp"),
                s(&data, "target"),
                s(&data, "event"),
                s(&data, "previous_state"),
                s(&data, "state"),
                s(&data, "event_id"),
            );
            if let Some(error) = data.get("last_error").and_then(Value::as_str) {
                line.push_str(&format!("  ({error})"));
            }
            vec![line]
        }
        "snapshot" => {
            let status = &data["status"];
            let at = s(status, "generated_at");
            let list = status["targets"].as_array().cloned().unwrap_or_default();
            list.iter()
                .filter(|t| wanted(t, targets))
                .map(|t| {
                    format!(
                        "{at}  {}  snapshot  {}  {}",
                        s(t, "name"),
                        s(t, "state"),
                        s(t, "event_id"),
                    )
                })
                .collect()
        }
        "reset" => vec![format!("{}  reset  ({})", now(), s(&data, "reason"))],
        kind => vec![format!("{}  {}  {kind}", now(), s(&data, "target"))],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(chunks: &[&str]) -> Vec<Sse> {
        let mut parser = Parser::default();
        let mut out = Vec::new();
        for chunk in chunks {
            parser.push(chunk.as_bytes());
            while let Some(e) = parser.next_event() {
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn events_split_across_reads_are_put_back_together_and_comments_skipped() {
        let got = events(&[
            "id: a:1\nevent: snap",
            "shot\ndata: {}\n\n: heartbeat\n\n",
            "event: reset\r\ndata: {\"reason\":\"x\"}\r\n\r\n",
        ]);
        assert_eq!(
            got,
            [
                Sse {
                    id: Some("a:1".into()),
                    event: "snapshot".into(),
                    data: "{}".into()
                },
                Sse {
                    id: None,
                    event: "reset".into(),
                    data: "{\"reason\":\"x\"}".into()
                },
            ]
        );
    }

    #[test]
    fn a_json_line_keeps_the_hook_event_and_adds_the_type_and_id() {
        let sse = Sse {
            id: Some("i:7".into()),
            event: "transition".into(),
            data: r#"{"target":"db","event":"disconnect","event_id":"db:3"}"#.into(),
        };
        let v: Value = serde_json::from_str(&json_line(&sse, &[])).unwrap();
        assert_eq!(v["type"], "transition");
        assert_eq!(v["event"], "disconnect");
        assert_eq!(v["id"], "i:7");
        assert_eq!(v["event_id"], "db:3");
    }

    #[test]
    fn a_snapshot_is_one_human_line_per_wanted_target() {
        let sse = Sse {
            id: Some("i:0".into()),
            event: "snapshot".into(),
            data: r#"{"position":"i:0","status":{"generated_at":"T","targets":[
                {"name":"a","state":"up","event_id":"a:1"},
                {"name":"b","state":"down","event_id":"b:2"}]}}"#
                .into(),
        };
        assert_eq!(
            human_lines(&sse, &[]),
            ["T  a  snapshot  up  a:1", "T  b  snapshot  down  b:2"]
        );
        assert_eq!(
            human_lines(&sse, &["b".into()]),
            ["T  b  snapshot  down  b:2"]
        );
    }
}
