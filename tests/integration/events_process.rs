//! `/events` and the `/status` long-poll of a real tether process: a subscriber that
//! stops reading while a target flaps thousands of times costs tether no more than its
//! configured buffers, delays neither a hook nor another subscriber, and is told
//! `reset` rather than skipped past in silence; a position gone from the history or
//! from a previous process gets `reset` and a snapshot; a long-poll answers with the
//! transition, and at `wait` without one.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::events::{Client, Sse, position};
use crate::support::harness::{Behaviour, Listener};
use crate::support::tether_process::TetherProcess;
use crate::support::{eventually, free_port, workdir};

const LIMIT: Duration = Duration::from_secs(10);

/// On/off cycles of the flapping target: two events each, far more stream than the
/// stalled subscriber's socket buffers and tether's queues for it hold.
const FLAPS: usize = 2000;

/// Events kept for resumes (`server.events_history`), part of the memory bound.
const HISTORY: usize = 1000;

/// Events a subscriber may fall behind by (the broadcast buffer), plus the messages
/// queued for its socket: what tether holds for one stalled subscriber.
const PER_SUBSCRIBER: usize = 256 + 16;

/// (VmRSS, VmHWM) of `pid`, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// The lines a command hook appends, read as they arrive.
struct HookLog {
    path: PathBuf,
    read: u64,
    partial: String,
    ids: Vec<String>,
}

impl HookLog {
    fn new(path: PathBuf) -> HookLog {
        HookLog {
            path,
            read: 0,
            partial: String::new(),
            ids: Vec::new(),
        }
    }

    fn catch_up(&mut self) {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            return;
        };
        file.seek(SeekFrom::Start(self.read)).unwrap();
        let mut new = String::new();
        self.read += file.read_to_string(&mut new).unwrap() as u64;
        self.partial.push_str(&new);
        while let Some(end) = self.partial.find('\n') {
            self.ids.push(self.partial[..end].to_owned());
            self.partial.drain(..=end);
        }
    }

    /// Waits (a bounded poll of the file) until the hook has run `n` times; returns
    /// when it saw the n-th.
    async fn wait(&mut self, n: usize) -> Instant {
        let deadline = Instant::now() + LIMIT;
        loop {
            self.catch_up();
            if self.ids.len() >= n {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "the hook ran {} times, not {n}, within {LIMIT:?}",
                self.ids.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// A connection that reads as little as it can: a receive buffer of a few KiB, set
/// before the connect so the window tether sees is that small too.
async fn stalled_socket(addr: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&addr.into()).unwrap();
    socket.set_nonblocking(true).unwrap();
    TcpStream::from_std(socket.into()).unwrap()
}

fn config(dir: &Path, target: SocketAddr, hooks: &Path) -> PathBuf {
    let hook = format!(
        r#"{{ command = ["/bin/sh", "-c", "echo $TETHER_EVENT_ID >> \"$0\"", "{}"] }}"#,
        hooks.display()
    );
    let path = dir.join("tether.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nevents_history = {HISTORY}\n\
             [[targets]]\nname = \"flappy\"\naddress = \"{target}\"\n\
             failure_threshold = 1000000\nbackoff = {{ initial = \"1ms\", max = \"2ms\" }}\n\
             [targets.hooks]\non_connect = {hook}\non_disconnect = {hook}\n"
        ),
    )
    .unwrap();
    path
}

/// The next event of `client`, which must be the transition at `at` with `event`.
async fn expect(client: &mut Client, at: u64, event: &str) -> Sse {
    let e = client.next().await;
    assert_eq!(e.event, "transition", "{e:?}");
    assert_eq!(position(e.id.as_deref().unwrap()), at, "{e:?}");
    assert!(
        e.data.contains(&format!("\"event\":\"{event}\"")),
        "{event} expected: {e:?}"
    );
    e
}

fn seq(e: &Sse) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
    position(v["event_id"].as_str().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_costs_tether_only_its_buffers_while_a_target_flaps_thousands_of_times()
 {
    let dir = workdir("stalled");
    let hooks = dir.path().join("hooks.log");
    let target: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut listener = Some(TcpListener::bind(target).await.unwrap());
    let mut tether = TetherProcess::run(&config(dir.path(), target, &hooks), &[]);
    let addr = tether.http_addr(LIMIT);
    let mut held = Some(
        tokio::time::timeout(LIMIT, listener.as_ref().unwrap().accept())
            .await
            .expect("tether connects")
            .unwrap()
            .0,
    );
    let mut hook = HookLog::new(hooks);
    hook.wait(1).await;

    let mut stalled = Client::over(stalled_socket(addr).await, "/events", "").await;
    let snapshot = stalled.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let first = position(snapshot.id.as_deref().unwrap());
    let mut reader = Client::connect(addr, "/events", "").await;
    assert_eq!(reader.next().await.event, "snapshot");
    let (baseline, _) = memory(tether.pid());

    let started = Instant::now();
    let mut at = first;
    let mut seen_seq = 0;
    let mut largest = 0;
    let (mut reader_lags, mut hook_lags) = (Vec::new(), Vec::new());
    let mut peak = baseline;
    for flap in 0..FLAPS {
        // Off: no listener, and the held connection closed, so tether's immediate
        // reconnect is refused.
        let off = Instant::now();
        drop(listener.take());
        drop(held.take());
        at += 1;
        let e = expect(&mut reader, at, "disconnect").await;
        reader_lags.push(off.elapsed());
        hook_lags.push(hook.wait(2 * flap + 2).await - off);
        largest = largest.max(e.data.len());
        assert_eq!(seq(&e), seen_seq + 1, "{e:?}");
        seen_seq += 1;

        // On again: tether's next retry (within 2 ms) connects.
        let l = TcpListener::bind(target).await.unwrap();
        held = Some(
            tokio::time::timeout(LIMIT, l.accept())
                .await
                .expect("tether reconnects")
                .unwrap()
                .0,
        );
        listener = Some(l);
        at += 1;
        let e = expect(&mut reader, at, "connect").await;
        hook.wait(2 * flap + 3).await;
        assert_eq!(seq(&e), seen_seq + 1, "{e:?}");
        seen_seq += 1;
        if flap % 100 == 0 {
            peak = peak.max(memory(tether.pid()).0);
        }
    }
    let elapsed = started.elapsed();
    let (rss, hwm) = memory(tether.pid());
    peak = peak.max(rss);

    // The hook saw every event, in order, none twice.
    for (i, id) in hook.ids.iter().enumerate() {
        assert_eq!(id, &format!("flappy:{i}"), "the hook's {i}th event");
    }
    assert_eq!(hook.ids.len(), 2 * FLAPS + 1);

    // What tether may hold for the stalled subscriber: its share of the broadcast
    // buffer and its queue, the history, each event stored and rendered once, plus
    // room for the allocator.
    let event = (largest + 128) as u64;
    let bound = baseline + (HISTORY + PER_SUBSCRIBER) as u64 * 2 * event + 4 * 1024 * 1024;
    let quantile = |v: &mut Vec<Duration>, q: f64| {
        v.sort();
        v[((v.len() - 1) as f64 * q) as usize]
    };
    println!(
        "{} events in {elapsed:?}; RSS baseline {}, peak {} (VmHWM {}), bound {}; \
         reader lag median {:?} p99 {:?} max {:?}; hook lag median {:?} p99 {:?} max {:?}",
        2 * FLAPS,
        mib(baseline),
        mib(peak),
        mib(hwm),
        mib(bound),
        quantile(&mut reader_lags, 0.5),
        quantile(&mut reader_lags, 0.99),
        quantile(&mut reader_lags, 1.0),
        quantile(&mut hook_lags, 0.5),
        quantile(&mut hook_lags, 0.99),
        quantile(&mut hook_lags, 1.0),
    );
    assert!(peak <= bound, "RSS {} above {}", mib(peak), mib(bound));
    assert!(
        quantile(&mut reader_lags, 1.0) < Duration::from_secs(2),
        "the reader was held back"
    );

    // The stalled subscriber reads at last: what its buffers held, consecutive, then
    // `reset` and a snapshot current to the end.
    let mut last = first;
    let reset = loop {
        let e = stalled.next().await;
        if e.event == "reset" {
            break e;
        }
        let p = position(e.id.as_deref().unwrap());
        assert_eq!(p, last + 1, "a gap without a reset: {e:?}");
        last = p;
        assert!(
            last < at,
            "the stalled subscriber got every event: nothing was bounded"
        );
    };
    assert!(reset.data.contains("fell behind"), "{reset:?}");
    // Its socket held at most the capped send buffer (doubled by the kernel) and the
    // window, some 350 events, and tether's queue for it 16 more: never thousands.
    let window = 2 * tether::telemetry::stream::SEND_BUFFER + 4096;
    assert!(
        last - first < (window / 300 + 16) as u64,
        "{} events were held for a subscriber that did not read",
        last - first
    );
    let snapshot = stalled.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(position(snapshot.id.as_deref().unwrap()), at);
    println!(
        "the stalled subscriber got {} events from its buffers, then reset and a snapshot at {at}",
        last - first
    );
    tether.signal(nix::sys::signal::Signal::SIGTERM);
    tether.wait_exit(LIMIT);
}

/// A tether process watching `db` with fast reconnects, `server` lines added to its
/// `[server]` table; its config stays in `dir` so it can be started again.
fn start(dir: &Path, db: &Listener, server: &str) -> (TetherProcess, SocketAddr) {
    let path = dir.join("tether.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[[targets]]\nname = \"db\"\n\
             address = \"{}\"\nbackoff = {{ initial = \"5ms\", max = \"20ms\" }}\n\
             failure_threshold = 1000\n",
            db.address()
        ),
    )
    .unwrap();
    let tether = TetherProcess::run(&path, &[]);
    let addr = tether.http_addr(LIMIT);
    (tether, addr)
}

/// `/status` once it shows `db` in `state`; its `X-Tether-Index`.
async fn index_when(addr: SocketAddr, state: &str) -> String {
    let index = eventually(LIMIT, &format!("db {state}"), || async {
        let r = crate::endpoint::get(addr, "/status").await;
        (r.json()["targets"][0]["state"] == state)
            .then(|| r.header("x-tether-index").unwrap().to_owned())
    })
    .await;
    crate::endpoint::settled_index(addr, index, |r| r.json()["targets"][0]["state"] == state).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_resume_from_before_the_history_gets_reset_then_a_snapshot_and_one_within_it_a_replay() {
    let dir = workdir("events-history");
    let mut db = Listener::start(Behaviour::Hold).await;
    let (tether, addr) = start(dir.path(), &db, "events_history = 2");
    let before = index_when(addr, "up").await;
    for _ in 0..2 {
        db.kill().await;
        index_when(addr, "down").await;
        db.restore(Behaviour::Hold).await;
        index_when(addr, "up").await;
    }
    // Four events since `before`, two kept: gone from the history.
    let header = format!("Last-Event-ID: {before}\r\n");
    let mut late = Client::connect(addr, "/events", &header).await;
    assert_eq!(late.next().await.event, "reset");
    let snapshot = late.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(
        position(snapshot.id.as_deref().unwrap()),
        position(&before) + 4
    );
    // One event back is still held: replayed, no reset.
    let instance = before.rsplit_once(':').unwrap().0;
    let kept = format!("{instance}:{}", position(&before) + 3);
    let mut recent = Client::connect(addr, &format!("/events?since={kept}"), "").await;
    let replayed = recent.next().await;
    assert_eq!(replayed.event, "transition", "{replayed:?}");
    assert_eq!(
        position(replayed.id.as_deref().unwrap()),
        position(&before) + 4
    );
    drop(tether);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_from_the_previous_process_gets_reset_then_a_snapshot_of_the_new_one() {
    let dir = workdir("events-restart");
    let db = Listener::start(Behaviour::Hold).await;
    let (first, addr) = start(dir.path(), &db, "");
    let old = index_when(addr, "up").await;
    let (status, _) = first.stop();
    assert!(status.success(), "{status}");

    let (second, addr) = start(dir.path(), &db, "");
    let new = index_when(addr, "up").await;
    // The same position number in another run: it says nothing of this one.
    assert_eq!(position(&new), position(&old));
    let mut client = Client::connect(addr, "/events", &format!("Last-Event-ID: {old}\r\n")).await;
    assert_eq!(client.next().await.event, "reset");
    let snapshot = client.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert_eq!(snapshot.id.as_deref(), Some(new.as_str()), "old {old}");
    drop(second);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_on_a_tether_process_answers_within_milliseconds_of_a_transition_and_at_wait_without_one()
 {
    let dir = workdir("long-poll");
    let mut db = Listener::start(Behaviour::Hold).await;
    let (tether, addr) = start(dir.path(), &db, "");
    let index = index_when(addr, "up").await;

    let started = Instant::now();
    let quiet = crate::endpoint::get(addr, &format!("/status?index={index}&wait=1s")).await;
    let waited = started.elapsed();
    println!("without a transition the long-poll answered after {waited:?}");
    assert_eq!(quiet.header("x-tether-index"), Some(index.as_str()));
    assert!(waited >= Duration::from_millis(990), "early: {waited:?}");
    assert!(waited < Duration::from_secs(3), "late: {waited:?}");

    let mut lags = Vec::new();
    let mut index = index;
    for i in 0..6 {
        let poll = tokio::spawn({
            let path = format!("/status?index={index}&wait=20s");
            async move {
                let r = crate::endpoint::get(addr, &path).await;
                (r, Instant::now())
            }
        });
        // Time for the request to arrive; that it is waiting is checked, not assumed.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!poll.is_finished(), "answered before anything happened");
        let changed = Instant::now();
        if i % 2 == 0 {
            db.kill().await;
        } else {
            db.restore(Behaviour::Hold).await;
        }
        let (reply, answered) = tokio::time::timeout(LIMIT, poll).await.unwrap().unwrap();
        lags.push(answered - changed);
        let next = reply.header("x-tether-index").unwrap().to_owned();
        assert_eq!(position(&next), position(&index) + 1, "{}", reply.body);
        index = next;
    }
    lags.sort();
    println!(
        "the long-poll answered {:?} after a transition (median), {:?} at most",
        lags[lags.len() / 2],
        lags[lags.len() - 1]
    );
    assert!(lags[lags.len() - 1] < Duration::from_secs(1));
    drop(tether);
}
