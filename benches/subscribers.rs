//! The `/events` subscriber benchmark: one `tether run` process watching one loopback
//! target, with 1,000 idle subscribers on `/events`. It measures what an idle
//! subscriber costs (RSS with them minus RSS without, per subscriber) and how long a
//! transition takes to reach all of them: the bench closes the target's listener and
//! its held connection at a known instant (tether notices a local close within well
//! under a millisecond), and times the `disconnect` event's arrival at every
//! subscriber, first to last.
//!
//! `cargo bench --bench subscribers` runs the full benchmark (1,000 subscribers, 20
//! transitions) against the release binary, prints the figures against their targets
//! and exits non-zero when one is missed. Options follow `--`:
//! `cargo bench --bench subscribers -- --subscribers 2000 --rounds 50 --tether PATH`;
//! `--smoke` for the short version CI runs (never fails on timing).
//!
//! `cargo test --all-targets` runs this file without `--bench`, as a plain test
//! binary: a small smoke run (100 subscribers, 3 transitions) that asserts only that
//! every subscriber got every event and the figures were produced.
//!
//! The times include the bench's own reading: its subscribers are tasks on two
//! runtime threads, so the last of 1,000 reads also waits for the bench to get to it.
//! Everything is loopback, bounded in count and time, and the tether process is killed
//! if the benchmark ends early.

// A benchmark measures real time on real processes; there is no paused clock here.
#![allow(clippy::disallowed_types)]

#[path = "common/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use harness::{Summary, Tether, memory, mib, ms};

const KIB: u64 = 1024;
/// What an idle subscriber may cost tether, in resident memory.
const PER_SUBSCRIBER_LIMIT: u64 = 16 * KIB;
/// From a transition to the last subscriber that receives it.
const FAN_OUT_LIMIT: Duration = Duration::from_millis(20);
/// Subscribers that connect at once.
const BATCH: usize = 100;
/// Every wait of the bench ends by then.
const LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Options {
    full: bool,
    subscribers: usize,
    rounds: usize,
    tether: PathBuf,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let args: Vec<String> = args.collect();
        let bench = args.iter().any(|a| a == "--bench");
        let full = bench && !args.iter().any(|a| a == "--smoke");
        let mut o = Options {
            full,
            subscribers: if full { 1_000 } else { 100 },
            rounds: if full { 20 } else { 3 },
            tether: harness::default_binary(),
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--bench" | "--smoke" => {}
                "--subscribers" => o.subscribers = harness::number(&value("--subscribers")?)?,
                "--rounds" => o.rounds = harness::number(&value("--rounds")?)?,
                "--tether" => o.tether = PathBuf::from(value("--tether")?),
                // `cargo test` passes its own arguments to every test binary.
                _ if !bench => {}
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if o.subscribers == 0 || o.subscribers > 60_000 || o.rounds == 0 {
            return Err("--subscribers 1 to 60000 and --rounds at least 1".into());
        }
        Ok(o)
    }
}

const USAGE: &str = "usage: cargo bench --bench subscribers -- [--smoke] [--subscribers N] \
                     [--rounds N] [--tether PATH]";

/// A transition as one subscriber read it: the how-many-th, and when.
struct Receipt {
    nth: usize,
    at: Instant,
}

/// One idle subscriber: reads its snapshot, reports that it is ready, then reports
/// every `transition` event the moment its bytes arrive.
async fn subscriber(
    addr: SocketAddr,
    ready: mpsc::UnboundedSender<()>,
    receipts: mpsc::UnboundedSender<Receipt>,
) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    // HTTP/1.0: the body is the stream itself, unchunked.
    stream
        .write_all(b"GET /events HTTP/1.0\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending = Vec::new();
    let mut snapshot = false;
    let mut nth = 0;
    loop {
        let n = stream.read(&mut buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return if snapshot {
                Ok(())
            } else {
                Err("closed before the snapshot".into())
            };
        }
        let at = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        // Whole events only: each ends with a blank line.
        while let Some(end) = pending.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = pending.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            if text.contains("event: snapshot") && !snapshot {
                snapshot = true;
                let _ = ready.send(());
            } else if text.contains("event: transition") {
                nth += 1;
                let _ = receipts.send(Receipt { nth, at });
            }
        }
    }
}

/// The target: a listener that holds the one connection tether makes, and closes
/// both on demand so tether sees the target go.
struct Target {
    address: SocketAddr,
    listener: Option<TcpListener>,
    held: Option<TcpStream>,
}

impl Target {
    async fn open(address: SocketAddr) -> Result<Target, String> {
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| format!("bind {address}: {e}"))?;
        Ok(Target {
            address: listener.local_addr().map_err(|e| e.to_string())?,
            listener: Some(listener),
            held: None,
        })
    }

    async fn accept(&mut self) -> Result<(), String> {
        let listener = self.listener.as_ref().ok_or("no listener")?;
        let (stream, _) = tokio::time::timeout(LIMIT, listener.accept())
            .await
            .map_err(|_| "tether did not connect")?
            .map_err(|e| e.to_string())?;
        self.held = Some(stream);
        Ok(())
    }

    /// Closes the listener, then the connection: tether's immediate reconnect is
    /// refused and the target is `down`. Returns the instant of the close.
    fn close(&mut self) -> Instant {
        drop(self.listener.take());
        let at = Instant::now();
        drop(self.held.take());
        at
    }

    async fn reopen(&mut self) -> Result<(), String> {
        *self = Target::open(self.address).await?;
        self.accept().await
    }
}

/// Waits until every subscriber has read its `nth` transition; their arrival times.
async fn all_receive(
    receipts: &mut mpsc::UnboundedReceiver<Receipt>,
    subscribers: usize,
    nth: usize,
) -> Result<Vec<Instant>, String> {
    let mut times = Vec::with_capacity(subscribers);
    let deadline = tokio::time::Instant::now() + LIMIT;
    while times.len() < subscribers {
        let r = tokio::time::timeout_at(deadline, receipts.recv())
            .await
            .map_err(|_| format!("{} of {subscribers} got transition {nth}", times.len()))?
            .ok_or("the subscribers ended")?;
        if r.nth != nth {
            return Err(format!(
                "a subscriber's transition {} while {nth} was due",
                r.nth
            ));
        }
        times.push(r.at);
    }
    Ok(times)
}

/// Settles the resident set: waits until two readings 200 ms apart agree within 1%.
async fn steady_rss(pid: u32) -> Result<u64, String> {
    let mut last = memory(pid).map_err(|e| e.to_string())?.rss;
    for _ in 0..25 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = memory(pid).map_err(|e| e.to_string())?.rss;
        if now.abs_diff(last) * 100 <= last {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

struct Figures {
    rss_without: u64,
    rss_with: u64,
    /// From the close to the last subscriber's read, one per round.
    fan_out: Vec<Duration>,
    /// From the first subscriber's read to the last one's, one per round.
    spread: Vec<Duration>,
    /// From the close to the first subscriber's read.
    first: Vec<Duration>,
}

impl Figures {
    fn per_subscriber(&self, n: usize) -> u64 {
        self.rss_with.saturating_sub(self.rss_without) / n as u64
    }
}

async fn run(o: &Options) -> Result<Figures, String> {
    harness::raise_open_files_limit(2 * o.subscribers as u64 + 64)?;
    let mut target = Target::open("127.0.0.1:0".parse().unwrap()).await?;
    let port = harness::free_port().map_err(|e| e.to_string())?;
    let config = tempfile::Builder::new()
        .prefix("tether-subscribers-")
        .suffix(".toml")
        .tempfile()
        .map_err(|e| e.to_string())?;
    std::fs::write(
        config.path(),
        format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nmax_subscribers = {}\n\
             events_heartbeat = \"1h\"\n\
             [[targets]]\nname = \"db\"\naddress = \"{}\"\nfailure_threshold = 1000000\n\
             backoff = {{ initial = \"1ms\", max = \"5ms\" }}\n",
            o.subscribers.max(1024),
            target.address
        ),
    )
    .map_err(|e| e.to_string())?;
    let mut tether = Tether::spawn(&o.tether, config.path()).map_err(|e| e.to_string())?;
    target.accept().await?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    // The HTTP server answers once /healthz does.
    let deadline = Instant::now() + LIMIT;
    while TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline || tether.exited().is_some() {
            return Err(format!("no HTTP server: {:?}", tether.log_tail(5)));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rss_without = steady_rss(tether.pid).await?;

    let (ready_tx, mut ready) = mpsc::unbounded_channel();
    let (receipts_tx, mut receipts) = mpsc::unbounded_channel();
    let mut tasks = tokio::task::JoinSet::new();
    // In batches: connections that have not asked for a stream yet count against the
    // server's connection cap (256), and past it the oldest idle one is closed.
    for batch in (0..o.subscribers).collect::<Vec<_>>().chunks(BATCH) {
        for _ in batch {
            tasks.spawn(subscriber(addr, ready_tx.clone(), receipts_tx.clone()));
        }
        for i in batch {
            tokio::time::timeout(LIMIT, ready.recv())
                .await
                .map_err(|_| format!("{i} of {} subscribers have their snapshot", o.subscribers))?;
        }
    }
    let rss_with = steady_rss(tether.pid).await?;

    let mut f = Figures {
        rss_without,
        rss_with,
        fan_out: Vec::new(),
        spread: Vec::new(),
        first: Vec::new(),
    };
    for round in 0..o.rounds {
        let closed = target.close();
        let times = all_receive(&mut receipts, o.subscribers, 2 * round + 1).await?;
        let (first, last) = (*times.iter().min().unwrap(), *times.iter().max().unwrap());
        f.fan_out.push(last - closed);
        f.first.push(first - closed);
        f.spread.push(last - first);
        target.reopen().await?;
        all_receive(&mut receipts, o.subscribers, 2 * round + 2).await?;
    }
    tether.stop(Duration::from_secs(10)).await?;
    tasks.shutdown().await;
    Ok(f)
}

fn row(name: &str, value: String) {
    println!("  {name:<52} {value:>40}");
}

fn spread(samples: &[Duration]) -> String {
    match Summary::of(samples) {
        Some(s) => format!(
            "median {} / p95 {} / max {}",
            ms(s.median),
            ms(s.p95),
            ms(s.max)
        ),
        None => "-".into(),
    }
}

fn main() -> ExitCode {
    let o = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("subscribers: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let f = match runtime.block_on(run(&o)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("subscribers: {e}");
            return ExitCode::FAILURE;
        }
    };
    drop(runtime);
    let n = o.subscribers;
    let per = f.per_subscriber(n);
    let typical = Summary::of(&f.fan_out).map_or(Duration::MAX, |s| s.median);
    println!();
    println!(
        "tether subscriber benchmark ({}): {n} idle /events subscribers, {} transitions",
        if o.full { "full" } else { "smoke" },
        o.rounds
    );
    println!("binary: {}", o.tether.display());
    println!(
        "cores: {}; load average {}",
        std::thread::available_parallelism().map_or(0, |c| c.get()),
        harness::load_average()
    );
    row(
        &format!("RSS without subscribers / with {n}"),
        format!("{} / {}", mib(f.rss_without), mib(f.rss_with)),
    );
    row(
        "RSS per idle subscriber",
        format!(
            "{:.1} KiB (target ≤ {} KiB)",
            per as f64 / KIB as f64,
            PER_SUBSCRIBER_LIMIT / KIB
        ),
    );
    row(
        &format!("transition → last of {n} subscribers"),
        format!("{} (target ≤ {})", spread(&f.fan_out), ms(FAN_OUT_LIMIT)),
    );
    row("transition → first subscriber", spread(&f.first));
    row("first → last subscriber", spread(&f.spread));
    let checks = [
        (
            format!(
                "RSS per idle subscriber ≤ {} KiB",
                PER_SUBSCRIBER_LIMIT / KIB
            ),
            per <= PER_SUBSCRIBER_LIMIT,
        ),
        (
            format!(
                "fan-out to the last subscriber ≤ {} (median)",
                ms(FAN_OUT_LIMIT)
            ),
            typical <= FAN_OUT_LIMIT,
        ),
    ];
    for (name, passed) in &checks {
        println!("  {}  {name}", if *passed { "PASS" } else { "MISS" });
    }
    if !o.full {
        assert_eq!(f.fan_out.len(), o.rounds, "a figure per transition");
        assert!(f.rss_with > 0 && f.rss_without > 0, "no RSS figure");
        println!("subscribers: smoke run passed");
        return ExitCode::SUCCESS;
    }
    let missed: Vec<&str> = checks
        .iter()
        .filter(|(_, p)| !p)
        .map(|(n, _)| n.as_str())
        .collect();
    if missed.is_empty() {
        println!("subscribers: every target met");
        ExitCode::SUCCESS
    } else {
        println!("subscribers: MISSED: {}", missed.join("; "));
        ExitCode::FAILURE
    }
}
