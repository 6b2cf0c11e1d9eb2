//! systemd's service notification protocol (`Type=notify`), so that systemd knows when
//! tether is ready, what it is doing, and restarts it when its runtime stops turning.
//!
//! Everything here is a no-op unless systemd (or anything else) names a socket in
//! `NOTIFY_SOCKET`. `READY=1` is sent when every target has had its first attempt, the
//! moment `/startupz` turns 200, so units ordered `After=tether.service` start knowing
//! which dependencies are down. `STATUS=` follows each state change, at most every
//! [`STATUS_INTERVAL`] with the newest line always sent last, so a flapping target
//! cannot flood the service manager. A reload is `RELOADING=1` … `READY=1`, shutdown is
//! `STOPPING=1`, and `WATCHDOG=1` is sent from a task on the runtime that runs the
//! checkers: a runtime that wedges stops the pings, and systemd restarts tether.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::Target;
use crate::telemetry::status::Status;
use crate::watch::machine::{State, Transition};
use crate::watch::observe::Observer;

/// The shortest gap between two `STATUS=` lines: systemd keeps only the last one, so
/// faster updates would only cost it wake-ups.
pub const STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// How many targets that are not up a status line names; the rest are counted, so the
/// line stays short at 10,000 targets.
const NAMED: usize = 3;

/// A notification could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("cannot notify the service manager ({what}): {source}")]
pub struct NotifyError {
    what: &'static str,
    #[source]
    source: io::Error,
}

/// The sidecar's link to the service manager; every method does nothing when
/// `NOTIFY_SOCKET` is unset. As an [`Observer`] it only wakes its status task, so a
/// checker never waits on a socket.
#[derive(Clone, Default)]
pub struct Notifier {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    status: Arc<Status>,
    /// Woken by each transition and each applied reload; keeps a permit, so a change
    /// that comes while the task is sending is not lost.
    changed: Notify,
    /// Whether the first `READY=1` has gone out: until then, a reload is not announced
    /// (its `READY=1` would claim a startup that has not finished).
    ready: AtomicBool,
    /// Whether a send has failed already: the first failure is a warning, the rest
    /// would repeat it.
    failed: AtomicBool,
    /// Cancelled at shutdown: ends the status task.
    quiet: CancellationToken,
    /// Cancelled once stopped: ends the watchdog task.
    end: CancellationToken,
    /// Where messages go: systemd's socket, or a test's recorder.
    sink: Sink,
}

/// Sends one notification (its lines as one datagram).
type Sink = Box<dyn Fn(&[NotifyState<'_>]) -> io::Result<()> + Send + Sync>;

impl Notifier {
    /// Starts the status task (and the watchdog task, when `WATCHDOG_USEC` asks for
    /// one) on the current runtime, if `NOTIFY_SOCKET` is set.
    pub fn start(status: Arc<Status>) -> Notifier {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return Notifier::default();
        }
        // Hooks are not tether: a hook that speaks the protocol must not be taken for it
        // (systemd's `NotifyAccess=main` ignores it, other managers may not).
        for var in ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"] {
            crate::secrets::withhold(var);
        }
        // `WATCHDOG_USEC=0` asks for nothing; a period of a microsecond gets the
        // shortest interval tokio keeps.
        let watchdog = sd_notify::watchdog_enabled().filter(|period| !period.is_zero());
        Notifier::with_sink(status, watchdog, Box::new(sd_notify::notify))
    }

    fn with_sink(status: Arc<Status>, watchdog: Option<Duration>, sink: Sink) -> Notifier {
        let inner = Arc::new(Inner {
            status,
            changed: Notify::new(),
            ready: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            quiet: CancellationToken::new(),
            end: CancellationToken::new(),
            sink,
        });
        tokio::spawn(inner.clone().report_status());
        if let Some(period) = watchdog {
            tokio::spawn(inner.clone().feed_watchdog(period));
        }
        // Startup may be over already (a config with no targets).
        inner.changed.notify_one();
        Notifier { inner: Some(inner) }
    }

    /// A reload is about to be applied or refused; [`Notifier::reloaded`] ends it.
    pub fn reloading(&self) {
        let Some(inner) = self.announced() else {
            return;
        };
        match NotifyState::monotonic_usec_now() {
            Ok(now) => inner.send("reloading", &[NotifyState::Reloading, now]),
            Err(source) => inner.report(NotifyError {
                what: "reading the monotonic clock",
                source,
            }),
        }
    }

    /// The reload begun by [`Notifier::reloading`] was applied or refused: either way
    /// tether runs and is ready again.
    pub fn reloaded(&self) {
        let Some(inner) = self.announced() else {
            return;
        };
        let line = summary(&inner.status);
        inner.send(
            "reloaded",
            &[NotifyState::Ready, NotifyState::Status(&line)],
        );
        inner.changed.notify_one();
    }

    /// Shutdown has begun; no status line follows it.
    pub fn stopping(&self) {
        if let Some(inner) = &self.inner {
            inner.quiet.cancel();
            inner.send(
                "stopping",
                &[NotifyState::Stopping, NotifyState::Status("stopping")],
            );
        }
    }

    /// Ends the tasks: tether is about to exit.
    pub fn stopped(&self) {
        if let Some(inner) = &self.inner {
            inner.quiet.cancel();
            inner.end.cancel();
        }
    }

    /// The link, once the first `READY=1` has gone out.
    fn announced(&self) -> Option<&Arc<Inner>> {
        self.inner
            .as_ref()
            .filter(|inner| inner.ready.load(Ordering::Acquire))
    }
}

impl Observer for Notifier {
    fn transition(&self, _target: &Arc<Target>, _transition: &Transition) {
        if let Some(inner) = &self.inner {
            inner.changed.notify_one();
        }
    }
}

impl Inner {
    /// Sends `READY=1` the moment startup completes and a status line after each change,
    /// at most every [`STATUS_INTERVAL`], the newest last.
    async fn report_status(self: Arc<Self>) {
        let mut last = String::new();
        let mut next = Instant::now();
        loop {
            tokio::select! {
                () = self.changed.notified() => {}
                () = self.quiet.cancelled() => return,
            }
            // Readiness is never held back by the rate limit; a status line waits out
            // the gap, and what changed meanwhile is in the line it then sends.
            while !self.startup_pending() && Instant::now() < next {
                tokio::select! {
                    () = tokio::time::sleep_until(next) => {}
                    () = self.changed.notified() => {}
                    () = self.quiet.cancelled() => return,
                }
            }
            let line = summary(&self.status);
            if self.startup_pending() {
                self.send("ready", &[NotifyState::Ready, NotifyState::Status(&line)]);
                self.ready.store(true, Ordering::Release);
            } else if line != last {
                self.send("status", &[NotifyState::Status(&line)]);
            } else {
                continue;
            }
            last = line;
            next = Instant::now() + STATUS_INTERVAL;
        }
    }

    /// Whether startup is complete and not yet announced.
    fn startup_pending(&self) -> bool {
        !self.ready.load(Ordering::Acquire) && self.status.startup_complete()
    }

    /// Pings every half period, as `sd_watchdog_enabled(3)` advises, until tether exits.
    async fn feed_watchdog(self: Arc<Self>, period: Duration) {
        let mut ticks = tokio::time::interval((period / 2).max(Duration::from_millis(1)));
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Shutdown ends the status line, not the pings: hooks may still be draining.
        loop {
            tokio::select! {
                _ = ticks.tick() => self.send("watchdog", &[NotifyState::Watchdog]),
                () = self.end.cancelled() => return,
            }
        }
    }

    fn send(&self, what: &'static str, states: &[NotifyState<'_>]) {
        if let Err(source) = (self.sink)(states) {
            self.report(NotifyError { what, source });
        }
    }

    fn report(&self, error: NotifyError) {
        if self.failed.swap(true, Ordering::AcqRel) {
            tracing::debug!(%error, "notification not sent");
        } else {
            tracing::warn!(%error, "notification not sent; further failures are logged at debug level");
        }
    }
}

/// The status line: how many targets are up, and the first few that are not.
fn summary(status: &Status) -> String {
    let mut total = 0;
    let mut up = 0;
    let mut not_up = Vec::new();
    status.each_state(|name, state| {
        total += 1;
        if state == State::Up {
            up += 1;
        } else {
            not_up.push((name.to_owned(), state));
            not_up.truncate(NAMED + 1);
        }
    });
    line(total, up, &not_up)
}

/// `3/4 targets up; db failed` (with `not_up` holding up to [`NAMED`] + 1 entries, the
/// last one only telling that there are more).
fn line(total: usize, up: usize, not_up: &[(String, State)]) -> String {
    let mut line = format!("{up}/{total} targets up");
    let named = not_up.len().min(NAMED);
    for (i, (name, state)) in not_up[..named].iter().enumerate() {
        line.push_str(if i == 0 { "; " } else { ", " });
        line.push_str(name);
        line.push(' ');
        line.push_str(state.as_str());
    }
    let rest = total - up - named;
    if rest > 0 {
        line.push_str(&format!(", {rest} more not up"));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::SystemTime;

    use super::*;
    use crate::config::Config;
    use crate::watch::machine::Event;

    /// Every message sent, with when, as its lines.
    type Sent = Arc<Mutex<Vec<(Instant, String)>>>;

    fn recorder() -> (Sent, Sink) {
        let sent = Sent::default();
        let sink = Box::new({
            let sent = sent.clone();
            move |states: &[NotifyState<'_>]| {
                let text: Vec<String> = states.iter().map(ToString::to_string).collect();
                sent.lock().unwrap().push((Instant::now(), text.join("\n")));
                Ok(())
            }
        });
        (sent, sink)
    }

    fn flip(seq: u64, previous: State, state: State) -> Transition {
        Transition {
            seq,
            event: if state == State::Up {
                Event::Connect
            } else {
                Event::Disconnect
            },
            previous,
            state,
            failures: u32::from(state != State::Up),
            last_error: None,
            at: SystemTime::now(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_not_held_back_by_the_rate_limit() {
        let config = Config::parse(
            "[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n\
             [[targets]]\nname = \"b\"\naddress = \"127.0.0.1:2\"\n",
            "test.toml".as_ref(),
        )
        .unwrap();
        let (a, b) = (
            Arc::new(config.targets[0].clone()),
            Arc::new(config.targets[1].clone()),
        );
        let status = Arc::new(Status::new(&config));
        let (sent, sink) = recorder();
        let start = Instant::now();
        let notifier = Notifier::with_sink(status.clone(), None, sink);
        for (target, after) in [(&a, 1), (&b, 5)] {
            tokio::time::sleep(Duration::from_millis(after)).await;
            let t = flip(0, State::Connecting, State::Up);
            status.transition(target, &t);
            notifier.transition(target, &t);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
        let sent = sent.lock().unwrap().clone();
        let (at, ready) = sent.last().unwrap();
        assert_eq!(ready, "READY=1\nSTATUS=2/2 targets up", "{sent:?}");
        assert!(
            *at - start < STATUS_INTERVAL,
            "READY=1 after {:?}",
            *at - start
        );
        notifier.stopped();
    }

    #[tokio::test(start_paused = true)]
    async fn a_flapping_target_is_reported_at_most_every_interval_and_its_last_state_always() {
        let config = Config::parse(
            "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:5432\"\n",
            "test.toml".as_ref(),
        )
        .unwrap();
        let db = Arc::new(config.targets[0].clone());
        let status = Arc::new(Status::new(&config));
        let (sent, sink) = recorder();
        let notifier = Notifier::with_sink(status.clone(), None, sink);
        let mut state = State::Connecting;
        for seq in 0..300 {
            let next = if seq % 2 == 0 { State::Up } else { State::Down };
            let t = flip(seq, state, next);
            status.transition(&db, &t);
            notifier.transition(&db, &t);
            state = next;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(STATUS_INTERVAL * 3).await;
        let sent = sent.lock().unwrap();
        let ready: Vec<_> = sent.iter().filter(|(_, m)| m.contains("READY=1")).collect();
        assert_eq!(ready.len(), 1, "{sent:?}");
        let lines: Vec<_> = sent
            .iter()
            .filter(|(_, m)| !m.contains("READY=1"))
            .collect();
        // 300 changes over 300 ms: the first line, then at most one per interval.
        assert!(lines.len() <= 6, "{} status lines: {sent:?}", lines.len());
        for pair in lines.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= STATUS_INTERVAL, "{sent:?}");
        }
        assert_eq!(
            sent.last().unwrap().1,
            "STATUS=0/1 targets up; db down",
            "the newest state is always sent: {sent:?}"
        );
        notifier.stopped();
    }

    fn not_up(entries: &[(&str, State)]) -> Vec<(String, State)> {
        entries.iter().map(|(n, s)| ((*n).to_owned(), *s)).collect()
    }

    #[test]
    fn a_line_names_what_is_not_up() {
        assert_eq!(line(2, 2, &[]), "2/2 targets up");
        assert_eq!(
            line(4, 3, &not_up(&[("db", State::Failed)])),
            "3/4 targets up; db failed"
        );
        assert_eq!(
            line(
                2,
                0,
                &not_up(&[("cache", State::Connecting), ("db", State::Down)])
            ),
            "0/2 targets up; cache connecting, db down"
        );
    }

    #[test]
    fn a_long_outage_is_counted_not_listed() {
        let states = [
            ("a", State::Down),
            ("b", State::Down),
            ("c", State::Failed),
            ("d", State::Down),
        ];
        assert_eq!(
            line(10_000, 9_990, &not_up(&states)),
            "9990/10000 targets up; a down, b down, c failed, 7 more not up"
        );
    }
}
