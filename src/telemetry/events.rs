//! The position of tether's event stream: every transition it announces, and every
//! target a reload adds or removes, moves it on by one, process-wide, so a client that has seen position N knows whether anything
//! happened since. Positions are only comparable within one run of tether, so they
//! travel as an [`Index`]: the instance id with the position.
//!
//! `GET /status?index=I&wait=D` waits here until the position passes I (see
//! [`Events::wait_past`]).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::Target;
use crate::watch::machine::Transition;
use crate::watch::observe::Observer;

/// The longest `wait` a long-poll may ask for: within the HTTP server's connection age,
/// so a waiting request is never cut by it.
pub const MAX_WAIT: Duration = Duration::from_secs(55);

/// The stream's position.
pub struct Events {
    position: watch::Sender<u64>,
}

impl Default for Events {
    fn default() -> Events {
        Events {
            position: watch::Sender::new(0),
        }
    }
}

impl Events {
    /// Where the stream stands now, in this run of tether.
    pub fn index(&self) -> Index {
        Index {
            instance: crate::instance::id().to_owned(),
            position: *self.position.borrow(),
        }
    }

    /// A reload added and removed targets: one event each (`target_added`,
    /// `target_removed`), after the status registry took the new set of targets.
    pub fn targets_changed(&self, added: usize, removed: usize) {
        let events = u64::try_from(added + removed).unwrap_or(u64::MAX);
        if events > 0 {
            self.position.send_modify(|p| *p = p.saturating_add(events));
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
    fn transition(&self, _target: &Arc<Target>, _t: &Transition) {
        self.position.send_modify(|p| *p += 1);
    }
}

/// A position of one run of tether: `<instance>:<position>`, as `X-Tether-Index` carries
/// it and `?index=` takes it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Index {
    pub instance: String,
    pub position: u64,
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
