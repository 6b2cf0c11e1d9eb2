//! `/events` of a real tether process: a subscriber that stops reading while a target
//! flaps thousands of times costs tether no more than its configured buffers, delays
//! neither a hook nor another subscriber, and is told `reset` rather than skipped
//! past in silence.

use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::events::{Client, Sse, position};
use crate::support::tether_process::TetherProcess;
use crate::support::{free_port, workdir};

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
        quantile(&mut reader_lags, 1.0) < Duration::from_secs(1),
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
