//! The position of tether's event stream: every transition it announces, every decision
//! of a failover group, and every target a reload adds or removes, moves it on by one,
//! process-wide, so a client that has seen position N knows whether anything happened
//! since. Positions are only comparable within one run of tether, so they
//! travel as an [`Index`]: the instance id with the position.
//!
//! `GET /status?index=I&wait=D` waits here until the position passes I (see
//! [`Events::wait_past`]).

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Group, Target};
use crate::watch::groups::GroupEvent;
use crate::watch::machine::Transition;
use crate::watch::observe::Observer;

/// The longest `wait` a long-poll may ask for: within the HTTP server's connection age,
/// so a waiting request is never cut by it.
pub const MAX_WAIT: Duration = Duration::from_secs(55);

/// Events a subscriber may fall behind by before it gets `reset` and a snapshot.
const BUFFER: usize = 256;

/// The stream: its position, the recent events, and the live feed.
pub struct Events {
    position: watch::Sender<u64>,
    /// Taken to number, record and send an event as one step, and to subscribe: a
    /// subscriber sees every event after the history it was given, once.
    history: Mutex<VecDeque<Arc<Entry>>>,
    feed: broadcast::Sender<Arc<Entry>>,
    /// Cancelled when the sidecar stops: every stream ends.
    closed: CancellationToken,
    /// Streams open at once (`server.max_subscribers`); past it a newcomer gets 503
    /// and displaces nobody.
    subscribers: Arc<Semaphore>,
    /// Events kept for subscribers that reconnect (`server.events_history`): a resume
    /// from further back gets `reset` and a fresh snapshot instead.
    keep: usize,
    /// How often an idle stream gets a comment (`server.events_heartbeat`).
    heartbeat: Duration,
}

impl Default for Events {
    fn default() -> Events {
        use crate::config::builtin;
        Events::new(
            builtin::EVENTS_HISTORY,
            builtin::EVENTS_HEARTBEAT,
            builtin::MAX_SUBSCRIBERS,
        )
    }
}

/// One event of the stream, rendered once for every subscriber, when the first one
/// (or the status page) asks for it.
///
/// A transition is kept as the machine made it until then: a mass outage announces a
/// transition per target on the actors' cores, and the history keeps thousands, so
/// rendering each at once cost every transition a JSON document (a tenth of tether's
/// time in an outage of 1,000 targets) and the history ~300 bytes an event, mostly for
/// nobody. The target's settings are those of the event's time: a reload that changes
/// them makes a new `Target`.
#[derive(Debug)]
pub struct Entry {
    pub position: u64,
    /// The SSE event name: `transition`, `group`, `target_added` or `target_removed`.
    pub kind: &'static str,
    source: Source,
}

#[derive(Debug)]
enum Source {
    Transition {
        target: Arc<Target>,
        transition: Transition,
        /// Its JSON, made at the first read.
        data: OnceLock<String>,
    },
    /// Rendered when published.
    Rendered { name: String, data: String },
}

impl Entry {
    /// An event rendered when published: a group's decision, a reload's change.
    pub fn rendered(position: u64, kind: &'static str, name: &str, data: String) -> Entry {
        Entry {
            position,
            kind,
            source: Source::Rendered {
                name: name.to_owned(),
                data,
            },
        }
    }

    fn transition(position: u64, target: &Arc<Target>, transition: &Transition) -> Entry {
        Entry {
            position,
            kind: "transition",
            source: Source::Transition {
                target: target.clone(),
                transition: transition.clone(),
                data: OnceLock::new(),
            },
        }
    }

    /// The target's name, or the group's for a `group` event (names never clash).
    pub fn target(&self) -> &str {
        match &self.source {
            Source::Transition { target, .. } => &target.name,
            Source::Rendered { name, .. } => name,
        }
    }

    /// The JSON: a transition's or a group event's is the hook payload with its
    /// `position`.
    pub fn data(&self) -> &str {
        match &self.source {
            Source::Transition {
                target,
                transition,
                data,
            } => data.get_or_init(|| {
                let mut data = serde_json::to_string(&Positioned {
                    payload: &crate::hooks::Payload::new(target, transition),
                    position: Index::here(self.position).to_string(),
                })
                .expect("a payload always serializes");
                // Kept with the history once read: without the writer's slack.
                data.shrink_to_fit();
                data
            }),
            Source::Rendered { data, .. } => data,
        }
    }
}

/// Where a new subscriber starts.
pub enum Start {
    /// From a snapshot: a fresh subscriber, or one that asked for nothing.
    Snapshot,
    /// After the events it missed, here in order.
    Replay(Vec<Arc<Entry>>),
    /// Its position is gone from the history, or from another run: `reset`, then a
    /// snapshot.
    Reset,
}

/// A subscriber: where it starts and its live feed.
pub struct Subscription {
    pub start: Start,
    /// The position when it subscribed: a snapshot it is sent is current to at least
    /// this, and its feed starts after it.
    pub position: u64,
    pub feed: broadcast::Receiver<Arc<Entry>>,
}

impl Events {
    pub fn new(keep: usize, heartbeat: Duration, max_subscribers: usize) -> Events {
        Events {
            position: watch::Sender::new(0),
            history: Mutex::new(VecDeque::new()),
            feed: broadcast::Sender::new(BUFFER),
            closed: CancellationToken::new(),
            subscribers: Arc::new(Semaphore::new(max_subscribers)),
            keep: keep.max(1),
            heartbeat,
        }
    }

    /// The stream's settings of `[server]`.
    pub fn of(server: &crate::config::Server) -> Events {
        Events::new(
            server.events_history,
            server.events_heartbeat.get(),
            server.max_subscribers,
        )
    }

    /// How often an idle stream gets a comment.
    pub fn heartbeat(&self) -> Duration {
        self.heartbeat
    }

    /// Subscribes, resuming after `since` when given.
    pub fn subscribe(&self, since: Option<&Index>) -> Subscription {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let feed = self.feed.subscribe();
        let now = *self.position.borrow();
        let start = match since {
            None => Start::Snapshot,
            Some(seen) if seen.instance != crate::instance::id() || seen.position > now => {
                Start::Reset
            }
            Some(seen) => {
                let oldest = history.front().map_or(now + 1, |e| e.position);
                if seen.position + 1 < oldest && seen.position < now {
                    Start::Reset
                } else {
                    Start::Replay(
                        history
                            .iter()
                            .filter(|e| e.position > seen.position)
                            .cloned()
                            .collect(),
                    )
                }
            }
        };
        Subscription {
            start,
            position: now,
            feed,
        }
    }

    /// Numbers, records and sends one event.
    fn publish(&self, entry: impl FnOnce(u64) -> Entry) {
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let position = *self.position.borrow() + 1;
        let entry = Arc::new(entry(position));
        if history.len() >= self.keep {
            history.pop_front();
        }
        history.push_back(entry.clone());
        // No subscriber is no error.
        let _ = self.feed.send(entry);
        self.position.send_replace(position);
    }

    /// Numbers, records and sends an event rendered now, its JSON made from its index.
    fn publish_rendered(
        &self,
        kind: &'static str,
        name: &str,
        data: impl FnOnce(&Index) -> String,
    ) {
        self.publish(|position| {
            // Kept for the whole history: without the slack a JSON writer leaves as it
            // grows its buffer, an event takes ~300 bytes, not 512.
            let mut data = data(&Index::here(position));
            data.shrink_to_fit();
            Entry::rendered(position, kind, name, data)
        });
    }

    /// The newest `n` events, newest first, and the position they end at, taken
    /// together: a page rendered from them resumes the stream right after them.
    pub fn recent(&self, n: usize) -> (Vec<Arc<Entry>>, Index) {
        let history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        let entries = history.iter().rev().take(n).cloned().collect();
        (entries, Index::here(*self.position.borrow()))
    }

    /// A place for one more subscriber, held for as long as its stream lasts.
    pub fn subscriber_slot(&self) -> Option<OwnedSemaphorePermit> {
        self.subscribers.clone().try_acquire_owned().ok()
    }

    /// Ends every stream: the sidecar is stopping.
    pub fn close(&self) {
        self.closed.cancel();
    }

    pub fn closed(&self) -> &CancellationToken {
        &self.closed
    }
}

impl Events {
    /// Where the stream stands now, in this run of tether.
    pub fn index(&self) -> Index {
        Index::here(*self.position.borrow())
    }

    /// A reload added and removed targets: one event each (`target_added`,
    /// `target_removed`), after the status registry took the new set of targets.
    pub fn targets_changed(&self, added: &[String], removed: &[String]) {
        for (kind, names) in [("target_added", added), ("target_removed", removed)] {
            for name in names {
                self.publish_rendered(kind, name, |index| {
                    serde_json::json!({
                        "event": kind,
                        "target": name,
                        "instance": crate::instance::id(),
                        "position": index.to_string(),
                    })
                    .to_string()
                });
            }
        }
    }

    /// Returns once the position has passed `seen`, or after `limit`; at once when
    /// `seen` is from another run of tether (its positions say nothing of this one).
    pub async fn wait_past(&self, seen: &Index, limit: Duration) {
        if seen.instance != crate::instance::id() {
            return;
        }
        let mut position = self.position.subscribe();
        let passed = position.wait_for(|now| *now > seen.position);
        let _ = tokio::time::timeout(limit, passed).await;
    }
}

/// Called after the status registry has recorded the transition: a client that reads
/// the index first and the document second never misses the change in between.
impl Observer for Events {
    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        self.publish(|position| Entry::transition(position, target, t));
    }

    fn group_event(&self, group: &Arc<Group>, e: &GroupEvent) {
        let payload = crate::hooks::GroupPayload::new(group, e);
        self.publish_rendered("group", &group.name, |index| {
            serde_json::to_string(&Positioned {
                payload: &payload,
                position: index.to_string(),
            })
            .expect("a payload always serializes")
        });
    }
}

/// An event's data on the stream: the hook payload and where it stands.
#[derive(serde::Serialize)]
struct Positioned<'a, P> {
    #[serde(flatten)]
    payload: &'a P,
    position: String,
}

/// A position of one run of tether: `<instance>:<position>`, as `X-Tether-Index` carries
/// it and `?index=` takes it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub instance: String,
    pub position: u64,
}

impl Index {
    /// `position` in this run of tether.
    pub fn here(position: u64) -> Index {
        Index {
            instance: crate::instance::id().to_owned(),
            position,
        }
    }
}

impl fmt::Display for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.instance, self.position)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("expected <instance>:<position>, as in X-Tether-Index")]
pub struct BadIndex;

impl FromStr for Index {
    type Err = BadIndex;

    fn from_str(s: &str) -> Result<Index, BadIndex> {
        let (instance, position) = s.rsplit_once(':').ok_or(BadIndex)?;
        if instance.is_empty() {
            return Err(BadIndex);
        }
        Ok(Index {
            instance: instance.to_owned(),
            position: position.parse().map_err(|_| BadIndex)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_reads_back_as_it_was_written() {
        let events = Events::default();
        let index = events.index();
        assert_eq!(index.to_string().parse::<Index>().unwrap(), index);
        assert!("5".parse::<Index>().is_err());
        assert!(":5".parse::<Index>().is_err());
        assert!("abc:x".parse::<Index>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_decision_is_a_group_event_that_moves_the_position_and_wakes_waiters() {
        let config = crate::config::Config::parse(
            r#"
            [[targets]]
            name = "a"
            address = "127.0.0.1:6379"
            [[targets]]
            name = "b"
            address = "127.0.0.1:6380"
            [[groups]]
            name = "store"
            members = ["a", "b"]
            fallback = "memory"
            "#,
            "t.toml".as_ref(),
        )
        .unwrap();
        let store = Arc::new(config.groups[0].clone());
        let events = Arc::new(Events::default());
        let seen = events.index();
        let mut sub = events.subscribe(Some(&seen));
        let waiter = tokio::spawn({
            let events = events.clone();
            let seen = seen.clone();
            async move {
                let started = tokio::time::Instant::now();
                events.wait_past(&seen, Duration::from_secs(30)).await;
                started.elapsed()
            }
        });
        tokio::task::yield_now().await;
        let e = GroupEvent {
            seq: 4,
            kind: crate::watch::groups::GroupEventKind::Change,
            active: "b".into(),
            fallback: false,
            previous_active: Some("a".into()),
            reason: crate::watch::group::Reason::ActiveLost,
            claimants: Vec::new(),
            conflict: false,
            at: std::time::SystemTime::now(),
        };
        events.group_event(&store, &e);
        assert!(waiter.await.unwrap() < Duration::from_secs(30));
        let entry = sub.feed.try_recv().unwrap();
        assert_eq!((entry.kind, entry.target()), ("group", "store"));
        assert_eq!(entry.position, seen.position + 1);
        let data: serde_json::Value = serde_json::from_str(entry.data()).unwrap();
        assert_eq!(data["event_id"], "store:4");
        assert_eq!(data["group"], "store");
        assert_eq!(data["event"], "change");
        assert_eq!(data["active"], "b");
        assert_eq!(data["previous_active"], "a");
        assert_eq!(data["reason"], "active-lost");
        assert_eq!(data["position"], Index::here(entry.position).to_string());
    }

    #[test]
    fn a_transition_reads_as_the_hook_payload_of_its_time_with_its_position() {
        use crate::watch::loss::Loss;
        use crate::watch::machine::{Event, State};
        let parse = |address: &str| {
            let text = format!("[[targets]]\nname = \"db\"\naddress = \"{address}\"\n");
            let config = crate::config::Config::parse(&text, "t.toml".as_ref()).unwrap();
            Arc::new(config.targets[0].clone())
        };
        let events = Events::default();
        let mut sub = events.subscribe(None);
        let t = Transition {
            seq: 7,
            event: Event::Disconnect,
            previous: State::Up,
            state: State::Down,
            failures: 1,
            last_error: Some(Loss::said("connection refused")),
            at: std::time::SystemTime::now(),
        };
        let before = parse("127.0.0.1:5432");
        events.transition(&before, &t);
        // A reload that moves the target after the event changes nothing of it.
        drop(before);
        let _after = parse("127.0.0.1:6432");
        let entry = sub.feed.try_recv().unwrap();
        assert_eq!((entry.kind, entry.target()), ("transition", "db"));
        let data: serde_json::Value = serde_json::from_str(entry.data()).unwrap();
        assert_eq!(data["event_id"], "db:7");
        assert_eq!(data["address"], "127.0.0.1:5432");
        assert_eq!(data["event"], "disconnect");
        assert_eq!(data["previous_state"], "up");
        assert_eq!(data["state"], "down");
        assert_eq!(data["last_error"], "connection refused");
        assert_eq!(data["position"], Index::here(entry.position).to_string());
        // Rendered once for every reader: the history's entry is the one sent.
        let (recent, _) = events.recent(1);
        assert!(std::ptr::eq(recent[0].data(), entry.data()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_at_its_limit_without_a_change_and_at_once_for_another_run() {
        let events = Events::default();
        let seen = events.index();
        let started = tokio::time::Instant::now();
        events.wait_past(&seen, Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::from_secs(30));
        let other = Index {
            instance: "another-run".into(),
            position: 0,
        };
        let started = tokio::time::Instant::now();
        events.wait_past(&other, Duration::from_secs(30)).await;
        assert_eq!(started.elapsed(), Duration::ZERO);
    }
}
