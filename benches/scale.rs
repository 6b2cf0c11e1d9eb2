//! The scale benchmark: one `tether run` process watching thousands of loopback
//! targets, held to the figures the core watcher was built for (10,000 targets in
//! under 64 MiB of RSS and a few percent of one core at steady state).
//!
//! `cargo bench --bench scale` runs the full benchmark against the release binary,
//! which cargo builds for it (binaries are built for benchmarks and named by
//! `CARGO_BIN_EXE_tether`), prints the figures against their targets and exits
//! non-zero when one is clearly missed. Options follow `--`:
//! `cargo bench --bench scale -- --targets 5000 --window 20s --batch 500`.
//!
//! `cargo test --all-targets` runs this file without `--bench`, as a plain test
//! binary: it then does a small, quick smoke run (200 targets, a 1 s window) against
//! whatever binary that build made, and asserts only that every target connects,
//! every dropped connection comes back and the figures were produced.
//!
//! Everything here is loopback, bounded in count and in time, and cleans up after
//! itself: the tether process is killed if the benchmark ends early.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;

/// The memory budget for 10,000 targets.
const RSS_LIMIT: u64 = 64 * 1024 * 1024;
/// "A few percent of one core": the full run fails above this.
const CPU_LIMIT_PERCENT: f64 = 5.0;
/// Loopback addresses the listeners are spread over, so no single address's
/// ephemeral ports or accept queues shape the result.
const LOOPBACK_ADDRESSES: u8 = 8;
/// Deep enough that the burst of connects at start never overflows a queue (a dropped
/// SYN costs a one-second retransmit and would show up as a false connect time).
const BACKLOG: u32 = 4096;
/// Linux reports `/proc/PID/stat` times in USER_HZ, fixed at 100 on x86 and arm.
const USER_HZ: f64 = 100.0;

// === options ===

/// What to run, from the command line.
#[derive(Debug)]
struct Options {
    /// `--bench` was given (by `cargo bench`): the full run, with pass/fail targets.
    full: bool,
    targets: usize,
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
}

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let args: Vec<String> = args.collect();
        let full = args.iter().any(|a| a == "--bench");
        let mut o = if full {
            Options {
                full,
                targets: 10_000,
                window: Duration::from_secs(10),
                batch: 1_000,
                singles: 200,
                settle: Duration::from_secs(2),
                tether: PathBuf::from(env!("CARGO_BIN_EXE_tether")),
            }
        } else {
            Options {
                full,
                targets: 200,
                window: Duration::from_secs(1),
                batch: 20,
                singles: 10,
                settle: Duration::from_millis(200),
                tether: PathBuf::from(env!("CARGO_BIN_EXE_tether")),
            }
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--bench" => {}
                "--targets" => o.targets = number(&value("--targets")?)?,
                "--batch" => o.batch = number(&value("--batch")?)?,
                "--singles" => o.singles = number(&value("--singles")?)?,
                "--window" => o.window = duration(&value("--window")?)?,
                "--settle" => o.settle = duration(&value("--settle")?)?,
                "--tether" => o.tether = PathBuf::from(value("--tether")?),
                // `cargo test` passes its own arguments (filters, `--nocapture`) to
                // every test binary; the smoke run ignores them.
                _ if !full => {}
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if o.targets == 0 {
            return Err("--targets must be at least 1".into());
        }
        o.batch = o.batch.clamp(1, o.targets);
        Ok(o)
    }
}

const USAGE: &str = "usage: cargo bench --bench scale -- [--targets N] [--window DUR] \
                     [--batch N] [--singles N] [--settle DUR] [--tether PATH]";

fn number(s: &str) -> Result<usize, String> {
    s.replace('_', "")
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

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
    held: Mutex<Vec<TcpStream>>,
}

/// The bench's side of every target: listeners spread over several loopback addresses.
struct Pool {
    listeners: Vec<Arc<Listener>>,
    /// Connections accepted so far, over the whole run.
    accepted: Arc<AtomicUsize>,
    accepts: mpsc::UnboundedReceiver<Accept>,
}

impl Pool {
    async fn start(count: usize) -> std::io::Result<Pool> {
        let (tx, rx) = mpsc::unbounded_channel();
        let accepted = Arc::new(AtomicUsize::new(0));
        let mut listeners = Vec::with_capacity(count);
        for i in 0..count {
            let ip = Ipv4Addr::new(127, 0, 0, 1 + (i % LOOPBACK_ADDRESSES as usize) as u8);
            let socket = TcpSocket::new_v4()?;
            socket.set_reuseaddr(true)?;
            socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            let listener = socket.listen(BACKLOG)?;
            let shared = Arc::new(Listener {
                address: listener.local_addr()?,
                held: Mutex::new(Vec::new()),
            });
            tokio::spawn(accept_loop(
                i,
                listener,
                shared.clone(),
                tx.clone(),
                accepted.clone(),
            ));
            listeners.push(shared);
        }
        Ok(Pool {
            listeners,
            accepted,
            accepts: rx,
        })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Acquire)
    }

    /// Forgets accepts reported so far, so a round only sees its own.
    fn drain(&mut self) {
        while self.accepts.try_recv().is_ok() {}
    }
}

async fn accept_loop(
    index: usize,
    listener: tokio::net::TcpListener,
    shared: Arc<Listener>,
    report: mpsc::UnboundedSender<Accept>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let at = Instant::now();
                shared.held.lock().unwrap().push(stream);
                accepted.fetch_add(1, Ordering::AcqRel);
                let _ = report.send(Accept {
                    listener: index,
                    at,
                });
            }
            Err(e) => {
                // Out of descriptors or a transient error: say so and keep serving,
                // the connect deadline will tell the story.
                eprintln!("bench: accept on {}: {e}", shared.address);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

// === the tether process ===

/// The tether process under test; killed if the benchmark ends before it stopped it.
struct Tether {
    child: Child,
    pid: u32,
    /// Lines tether wrote to stderr (warnings and errors only: it runs at `warn`).
    log: Arc<Mutex<Vec<String>>>,
}

impl Tether {
    fn spawn(binary: &Path, config: &Path) -> std::io::Result<Tether> {
        let mut child = Command::new(binary)
            .args(["--log-level", "warn", "run", "-c"])
            .arg(config)
            // The log is read back into the report; colour codes would only garble it.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr is piped");
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Tether { child, pid, log })
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `limit` for a clean exit.
    async fn stop(&mut self, limit: Duration) -> Result<(ExitStatus, Duration), String> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let started = Instant::now();
        kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM).map_err(|e| e.to_string())?;
        while started.elapsed() < limit {
            if let Some(status) = self.exited() {
                return Ok((status, started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(format!("no exit within {limit:?} of SIGTERM"))
    }

    fn log_tail(&self, n: usize) -> Vec<String> {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(n)..].to_vec()
    }
}

impl Drop for Tether {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Memory figures of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    /// Resident now.
    rss: u64,
    /// The most ever resident.
    hwm: u64,
    threads: u64,
}

fn memory(pid: u32) -> std::io::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let mut m = Memory::default();
    for line in status.lines() {
        let mut words = line.split_whitespace();
        let (Some(key), Some(value)) = (words.next(), words.next()) else {
            continue;
        };
        let value: u64 = value.parse().unwrap_or(0);
        match key {
            "VmRSS:" => m.rss = value * 1024,
            "VmHWM:" => m.hwm = value * 1024,
            "Threads:" => m.threads = value,
            _ => {}
        }
    }
    Ok(m)
}

/// CPU time a process has used so far (user, system), from `/proc/PID/stat`.
fn cpu_time(pid: u32) -> std::io::Result<(Duration, Duration)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after it.
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 2)..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5), counted from the state field (3).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let secs = |t: f64| Duration::from_secs_f64(t / USER_HZ);
    Ok((secs(ticks(11)), secs(ticks(12))))
}

/// CPU time of every thread of a process, to the nanosecond, from
/// `/proc/PID/task/*/schedstat`: `/proc/PID/stat` counts in 10 ms ticks, too coarse
/// to tell 0.01 % from nothing over a short window. `None` without scheduler stats.
fn cpu_time_precise(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
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

/// Everything measured, for the report.
struct Figures {
    targets: usize,
    listeners: usize,
    binary: PathBuf,
    window: Duration,
    load_before: String,
    load_after: String,
    connect_all: Duration,
    /// tether's CPU time from its start until every target was connected.
    connect_cpu: Option<Duration>,
    steady: Memory,
    cpu_user: Duration,
    cpu_system: Duration,
    /// The same window's CPU time from the scheduler's own accounting, if available.
    cpu_precise: Option<Duration>,
    /// Connections tether replaced during the window: any would mean churn at rest.
    churn: usize,
    rounds: Vec<Round>,
    after_rounds: Memory,
    stop: Duration,
    exit: ExitStatus,
    warnings: Vec<String>,
}

impl Figures {
    fn cpu_percent(&self) -> f64 {
        (self.cpu_user + self.cpu_system).as_secs_f64() / self.window.as_secs_f64() * 100.0
    }
}

async fn run(o: &Options) -> Result<Figures, String> {
    raise_open_files_limit(o.targets as u64 + o.batch as u64 + 64)?;
    let mut pool = Pool::start(o.batch)
        .await
        .map_err(|e| format!("cannot start listeners: {e}"))?;
    let config = write_config(o.targets, &pool).map_err(|e| format!("cannot write config: {e}"))?;

    let load_before = load_average();
    let started = Instant::now();
    let mut tether =
        Tether::spawn(&o.tether, config.path()).map_err(|e| format!("cannot start tether: {e}"))?;
    let bounded = Duration::from_secs(30) + Duration::from_millis(5) * o.targets as u32;
    let last = wait_for_accepts(&mut pool, &mut tether, o.targets, started + bounded)
        .await
        .map_err(|e| format!("connecting all {} targets: {e}", o.targets))?;
    let connect_all = last.duration_since(started);
    let connect_cpu = cpu_time_precise(tether.pid);

    tokio::time::sleep(o.settle).await;
    let pid = tether.pid;
    let before = pool.accepted();
    let (user0, system0) = cpu_time(pid).map_err(|e| e.to_string())?;
    let precise0 = cpu_time_precise(pid);
    tokio::time::sleep(o.window).await;
    let (user1, system1) = cpu_time(pid).map_err(|e| e.to_string())?;
    let precise1 = cpu_time_precise(pid);
    let steady = memory(pid).map_err(|e| e.to_string())?;
    let churn = pool.accepted() - before;

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
    let after_rounds = memory(pid).map_err(|e| e.to_string())?;
    let load_after = load_average();

    let (exit, stop) = tether.stop(Duration::from_secs(20)).await?;
    Ok(Figures {
        targets: o.targets,
        listeners: pool.listeners.len(),
        binary: o.tether.clone(),
        window: o.window,
        load_before,
        load_after,
        connect_all,
        connect_cpu,
        steady,
        cpu_user: user1.saturating_sub(user0),
        cpu_system: system1.saturating_sub(system0),
        cpu_precise: precise0.zip(precise1).map(|(a, b)| b.saturating_sub(a)),
        churn,
        rounds,
        after_rounds,
        stop,
        exit,
        warnings: tether.log_tail(5),
    })
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
            stream.set_zero_linger().map_err(|e| e.to_string())?;
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
/// at its default as a user would write it.
fn write_config(targets: usize, pool: &Pool) -> std::io::Result<tempfile::NamedTempFile> {
    use std::io::Write;
    let mut file = tempfile::Builder::new()
        .prefix("tether-scale-")
        .suffix(".toml")
        .tempfile()?;
    let mut text = String::with_capacity(targets * 64 + 64);
    text.push_str("[server]\nlisten = \"127.0.0.1:0\"\n");
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

/// The bench holds one socket per target and per listener, and tether (which inherits
/// the limit) one per target: raises the soft limit to the hard one, and refuses to
/// start when even that is too small, rather than fail later on a vague deadline.
fn raise_open_files_limit(needed: u64) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let mut limit = soft;
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        limit = hard;
    }
    if limit < needed {
        return Err(format!(
            "the open-files limit is {limit}, this run needs {needed}: raise the hard \
             limit (ulimit -Hn) or use fewer --targets"
        ));
    }
    Ok(())
}

// === the report ===

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    }
}

/// A figure that has a target: whether it was met.
struct Check {
    name: &'static str,
    passed: bool,
}

fn report(o: &Options, f: &Figures) -> Vec<Check> {
    let cpu = f.cpu_percent();
    let checks = vec![
        Check {
            name: "RSS at steady state",
            passed: f.steady.rss < RSS_LIMIT,
        },
        Check {
            name: "CPU at steady state",
            passed: cpu < CPU_LIMIT_PERCENT,
        },
        Check {
            name: "no reconnects at rest",
            passed: f.churn == 0,
        },
        Check {
            name: "clean exit on SIGTERM",
            passed: f.exit.success(),
        },
    ];
    let verdict = |name: &str| {
        let passed = checks.iter().any(|c| c.name == name && c.passed);
        if !o.full {
            ""
        } else if passed {
            "ok"
        } else {
            "MISSED"
        }
    };
    let per_target = f.steady.rss as f64 / f.targets as f64 / 1024.0;

    println!();
    println!(
        "tether scale benchmark ({}): {} targets over {} listeners on {} loopback addresses",
        if o.full { "full" } else { "smoke" },
        f.targets,
        f.listeners,
        f.listeners.min(LOOPBACK_ADDRESSES as usize),
    );
    println!("binary: {}", f.binary.display());
    println!(
        "cores: {}; load average before {} / after {} (other work on the machine \
         perturbs times, not tether's own CPU accounting)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        f.load_before,
        f.load_after,
    );
    println!();
    let row = |name: &str, value: String, target: &str, verdict: &str| {
        println!("  {name:<44} {value:>32}  {target:<12} {verdict}");
    };
    row("figure", "measured".into(), "target", "");
    row(
        &format!("connect all {} targets (from spawn)", f.targets),
        ms(f.connect_all),
        "",
        "",
    );
    if let Some(cpu) = f.connect_cpu {
        row("  tether CPU to start and connect all", ms(cpu), "", "");
    }
    row(
        "RSS at steady state (VmRSS)",
        mib(f.steady.rss),
        "< 64 MiB",
        verdict("RSS at steady state"),
    );
    row("  per target", format!("{per_target:.2} KiB"), "", "");
    row("peak RSS so far (VmHWM)", mib(f.steady.hwm), "", "");
    row("threads", f.steady.threads.to_string(), "", "");
    row(
        &format!("CPU at steady state ({:?} window)", f.window),
        format!(
            "{cpu:.2} % (usr {} sys {})",
            ms(f.cpu_user),
            ms(f.cpu_system)
        ),
        "< 5 % core",
        verdict("CPU at steady state"),
    );
    if let Some(precise) = f.cpu_precise {
        row(
            "  by the scheduler's accounting (ns)",
            format!(
                "{:.4} % ({:.3} ms)",
                precise.as_secs_f64() / f.window.as_secs_f64() * 100.0,
                precise.as_secs_f64() * 1e3
            ),
            "",
            "",
        );
    }
    row(
        "connections replaced during the window",
        f.churn.to_string(),
        "0",
        verdict("no reconnects at rest"),
    );
    for r in &f.rounds {
        row(
            &format!("reconnect after {}: median", r.kind),
            ms(r.quantile(0.5)),
            "",
            "",
        );
        row(
            &format!("  p99 / max of {}", r.latencies.len()),
            format!("{} / {}", ms(r.quantile(0.99)), ms(r.quantile(1.0))),
            "",
            "",
        );
        row("  round took", ms(r.span), "", "");
        if let Some(cpu) = r.cpu {
            let each = cpu.as_secs_f64() * 1e6 / r.dropped.max(1) as f64;
            row(
                "  tether CPU per reconnect",
                format!("{each:.0} µs"),
                "",
                "",
            );
        }
    }
    row(
        "RSS after the rounds (VmRSS)",
        mib(f.after_rounds.rss),
        "",
        "",
    );
    row("peak RSS (VmHWM)", mib(f.after_rounds.hwm), "", "");
    row(
        "stop on SIGTERM",
        format!("{} ({})", ms(f.stop), f.exit),
        "exit 0",
        verdict("clean exit on SIGTERM"),
    );
    if !f.warnings.is_empty() {
        println!();
        println!("tether logged (last {} lines):", f.warnings.len());
        for w in &f.warnings {
            println!("  {w}");
        }
    }
    println!();
    checks
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
    let figures = match runtime.block_on(run(&o)) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("scale: {e}");
            return ExitCode::FAILURE;
        }
    };
    let checks = report(&o, &figures);
    // Dropping the runtime closes every held connection.
    drop(runtime);
    if !o.full {
        // The smoke run proves the harness works; the figures of a debug build on a
        // busy CI machine prove nothing, so only their presence is checked.
        assert!(figures.steady.rss > 0, "no RSS figure");
        assert!(
            figures
                .rounds
                .iter()
                .all(|r| r.latencies.len() == r.dropped)
        );
        println!("scale: smoke run passed");
        return ExitCode::SUCCESS;
    }
    let missed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.passed)
        .map(|c| c.name)
        .collect();
    if missed.is_empty() {
        println!("scale: every target met");
        ExitCode::SUCCESS
    } else {
        println!("scale: MISSED: {}", missed.join(", "));
        ExitCode::FAILURE
    }
}
