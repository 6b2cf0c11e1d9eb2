//! When a connection's keepalive probes go out, so that connections made together do
//! not probe together.
//!
//! The kernel arms a connection's keepalive timer `idle` after its handshake, and the
//! probes keep that phase for the connection's life. Timers seconds away sit in a level
//! of the kernel's timer wheel whose slots are 256 ms apart (at HZ 250), so the
//! thousands of connections a start or a mass reconnect makes within a few hundred
//! milliseconds probe in two or three slots, every `idle`, forever. Over loopback and
//! veth each probe and its answer pass a per-CPU input queue of
//! `net.core.netdev_max_backlog` packets (1,000 by default); thousands at once overflow
//! it, and a connection whose probes keep being dropped is declared dead though its
//! server is fine (at 10,000 targets on loopback, about 1,300 connections replaced in
//! ten quiet seconds).
//!
//! A connection made in a crowd therefore restarts its keepalive once, after an offset
//! within `idle` taken from a low-discrepancy sequence, which moves its probes to a slot
//! of their own. A connection made alone keeps the phase of its handshake. Either way
//! the connection is watched by keepalive from its first byte: the restart only moves
//! the next probe later, by less than `idle`, and `TCP_USER_TIMEOUT` still counts from
//! the last packet received. Packets dropped before the moved connection's first probe
//! are noticed within `max(2 × idle, idle + interval × count) + interval` (7 s with the
//! defaults) instead of `idle + interval × count`.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Connections made within this long of the first of them are counted together.
const WINDOW: Duration = Duration::from_secs(1);

/// How many connections a window may make before the next ones are moved. Their
/// probes would fill a tenth of the default input queue at most.
const CROWD: u32 = 64;

/// The fractional part of the golden ratio: successive multiples of it, taken modulo
/// one, fill the unit interval evenly whatever their number (a Weyl sequence).
const STEP: f64 = 0.618_033_988_749_894_9;

/// The connections made recently, across all targets.
#[derive(Debug, Default)]
pub struct Crowd {
    /// When the current window began.
    since: Option<Instant>,
    /// Connections made in the current window.
    made: u32,
    /// Connections moved so far; the index into the sequence of offsets.
    moved: u64,
    /// When the last restart handed out falls due.
    last_restart: Option<Instant>,
}

impl Crowd {
    pub const fn new() -> Crowd {
        Crowd {
            since: None,
            made: 0,
            moved: 0,
            last_restart: None,
        }
    }

    /// Records a connection made at `now` whose keepalive probes every `idle`; how long
    /// after `now` to restart its keepalive, or `None` to leave it be.
    pub fn connected(&mut self, now: Instant, idle: Duration) -> Option<Duration> {
        match self.since {
            Some(since) if now.saturating_duration_since(since) < WINDOW => {}
            _ => {
                self.since = Some(now);
                self.made = 0;
            }
        }
        self.made = self.made.saturating_add(1);
        if self.made <= CROWD {
            return None;
        }
        self.moved = self.moved.wrapping_add(1);
        let fraction = (self.moved as f64 * STEP).fract();
        let offset = idle.mul_f64(fraction);
        self.last_restart = self.last_restart.max(Some(now + offset));
        Some(offset)
    }

    /// When the last restart handed out so far falls due; `None` if none was.
    pub fn restarts_due_by(&self) -> Option<Instant> {
        self.last_restart
    }
}

/// The process's connections, of every target and every supervisor.
static CROWD_OF_THIS_PROCESS: Mutex<Crowd> = Mutex::new(Crowd::new());

/// [`Crowd::connected`] for the process's connections.
pub fn connected(now: Instant, idle: Duration) -> Option<Duration> {
    crowd().connected(now, idle)
}

/// [`Crowd::restarts_due_by`] for the process's connections: the restarts of a start's
/// crowd are start-up work.
pub fn restarts_due_by() -> Option<Instant> {
    crowd().restarts_due_by()
}

fn crowd() -> std::sync::MutexGuard<'static, Crowd> {
    // Each call leaves the counts whole: a poisoned lock is still sound.
    CROWD_OF_THIS_PROCESS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: Duration = Duration::from_secs(3);

    #[test]
    fn connections_made_one_at_a_time_keep_their_phase() {
        let mut crowd = Crowd::new();
        let start = Instant::now();
        for i in 0..1_000u32 {
            // Fifty a second: a steady trickle, no crowd.
            let at = start + Duration::from_millis(u64::from(i) * 20);
            assert_eq!(crowd.connected(at, IDLE), None, "connection {i}");
        }
    }

    #[test]
    fn the_first_connections_of_a_crowd_keep_their_phase_and_the_rest_move() {
        let mut crowd = Crowd::new();
        let now = Instant::now();
        let offsets: Vec<_> = (0..1_000).map(|_| crowd.connected(now, IDLE)).collect();
        assert!(offsets[..CROWD as usize].iter().all(Option::is_none));
        assert!(offsets[CROWD as usize..].iter().all(Option::is_some));
        let latest = offsets.iter().flatten().max().unwrap();
        assert_eq!(crowd.restarts_due_by(), Some(now + *latest));
    }

    #[test]
    fn the_moved_connections_spread_evenly_within_idle() {
        let mut crowd = Crowd::new();
        let now = Instant::now();
        let mut tenths = [0u32; 10];
        for _ in 0..(1_000 + CROWD) {
            if let Some(offset) = crowd.connected(now, IDLE) {
                assert!(offset < IDLE, "{offset:?}");
                tenths[(offset.as_secs_f64() / IDLE.as_secs_f64() * 10.0) as usize] += 1;
            }
        }
        for (i, n) in tenths.iter().enumerate() {
            assert!(
                (95..=105).contains(n),
                "tenth {i} of idle holds {n} of 1000"
            );
        }
    }

    #[test]
    fn a_new_crowd_is_counted_from_a_window_later() {
        let mut crowd = Crowd::new();
        let start = Instant::now();
        for _ in 0..=CROWD {
            crowd.connected(start, IDLE);
        }
        assert!(crowd.connected(start + WINDOW / 2, IDLE).is_some());
        let later = start + WINDOW;
        assert_eq!(crowd.connected(later, IDLE), None);
    }
}
