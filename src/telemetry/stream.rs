//! `GET /events`: the event stream as Server-Sent Events. A subscriber gets a
//! `snapshot` (the status document and the position it is current to), then every
//! event after it, in order, each with `id: <instance>:<position>`. `Last-Event-ID`
//! or `?since=` resumes after a position from the history; a position the history no
//! longer holds, or one from another run of tether, gets `reset` and a new snapshot.
//! `?target=a,b` keeps only those targets' events; a group's name keeps its `group`
//! events. A subscriber that falls behind its
//! buffer also gets `reset` and a snapshot: it never makes tether hold more, and never
//! delays a checker, a hook or another subscriber.

use std::collections::HashSet;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::telemetry::events::{Entry, Index, Start, Subscription};
use crate::telemetry::http::{App, Body, query_pairs, text};

/// Messages written to a subscriber's socket but not yet taken by it.
const QUEUE: usize = 16;

/// The kernel's send buffer of a stream's socket (the kernel doubles it). Left to
/// autotuning it grows to `tcp_wmem`'s maximum, 4 MiB by default: for a subscriber
/// that stopped reading, thousands of events' worth of kernel memory each, and that
/// many events before it is told `reset`.
pub const SEND_BUFFER: usize = 64 * 1024;

/// Caps the send buffer of a connection that now carries a stream. A socket that
/// refuses keeps its default: the stream works either way.
pub fn limit_send_buffer(socket: &std::os::fd::BorrowedFd<'_>) {
    let _ = socket2::SockRef::from(socket).set_send_buffer_size(SEND_BUFFER);
}

/// Answers `/events`; `streaming` tells the connection it now carries a stream.
pub fn respond(
    app: &App,
    req: &Request<Incoming>,
    streaming: &CancellationToken,
) -> Response<Body> {
    let (since, targets) = match parse(req) {
        Ok(parsed) => parsed,
        Err(why) => return text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
    };
    let Some(slot) = app.events.subscriber_slot() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "too many subscribers\n");
    };
    let subscription = app.events.subscribe(since.as_ref());
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(feed(app.clone(), subscription, targets, tx, slot));
    streaming.cancel();
    let mut res = Response::new(Stream(rx).boxed());
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `Last-Event-ID` (or `?since=`) and `?target=`.
fn parse(req: &Request<Incoming>) -> Result<(Option<Index>, Option<HashSet<String>>), String> {
    let mut since = req
        .headers()
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    let mut targets = None;
    for (key, value) in query_pairs(req.uri().query().unwrap_or("")) {
        match key {
            "since" => since = Some(value),
            "target" => targets = Some(value.split(',').map(str::to_owned).collect()),
            other => return Err(format!("unknown parameter {other:?}: since and target are")),
        }
    }
    let since = match since.filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(s.parse().map_err(|e| format!("since: {e}"))?),
    };
    Ok((since, targets))
}

/// Writes the subscriber's stream until it goes away or the sidecar stops.
async fn feed(
    app: App,
    mut sub: Subscription,
    targets: Option<HashSet<String>>,
    tx: mpsc::Sender<Bytes>,
    _slot: OwnedSemaphorePermit,
) {
    let closed = app.events.closed().clone();
    let wanted = |e: &Entry| targets.as_ref().is_none_or(|t| t.contains(e.target()));
    let start = std::mem::replace(&mut sub.start, Start::Snapshot);
    let first = match start {
        Start::Snapshot => vec![snapshot(&app, sub.position)],
        Start::Reset => vec![
            reset("position not in the history"),
            snapshot(&app, sub.position),
        ],
        Start::Replay(entries) => entries.iter().filter(|e| wanted(e)).map(event).collect(),
    };
    for message in first {
        if tx.send(message).await.is_err() {
            return;
        }
    }
    // A comment line keeps proxies from cutting an idle stream.
    let every = app.events.heartbeat();
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        let message = tokio::select! {
            () = closed.cancelled() => return,
            _ = heartbeat.tick() => Bytes::from_static(b": heartbeat\n\n"),
            received = sub.feed.recv() => match received {
                Ok(entry) if wanted(&entry) => event(&entry),
                Ok(_) => continue,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Fell behind: start over from a snapshot rather than skip in silence.
                    sub = app.events.subscribe(None);
                    if tx.send(reset("fell behind")).await.is_err() {
                        return;
                    }
                    snapshot(&app, sub.position)
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if tx.send(message).await.is_err() {
            return;
        }
    }
}

fn event(entry: &Arc<Entry>) -> Bytes {
    let id = Index::here(entry.position);
    Bytes::from(format!(
        "id: {id}\nevent: {}\ndata: {}\n\n",
        entry.kind,
        entry.data()
    ))
}

/// The status document, current to at least `position`.
fn snapshot(app: &App, position: u64) -> Bytes {
    let id = Index::here(position);
    let data = serde_json::json!({
        "position": id.to_string(),
        "status": app.status.document(),
    });
    Bytes::from(format!("id: {id}\nevent: snapshot\ndata: {data}\n\n"))
}

fn reset(reason: &str) -> Bytes {
    let data = serde_json::json!({ "reason": reason });
    Bytes::from(format!("event: reset\ndata: {data}\n\n"))
}

/// The response body: what the feed task writes, as it writes it.
struct Stream(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|m| m.map(|bytes| Ok(Frame::data(bytes))))
    }
}
