//! The reconnect schedule, built on the `backoff` crate's exponential policy.
//!
//! Kept behind this one type so the policy can be swapped (the crate is flagged
//! unmaintained) without touching the state machine.

// The crate's `Clock` trait is written in std's `Instant`; tether's own time is tokio's.
#![allow(clippy::disallowed_types)]

use std::time::Duration;

use backoff::backoff::Backoff as _;
use backoff::exponential::ExponentialBackoff;

use crate::config;

/// The crate's policy reads a clock only to enforce `max_elapsed_time`, which tether
/// never sets (a watcher must not give up): a clock frozen at one instant of the
/// process keeps the schedule free of clock reads on every attempt.
#[derive(Clone, Copy, Debug)]
struct FrozenClock(std::time::Instant);

impl backoff::Clock for FrozenClock {
    fn now(&self) -> std::time::Instant {
        self.0
    }
}

fn frozen() -> FrozenClock {
    static START: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    FrozenClock(*START)
}

/// Delays between failed connect attempts of one target.
///
/// Every target holds one for life, so it keeps only the settings and where the
/// schedule stands; the crate's policy (twice the size, with its clock and start time)
/// is put together for each delay.
#[derive(Debug)]
pub struct ReconnectBackoff {
    cfg: config::Backoff,
    /// The interval the next delay is spread around.
    current: Duration,
}

impl ReconnectBackoff {
    pub fn new(cfg: &config::Backoff) -> ReconnectBackoff {
        ReconnectBackoff {
            cfg: *cfg,
            current: cfg.initial.get(),
        }
    }

    fn policy(&self) -> ExponentialBackoff<FrozenClock> {
        let clock = frozen();
        ExponentialBackoff {
            current_interval: self.current,
            initial_interval: self.cfg.initial.get(),
            randomization_factor: self.cfg.jitter,
            multiplier: self.cfg.multiplier,
            max_interval: self.cfg.max.get(),
            start_time: clock.0,
            max_elapsed_time: None,
            clock,
        }
    }

    /// The delay before the next attempt: `initial * multiplier^n` spread by the
    /// jitter, never above `max`.
    pub fn next_delay(&mut self) -> Duration {
        let mut policy = self.policy();
        let delay = policy
            .next_backoff()
            .expect("without max_elapsed_time the policy never gives up");
        self.current = policy.current_interval;
        self.fold(delay)
    }

    /// Starts the schedule over, after a successful connect.
    pub fn reset(&mut self) {
        self.current = self.cfg.initial.get();
    }

    /// The crate spreads the capped interval to `max * (1 + jitter)`; operators read
    /// `max` as a ceiling, so the part above it is folded back below it. The result
    /// stays within `[interval * (1 - jitter), max]` and keeps its spread at the cap,
    /// where clamping would pile most attempts of a fleet onto `max` itself.
    fn fold(&self, delay: Duration) -> Duration {
        let max = self.cfg.max.get();
        if delay > max {
            max.saturating_sub(delay - max)
        } else {
            delay
        }
    }
}

/// The range a delay must fall in, for tests and documentation: the `n`-th delay after
/// a reset (from 0) lies in `[c * (1 - jitter), min(c * (1 + jitter), max)]` where
/// `c = min(initial * multiplier^n, max)`.
pub fn band(cfg: &config::Backoff, n: u32) -> (Duration, Duration) {
    let max = cfg.max.get().as_secs_f64();
    let c = (cfg.initial.get().as_secs_f64() * cfg.multiplier.powi(n as i32)).min(max);
    let lo = c * (1.0 - cfg.jitter);
    let hi = (c * (1.0 + cfg.jitter)).min(max);
    (Duration::from_secs_f64(lo), Duration::from_secs_f64(hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HumanDuration;

    fn cfg(initial_ms: u64, max_ms: u64, multiplier: f64, jitter: f64) -> config::Backoff {
        config::Backoff {
            initial: HumanDuration(Duration::from_millis(initial_ms)),
            max: HumanDuration(Duration::from_millis(max_ms)),
            multiplier,
            jitter,
        }
    }

    /// The crate computes in f64 nanoseconds; allow a nanosecond of rounding.
    fn within(d: Duration, (lo, hi): (Duration, Duration)) -> bool {
        let slack = Duration::from_nanos(2);
        d + slack >= lo && d <= hi + slack
    }

    #[test]
    fn without_jitter_delays_double_up_to_the_cap() {
        let mut b = ReconnectBackoff::new(&cfg(100, 1000, 2.0, 0.0));
        let ms: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn jittered_delays_stay_in_their_band_and_never_exceed_max() {
        let c = cfg(100, 3000, 1.7, 0.5);
        for _ in 0..200 {
            let mut b = ReconnectBackoff::new(&c);
            for n in 0..12 {
                let d = b.next_delay();
                assert!(
                    within(d, band(&c, n)),
                    "delay {n} = {d:?} outside {:?}",
                    band(&c, n)
                );
            }
        }
    }

    #[test]
    fn at_the_cap_delays_spread_just_under_max() {
        let c = cfg(100, 2000, 2.0, 0.25);
        let mut b = ReconnectBackoff::new(&c);
        for _ in 0..5 {
            b.next_delay();
        }
        for _ in 0..200 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(1500) && d <= Duration::from_millis(2000),
                "{d:?}"
            );
        }
    }
}
