//! The HTTP endpoints (`/`, `/metrics`, `/healthz`, `/readyz`, `/startupz`, `/status`,
//! `/events`) on `[server] listen` and `[server] unix_socket`.
//!
//! Both listeners serve the same endpoints with the same defences, each with its own
//! connection bound, so a flood on the TCP port never displaces a client of the socket.
//! Every request carries the [`Origin`] it came in on: admin routes check it and are
//! answered on the unix socket only, where file permissions decide who may connect,
//! never on TCP.
//!
//! Every answer is built from shared state that checkers update synchronously, so
//! nothing on the request path waits on a checker or a hook. The server defends itself
//! against slow and abusive clients: HTTP/1 only, a deadline for the request head, tiny
//! request limits, GET only, a maximum connection age, and a bound on connections where
//! a newcomer at the bound displaces the oldest connection instead of queueing behind
//! it, so a flood of idle sockets cannot lock out a real client.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body as _, Frame, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::path::Path;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream, UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{sleep, timeout};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::telemetry::events::{self, Events, Index};
use crate::telemetry::metrics::{self, Metrics};
use crate::telemetry::status::Status;
use crate::telemetry::unix_socket::{self, SocketFile, UnixSocketError};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} ([server] listen): {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Unix(#[from] UnixSocketError),
}

/// The listener a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Tcp,
    /// Only those the socket file's mode and group admit can connect here.
    Unix,
}

/// How much the server gives each client.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once; at the bound, a new one displaces the oldest.
    pub max_connections: usize,
    /// Time a client has to send a complete request head, on a new connection and
    /// between requests of a kept-alive one. Closes idle and byte-at-a-time clients.
    pub header_read_timeout: Duration,
    /// After this long a connection is asked to close once its current response is out,
    /// so none (a client that never reads its response, say) lives for ever.
    pub max_connection_age: Duration,
    /// How long a connection may take to finish after it is asked to close.
    pub close_grace: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            header_read_timeout: Duration::from_secs(5),
            max_connection_age: Duration::from_secs(60),
            close_grace: Duration::from_secs(5),
        }
    }
}

/// The request head may not exceed this (hyper's smallest buffer). A scraper's head is
/// a few hundred bytes.
const MAX_HEAD_BYTES: usize = 8192;
/// Header lines a request may carry.
const MAX_HEADERS: usize = 32;
/// Targets named in a 503 from `/readyz`; `/status` has them all.
const READYZ_NAMES: usize = 10;
/// Connections the kernel may queue before the server accepts them.
const LISTEN_BACKLOG: u32 = 1024;

/// Every answer's body: a whole document, or the event stream as it is written.
pub type Body = BoxBody<Bytes, Infallible>;

/// What the endpoints read.
#[derive(Clone)]
pub struct App {
    pub status: Arc<Status>,
    pub metrics: Arc<Metrics>,
    pub events: Arc<Events>,
    /// What admin actions act on; set once the groups run.
    pub admin: Arc<Admin>,
}

/// The running parts admin actions act on. Filled in after the server is bound: the
/// listeners start before anything they could act on.
#[derive(Default)]
pub struct Admin {
    pub groups: std::sync::OnceLock<crate::watch::groups::Groups>,
}

/// A bound, not yet serving, HTTP server.
pub struct HttpServer {
    listener: Listener,
    app: App,
    limits: Limits,
}

enum Listener {
    Tcp(TcpListener),
    /// The file goes when the listener does.
    Unix(UnixListener, SocketFile),
}

enum Connection {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Connection> {
        match self {
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| Connection::Tcp(s)),
            Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Connection::Unix(s)),
        }
    }
}

impl HttpServer {
    /// Binds `addr`; a port of 0 picks a free one (see [`HttpServer::local_addr`]).
    pub async fn bind(addr: SocketAddr, app: App, limits: Limits) -> Result<HttpServer, HttpError> {
        let bind = || {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            // A restarted sidecar must not wait for its old connections' TIME_WAIT.
            socket.set_reuseaddr(true)?;
            socket.bind(addr)?;
            // Room for a burst of connections while the accept loop displaces old ones
            // (the default of 128 would make a flood stall new clients in the kernel).
            socket.listen(LISTEN_BACKLOG)
        };
        let listener = bind().map_err(|source| HttpError::Bind { addr, source })?;
        Ok(HttpServer {
            listener: Listener::Tcp(listener),
            app,
            limits,
        })
    }

    /// Binds the unix socket `path` (mode 0660, and `group` when given), replacing a
    /// stale socket of an earlier run; the file is removed when the server stops.
    pub async fn bind_unix(
        path: &Path,
        group: Option<&str>,
        app: App,
        limits: Limits,
    ) -> Result<HttpServer, HttpError> {
        let (listener, file) = unix_socket::bind(path, group)?;
        Ok(HttpServer {
            listener: Listener::Unix(listener, file),
            app,
            limits,
        })
    }

    /// The TCP address actually bound; `None` for a unix socket.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => Some(
                l.local_addr()
                    .expect("a bound TCP listener has a local address"),
            ),
            Listener::Unix(..) => None,
        }
    }

    /// The socket file served on; `None` for TCP.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.listener {
            Listener::Tcp(_) => None,
            Listener::Unix(_, file) => Some(file.path()),
        }
    }

    /// Serves until `shutdown` resolves, then asks every connection to close and waits
    /// up to `close_grace` for them.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let HttpServer {
            listener,
            app,
            limits,
        } = self;
        let permits = Arc::new(Semaphore::new(limits.max_connections));
        let conns = Connections::default();
        let closing = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_headers(MAX_HEADERS)
            // A client may shut down its sending side once its request is out
            // (`nc -N`, `curl` through some proxies) and still wait for the answer.
            .half_close(true)
            .keep_alive(true);
        let builder = Arc::new(builder);
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => match accepted {
                    Ok(stream) => stream,
                    Err(e) => {
                        // Out of file descriptors, mostly: wait for some to be freed
                        // rather than spin on the error.
                        tracing::warn!(error = %e, "cannot accept an HTTP connection");
                        sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let Some(permit) = admit(&permits, &conns).await else {
                tracing::debug!("every HTTP connection is busy; refusing one");
                continue;
            };
            let (id, evicted, streaming) = conns.add();
            tracker.spawn(serve(
                stream,
                Conn {
                    builder: builder.clone(),
                    app: app.clone(),
                    limits,
                    guard: Guard {
                        id,
                        conns: conns.clone(),
                        _permit: permit,
                    },
                    evicted,
                    streaming,
                    closing: closing.clone(),
                },
            ));
        }
        drop(listener);
        closing.cancel();
        tracker.close();
        if timeout(limits.close_grace, tracker.wait()).await.is_err() {
            tracing::warn!("HTTP connections still open after the grace period; dropping them");
            conns.evict_all();
            tracker.wait().await;
        }
    }
}

/// A connection slot, taking one from the oldest connection when all are in use.
async fn admit(permits: &Arc<Semaphore>, conns: &Connections) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = permits.clone().try_acquire_owned() {
        return Some(permit);
    }
    conns.evict_oldest();
    // The evicted connection's task drops its permit as soon as it is next polled.
    timeout(Duration::from_secs(1), permits.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// The open connections, oldest first, with the token that evicts each.
#[derive(Clone, Default)]
struct Connections(Arc<Mutex<ConnectionsInner>>);

#[derive(Default)]
struct ConnectionsInner {
    next_id: u64,
    /// Each connection's eviction token, and the token it cancels when it starts
    /// carrying an event stream.
    open: BTreeMap<u64, (CancellationToken, CancellationToken)>,
}

impl Connections {
    /// A new connection's id, the token that evicts it and the one that marks it a
    /// stream.
    fn add(&self) -> (u64, CancellationToken, CancellationToken) {
        let mut inner = self.lock();
        let id = inner.next_id;
        inner.next_id += 1;
        let (evict, streaming) = (CancellationToken::new(), CancellationToken::new());
        inner.open.insert(id, (evict.clone(), streaming.clone()));
        (id, evict, streaming)
    }

    /// Evicts the oldest connection that is not a stream. A stream leaves the map when
    /// its task next runs; until then it is passed over here, so one that has just
    /// started (its answer's head already out) is never displaced in that moment.
    fn evict_oldest(&self) {
        let mut inner = self.lock();
        let oldest = inner
            .open
            .iter()
            .find(|(_, (_, streaming))| !streaming.is_cancelled())
            .map(|(id, _)| *id);
        if let Some((evict, _)) = oldest.and_then(|id| inner.open.remove(&id)) {
            evict.cancel();
        }
    }

    fn evict_all(&self) {
        for (evict, _) in std::mem::take(&mut self.lock().open).into_values() {
            evict.cancel();
        }
    }

    fn remove(&self, id: u64) {
        self.lock().open.remove(&id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnectionsInner> {
        // Single-call updates: a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Frees a connection's slot when its task ends, however it ends.
struct Guard {
    id: u64,
    conns: Connections,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.conns.remove(self.id);
    }
}

async fn serve(stream: Connection, conn: Conn) {
    match stream {
        Connection::Tcp(stream) => {
            // Responses are small and written at once; do not hold them back for Nagle.
            let _ = stream.set_nodelay(true);
            conn.serve(stream, Origin::Tcp).await;
        }
        Connection::Unix(stream) => conn.serve(stream, Origin::Unix).await,
    }
}

/// What serving one connection needs, whichever listener it came from.
struct Conn {
    builder: Arc<http1::Builder>,
    app: App,
    limits: Limits,
    guard: Guard,
    evicted: CancellationToken,
    /// Cancelled once the connection carries an event stream.
    streaming: CancellationToken,
    closing: CancellationToken,
}

impl Conn {
    async fn serve<S>(self, stream: S, origin: Origin)
    where
        S: AsyncRead + AsyncWrite + AsRawFd + Unpin + Send + 'static,
    {
        let Conn {
            builder,
            app,
            limits,
            guard,
            evicted,
            streaming,
            closing,
        } = self;
        let fd = stream.as_raw_fd();
        // `streaming` is cancelled once the connection carries an event stream: from
        // then on it is exempt from the connection age and leaves the connection cap
        // (streams count against their own bound), so it is neither cut nor displaced.
        let service = service_fn({
            let streaming = streaming.clone();
            move |req| {
                let app = app.clone();
                let streaming = streaming.clone();
                async move { Ok::<_, Infallible>(respond(app, req, origin, &streaming).await) }
            }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let age = sleep(limits.max_connection_age);
        tokio::pin!(age);
        let mut guard = Some(guard);
        loop {
            tokio::select! {
                result = conn.as_mut() => return log_end(result),
                () = evicted.cancelled(), if guard.is_some() => return,
                () = closing.cancelled() => break,
                () = &mut age, if !streaming.is_cancelled() => break,
                () = streaming.cancelled(), if guard.is_some() => {
                    guard = None;
                    // SAFETY: `conn` owns the socket and is alive for this whole loop.
                    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
                    crate::telemetry::stream::limit_send_buffer(&socket);
                }
            }
        }
        // Let the in-flight response go out, then close. A connection in this phase still
        // holds a slot, so it still yields it to a newcomer when evicted.
        conn.as_mut().graceful_shutdown();
        tokio::select! {
            result = conn.as_mut() => log_end(result),
            () = evicted.cancelled() => {}
            () = sleep(limits.close_grace) => {}
        }
    }
}

fn log_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Timeouts, malformed requests and clients going away: the client's problem.
        tracing::debug!(error = %e, "HTTP connection ended with an error");
    }
}

// === the endpoints ===

/// Answers one request. Every answer comes from memory; only the documents that grow
/// with the number of targets are built on the blocking pool, so that encoding
/// thousands of series never holds up a runtime thread that checkers need.
///
/// The origin is where the request came in; an admin route answers only
/// [`Origin::Unix`].
async fn respond(
    app: App,
    req: Request<Incoming>,
    origin: Origin,
    streaming: &CancellationToken,
) -> Response<Body> {
    if let Some(group) = failback_route(req.uri().path()) {
        return failback(&app, &req, origin, group);
    }
    if req.method() != Method::GET {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return res;
    }
    if req.body().size_hint().exact() != Some(0) {
        return text(StatusCode::PAYLOAD_TOO_LARGE, "a GET carries no body\n");
    }
    let document: fn(&App) -> Response<Body> = match req.uri().path() {
        "/healthz" => return text(StatusCode::OK, "ok\n"),
        "/readyz" => return readyz(&app.status),
        "/startupz" => return startupz(&app.status),
        "/events" => return crate::telemetry::stream::respond(&app, &req, streaming),
        "/status" => {
            if let Some(query) = req.uri().query() {
                match long_poll(query) {
                    Ok((seen, wait)) => app.events.wait_past(&seen, wait).await,
                    Err(why) => return text(StatusCode::BAD_REQUEST, &format!("{why}\n")),
                }
            }
            status_document
        }
        "/metrics" => metrics_exposition,
        "/" => crate::telemetry::page::respond,
        _ => {
            return text(
                StatusCode::NOT_FOUND,
                "not found; try /, /metrics, /healthz, /readyz, /startupz, /status or /events\n",
            );
        }
    };
    tokio::task::spawn_blocking(move || document(&app))
        .await
        .unwrap_or_else(|e| {
            tracing::error!(error = %e, "building an HTTP answer failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n")
        })
}

// === admin actions ===

/// `POST /groups/<name>/failback`: the group named, if the path is this route.
fn failback_route(path: &str) -> Option<&str> {
    path.strip_prefix("/groups/")?
        .strip_suffix("/failback")
        .filter(|name| !name.is_empty() && !name.contains('/'))
}

/// `tether failback GROUP`: answered on the unix socket only, where the socket file's
/// mode and group decide who may connect. On TCP anyone who can reach the port could
/// move the application's writes, so it is refused there whatever the request.
fn failback(app: &App, req: &Request<Incoming>, origin: Origin, group: &str) -> Response<Body> {
    if origin != Origin::Unix {
        return text(
            StatusCode::FORBIDDEN,
            "admin actions are served on the unix socket only (server.unix_socket)\n",
        );
    }
    if req.method() != Method::POST {
        let mut res = text(StatusCode::METHOD_NOT_ALLOWED, "failback is a POST\n");
        res.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("POST"));
        return res;
    }
    if req.body().size_hint().exact() != Some(0) {
        return text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "a failback carries no body\n",
        );
    }
    let Some(groups) = app.admin.groups.get() else {
        return text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the groups are not running yet\n",
        );
    };
    use crate::watch::groups::FailbackError;
    match groups.failback(group) {
        Ok(event) => {
            let body = serde_json::json!({
                "group": group,
                "event_id": event.event_id(group),
                "active": event.active,
                "previous_active": event.previous_active,
                "reason": event.reason.as_str(),
            });
            self::body(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec(&body).expect("a JSON value serializes"),
            )
        }
        Err(e @ FailbackError::UnknownGroup(_)) => text(StatusCode::NOT_FOUND, &format!("{e}\n")),
        Err(e @ FailbackError::Refused { .. }) => text(StatusCode::CONFLICT, &format!("{e}\n")),
    }
}

fn status_document(app: &App) -> Response<Body> {
    #[cfg(feature = "fault-injection")]
    crate::fault::check_http();
    // The index first: the document then holds at least every change up to it.
    let index = app.events.index();
    let mut res = body(
        StatusCode::OK,
        "application/json",
        app.status.document_json(),
    );
    if let Ok(value) = HeaderValue::from_str(&index.to_string()) {
        res.headers_mut().insert(INDEX_HEADER, value);
    }
    res
}

/// The `key=value` pairs of a query, with the escapes the endpoints' values can carry
/// (`:` in an index, `,` in a list) decoded.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (&str, String)> {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = value
            .replace("%3A", ":")
            .replace("%3a", ":")
            .replace("%2C", ",")
            .replace("%2c", ",");
        (key, value)
    })
}

/// The stream position a `/status` answer is current to.
const INDEX_HEADER: &str = "x-tether-index";

/// `index=<instance>:<position>&wait=<duration>` of a long-poll: answer once the
/// stream has moved past `index`, or after `wait` (default 30s, at most
/// [`events::MAX_WAIT`]) with the same document.
fn long_poll(query: &str) -> Result<(Index, Duration), String> {
    let mut index = None;
    let mut wait = Duration::from_secs(30);
    for (key, value) in query_pairs(query) {
        match key {
            "index" => index = Some(value.parse().map_err(|e| format!("index: {e}"))?),
            "wait" => {
                wait = crate::config::duration::parse(&value).map_err(|e| format!("wait: {e}"))?;
                if wait > events::MAX_WAIT {
                    return Err(format!("wait: at most {:?}", events::MAX_WAIT));
                }
            }
            other => return Err(format!("unknown parameter {other:?}: index and wait are")),
        }
    }
    let index = index.ok_or("wait needs index=<instance>:<position> from X-Tether-Index")?;
    Ok((index, wait))
}

/// The exposition goes out as it is written, a part at a time (chunked): see
/// [`Metrics::exposition`].
fn metrics_exposition(app: &App) -> Response<Body> {
    match app.metrics.exposition() {
        Ok(parts) => {
            let mut res = Response::new(Parts(parts).boxed());
            let headers = res.headers_mut();
            headers.insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot encode metrics");
            text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n")
        }
    }
}

fn readyz(status: &Status) -> Response<Body> {
    if status.ready() {
        return text(StatusCode::OK, "ready\n");
    }
    if status.is_stopping() {
        return text(StatusCode::SERVICE_UNAVAILABLE, "stopping\n");
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("not ready: {}\n", not_ready(status)),
    )
}

/// What holds `/readyz` at 503: `db not up; group store in fallback`.
fn not_ready(status: &Status) -> String {
    let mut parts = Vec::new();
    let targets = status.not_ready();
    if !targets.is_empty() {
        parts.push(format!("{} not up", names(&targets)));
    }
    let groups = status.groups_not_ready();
    for (in_fallback, what) in [(true, "in fallback"), (false, "undecided")] {
        let named: Vec<String> = groups
            .iter()
            .filter(|g| g.in_fallback == in_fallback)
            .map(|g| g.name.clone())
            .collect();
        if !named.is_empty() {
            let noun = if named.len() == 1 { "group" } else { "groups" };
            parts.push(format!("{noun} {} {what}", names(&named)));
        }
    }
    parts.join("; ")
}

/// The first few of `targets`: a mass outage must not turn a probe's answer into a
/// document.
fn names(targets: &[String]) -> String {
    let mut names = targets
        .iter()
        .take(READYZ_NAMES)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    if targets.len() > READYZ_NAMES {
        names.push_str(&format!(" and {} more", targets.len() - READYZ_NAMES));
    }
    names
}

fn startupz(status: &Status) -> Response<Body> {
    if status.startup_complete() {
        return text(StatusCode::OK, "started\n");
    }
    text(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "starting: {} without a first answer\n",
            names(&status.starting())
        ),
    )
}

pub fn text(code: StatusCode, message: &str) -> Response<Body> {
    body(
        code,
        "text/plain; charset=utf-8",
        message.as_bytes().to_vec(),
    )
}

/// A body written part by part as the connection takes it, each part made when it is
/// asked for.
struct Parts<I>(I);

impl<I: Iterator<Item = Vec<u8>> + Unpin> hyper::body::Body for Parts<I> {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(
            self.get_mut()
                .0
                .next()
                .map(|part| Ok(Frame::data(part.into()))),
        )
    }
}

fn body(code: StatusCode, content_type: &'static str, bytes: Vec<u8>) -> Response<Body> {
    let mut res = Response::new(Full::new(Bytes::from(bytes)).boxed());
    *res.status_mut() = code;
    let headers = res.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newcomer_displaces_the_oldest_connection_that_is_not_a_stream() {
        let conns = Connections::default();
        let (_, stream_evict, streaming) = conns.add();
        let (_, idle_evict, _) = conns.add();
        // The stream's task has not run since its head went out: it is still listed.
        streaming.cancel();
        conns.evict_oldest();
        assert!(!stream_evict.is_cancelled(), "a stream is never displaced");
        assert!(idle_evict.is_cancelled(), "the oldest other connection is");
        conns.evict_oldest();
        assert!(
            !stream_evict.is_cancelled(),
            "with only streams left, nobody is displaced"
        );
    }
}
