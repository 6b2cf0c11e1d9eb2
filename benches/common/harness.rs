//! What the benchmarks share: the tether process under test, its memory and CPU figures
//! from `/proc`, hook start times stamped through a FIFO, `/status` counts, and the
//! summary statistics they print.
//!
//! Included by each bench with `#[path]`; a bench uses only part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

/// Linux reports `/proc/PID/stat` times in USER_HZ, fixed at 100 on x86 and arm.
const USER_HZ: f64 = 100.0;

// === the tether process ===

/// The tether process under test; killed if the benchmark ends before it stopped it.
pub struct Tether {
    child: Child,
    pub pid: u32,
    /// Lines tether wrote to stderr (warnings and errors only: it runs at `warn`).
    log: Arc<Mutex<Vec<String>>>,
}

impl Tether {
    pub fn spawn(binary: &Path, config: &Path) -> std::io::Result<Tether> {
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

    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `limit` for a clean exit.
    pub async fn stop(&mut self, limit: Duration) -> Result<(ExitStatus, Duration), String> {
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

    pub fn log_tail(&self, n: usize) -> Vec<String> {
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

/// Whether `tether check-config` accepts `text`: how a bench learns which keys the
/// binary under test knows, so it runs against older and newer builds alike.
pub fn accepts_config(binary: &Path, text: &str) -> bool {
    let Ok(mut file) = tempfile::Builder::new()
        .prefix("tether-bench-probe-")
        .suffix(".toml")
        .tempfile()
    else {
        return false;
    };
    if file.write_all(text.as_bytes()).is_err() {
        return false;
    }
    Command::new(binary)
        .args(["check-config", "-c"])
        .arg(file.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `tether check-config` output for `text`: the effective config, defaults filled in.
pub fn effective_config(binary: &Path, text: &str) -> Result<String, String> {
    let mut file = tempfile::Builder::new()
        .prefix("tether-bench-")
        .suffix(".toml")
        .tempfile()
        .map_err(|e| e.to_string())?;
    file.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
    let out = Command::new(binary)
        .args(["check-config", "-c"])
        .arg(file.path())
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The binary to measure: `--tether PATH`, else `$TETHER_BIN`, else the one cargo built
/// for this bench.
pub fn default_binary() -> PathBuf {
    std::env::var_os("TETHER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tether")))
}

/// A loopback port nobody listens on now, for tether's HTTP endpoints.
pub fn free_port() -> std::io::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

// === /proc figures ===

/// Memory figures of a process, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Resident now (VmRSS).
    pub rss: u64,
    /// Resident anonymous memory (RssAnon): heap and stacks, not the binary's pages.
    pub anon: u64,
    /// The most ever resident (VmHWM).
    pub hwm: u64,
    pub threads: u64,
}

pub fn memory(pid: u32) -> std::io::Result<Memory> {
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
            "RssAnon:" => m.anon = value * 1024,
            "VmHWM:" => m.hwm = value * 1024,
            "Threads:" => m.threads = value,
            _ => {}
        }
    }
    Ok(m)
}

/// The hook spawner of the tether process `pid` (`tether spawner`, its child), if one
/// runs: a process of its own, whose memory is reported beside tether's.
pub fn spawner_of(pid: u32) -> Option<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|child| {
            std::fs::read(format!("/proc/{child}/cmdline"))
                .is_ok_and(|c| c.split(|&b| b == 0).nth(1) == Some(b"spawner".as_slice()))
        })
}

/// CPU time a process has used so far (user, system), from `/proc/PID/stat`.
pub fn cpu_time(pid: u32) -> std::io::Result<(Duration, Duration)> {
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
pub fn cpu_time_precise(pid: u32) -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

/// Packets the kernel dropped so far because a core's input backlog was full
/// (`net.core.netdev_max_backlog`), summed over the cores: on loopback every packet
/// goes through it, keepalive probes and their answers included.
pub fn backlog_drops() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/net/softnet_stat").ok()?;
    stat.lines()
        .map(|line| u64::from_str_radix(line.split_whitespace().nth(1)?, 16).ok())
        .sum()
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// The bench holds sockets for every target and tether (which inherits the limit) one
/// per target: raises the soft limit to the hard one (and the hard one to `needed`
/// where that is allowed, as for root), and refuses to start when the limit is still
/// too small, rather than fail later on a vague deadline.
pub fn raise_open_files_limit(needed: u64) -> Result<(), String> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|e| e.to_string())?;
    let mut limit = soft;
    if hard < needed && setrlimit(Resource::RLIMIT_NOFILE, needed, needed).is_ok() {
        limit = needed;
    } else if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        limit = hard;
    }
    if limit < needed {
        return Err(format!(
            "the open-files limit is {limit}, this run needs {needed}: raise the hard \
             limit (ulimit -Hn) or use fewer targets"
        ));
    }
    Ok(())
}

// === hook stamps ===

/// One hook that started: which target, which event (`connect`, `disconnect`,
/// `failure`, `recover`), and when the bench read its line.
#[derive(Clone, Debug)]
pub struct Stamp {
    pub target: String,
    pub event: String,
    pub at: Instant,
}

/// The program each hook runs to stamp its start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookProgram {
    /// `stamp.c`, built here without a C library: its stamp is the moment its process
    /// started, which is what "a hook started" means. The default.
    Stamper,
    /// `/bin/sh -c 'echo … > FIFO'`, a hook as users write them: its stamp also counts
    /// the shell's own start (most of a millisecond of CPU on a virtual machine).
    Shell,
}

impl HookProgram {
    pub fn parse(name: &str) -> Result<HookProgram, String> {
        match name {
            "stamp" => Ok(HookProgram::Stamper),
            "sh" => Ok(HookProgram::Shell),
            other => Err(format!("--hook-program {other:?}: stamp or sh")),
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            HookProgram::Stamper => "a static program without a C library (benches/common/stamp.c)",
            HookProgram::Shell => "/bin/sh -c 'echo … > FIFO'",
        }
    }
}

/// A FIFO every hook writes one line into the moment it starts, read by a thread of the
/// bench that stamps each line as it arrives: the time a hook started, as the
/// application would see it, without polling. A line is shorter than `PIPE_BUF`, so
/// concurrent hooks never interleave.
pub struct Stamps {
    path: PathBuf,
    /// The stamper, when hooks run it.
    stamper: Option<PathBuf>,
    _dir: tempfile::TempDir,
    pub received: mpsc::UnboundedReceiver<Stamp>,
}

impl Stamps {
    pub fn open(program: HookProgram) -> std::io::Result<Stamps> {
        let dir = tempfile::Builder::new().prefix("tether-bench-").tempdir()?;
        let stamper = match program {
            HookProgram::Stamper => Some(build_stamper(dir.path())?),
            HookProgram::Shell => None,
        };
        let path = dir.path().join("hooks.fifo");
        let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL in a temp path");
        // SAFETY: mkfifo reads a NUL-terminated path and touches nothing else.
        if unsafe { nix::libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // Read and write: opening does not wait for a writer, and the reader never sees
        // end-of-file between hooks.
        let fifo = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)?;
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || read_stamps(fifo, tx));
        Ok(Stamps {
            path,
            stamper,
            _dir: dir,
            received: rx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `command` hook action (TOML inline table) that writes its target and event.
    pub fn hook_action(&self) -> String {
        let argv: Vec<String> = self.hook_argv().iter().map(|a| format!("{a:?}")).collect();
        format!("{{ command = [{}] }}", argv.join(", "))
    }

    /// The command of [`hook_action`](Self::hook_action), as an argument vector.
    pub fn hook_argv(&self) -> Vec<String> {
        match &self.stamper {
            Some(stamper) => vec![
                stamper.display().to_string(),
                self.path.display().to_string(),
            ],
            None => vec![
                "/bin/sh".into(),
                "-c".into(),
                format!(
                    "echo \"$TETHER_TARGET $TETHER_EVENT\" > {}",
                    self.path.display()
                ),
            ],
        }
    }

    /// Forgets stamps received so far.
    pub fn drain(&mut self) {
        while self.received.try_recv().is_ok() {}
    }
}

/// Builds `stamp.c` into `dir` with the C compiler (`$CC`, else `cc`, the one Rust
/// links with).
fn build_stamper(dir: &Path) -> std::io::Result<PathBuf> {
    let source = dir.join("stamp.c");
    std::fs::write(&source, include_str!("stamp.c"))?;
    let out = dir.join("stamp");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let built = Command::new(&cc)
        .args([
            "-O2",
            "-static",
            "-nostdlib",
            "-fno-stack-protector",
            "-fno-builtin",
        ])
        .arg("-o")
        .arg(&out)
        .arg(&source)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot run {cc:?}: {e}")))?;
    if !built.status.success() {
        return Err(std::io::Error::other(format!(
            "{cc:?} could not build the hook stamper ({}): {}; --hook-program sh runs a shell instead",
            built.status,
            String::from_utf8_lossy(&built.stderr).trim()
        )));
    }
    Ok(out)
}

fn read_stamps(fifo: std::fs::File, tx: mpsc::UnboundedSender<Stamp>) {
    let mut reader = BufReader::with_capacity(64 * 1024, fifo);
    let mut line = String::new();
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let at = Instant::now();
        let mut words = line.split_whitespace();
        let (Some(target), Some(event)) = (words.next(), words.next()) else {
            continue;
        };
        let stamp = Stamp {
            target: target.to_owned(),
            event: event.to_owned(),
            at,
        };
        if tx.send(stamp).is_err() {
            return;
        }
    }
}

/// Routes stamps to the task waiting for each target's hooks.
pub fn route_stamps(
    mut stamps: mpsc::UnboundedReceiver<Stamp>,
    routes: HashMap<String, mpsc::UnboundedSender<Stamp>>,
) {
    tokio::spawn(async move {
        while let Some(s) = stamps.recv().await {
            if let Some(tx) = routes.get(&s.target) {
                let _ = tx.send(s);
            }
        }
    });
}

// === /status ===

/// How many targets `/status` shows in each state.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateCounts {
    pub up: usize,
    /// `down` or `failed`.
    pub down: usize,
    pub total: usize,
}

/// A plain HTTP/1.1 GET of `path` on tether's port: the whole response, headers included.
pub fn get(port: u16, path: &str) -> std::io::Result<Vec<u8>> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = StdStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let mut response = Vec::with_capacity(1 << 20);
    s.read_to_end(&mut response)?;
    Ok(response)
}

/// Reads `/status` with a plain HTTP/1.1 GET and counts states by their JSON text
/// (parsing 10,000 entries on every poll would make the poller the bottleneck).
pub fn status_counts(port: u16) -> std::io::Result<StateCounts> {
    let body = get(port, "/status")?;
    let text = String::from_utf8_lossy(&body);
    // Compact or pretty-printed.
    let count = |state: &str| {
        text.matches(&format!("\"state\":\"{state}\"")).count()
            + text.matches(&format!("\"state\": \"{state}\"")).count()
    };
    let (up, down, failed, connecting) = (
        count("up"),
        count("down"),
        count("failed"),
        count("connecting"),
    );
    Ok(StateCounts {
        up,
        down: down + failed,
        total: up + down + failed + connecting,
    })
}

/// The latest `since` among targets `down` or `failed`, read from one `/status`
/// document: when tether's registry recorded the last of them entering its state, by
/// tether's own clock (to the millisecond the document gives). Unlike the end of a
/// poll, it carries neither the poll's period nor the time the answer took to come. A
/// target already `failed` gives the later time of that step: never an underestimate.
pub fn latest_since_down(port: u16) -> Result<SystemTime, String> {
    let body = get(port, "/status").map_err(|e| e.to_string())?;
    let start = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no body in the /status answer")?;
    let doc: serde_json::Value =
        serde_json::from_slice(&body[start + 4..]).map_err(|e| e.to_string())?;
    let mut latest = None;
    for target in doc["targets"].as_array().ok_or("no targets in /status")? {
        if target["state"] != "down" && target["state"] != "failed" {
            continue;
        }
        let since = target["since"].as_str().ok_or("a target without since")?;
        let since = humantime::parse_rfc3339(since).map_err(|e| e.to_string())?;
        latest = latest.max(Some(since));
    }
    latest.ok_or_else(|| "no target is down".to_owned())
}

/// Polls `/status` every `every` until `done` holds, up to `limit`; returns when the
/// poll that first saw it was answered.
pub async fn poll_status(
    port: u16,
    every: Duration,
    limit: Duration,
    done: impl Fn(&StateCounts) -> bool,
) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    let mut last = StateCounts::default();
    loop {
        let counts = tokio::task::spawn_blocking(move || status_counts(port))
            .await
            .map_err(|e| e.to_string())?;
        match counts {
            Ok(c) if done(&c) => return Ok(Instant::now()),
            Ok(c) => last = c,
            Err(_) => {}
        }
        if Instant::now() > deadline {
            return Err(format!("/status still shows {last:?} after {limit:?}"));
        }
        tokio::time::sleep(every).await;
    }
}

// === statistics and formatting ===

/// Median, 95th percentile and maximum of a set of samples.
#[derive(Clone, Copy, Debug)]
pub struct Summary {
    pub n: usize,
    pub median: Duration,
    pub p95: Duration,
    pub max: Duration,
}

impl Summary {
    /// Nearest-rank quantiles; `None` without samples.
    pub fn of(samples: &[Duration]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut s = samples.to_vec();
        s.sort();
        let rank = |q: f64| s[((q * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
        Some(Summary {
            n: s.len(),
            median: rank(0.5),
            p95: rank(0.95),
            max: s[s.len() - 1],
        })
    }
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn ms(d: Duration) -> String {
    if d < Duration::from_millis(10) {
        format!("{:.2} ms", d.as_secs_f64() * 1e3)
    } else if d < Duration::from_secs(10) {
        format!("{:.0} ms", d.as_secs_f64() * 1e3)
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

pub fn number(s: &str) -> Result<usize, String> {
    s.replace('_', "")
        .parse()
        .map_err(|e| format!("{s:?}: {e}"))
}

pub fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}
