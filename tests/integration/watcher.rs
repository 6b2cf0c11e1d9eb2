//! The core watcher against real loopback listeners: detection of death and return,
//! thresholds, reconnects that raise no alarm, and the backoff schedule.

use std::time::Duration;

use tether::watch::machine::{Event, State};
use tether::watch::supervisor::Supervisor;

use crate::support::TestServer;
use crate::support::harness::{Behaviour, Listener, Record, Recorder, dead_port, watch};

const LIMIT: Duration = Duration::from_secs(10);

fn config(address: &str, extra: &str) -> String {
    format!(
        r#"
        [[targets]]
        name = "dep"
        address = "{address}"
        {extra}
        "#
    )
}

#[tokio::test]
async fn a_killed_listener_goes_down_then_failed_after_exactly_three_attempts_and_comes_back_up() {
    let mut listener = Listener::start(Behaviour::Hold).await;
    let rec = Recorder::new();
    let sup = watch(
        &config(
            &listener.address(),
            r#"failure_threshold = 3
               backoff = { initial = "50ms", max = "200ms", multiplier = 2.0, jitter = 0.1 }"#,
        ),
        &rec,
    );
    rec.nth_event("dep", Event::Connect, 1, LIMIT).await;

    listener.kill().await;
    let (down, _) = rec.nth_event("dep", Event::Disconnect, 1, LIMIT).await;
    assert_eq!(
        (down.previous, down.state, down.failures),
        (State::Up, State::Down, 1)
    );
    let (failed, _) = rec.nth_event("dep", Event::Failure, 1, LIMIT).await;
    assert_eq!(
        (failed.previous, failed.state, failed.failures),
        (State::Down, State::Failed, 3)
    );

    // Exactly three failed attempts separate the lost connection from `failed`.
    let records = rec.of("dep");
    let lost = records
        .iter()
        .position(|r| matches!(r, Record::Lost { .. }))
        .unwrap();
    let failure = records
        .iter()
        .position(|r| matches!(r, Record::Transition { t, .. } if t.event == Event::Failure))
        .unwrap();
    let failed_attempts = records[lost..failure]
        .iter()
        .filter(|r| matches!(r, Record::Attempt { ok: false, .. }))
        .count();
    assert_eq!(failed_attempts, 3, "{records:#?}");

    listener.restore(Behaviour::Hold).await;
    let (up, _) = rec.nth_event("dep", Event::Connect, 2, LIMIT).await;
    assert_eq!(
        (up.previous, up.state, up.failures),
        (State::Failed, State::Up, 0)
    );
    rec.nth_event("dep", Event::Recover, 1, LIMIT).await;
    assert_eq!(
        rec.events("dep"),
        [
            Event::Connect,
            Event::Disconnect,
            Event::Failure,
            Event::Connect,
            Event::Recover
        ]
    );
    let seqs: Vec<u64> = rec.transitions("dep").iter().map(|(t, _)| t.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    sup.shutdown().await;
}

#[tokio::test]
async fn a_target_that_was_never_reached_goes_down_from_connecting_with_the_reason() {
    let rec = Recorder::new();
    let sup = watch(&config(&format!("127.0.0.1:{}", dead_port()), ""), &rec);
    let (down, _) = rec.nth_event("dep", Event::Disconnect, 1, LIMIT).await;
    assert_eq!(
        (down.previous, down.state),
        (State::Connecting, State::Down)
    );
    assert!(
        down.last_error
            .as_ref()
            .unwrap()
            .to_string()
            .contains("connection refused"),
        "{down:?}"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn a_peer_that_closes_every_connection_after_200ms_never_produces_down() {
    let listener = Listener::start(Behaviour::CloseAfter(Duration::from_millis(200))).await;
    let rec = Recorder::new();
    let sup = watch(&config(&listener.address(), "failure_threshold = 1"), &rec);
    rec.nth_event("dep", Event::Connect, 1, LIMIT).await;
    // Watch it through at least eight closures, however long the machine takes.
    rec.until("dep", LIMIT, "eight closures", |records| {
        let lost = records
            .iter()
            .filter(|r| matches!(r, Record::Lost { .. }))
            .count();
        (lost >= 8).then_some(())
    })
    .await;
    assert_eq!(
        rec.events("dep"),
        [Event::Connect],
        "a closure answered by a reconnect is no outage"
    );
    assert_eq!(rec.state("dep"), Some(State::Up));
    assert!(
        listener.accepted() >= 8,
        "reconnected each time: {}",
        listener.accepted()
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn a_closed_connection_is_noticed_within_milliseconds() {
    let mut listener = Listener::start(Behaviour::Hold).await;
    let rec = Recorder::new();
    let sup = watch(&config(&listener.address(), ""), &rec);
    rec.nth_event("dep", Event::Connect, 1, LIMIT).await;
    let killed = std::time::Instant::now();
    listener.kill().await;
    let (noticed, error) = rec.lost_since("dep", killed, LIMIT).await;
    assert_eq!(error, "connection closed by peer");
    let after = noticed.duration_since(killed);
    eprintln!("closure noticed after {after:?}");
    assert!(after < Duration::from_millis(250), "took {after:?}");
    sup.shutdown().await;
}

/// A target `dep` watched with `extra` settings, and the server's end of the connection
/// tether made to it.
async fn held_by_tether(extra: &str) -> (tokio::net::TcpStream, Supervisor) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let sup = watch(&config(&address, extra), &Recorder::new());
    let (server, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("tether connects")
        .unwrap();
    (server, sup)
}

/// What the server reads once tether has let go of the connection: `Ok(0)` after an
/// orderly close, a `ConnectionReset` error after a reset.
async fn how_tether_let_go(server: &mut tokio::net::TcpStream) -> std::io::Result<usize> {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(LIMIT, server.read(&mut [0; 16]))
        .await
        .expect("tether lets go of the connection")
}

#[tokio::test]
async fn a_connection_the_server_closed_is_let_go_with_a_reset() {
    use tokio::io::AsyncWriteExt;
    let (mut server, sup) = held_by_tether("").await;
    // Half-closed: the server still reads, and learns how tether let go.
    server.shutdown().await.unwrap();
    assert_eq!(
        how_tether_let_go(&mut server).await.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a reset, not a FIN that a peer gone for good would answer with a reset"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn a_connection_whose_server_answered_wrong_is_closed_in_order() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut server, sup) = held_by_tether(
        r#"probe = { kind = "http", path = "/healthz" }
           check_interval = "200ms"
           check_timeout = "100ms""#,
    )
    .await;
    // Healthy at the first check, failing at the next: the server is alive throughout.
    for status in ["200 OK", "503 Unavailable"] {
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            let n = tokio::time::timeout(LIMIT, server.read(&mut byte))
                .await
                .expect("tether checks again")
                .unwrap();
            assert_eq!(n, 1, "closed before its request ended");
            request.push(byte[0]);
        }
        let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
        server.write_all(answer.as_bytes()).await.unwrap();
    }
    assert_eq!(
        how_tether_let_go(&mut server).await.map_err(|e| e.kind()),
        Ok(0),
        "an orderly close: the server may be alive, and would log a reset"
    );
    sup.shutdown().await;
}

#[tokio::test]
async fn the_delays_of_a_target_that_stays_down_grow_geometrically_up_to_max_within_the_jitter() {
    delays_follow_the_backoff_band(1000).await;
}

#[tokio::test]
async fn the_delays_keep_growing_across_failed_without_jumping_to_max() {
    let rec = delays_follow_the_backoff_band(2).await;
    assert_eq!(
        rec.events("dep"),
        [Event::Disconnect, Event::Failure],
        "the target went through failed while the delays grew"
    );
}

/// Watches a dead target for ten attempts and checks each gap against the band of its
/// rank in the outage, `failed` or not.
async fn delays_follow_the_backoff_band(failure_threshold: u32) -> std::sync::Arc<Recorder> {
    let initial = Duration::from_millis(40);
    let max = Duration::from_millis(640);
    let (multiplier, jitter): (f64, f64) = (2.0, 0.25);
    let rec = Recorder::new();
    let sup = watch(
        &config(
            &format!("127.0.0.1:{}", dead_port()),
            &format!(
                r#"failure_threshold = {failure_threshold}
               backoff = {{ initial = "40ms", max = "640ms", multiplier = 2.0, jitter = 0.25 }}"#
            ),
        ),
        &rec,
    );
    let attempts: Vec<std::time::Instant> = rec
        .until("dep", LIMIT, "ten attempts", |records| {
            let at: Vec<_> = records
                .iter()
                .filter_map(|r| match r {
                    Record::Attempt { at, .. } => Some(*at),
                    _ => None,
                })
                .collect();
            (at.len() >= 10).then_some(at)
        })
        .await;
    sup.shutdown().await;

    // A refused connect costs well under a millisecond on loopback; timers may fire late
    // but never early, so the upper bound gets a scheduling allowance.
    let slack = Duration::from_millis(60);
    for (n, gap) in attempts.windows(2).map(|w| w[1] - w[0]).enumerate() {
        let nominal = initial.mul_f64(multiplier.powi(n as i32)).min(max);
        let lo = nominal.mul_f64(1.0 - jitter);
        let hi = nominal.mul_f64(1.0 + jitter).min(max);
        eprintln!("gap {n}: {gap:?} (band {lo:?}..={hi:?})");
        assert!(
            gap >= lo && gap <= hi + slack,
            "gap {n} = {gap:?} outside {lo:?}..={hi:?}"
        );
    }
    rec
}

#[tokio::test(flavor = "multi_thread")]
async fn a_redis_killed_with_sigkill_is_detected_within_50ms() {
    let mut redis = tokio::task::spawn_blocking(crate::support::redis::RedisServer::start)
        .await
        .unwrap();
    let rec = Recorder::new();
    let sup = watch(&config(&redis.addr(), "failure_threshold = 1"), &rec);
    rec.nth_event("dep", Event::Connect, 1, LIMIT).await;

    let killed = std::time::Instant::now();
    let redis = tokio::task::spawn_blocking(move || {
        redis.kill();
        redis
    })
    .await
    .unwrap();
    let (noticed, error) = rec.lost_since("dep", killed, LIMIT).await;
    let after = noticed.duration_since(killed);
    eprintln!("redis SIGKILL noticed after {after:?} ({error})");
    // The kernel closes a killed process's sockets at once; allow for a loaded CI host.
    assert!(after < Duration::from_millis(500), "took {after:?}");
    let (down, _) = rec.nth_event("dep", Event::Disconnect, 1, LIMIT).await;
    assert_eq!(down.previous, State::Up);
    rec.nth_event("dep", Event::Failure, 1, LIMIT).await;
    sup.shutdown().await;
    drop(redis);
}
