//! The actor that watches one target: it connects, holds the connection, learns of its
//! end from the socket's readiness (not by polling), feeds what it saw to the state
//! machine and does what the machine says.
//!
//! A healthy, idle `tcp` target at an IP address costs one registered socket and no
//! timer: the kernel's keepalive watches for silent peer death, and the task sleeps
//! until the socket turns readable. Two things add a timer while up: a protocol probe,
//! which checks the server again every `check_interval`, and a host name, which is
//! resolved again every `resolve_interval` so that a moved target is followed. A
//! connection made among many at once also has one, within `keepalive.idle` of its
//! connect, to move its keepalive probes away from the others' (see [`net::phase`]).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use tokio::time::{Instant, Sleep, sleep, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::config::Target;
use crate::connect::{self, AttemptError, Connection, Limits};
use crate::net::{self, Hangup, Readiness};
use crate::probe::{Prober, Role};
use crate::secrets;
use crate::tls::Stream;
use crate::watch::closer::{self, Close};
use crate::watch::loss::Loss;
use crate::watch::machine::{Input, Machine, Next, Snapshot};
use crate::watch::observe::Observer;

/// One target's actor.
pub struct Checker {
    /// The target's settings; shared with the supervisor and the listeners.
    target: Arc<Target>,
    /// The target's probe, with its settings read once at start.
    prober: Prober,
    machine: Machine,
    /// Receives every report, synchronously and in order.
    observer: Arc<dyn Observer>,
    /// Cancelled when the target is removed or the sidecar stops.
    cancel: CancellationToken,
    /// What the application was last told, kept outside the actor so that a
    /// restarted actor continues from it instead of repeating or skipping events.
    memory: Arc<Mutex<Snapshot>>,
    /// The role last reported; a restarted actor starts from unknown, as the
    /// listeners do on `started`.
    role: Mutex<Option<Role>>,
    /// What was last told of the server's certificate; boxed, and only over TLS.
    certificate: Option<Box<Mutex<Certificate>>>,
}

/// The certificate's expiry as last reported, and when its nearness was last warned of.
#[derive(Default)]
struct Certificate {
    not_after: Option<SystemTime>,
    warned: Option<Instant>,
}

/// A certificate that keeps nearing its expiry is warned of again after this long: a
/// line a day stays visible in logs without flooding them at every reconnect.
const EXPIRY_WARNING_EVERY: Duration = Duration::from_secs(24 * 3600);

/// The connection an up target holds, and what is due on it.
struct Link {
    conn: Connection,
    /// When the probe runs again; `None` for `tcp`, which has nothing to ask.
    next_check: Option<Instant>,
    /// When the host name is resolved again; `None` for an IP address.
    next_resolve: Option<Instant>,
    /// When to restart the keepalive, if the connection was made in a crowd.
    rephase: Option<Instant>,
}

/// What woke a held connection's task.
enum Wake {
    Readable(io::Result<()>),
    Timer,
}

impl Checker {
    pub fn new(
        target: Arc<Target>,
        observer: Arc<dyn Observer>,
        cancel: CancellationToken,
        memory: Arc<Mutex<Snapshot>>,
    ) -> Checker {
        let machine = Machine::resume(&target, &memory.lock().unwrap_or_else(|p| p.into_inner()));
        let prober = Prober::new(&target.probe, &target.address, target.tls.as_deref());
        let certificate = target.tls.is_some().then(Box::default);
        Checker {
            target,
            prober,
            machine,
            observer,
            cancel,
            memory,
            role: Mutex::new(None),
            certificate,
        }
    }

    /// Watches the target until cancelled. Borrows rather than consumes the checker:
    /// the supervisor keeps it in its own task, and a `self` moved into this future
    /// would be stored twice over in every actor.
    pub async fn run(&mut self) {
        let mut next = Next::ConnectNow;
        let mut held: Option<Link> = None;
        loop {
            let input = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                input = self.observe(next, &mut held) => input,
            };
            // What the connection now held said last; nothing once it is gone.
            let role = match input {
                Input::Connected | Input::Tick => held.as_ref().and_then(|l| l.conn.role),
                Input::ConnectFailed(_) | Input::Lost(_) | Input::Failed(_) => None,
            };
            self.report_role(role);
            // Hand a dead connection to the closer thread before any reconnect or
            // backoff; it closes it once the actors have announced what they saw: with a
            // reset where the server closed its end (its kernel would answer a FIN with
            // one), with an orderly close where it stopped answering or answered wrong
            // (it may be alive, and logs a reset as an error).
            let dead = match &input {
                Input::Lost(_) => Some(Close::Reset),
                Input::Failed(_) => Some(Close::Orderly),
                Input::Connected | Input::Tick | Input::ConnectFailed(_) => None,
            };
            if let Some(how) = dead {
                if let Some(link) = held.take() {
                    closer::close(link.conn, how);
                }
            }
            if let (Input::Connected | Input::Tick, Some(link)) = (&input, &held) {
                self.report_certificate(link.conn.not_after);
            }
            let step = self.machine.on(input, Instant::now(), SystemTime::now());
            *self.memory.lock().unwrap_or_else(|p| p.into_inner()) = self.machine.snapshot();
            for t in &step.transitions {
                self.observer.transition(&self.target, t);
            }
            next = step.next;
            #[cfg(feature = "fault-injection")]
            if matches!(next, Next::Hold { .. }) {
                crate::fault::check_up(&self.target.name);
            }
        }
    }

    /// Carries out `next` and returns what came of it.
    ///
    /// The connect attempt runs boxed: its future (resolution, per-address timeouts,
    /// the handshake, the first probe) is the largest state an actor goes through, and
    /// inline it would set the size of every actor's task for all the time it sits
    /// holding a healthy connection. One allocation per attempt is cheap next to the
    /// attempt's own system calls. Not an `async fn`, for the reason given at
    /// [`Checker::hold`].
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice"
    )]
    fn observe<'a>(
        &'a self,
        next: Next,
        held: &'a mut Option<Link>,
    ) -> impl Future<Output = Input> + 'a {
        async move {
            match next {
                Next::ConnectNow => Box::pin(self.attempt(held)).await,
                Next::ConnectAfter(delay) => {
                    // Boxed apart from the attempt: a target waiting out its backoff holds
                    // only a timer, and not the attempt's state.
                    Box::pin(sleep(delay)).await;
                    Box::pin(self.attempt(held)).await
                }
                Next::Hold { until } => match held {
                    Some(link) => self.hold(link, until).await,
                    None => Input::Lost(Arc::new(Loss::no_connection_held())),
                },
            }
        }
    }

    /// One connect attempt: resolve, handshake, and the first probe, which decides
    /// whether the attempt succeeded.
    async fn attempt(&self, held: &mut Option<Link>) -> Input {
        *held = None;
        #[cfg(feature = "fault-injection")]
        crate::fault::check_connect(&self.target.name);
        let t = &self.target;
        let started = Instant::now();
        let result = connect::connect(&t.address, &self.prober, Limits::of(t), &t.keepalive).await;
        self.observer.attempt(t, result.is_ok(), started.elapsed());
        match result {
            Ok(conn) => {
                *held = Some(self.link(conn));
                Input::Connected
            }
            Err(e) => Input::ConnectFailed(Arc::new(Loss::from(e))),
        }
    }

    fn link(&self, conn: Connection) -> Link {
        let now = Instant::now();
        let t = &self.target;
        let rephase = conn
            .stream
            .as_ref()
            .and_then(Stream::tcp)
            .and_then(|_| net::phase::connected(now, t.keepalive.idle.get()))
            .map(|offset| now + offset);
        Link {
            rephase,
            conn,
            next_check: t.check.map(|c| now + c.interval.get()),
            next_resolve: t
                .address
                .ip()
                .is_none()
                .then(|| now + t.resolve_interval.get()),
        }
    }

    /// Waits until the held connection ends, a check fails, or `until` passes; runs the
    /// checks and re-resolutions that fall due meanwhile.
    ///
    /// This is where an actor spends its life, so what this future holds is what every
    /// watched target costs: the timer lives on the heap and only while a deadline is
    /// set (a plain `tcp` target on an IP address has none), and readiness is polled
    /// without a waiter of its own.
    ///
    /// A plain function around an `async` block: an `async fn` keeps its arguments in
    /// its future beside the copies its body works on, and this future is inside every
    /// actor's task.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice"
    )]
    fn hold<'a>(
        &'a self,
        link: &'a mut Link,
        until: Option<Instant>,
    ) -> impl Future<Output = Input> + 'a {
        async move {
            let mut timer: Option<Pin<Box<Sleep>>> = None;
            loop {
                let wake_at = [until, link.next_check, link.next_resolve, link.rephase]
                    .into_iter()
                    .flatten()
                    .min();
                match wake_at {
                    Some(at) => match timer.as_mut() {
                        Some(timer) => timer.as_mut().reset(at),
                        None => timer = Some(Box::pin(sleep_until(at))),
                    },
                    None => timer = None,
                }
                let woke = tokio::select! {
                    biased;
                    ready = readable(link.conn.stream.as_mut()) => Wake::Readable(ready),
                    () = expiry(timer.as_mut()) => Wake::Timer,
                };
                match woke {
                    Wake::Readable(ready) => {
                        // A session's server speaks between checks in messages the probe
                        // reads whole: they are left in the socket and a check reads them now.
                        let listen = link.conn.reusable && self.prober.hears_between_checks();
                        let hangup = match ready {
                            Err(e) => Hangup::from(e),
                            Ok(()) => match link
                                .conn
                                .stream
                                .as_mut()
                                .map(|s| if listen { s.peek() } else { s.drain() })
                            {
                                Some(Readiness::Ended(hangup)) => hangup,
                                Some(Readiness::Data(_)) if listen => {
                                    if let Some(input) = self.check(link).await {
                                        return input;
                                    }
                                    continue;
                                }
                                _ => continue,
                            },
                        };
                        return if hangup.is_silence() {
                            self.failed(hangup.into())
                        } else {
                            self.lost(hangup.into())
                        };
                    }
                    Wake::Timer => {
                        let now = Instant::now();
                        if until.is_some_and(|at| now >= at) {
                            return Input::Tick;
                        }
                        if link.rephase.is_some_and(|at| now >= at) {
                            link.rephase = None;
                            self.restart_keepalive(&link.conn);
                        }
                        // Boxed like the connect attempt: inline, these futures would set
                        // the size of every idle actor's task.
                        if link.next_check.is_some_and(|at| now >= at) {
                            if let Some(input) = self.check(link).await {
                                return input;
                            }
                        }
                        if link.next_resolve.is_some_and(|at| now >= at) {
                            Box::pin(self.follow(link)).await;
                            self.report_role(link.conn.role);
                            self.report_certificate(link.conn.not_after);
                        }
                    }
                }
            }
        }
    }

    /// Moves the connection's keepalive probes to a phase of their own (see
    /// [`net::phase`]). A failure costs only the spread: the keepalive keeps running.
    fn restart_keepalive(&self, conn: &Connection) {
        if let Some(tcp) = conn.stream.as_ref().and_then(Stream::tcp) {
            if let Err(e) = net::restart_keepalive(tcp) {
                tracing::debug!(target_name = %self.target.name, error = %e, "cannot restart keepalive");
            }
        }
    }

    /// Checks the held connection now and reports the role it learned; the input to
    /// return if the check failed.
    async fn check(&self, link: &mut Link) -> Option<Input> {
        // Boxed like the connect attempt: inline, this future would set the size of
        // every idle actor's task.
        match Box::pin(self.recheck(link)).await {
            Ok(()) => {
                self.report_role(link.conn.role);
                self.report_certificate(link.conn.not_after);
                None
            }
            Err(e) => Some(if closed_under_us(&e) {
                self.lost(e.into())
            } else {
                self.failed(e.into())
            }),
        }
    }

    /// Tells the observers the target's role if it changed since last told.
    fn report_role(&self, role: Option<Role>) {
        let mut reported = self.role.lock().unwrap_or_else(|p| p.into_inner());
        if *reported != role {
            *reported = role;
            drop(reported);
            self.observer.role(&self.target, role);
        }
    }

    /// Tells the observers the expiry of the server's certificate if it changed, and
    /// warns, once a day, when it is nearer than the target's `warn_before`.
    fn report_certificate(&self, not_after: Option<SystemTime>) {
        let (Some(not_after), Some(tls), Some(cert)) =
            (not_after, &self.target.tls, &self.certificate)
        else {
            return;
        };
        let mut cert = cert.lock().unwrap_or_else(|p| p.into_inner());
        if cert.not_after != Some(not_after) {
            cert.not_after = Some(not_after);
            cert.warned = None;
            self.observer.certificate(&self.target, not_after);
        }
        let left = not_after
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let now = Instant::now();
        let due = cert
            .warned
            .is_none_or(|at| now.duration_since(at) >= EXPIRY_WARNING_EVERY);
        if left < tls.warn_before.get() && due {
            cert.warned = Some(now);
            let t = &self.target;
            tracing::warn!(
                target_name = %t.name,
                address = %t.address,
                not_after = %humantime::format_rfc3339_seconds(not_after),
                "the TLS certificate of {} expires in {} (at {})", t.name,
                humantime::format_duration(Duration::from_secs(left.as_secs())),
                humantime::format_rfc3339_seconds(not_after),
            );
        }
    }

    /// The held connection was closed under us; observers hear of it even when the
    /// reconnect that follows succeeds and no transition shows it.
    fn lost(&self, reason: Loss) -> Input {
        let reason = Arc::new(reason);
        self.observer.lost(&self.target, reason.text());
        Input::Lost(reason)
    }

    /// The held connection's server stopped answering or answered wrong.
    fn failed(&self, reason: Loss) -> Input {
        let reason = Arc::new(reason);
        self.observer.lost(&self.target, reason.text());
        Input::Failed(reason)
    }

    /// Probes the server again (see [`connect::recheck`]) and schedules the next check.
    async fn recheck(&self, link: &mut Link) -> Result<(), AttemptError> {
        let t = &self.target;
        connect::recheck(&mut link.conn, &self.prober, Limits::of(t), &t.keepalive).await?;
        link.next_check = t.check.map(|c| Instant::now() + c.interval.get());
        Ok(())
    }

    /// Resolves the target's name again; if the held address is no longer among the
    /// answers (a DNS failover, a re-pointed service), connects to a new address first
    /// and only then lets go of the old one, so the move costs no `down`. If no new
    /// address answers, the old connection is kept until the next resolution.
    async fn follow(&self, link: &mut Link) {
        let t = &self.target;
        link.next_resolve = Some(Instant::now() + t.resolve_interval.get());
        let limits = Limits::of(t);
        let addrs = match net::resolve(&t.address, limits.connect).await {
            Ok(addrs) => addrs,
            Err(e) => {
                tracing::debug!(target_name = %t.name, error = %e, "re-resolution failed; keeping the connection");
                return;
            }
        };
        let from = link.conn.peer;
        if addrs.iter().any(|a| same_endpoint(*a, from)) {
            return;
        }
        match connect::connect_any(&t.address, &addrs, &self.prober, limits, &t.keepalive).await {
            Ok(conn) => {
                let to = conn.peer;
                let next_resolve = link.next_resolve;
                *link = self.link(conn);
                link.next_resolve = next_resolve;
                tracing::info!(
                    target_name = %t.name,
                    address = %t.address,
                    %from,
                    %to,
                    "{} moved from {from} to {to}", t.name,
                );
                self.observer.address_changed(t, from, to);
            }
            Err(e) => tracing::warn!(
                target_name = %t.name,
                address = %t.address,
                %from,
                error = %secrets::mask(&e.to_string()),
                "{} now resolves elsewhere, but no new address answers; keeping {from}", t.name,
            ),
        }
    }
}

/// Whether a failed check means the held connection was closed under it (the server
/// closed an idle session as the check went out), which an immediate reconnect answers,
/// rather than a server that stopped answering or answered wrong, which is an outage.
fn closed_under_us(e: &AttemptError) -> bool {
    use crate::probe::ProbeError;
    match e {
        AttemptError::Probe {
            source: ProbeError::Closed | ProbeError::Ended(_),
            ..
        } => true,
        AttemptError::Probe {
            source: ProbeError::Io(io),
            ..
        } => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
        ),
        _ => false,
    }
}

/// The same IP and port; IPv6 flow labels and scopes do not make another server.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() && a.port() == b.port()
}

/// Resolves when the socket has something to read or ended. Polled through the
/// socket's own read-readiness slot (the actor is the stream's only reader), so the
/// future is a reference where `readable()` would carry a waiter node.
fn readable(mut stream: Option<&mut Stream>) -> impl Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| match stream.as_mut() {
        Some(stream) => stream.poll_watch(cx),
        None => Poll::Pending,
    })
}

/// Resolves when `timer` fires; never without one.
fn expiry<'a>(mut timer: Option<&'a mut Pin<Box<Sleep>>>) -> impl Future<Output = ()> + 'a {
    std::future::poll_fn(move |cx| match timer.as_mut() {
        Some(timer) => timer.as_mut().poll(cx),
        None => Poll::Pending,
    })
}
