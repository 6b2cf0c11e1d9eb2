//! The scale benchmark: one `tether run` process watching up to 10,000 loopback
//! targets, each with and without a command hook on every event of every target:
//! memory (VmRSS, RssAnon, VmHWM), CPU at rest, reconnect latencies, and what a mass
//! outage costs (every listener gone at once → all `down` in `/status` and the last
//! `on_disconnect` hook started; all back → all `up` and the last `on_connect` hook).
//!
//! `cargo bench --bench scale` runs the full benchmark against the release binary,
//! which cargo builds for it (binaries are built for benchmarks and named by
//! `CARGO_BIN_EXE_tether`; `--tether PATH` or `$TETHER_BIN` names another), at 1, 1,000
//! and 10,000 targets, prints the figures against their targets and exits non-zero
//! when one is missed. Options follow `--`:
//! `cargo bench --bench scale -- --targets 5000 --window 20s --batch 500 --hooks none`;
//! `--sizes 1,1000` for several sizes, `--smoke` for the short version CI runs (never
//! fails on timing).
//!
//! `cargo test --all-targets` runs this file without `--bench`, as a plain test
//! binary: it then does a small, quick smoke run (200 targets, a 1 s window, with and
//! without hooks) against whatever binary that build made, and asserts only that every
//! target connects, every dropped connection comes back and the figures were produced.
//!
//! Hooks write their target and event into a FIFO the bench reads, so a hook start is
//! stamped when the hook process runs. Everything here is loopback, bounded in count
//! and in time, and cleans up after itself: the tether process is killed if the
//! benchmark ends early.

// A benchmark measures real time on real processes; there is no paused clock here.
#![allow(clippy::disallowed_types)]

#[path = "common/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use harness::{
    HookProgram, Memory, Stamps, Summary, Tether, cpu_time, cpu_time_precise, memory, mib, ms,
};

const MIB: u64 = 1024 * 1024;
/// "A few percent of one core": the full run fails above this.
const CPU_LIMIT_PERCENT: f64 = 5.0;
/// Loopback addresses the listeners are spread over, so no single address's
/// ephemeral ports or accept queues shape the result.
const LOOPBACK_ADDRESSES: u8 = 8;
/// Deep enough that the burst of connects at start never overflows a queue (a dropped
/// SYN costs a one-second retransmit and would show up as a false connect time).
const BACKLOG: u32 = 4096;

// === options ===

/// What to run, from the command line.
#[derive(Debug)]
struct Options {
    /// `--bench` without `--smoke`: the full run, with pass/fail targets.
    full: bool,
    /// Target counts, one tether run (or two, see `hooks`) each.
    sizes: Vec<usize>,
    /// Whether to run each size without hooks, with a command hook on every event of
    /// every target, or both.
    hooks: Vec<bool>,
    /// The steady-state window over which CPU is measured.
    window: Duration,
    /// Connections dropped at once in each reconnect round; also the number of
    /// listeners, so each dropped connection is the only one of its listener and its
    /// replacement is known exactly.
    batch: usize,
    /// Connections dropped one at a time, each after the previous one came back: the
    /// latency of a single detection on an otherwise quiet sidecar.
    singles: usize,
    /// Quiet time between the last connect and the steady-state window.
    settle: Duration,
    tether: PathBuf,
    /// What each hook runs to stamp its start.
    hook_program: HookProgram,
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let args: Vec<String> = args.collect();
        let bench = args.iter().any(|a| a == "--bench");
        let full = bench && !args.iter().any(|a| a == "--smoke");
        let mut o = if full {
            Options {
                full,
                sizes: vec![1, 1_000, 10_000],
                hooks: vec![false, true],
                window: Duration::from_secs(10),
                batch: 1_000,
                singles: 200,
                // Past the default `keepalive.idle` (3 s): connections made together
                // restart their keepalive once within it, which is start-up work.
                settle: Duration::from_secs(4),
                tether: harness::default_binary(),
                hook_program: HookProgram::Stamper,
            }
        } else {
            Options {
                full,
                sizes: vec![200],
                hooks: vec![false, true],
                window: Duration::from_secs(1),
                batch: 20,
                singles: 10,
                settle: Duration::from_millis(200),
                tether: harness::default_binary(),
                hook_program: HookProgram::Stamper,
            }
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--bench" | "--smoke" => {}
                "--targets" => o.sizes = vec![harness::number(&value("--targets")?)?],
                "--sizes" => {
                    o.sizes = value("--sizes")?
                        .split(',')
                        .map(harness::number)
                        .collect::<Result<_, _>>()?
                }
                "--hooks" => {
                    o.hooks = match value("--hooks")?.as_str() {
                        "none" => vec![false],
                        "every" => vec![true],
                        "both" => vec![false, true],
                        other => return Err(format!("--hooks {other:?}: none, every or both")),
                    }
                }
                "--batch" => o.batch = harness::number(&value("--batch")?)?,
                "--singles" => o.singles = harness::number(&value("--singles")?)?,
                "--window" => o.window = harness::duration(&value("--window")?)?,
                "--settle" => o.settle = harness::duration(&value("--settle")?)?,
                "--tether" => o.tether = PathBuf::from(value("--tether")?),
                "--hook-program" => o.hook_program = HookProgram::parse(&value("--hook-program")?)?,
                // `cargo test` passes its own arguments (filters, `--nocapture`) to
                // every test binary; the smoke run ignores them.
                _ if !bench => {}
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if o.sizes.is_empty() || o.sizes.contains(&0) {
            return Err("every size must be at least 1 target".into());
        }
        o.batch = o.batch.max(1);
        Ok(o)
    }
}

const USAGE: &str = "usage: cargo bench --bench scale -- [--smoke] [--targets N | --sizes N,N,...] \
                     [--hooks none|every|both] [--window DUR] [--batch N] [--singles N] \
                     [--settle DUR] [--hook-program stamp|sh] [--tether PATH]";

// === listeners ===

/// One accepted connection, as the bench saw it.
#[derive(Clone, Copy, Debug)]
struct Accept {
    listener: usize,
    at: Instant,
}

/// A listener that accepts every connection and holds it until told to drop it.
struct Listener {
    address: SocketAddr,
    /// Out of the runtime's poller: a held connection is never read, and closing it
    /// then costs no deregistration, as a crashing server's closes cost none.
    held: Mutex<Vec<std::net::TcpStream>>,
    /// The accept loop, which owns the listening socket; aborted to close it.
    task: Mutex<Option<JoinHandle<()>>>,
}

/// The bench's side of every target: listeners spread over several loopback addresses.
struct Pool {
    listeners: Vec<Arc<Listener>>,
    /// Connections accepted so far, over the whole run.
    accepted: Arc<AtomicUsize>,
    accepts: mpsc::UnboundedReceiver<Accept>,
    report: mpsc::UnboundedSender<Accept>,
}

impl Pool {
    async fn start(count: usize) -> std::io::Result<Pool> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut pool = Pool {
            listeners: Vec::with_capacity(count),
            accepted: Arc::new(AtomicUsize::new(0)),
            accepts: rx,
            report: tx,
        };
        for i in 0..count {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + (i % LOOPBACK_ADDRESSES as usize) as u8);
            let listener = bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            let shared = Arc::new(Listener {
                address: listener.local_addr()?,
                held: Mutex::new(Vec::new()),
                task: Mutex::new(None),
            });
            pool.serve(i, listener, &shared);
            pool.listeners.push(shared);
        }
        Ok(pool)
    }

    fn serve(&self, index: usize, listener: tokio::net::TcpListener, l: &Arc<Listener>) {
        let task = tokio::spawn(accept_loop(
            index,
            listener,
            l.clone(),
            self.report.clone(),
            self.accepted.clone(),
        ));
        *l.task.lock().unwrap() = Some(task);
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Forgets accepts reported so far, so a round only sees its own.
    fn drain(&mut self) {
        while self.accepts.try_recv().is_ok() {}
    }

    /// Every listener closes, then every held connection: the whole dependency died.
    /// Returns when the first connection closed (closed listeners alone are invisible
    /// to tether) and when the last one did.
    async fn kill_all(&self) -> (Instant, SystemTime, Instant) {
        for l in &self.listeners {
            let task = l.task.lock().unwrap().take();
            if let Some(task) = task {
                task.abort();
                let _ = task.await;
            }
        }
        let killed = Instant::now();
        let wall = SystemTime::now();
        for l in &self.listeners {
            l.held.lock().unwrap().clear();
        }
        (killed, wall, Instant::now())
    }

    /// Every listener listens again on its address.
    fn restart_all(&self) -> std::io::Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            self.serve(i, bind(l.address)?, l);
        }
        Ok(())
    }
}

impl Drop for Pool {
    /// The accept loops hold the listeners and, through their `Listener`, every held
    /// connection: ended here so the next run starts with none of this one's sockets.
    fn drop(&mut self) {
        for l in &self.listeners {
            if let Some(task) = l.task.lock().unwrap().take() {
                task.abort();
            }
            l.held.lock().unwrap().clear();
        }
    }
}

fn bind(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(BACKLOG)
}

async fn accept_loop(
    index: usize,
    listener: tokio::net::TcpListener,
    shared: Arc<Listener>,
    report: mpsc::UnboundedSender<Accept>,
    accepted: Arc<AtomicUsize>,
) {
    let mut said = false;
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let at = Instant::now();
                let Ok(stream) = stream.into_std() else {
                    continue;
                };
                shared.held.lock().unwrap().push(stream);
                accepted.fetch_add(1, Ordering::AcqRel);
                let _ = report.send(Accept {
                    listener: index,
                    at,
                });
            }
            Err(e) => {
                // Out of descriptors or a transient error: say so (once) and keep
                // serving, the connect deadline will tell the story.
                if !said {
                    eprintln!("bench: accept on {}: {e}", shared.address);
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

// === the run ===

/// Reconnect latencies of one round: from the bench dropping a held connection to the
/// bench accepting tether's replacement.
struct Round {
    /// How the connections were dropped.
    kind: String,
    dropped: usize,
    latencies: Vec<Duration>,
    /// From the first drop to the last replacement.
    span: Duration,
    /// tether's CPU time over the round, when the scheduler accounts it.
    cpu: Option<Duration>,
}

impl Round {
    fn quantile(&self, q: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() - 1) as f64 * q).round() as usize;
        self.latencies[i]
    }
}

/// Every listener killed at once, then brought back: the whole dependency restarting.
#[derive(Default)]
struct MassOutage {
    /// From the kill to the first `/status` poll showing every target down or failed.
    all_down: Option<Duration>,
    /// From the kill to the end of the millisecond of the latest `since` of the targets
    /// that poll showed down: when tether recorded the last of them, by its own clock.
    all_down_stamped: Option<Duration>,
    /// How long this process took to close every held connection: no sidecar can
    /// see the last one go before it is closed.
    closing: Duration,
    /// From the kill to the start of each `on_disconnect` hook (with hooks).
    disconnect_hooks: Vec<Duration>,
    /// From the restart to the first `/readyz` answering 200 (every target up).
    all_up: Option<Duration>,
    /// From the restart to the start of each `on_connect` hook (with hooks).
    connect_hooks: Vec<Duration>,
    /// tether's memory once everything is back, peak included.
    after: Memory,
    /// What went wrong, if something did.
    error: Option<String>,
}

/// Everything measured in one cell (one size, with or without hooks).
struct Figures {
    targets: usize,
    hooks: bool,
    listeners: usize,
    load_before: String,
    load_after: String,
    connect_all: Duration,
    /// From spawn to the start of the last first `on_connect` hook (with hooks).
    connect_hooks: Option<Duration>,
    /// tether's CPU time from its start until every target was connected.
    connect_cpu: Option<Duration>,
    /// From the first to the last start of the same hook command run once per target
    /// by a bare spawner (with hooks): what starting that many processes costs here.
    spawn_floor: Option<Duration>,
    steady: Memory,
    /// The hook spawner's memory at the same moment, when one runs.
    spawner: Option<Memory>,
    /// At rest again, once `/metrics` and `/status` have been read (as a Prometheus
    /// server and a person would), whose code a sidecar left alone has not mapped back.
    scraped: Memory,
    window: Duration,
    cpu_user: Duration,
    cpu_system: Duration,
    /// The same window's CPU time from the scheduler's own accounting, if available.
    cpu_precise: Option<Duration>,
    /// Connections tether replaced during the window: any would mean churn at rest.
    churn: usize,
    /// Packets the kernel dropped at a full input backlog during the window, when
    /// `/proc/net/softnet_stat` can be read: what makes keepalive probes go unanswered
    /// on loopback.
    backlog_drops: Option<u64>,
    rounds: Vec<Round>,
    outage: MassOutage,
    stop: Duration,
    exit: ExitStatus,
    warnings: Vec<String>,
}

impl Figures {
    fn cpu_percent(&self) -> f64 {
        (self.cpu_user + self.cpu_system).as_secs_f64() / self.window.as_secs_f64() * 100.0
    }
}

async fn run(o: &Options, targets: usize, hooks: bool) -> Result<Figures, String> {
    let batch = o.batch.clamp(1, targets);
    // The bench holds a socket per target and per listener; tether inherits the limit.
    harness::raise_open_files_limit(targets as u64 + batch as u64 + 64)?;
    let mut pool = Pool::start(batch)
        .await
        .map_err(|e| format!("cannot start listeners: {e}"))?;
    let mut stamps = if hooks {
        Some(Stamps::open(o.hook_program).map_err(|e| format!("hook stamps: {e}"))?)
    } else {
        None
    };
    let port = harness::free_port().map_err(|e| e.to_string())?;
    let config = write_config(targets, &pool, port, stamps.as_ref())
        .map_err(|e| format!("cannot write config: {e}"))?;

    let load_before = harness::load_average();
    let started = Instant::now();
    let mut tether =
        Tether::spawn(&o.tether, config.path()).map_err(|e| format!("cannot start tether: {e}"))?;
    let bounded = Duration::from_secs(30) + Duration::from_millis(5) * targets as u32;
    let last = wait_for_accepts(&mut pool, &mut tether, targets, started + bounded)
        .await
        .map_err(|e| format!("connecting all {targets} targets: {e}"))?;
    let connect_all = last.duration_since(started);
    let connect_cpu = cpu_time_precise(tether.pid);
    let connect_hooks = match &mut stamps {
        Some(s) => {
            let times = hook_starts(s, "connect", targets, started, bounded).await?;
            times.iter().max().copied()
        }
        None => None,
    };

    tokio::time::sleep(o.settle).await;
    let pid = tether.pid;
    let before = pool.accepted();
    let drops0 = harness::backlog_drops();
    let (user0, system0) = cpu_time(pid).map_err(|e| e.to_string())?;
    let precise0 = cpu_time_precise(pid);
    tokio::time::sleep(o.window).await;
    let (user1, system1) = cpu_time(pid).map_err(|e| e.to_string())?;
    let precise1 = cpu_time_precise(pid);
    let steady = memory(pid).map_err(|e| e.to_string())?;
    let spawner = harness::spawner_of(pid).and_then(|p| memory(p).ok());
    let churn = pool.accepted() - before;
    let backlog_drops = drops0
        .zip(harness::backlog_drops())
        .map(|(a, b)| b.saturating_sub(a));
    for path in ["/metrics", "/status"] {
        harness::get(port, path).map_err(|e| format!("GET {path}: {e}"))?;
    }
    let scraped = memory(pid).map_err(|e| e.to_string())?;

    let mut rounds = Vec::new();
    if o.singles > 0 {
        let cpu0 = cpu_time_precise(pid);
        let mut round = single_round(&mut pool, &mut tether, o.singles)
            .await
            .map_err(|e| format!("one-at-a-time round: {e}"))?;
        round.cpu = cpu0.zip(cpu_time_precise(pid)).map(|(a, b)| b - a);
        rounds.push(round);
    }
    for (kind, reset) in [("FIN", false), ("RST", true)] {
        let cpu0 = cpu_time_precise(pid);
        let mut round = reconnect_round(&mut pool, &mut tether, kind, reset)
            .await
            .map_err(|e| format!("{kind} round: {e}"))?;
        round.cpu = cpu0.zip(cpu_time_precise(pid)).map(|(a, b)| b - a);
        rounds.push(round);
        tokio::time::sleep(o.settle).await;
    }
    let outage = mass_outage(&mut pool, &mut tether, stamps.as_mut(), targets, port).await;
    let load_after = harness::load_average();

    let (exit, stop) = tether.stop(Duration::from_secs(20)).await?;
    let listeners = pool.listeners.len();
    // The floor under the mass-outage figure: the same hook command started as many
    // times by this process once its sockets are closed, with tether gone.
    drop(pool);
    let spawn_floor = match &mut stamps {
        Some(s) => Some(spawn_floor(s, targets, bounded).await?),
        None => None,
    };
    Ok(Figures {
        targets,
        hooks,
        listeners,
        spawn_floor,
        load_before,
        load_after,
        connect_all,
        connect_hooks: connect_hooks.map(|at| at.duration_since(started)),
        connect_cpu,
        steady,
        spawner,
        scraped,
        window: o.window,
        cpu_user: user1.saturating_sub(user0),
        cpu_system: system1.saturating_sub(system0),
        cpu_precise: precise0.zip(precise1).map(|(a, b)| b.saturating_sub(a)),
        churn,
        backlog_drops,
        rounds,
        outage,
        stop,
        exit,
        // Transitions are logged at warn; only other lines are news here.
        warnings: tether
            .log_tail(usize::MAX)
            .into_iter()
            .filter(|l| !l.contains("tether::transition"))
            .rev()
            .take(5)
            .collect(),
    })
}

/// Kills every listener and its connections at once, waits until tether shows every
/// target down (and, with hooks, until every `on_disconnect` hook started), then
/// restarts them and waits until every target is up again.
async fn mass_outage(
    pool: &mut Pool,
    tether: &mut Tether,
    mut stamps: Option<&mut Stamps>,
    targets: usize,
    port: u16,
) -> MassOutage {
    let mut m = MassOutage::default();
    let limit = Duration::from_secs(60) + Duration::from_millis(10) * targets as u32;
    if let Some(s) = stamps.as_deref_mut() {
        s.drain();
    }
    let (killed, killed_wall, closed) = pool.kill_all().await;
    m.closing = closed.duration_since(killed);
    // Each poll makes tether write the whole document (a millisecond and a half at
    // 1,000 targets, on the cores the outage needs): the figure held to its budget
    // comes from tether's own stamps, so the polls only confirm it, every 10 ms at
    // small sizes and every 25 ms at large ones.
    let every = if targets <= 1_000 {
        Duration::from_millis(10)
    } else {
        Duration::from_millis(25)
    };
    let down = async {
        let at = harness::poll_status(port, every, limit, |c| {
            c.total == targets && c.down == targets
        })
        .await?;
        // Read at once: a target moves on to `failed`, a later `since`, only after its
        // fifth attempt, a second and a half later with the default backoff.
        let stamped = tokio::task::spawn_blocking(move || harness::latest_since_down(port))
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r);
        Ok::<_, String>((at, stamped))
    };
    let hooks = async {
        match stamps.as_deref_mut() {
            Some(s) => hook_starts(s, "disconnect", targets, killed, limit).await,
            None => Ok(Vec::new()),
        }
    };
    let (down, hooks) = tokio::join!(down, hooks);
    match (down, hooks) {
        (Ok((at, stamped)), Ok(hooks)) => {
            m.all_down = Some(at.duration_since(killed));
            if let Err(e) = &stamped {
                eprintln!("bench: no stamps from /status after the mass kill: {e}");
            }
            // `since` is cut to the millisecond: the last target went down within the
            // millisecond after it, and the figure is its end, never an underestimate.
            m.all_down_stamped = stamped.ok().map(|last| {
                (last + Duration::from_millis(1))
                    .duration_since(killed_wall)
                    .unwrap_or_default()
            });
            m.disconnect_hooks = hooks.iter().map(|h| h.duration_since(killed)).collect();
        }
        (Err(e), _) | (_, Err(e)) => {
            m.error = Some(format!("after the mass kill: {e}"));
            return m;
        }
    }
    if let Some(s) = stamps.as_deref_mut() {
        s.drain();
    }
    // Stamped before the first listener is back: a target whose listener returns early
    // connects, and runs its hook, while later listeners are still being opened.
    let restarted = Instant::now();
    if let Err(e) = pool.restart_all() {
        m.error = Some(format!("cannot restart the listeners: {e}"));
        return m;
    }
    let up = poll_ready(port, limit);
    let hooks = async {
        match stamps.as_deref_mut() {
            Some(s) => hook_starts(s, "connect", targets, restarted, limit).await,
            None => Ok(Vec::new()),
        }
    };
    let (up, hooks) = tokio::join!(up, hooks);
    match (up, hooks) {
        (Ok(at), Ok(hooks)) => {
            m.all_up = Some(at.duration_since(restarted));
            m.connect_hooks = hooks.iter().map(|h| h.duration_since(restarted)).collect();
        }
        (Err(e), _) | (_, Err(e)) => m.error = Some(format!("after the restart: {e}")),
    }
    if let Some(status) = tether.exited() {
        m.error = Some(format!("tether exited ({status})"));
    }
    m.after = memory(tether.pid).unwrap_or_default();
    m
}

/// Polls `/readyz` (cheap at any size, unlike `/status`) until it answers 200.
async fn poll_ready(port: u16, limit: Duration) -> Result<Instant, String> {
    use std::io::{Read, Write};
    let deadline = Instant::now() + limit;
    loop {
        let ready = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
            let mut head = [0u8; 12];
            s.read_exact(&mut head)?;
            Ok(head.ends_with(b"200"))
        })
        .await
        .map_err(|e| e.to_string())?;
        if ready.unwrap_or(false) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("/readyz not 200 within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits for `count` hooks of `event`, one per target, started at or after `since`;
/// returns their start times.
async fn hook_starts(
    stamps: &mut Stamps,
    event: &str,
    count: usize,
    since: Instant,
    limit: Duration,
) -> Result<Vec<Instant>, String> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut seen: HashMap<String, Instant> = HashMap::with_capacity(count);
    while seen.len() < count {
        match tokio::time::timeout_at(deadline, stamps.received.recv()).await {
            Ok(Some(s)) if s.event == event && s.at >= since => {
                seen.entry(s.target).or_insert(s.at);
            }
            Ok(Some(_)) => {}
            Ok(None) => return Err("the hook stamps stopped".into()),
            Err(_) => {
                return Err(format!(
                    "only {} of {count} {event} hooks started within {limit:?}",
                    seen.len()
                ));
            }
        }
    }
    Ok(seen.into_values().collect())
}
/// Starts the hook command once per target from two threads of this process (about
/// as many as tether's workers), with no sockets open and nothing else to do, and
/// returns the time until the last one wrote its stamp: the floor for any sidecar
/// that runs a process per event on this machine.
async fn spawn_floor(
    stamps: &mut Stamps,
    count: usize,
    limit: Duration,
) -> Result<Duration, String> {
    stamps.drain();
    let argv = stamps.hook_argv();
    let started = Instant::now();
    let spawners: Vec<_> = (0..2)
        .map(|part| {
            let argv = argv.clone();
            std::thread::spawn(move || -> std::io::Result<Vec<std::process::Child>> {
                (part..count)
                    .step_by(2)
                    .map(|i| {
                        std::process::Command::new(&argv[0])
                            .args(&argv[1..])
                            .env("TETHER_TARGET", format!("floor{i}"))
                            .env("TETHER_EVENT", "spawn")
                            .spawn()
                    })
                    .collect()
            })
        })
        .collect();
    let times = hook_starts(stamps, "spawn", count, started, limit).await;
    for spawner in spawners {
        let children = spawner
            .join()
            .map_err(|_| "a spawner thread panicked".to_string())?
            .map_err(|e| format!("cannot start the hook command: {e}"))?;
        for mut child in children {
            let _ = child.wait();
        }
    }
    let last = times?.into_iter().max().unwrap_or(started);
    Ok(last.duration_since(started))
}

/// Waits until `total` connections have been accepted since the start; returns when
/// the last one was.
async fn wait_for_accepts(
    pool: &mut Pool,
    tether: &mut Tether,
    total: usize,
    deadline: Instant,
) -> Result<Instant, String> {
    let mut last = Instant::now();
    while pool.accepted() < total {
        if let Some(status) = tether.exited() {
            return Err(format!(
                "tether exited ({status}): {:?}",
                tether.log_tail(5)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {total} connected by the deadline; tether said: {:?}",
                pool.accepted(),
                tether.log_tail(5)
            ));
        }
        let slice = tokio::time::timeout(Duration::from_millis(100), pool.accepts.recv());
        if let Ok(Some(a)) = slice.await {
            last = a.at;
            while let Ok(a) = pool.accepts.try_recv() {
                last = a.at;
            }
        }
    }
    Ok(last)
}

/// Drops one held connection on each listener at once (with a FIN, or an RST when
/// `reset`), and times each replacement: tether must notice the closure from the
/// socket and reconnect, and as the reconnect succeeds the target never goes down.
async fn reconnect_round(
    pool: &mut Pool,
    tether: &mut Tether,
    kind: &str,
    reset: bool,
) -> Result<Round, String> {
    pool.drain();
    let mut victims = Vec::with_capacity(pool.listeners.len());
    for l in &pool.listeners {
        let stream = l.held.lock().unwrap().pop();
        victims.push(stream.ok_or("a listener holds no connection")?);
    }
    let mut dropped_at: HashMap<usize, Instant> = HashMap::with_capacity(victims.len());
    for (i, stream) in victims.into_iter().enumerate() {
        if reset {
            socket2::SockRef::from(&stream)
                .set_linger(Some(Duration::ZERO))
                .map_err(|e| e.to_string())?;
        }
        dropped_at.insert(i, Instant::now());
        drop(stream);
    }
    let first = dropped_at
        .values()
        .min()
        .copied()
        .unwrap_or_else(Instant::now);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut latencies = Vec::with_capacity(dropped_at.len());
    let dropped = dropped_at.len();
    let mut last = first;
    while !dropped_at.is_empty() {
        if let Some(status) = tether.exited() {
            return Err(format!("tether exited ({status})"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{} of {dropped} connections not replaced within 30 s",
                dropped_at.len()
            ));
        }
        match tokio::time::timeout(left.min(Duration::from_millis(100)), pool.accepts.recv()).await
        {
            Ok(Some(a)) => {
                // Only the dropped connection of this listener can have come back.
                if let Some(at) = dropped_at.remove(&a.listener) {
                    latencies.push(a.at.saturating_duration_since(at));
                    last = last.max(a.at);
                }
            }
            Ok(None) => return Err("the listeners stopped".into()),
            Err(_) => {}
        }
    }
    latencies.sort();
    Ok(Round {
        kind: format!("{kind}, {dropped} at once"),
        dropped,
        latencies,
        span: last.duration_since(first),
        cpu: None,
    })
}

/// Drops `count` held connections with a FIN, one at a time, each once the previous
/// one has been replaced: what a single dependency dying costs to notice and repair.
async fn single_round(pool: &mut Pool, tether: &mut Tether, count: usize) -> Result<Round, String> {
    let mut latencies = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        let listener = i % pool.listeners.len();
        pool.drain();
        let stream = pool.listeners[listener].held.lock().unwrap().pop();
        let stream = stream.ok_or("a listener holds no connection")?;
        let dropped_at = Instant::now();
        drop(stream);
        let deadline = dropped_at + Duration::from_secs(5);
        loop {
            if let Some(status) = tether.exited() {
                return Err(format!("tether exited ({status})"));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("connection {i} not replaced within 5 s"));
            }
            match tokio::time::timeout(left, pool.accepts.recv()).await {
                Ok(Some(a)) if a.listener == listener => {
                    latencies.push(a.at.saturating_duration_since(dropped_at));
                    break;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the listeners stopped".into()),
                Err(_) => {}
            }
        }
    }
    latencies.sort();
    Ok(Round {
        kind: "FIN, one at a time".into(),
        dropped: count,
        latencies,
        span: started.elapsed(),
        cpu: None,
    })
}

/// One target per connection, spread round-robin over the listeners, everything else
/// at its default as a user would write it; with `stamps`, a command hook on every
/// event of every target.
fn write_config(
    targets: usize,
    pool: &Pool,
    port: u16,
    stamps: Option<&Stamps>,
) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("tether-scale-")
        .suffix(".toml")
        .tempfile()?;
    let mut text = String::with_capacity(targets * 64 + 512);
    text.push_str(&format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"));
    if let Some(s) = stamps {
        let hook = s.hook_action();
        text.push_str(&format!(
            "\n[defaults.hooks]\non_connect = {hook}\non_disconnect = {hook}\n\
             on_failure = {hook}\non_recover = {hook}\n"
        ));
    }
    for i in 0..targets {
        let address = pool.listeners[i % pool.listeners.len()].address;
        text.push_str(&format!(
            "\n[[targets]]\nname = \"t{i:05}\"\naddress = \"{address}\"\n"
        ));
    }
    file.write_all(text.as_bytes())?;
    file.flush()?;
    Ok(file)
}

// === the report ===

/// A figure that has a target: whether it was met.
struct Check {
    name: String,
    passed: bool,
}

/// The targets a cell is held to: tether's budgets at 1, 1,000 and 10,000 targets,
/// and 64 MiB of RSS and a few percent of a core at any size.
fn checks(f: &Figures) -> Vec<Check> {
    let mut c = Vec::new();
    let mut check = |name: String, passed: bool| c.push(Check { name, passed });
    let rss_limit = match f.targets {
        1 => 5 * MIB,
        1_000 => 10 * MIB,
        10_000 => 40 * MIB,
        _ => 64 * MIB,
    };
    check(
        format!("RSS at rest ≤ {}", mib(rss_limit)),
        f.steady.rss <= rss_limit,
    );
    if f.hooks && f.targets == 10_000 {
        check(
            "peak RSS with hooks ≤ 64.0 MiB".into(),
            f.outage.after.hwm <= 64 * MIB,
        );
    }
    check(
        format!("CPU at rest < {CPU_LIMIT_PERCENT} %"),
        f.cpu_percent() < CPU_LIMIT_PERCENT,
    );
    check("no reconnects at rest".into(), f.churn == 0);
    check(
        "mass outage: every target down and back up".into(),
        f.outage.error.is_none(),
    );
    if f.targets == 1_000 {
        check(
            "mass outage: /status all down ≤ 20 ms".into(),
            f.outage
                .all_down_stamped
                .is_some_and(|d| d <= Duration::from_millis(20)),
        );
    }
    let hook_limit = match f.targets {
        1_000 => Some(Duration::from_millis(300)),
        10_000 => Some(Duration::from_secs(3)),
        _ => None,
    };
    if let (true, Some(limit)) = (f.hooks, hook_limit) {
        check(
            format!("mass outage: last on_disconnect hook ≤ {}", ms(limit)),
            f.outage
                .disconnect_hooks
                .iter()
                .max()
                .is_some_and(|d| *d <= limit),
        );
    }
    check("clean exit on SIGTERM".into(), f.exit.success());
    c
}

fn row(name: &str, value: String) {
    println!("  {name:<46} {value:>36}");
}

fn spread(samples: &[Duration]) -> String {
    match Summary::of(samples) {
        Some(s) => format!(
            "median {} / p95 {} / last {}",
            ms(s.median),
            ms(s.p95),
            ms(s.max)
        ),
        None => "-".into(),
    }
}

fn report(o: &Options, f: &Figures, checks: &[Check]) {
    let per_target = f.steady.rss as f64 / f.targets as f64 / 1024.0;
    println!();
    println!(
        "tether scale benchmark ({}): {} targets {}, over {} listeners on {} loopback addresses",
        if o.full { "full" } else { "smoke" },
        f.targets,
        if f.hooks {
            "with a command hook on every event"
        } else {
            "without hooks"
        },
        f.listeners,
        f.listeners.min(LOOPBACK_ADDRESSES as usize),
    );
    println!("binary: {}", o.tether.display());
    if f.hooks {
        println!("hooks run {}", o.hook_program.describe());
    }
    println!(
        "cores: {}; load average before {} / after {} (other work on the machine \
         perturbs times, not tether's own CPU accounting)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        f.load_before,
        f.load_after,
    );
    row(
        &format!("connect all {} targets (from spawn)", f.targets),
        ms(f.connect_all),
    );
    if let Some(d) = f.connect_hooks {
        row("  last first on_connect hook started", ms(d));
    }
    if let Some(cpu) = f.connect_cpu {
        row("  tether CPU to start and connect all", ms(cpu));
    }
    row("RSS at rest (VmRSS / RssAnon / VmHWM)", resident(&f.steady));
    row("  per target", format!("{per_target:.2} KiB"));
    if let Some(spawner) = &f.spawner {
        row("  + the hook spawner process", resident(spawner));
    }
    row(
        "  after a read of /metrics and /status",
        resident(&f.scraped),
    );
    row("threads", f.steady.threads.to_string());
    row(
        &format!("CPU at rest ({:?} window)", f.window),
        format!(
            "{:.2} % (usr {} sys {})",
            f.cpu_percent(),
            ms(f.cpu_user),
            ms(f.cpu_system)
        ),
    );
    if let Some(precise) = f.cpu_precise {
        row(
            "  by the scheduler's accounting (ns)",
            format!(
                "{:.4} % ({:.3} ms)",
                precise.as_secs_f64() / f.window.as_secs_f64() * 100.0,
                precise.as_secs_f64() * 1e3
            ),
        );
    }
    row(
        "connections replaced during the window",
        f.churn.to_string(),
    );
    if let Some(drops) = f.backlog_drops {
        row(
            "  packets dropped at full input backlogs",
            drops.to_string(),
        );
    }
    for r in &f.rounds {
        row(
            &format!("reconnect after {}: median", r.kind),
            ms(r.quantile(0.5)),
        );
        row(
            &format!("  p99 / max of {}", r.latencies.len()),
            format!("{} / {}", ms(r.quantile(0.99)), ms(r.quantile(1.0))),
        );
        row("  round took", ms(r.span));
        if let Some(cpu) = r.cpu {
            let each = cpu.as_secs_f64() * 1e6 / r.dropped.max(1) as f64;
            row("  tether CPU per reconnect", format!("{each:.0} µs"));
        }
    }
    let m = &f.outage;
    let opt = |d: Option<Duration>| d.map_or("-".into(), ms);
    row(
        "all listeners killed → /status all down (stamps)",
        opt(m.all_down_stamped),
    );
    row("  by the first poll showing it", opt(m.all_down));
    row(
        &format!("  floor: the bench closing {} connections", f.targets),
        ms(m.closing),
    );
    if f.hooks {
        row(
            "  → on_disconnect hooks started",
            spread(&m.disconnect_hooks),
        );
    }
    if let Some(floor) = f.spawn_floor {
        row(
            &format!("  floor: the hook command run {} times, bare", f.targets),
            format!("last started after {}", ms(floor)),
        );
    }
    row("all listeners back → /readyz 200", opt(m.all_up));
    if f.hooks {
        row("  → on_connect hooks started", spread(&m.connect_hooks));
    }
    row(
        "after the outage (VmRSS / RssAnon / VmHWM)",
        resident(&m.after),
    );
    if let Some(e) = &m.error {
        row("outage error", e.clone());
    }
    row("stop on SIGTERM", format!("{} ({})", ms(f.stop), f.exit));
    for c in checks {
        let verdict = if c.passed { "PASS" } else { "MISS" };
        println!("  {verdict}  {}", c.name);
    }
    if !f.warnings.is_empty() {
        println!("tether logged (last {} lines):", f.warnings.len());
        for w in &f.warnings {
            println!("  {w}");
        }
    }
}

/// `VmRSS / RssAnon / VmHWM`.
fn resident(m: &Memory) -> String {
    format!("{} / {} / {}", mib(m.rss), mib(m.anon), mib(m.hwm))
}

/// One line per cell, for the README's table.
fn summary(cells: &[Figures]) {
    println!();
    println!(
        "| targets | hooks | RSS | RssAnon | RSS after a scrape | peak (VmHWM) | CPU at rest | all down (/status: stamped, poll) | last on_disconnect hook | floor: as many hook processes, bare | all up (/readyz) | last on_connect hook |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for f in cells {
        let m = &f.outage;
        let last = |v: &[Duration]| v.iter().max().map_or("-".into(), |d| ms(*d));
        println!(
            "| {} | {} | {} | {} | {} | {} | {:.2} % | {} | {} | {} | {} | {} |",
            f.targets,
            if f.hooks { "every event" } else { "none" },
            mib(f.steady.rss),
            mib(f.steady.anon),
            mib(f.scraped.rss),
            mib(m.after.hwm),
            f.cpu_percent(),
            match (m.all_down_stamped, m.all_down) {
                (Some(stamped), Some(polled)) => format!("{} (poll {})", ms(stamped), ms(polled)),
                _ => "-".into(),
            },
            last(&m.disconnect_hooks),
            f.spawn_floor.map_or("-".into(), ms),
            m.all_up.map_or("-".into(), ms),
            last(&m.connect_hooks),
        );
    }
    println!();
}

fn main() -> ExitCode {
    let o = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let mut cells = Vec::new();
    let mut missed = Vec::new();
    for &targets in &o.sizes {
        for &hooks in &o.hooks {
            let figures = match runtime.block_on(run(&o, targets, hooks)) {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("scale: {targets} targets, hooks {hooks}: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let checks = checks(&figures);
            report(&o, &figures, &checks);
            missed.extend(checks.into_iter().filter(|c| !c.passed).map(|c| {
                format!(
                    "{targets}{}: {}",
                    if hooks { " with hooks" } else { "" },
                    c.name
                )
            }));
            cells.push(figures);
        }
    }
    // Dropping the runtime closes every held connection.
    drop(runtime);
    summary(&cells);
    if !o.full {
        // The smoke run proves the harness works; the figures of a debug build on a
        // busy CI machine prove nothing, so only their presence is checked.
        for f in &cells {
            assert!(f.steady.rss > 0 && f.steady.anon > 0, "no RSS figure");
            assert!(f.rounds.iter().all(|r| r.latencies.len() == r.dropped));
            assert!(f.outage.error.is_none(), "{:?}", f.outage.error);
            assert!(f.outage.all_down.is_some() && f.outage.all_up.is_some());
            if f.hooks {
                assert_eq!(f.outage.disconnect_hooks.len(), f.targets);
                assert_eq!(f.outage.connect_hooks.len(), f.targets);
            }
        }
        println!("scale: smoke run passed");
        return ExitCode::SUCCESS;
    }
    if missed.is_empty() {
        println!("scale: every target met");
        ExitCode::SUCCESS
    } else {
        println!("scale: MISSED: {}", missed.join("; "));
        ExitCode::FAILURE
    }
}
