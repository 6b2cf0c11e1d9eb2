//! Keepalive on held connections: the probes of connections made together go out at
//! phases of their own, so that thousands of them never crowd the kernel's input queue.

use std::collections::BTreeMap;
use std::time::Duration;

use tether::watch::machine::Event;

use crate::support::harness::{Behaviour, Listener, Recorder, target, watch};
use crate::support::poll_until;

const LIMIT: Duration = Duration::from_secs(10);

/// The keepalive timers of this network namespace's established IPv4 connections to
/// `port`: for each, how long until it fires, in the kernel's `clock_t` (10 ms).
fn keepalive_timers_to(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (_, remote_port) = fields.get(2)?.split_once(':')?;
            let (timer, when) = fields.get(5)?.split_once(':')?;
            let established = *fields.get(3)? == "01";
            let keepalive = timer == "02";
            (u16::from_str_radix(remote_port, 16).ok()? == port && established && keepalive)
                .then(|| u64::from_str_radix(when, 16).ok())
                .flatten()
        })
        .collect()
}

/// How many 200 ms bands of "time until the keepalive timer fires" hold at least three
/// of the connections.
fn bands_in_use(timers: &[u64]) -> usize {
    let mut bands = BTreeMap::<u64, usize>::new();
    for when in timers {
        *bands.entry(when / 20).or_default() += 1;
    }
    bands.values().filter(|n| **n >= 3).count()
}

#[tokio::test]
async fn connections_made_together_send_their_keepalive_probes_at_different_times() {
    const TARGETS: usize = 200;
    let listener = Listener::start(Behaviour::Hold).await;
    let port = listener.port();
    let rec = Recorder::new();
    let toml: String = (0..TARGETS)
        .map(|i| {
            target(
                &format!("t{i}"),
                &listener.address(),
                r#"keepalive = { idle = "2s", interval = "1s", count = 3 }"#,
            )
        })
        .collect();
    let sup = watch(&toml, &rec);
    for i in 0..TARGETS {
        rec.nth_event(&format!("t{i}"), Event::Connect, 1, LIMIT)
            .await;
    }

    // Made within a few milliseconds, the connections would all probe in one or two
    // moments (a band or two, at any instant). Moved, their timers fire all along
    // `idle`.
    let spread = tokio::task::spawn_blocking(move || {
        poll_until(LIMIT, || {
            let timers = keepalive_timers_to(port);
            (timers.len() == TARGETS && bands_in_use(&timers) >= 6).then_some(())
        })
    })
    .await
    .unwrap();
    if spread.is_none() {
        let last = keepalive_timers_to(port);
        panic!(
            "the keepalive timers of {TARGETS} connections made together stay bunched \
             (10 ms ticks until each fires, {} of them in {} bands of 200 ms): {last:?}",
            last.len(),
            bands_in_use(&last),
        );
    }
    sup.shutdown().await;
}
