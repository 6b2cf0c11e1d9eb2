//! The detection benchmark: how long tether takes to announce each kind of fault, from
//! the moment the bench causes it to the moment the hook the application relies on starts.
//!
//! `cargo bench --bench detection` runs the full benchmark (20 runs of every fault, under
//! ten minutes) against the release binary and prints median, p95 and maximum per fault,
//! for every default and for a tight config, with the acceptance figures marked PASS or
//! MISS; it exits non-zero on a MISS. Options follow `--`:
//! `cargo bench --bench detection -- --runs 40 --tether target/release/tether`, and
//! `--smoke` for the short version CI runs (never fails on timing).
//!
//! `cargo test --all-targets` runs this file without `--bench`, as a plain test binary:
//! a smoke run of a few seconds (3 runs, short outages) that asserts only that every
//! fault produced its figures.
//!
//! The faults, each on targets of one `tether run` per config (the lanes run
//! concurrently, each fault at a random phase of tether's timers):
//! - crash: a listener the bench holds is closed with its connections, as when the
//!   server process dies → `on_disconnect` started;
//! - restore: the listener comes back after a 3 s and after a 60 s outage → `on_connect`;
//! - freeze: a real `redis-server` gets SIGSTOP (its kernel still accepts and holds
//!   connections) → `on_disconnect`, with the `redis` probe;
//! - blackhole: every packet to and from a `redis-server` in a network namespace the
//!   bench makes (ip netns, a veth pair, nftables drop) is dropped → `on_disconnect`,
//!   with `tcp` (keepalive) and with the `redis` probe.
//!
//! Each hook writes its target and event into a FIFO the bench reads, so a detection is
//! stamped when the hook process runs. Traffic stays on loopback and inside the veth
//! pair the bench made; everything is bounded in time and removed at the end.

// A benchmark measures real time on real processes; there is no paused clock here.
#![allow(clippy::disallowed_types)]

#[path = "common/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use harness::{HookProgram, Stamp, Stamps, Summary, Tether, ms};

/// The whole full run ends within this, whatever happens.
const FULL_LIMIT: Duration = Duration::from_secs(9 * 60 + 30);
const SMOKE_LIMIT: Duration = Duration::from_secs(120);
/// Most namespaces, redis servers or short-outage lanes run at once per fault.
const MAX_LANES: usize = 4;

// === options ===

/// What to run, from the command line.
#[derive(Debug)]
struct Options {
    /// `--bench` without `--smoke`: the full run, which exits non-zero on a MISS.
    full: bool,
    /// Samples per fault and config (crash gets one per outage, so twice as many).
    runs: usize,
    /// The outage of the first restore figure (3 s in the full run).
    short_outage: Duration,
    /// The outage of the second restore figure (60 s in the full run).
    long_outage: Duration,
    /// The tether binary under test.
    tether: PathBuf,
    /// What each hook runs to stamp its start.
    hook_program: HookProgram,
}

const USAGE: &str = "usage: cargo bench --bench detection -- [--smoke] [--runs N] \
                     [--short-outage DUR] [--long-outage DUR] [--hook-program stamp|sh] \
                     [--tether PATH]";

impl Options {
    fn parse(args: impl Iterator<Item = String>) -> Result<Options, String> {
        let args: Vec<String> = args.collect();
        let bench = args.iter().any(|a| a == "--bench");
        let full = bench && !args.iter().any(|a| a == "--smoke");
        let mut o = if full {
            Options {
                full,
                runs: 20,
                short_outage: Duration::from_secs(3),
                long_outage: Duration::from_secs(60),
                tether: harness::default_binary(),
                hook_program: HookProgram::Stamper,
            }
        } else {
            Options {
                full,
                runs: 3,
                short_outage: Duration::from_millis(500),
                long_outage: Duration::from_secs(2),
                tether: harness::default_binary(),
                hook_program: HookProgram::Stamper,
            }
        };
        let mut it = args.into_iter();
        while let Some(arg) = it.next() {
            let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
            match arg.as_str() {
                "--bench" | "--smoke" => {}
                "--runs" => o.runs = harness::number(&value("--runs")?)?.max(1),
                "--short-outage" => o.short_outage = harness::duration(&value("--short-outage")?)?,
                "--long-outage" => o.long_outage = harness::duration(&value("--long-outage")?)?,
                "--tether" => o.tether = PathBuf::from(value("--tether")?),
                "--hook-program" => o.hook_program = HookProgram::parse(&value("--hook-program")?)?,
                // `cargo test` passes its own arguments to every test binary.
                _ if !bench => {}
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        Ok(o)
    }
}

// === the two configs ===

/// One config under test; each gets its own `tether run`.
struct Profile {
    /// `defaults` or `tight`.
    name: &'static str,
    /// Target names start with it.
    prefix: &'static str,
    /// Lines of `[defaults]`.
    defaults: String,
    /// check_interval + check_timeout, when the binary knows those keys.
    check_period: Option<Duration>,
}

/// Every default, and a config tuned for speed. The tight one sets `check_interval`
/// and `check_timeout` only when the binary accepts them (older builds ran the probe
/// at the keepalive interval within `connect_timeout`).
fn profiles(binary: &Path) -> Vec<Profile> {
    let checks = "check_interval = \"100ms\"\ncheck_timeout = \"50ms\"\n";
    let probe = format!(
        "[defaults]\n{checks}\n[[targets]]\nname = \"x\"\naddress = \"127.0.0.1:1\"\nprobe = \"redis\"\n"
    );
    let knows_checks = harness::accepts_config(binary, &probe);
    let mut tight = String::from(
        "backoff = { initial = \"50ms\", max = \"100ms\" }\n\
         keepalive = { idle = \"1s\", interval = \"1s\", count = 1 }\n",
    );
    if knows_checks {
        tight.push_str(checks);
    }
    vec![
        Profile {
            name: "defaults",
            prefix: "d",
            defaults: String::new(),
            check_period: None,
        },
        Profile {
            name: "tight",
            prefix: "t",
            defaults: tight,
            check_period: knows_checks.then_some(Duration::from_millis(150)),
        },
    ]
}

/// When the bench started: hook stamps before it belong to nobody.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

// === faults and results ===

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Fault {
    Crash,
    RestoreShort,
    RestoreLong,
    Freeze,
    BlackholeTcp,
    BlackholeProbe,
}

impl Fault {
    const ALL: [Fault; 6] = [
        Fault::Crash,
        Fault::RestoreShort,
        Fault::RestoreLong,
        Fault::Freeze,
        Fault::BlackholeTcp,
        Fault::BlackholeProbe,
    ];

    fn describe(self, o: &Options) -> String {
        match self {
            Fault::Crash => "crash (listener closed) → on_disconnect".into(),
            Fault::RestoreShort => format!("restore after {:?} → on_connect", o.short_outage),
            Fault::RestoreLong => format!("restore after {:?} → on_connect", o.long_outage),
            Fault::Freeze => "SIGSTOP redis, redis probe → on_disconnect".into(),
            Fault::BlackholeTcp => "blackhole, tcp → on_disconnect".into(),
            Fault::BlackholeProbe => "blackhole, redis probe → on_disconnect".into(),
        }
    }
}

/// Samples per (config, fault), and what went wrong on the way.
#[derive(Default)]
struct Results {
    samples: HashMap<(&'static str, Fault), Vec<Duration>>,
    errors: Vec<String>,
}

type Shared = Arc<Mutex<Results>>;

fn record(results: &Shared, profile: &'static str, fault: Fault, d: Duration) {
    let mut r = results.lock().unwrap();
    r.samples.entry((profile, fault)).or_default().push(d);
}

fn failed(results: &Shared, what: String) {
    eprintln!("detection: {what}");
    results.lock().unwrap().errors.push(what);
}

/// A small xorshift generator: fault phases need spread, not quality.
struct Rng(u64);

impl Rng {
    fn new(salt: u64) -> Rng {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        Rng((t ^ (salt.wrapping_mul(0x9E37_79B9_7F4A_7C15))) | 1)
    }

    /// Uniform in [0, limit).
    fn below(&mut self, limit: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        limit.mul_f64((self.0 >> 11) as f64 / (1u64 << 53) as f64)
    }
}

// === waiting for hooks ===

/// The hook stamps of one lane's targets.
struct Inbox(mpsc::UnboundedReceiver<Stamp>);

impl Inbox {
    /// The first `event` hook of `target` that started at or after `since`.
    async fn next(
        &mut self,
        target: &str,
        event: &str,
        since: Instant,
        limit: Duration,
    ) -> Result<Instant, String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Ok(Some(s)) if s.target == target && s.event == event && s.at >= since => {
                    return Ok(s.at);
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the hook stamps stopped".into()),
                Err(_) => return Err(format!("no {event} hook of {target} within {limit:?}")),
            }
        }
    }

    /// The first `event` hook of each of `targets` at or after `since`, in their order.
    async fn all(
        &mut self,
        targets: &[String],
        event: &str,
        since: Instant,
        limit: Duration,
    ) -> Result<Vec<Instant>, String> {
        let deadline = tokio::time::Instant::now() + limit;
        let mut seen: Vec<Option<Instant>> = vec![None; targets.len()];
        while seen.iter().any(Option::is_none) {
            match tokio::time::timeout_at(deadline, self.0.recv()).await {
                Ok(Some(s)) if s.event == event && s.at >= since => {
                    if let Some(i) = targets.iter().position(|t| *t == s.target) {
                        seen[i].get_or_insert(s.at);
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err("the hook stamps stopped".into()),
                Err(_) => {
                    let missing: Vec<&String> = targets
                        .iter()
                        .zip(&seen)
                        .filter(|(_, s)| s.is_none())
                        .map(|(t, _)| t)
                        .collect();
                    return Err(format!("no {event} hook of {missing:?} within {limit:?}"));
                }
            }
        }
        Ok(seen.into_iter().flatten().collect())
    }
}

// === a listener that can crash and come back ===

/// A loopback server the bench owns: accepts and holds connections until it "crashes".
struct Server {
    address: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    async fn start() -> std::io::Result<Server> {
        let mut s = Server {
            address: SocketAddr::from(([127, 0, 0, 1], 0)),
            held: Arc::new(Mutex::new(Vec::new())),
            accept: None,
        };
        s.listen()?;
        Ok(s)
    }

    /// Listens on the server's address (a fresh port the first time).
    fn listen(&mut self) -> std::io::Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(self.address)?;
        let listener = socket.listen(128)?;
        self.address = listener.local_addr()?;
        let held = self.held.clone();
        self.accept = Some(tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                held.lock().unwrap().push(stream);
            }
        }));
        Ok(())
    }

    /// What the peer sees when the server process dies: the listener goes first (so a
    /// reconnect is refused), then every held connection is closed.
    async fn crash(&mut self) {
        if let Some(task) = self.accept.take() {
            task.abort();
            let _ = task.await;
        }
        self.held.lock().unwrap().clear();
    }
}

// === redis servers ===

/// A `redis-server` child (on loopback, or inside a namespace), killed on drop.
struct Redis {
    child: Child,
    address: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server bound to `ip` on a free port; `netns` runs it in that namespace.
    fn start(binary: &Path, ip: [u8; 4], netns: Option<&str>) -> Result<Redis, String> {
        let ip_text = format!("{}.{}.{}.{}", ip[0], ip[1], ip[2], ip[3]);
        for attempt in 0..5 {
            // Loopback ports are picked free here; inside a fresh namespace any port is.
            let port = match netns {
                None => harness::free_port().map_err(|e| e.to_string())?,
                Some(_) => 6379 + attempt,
            };
            let dir = tempfile::Builder::new()
                .prefix("tether-bench-redis-")
                .tempdir()
                .map_err(|e| e.to_string())?;
            let mut cmd = match netns {
                // `ip netns exec` execs redis-server itself: the child's pid is redis's.
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns]).arg(binary);
                    c
                }
                None => Command::new(binary),
            };
            cmd.args(["--port", &port.to_string(), "--bind", &ip_text])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                // The veth address is not loopback: without this redis refuses clients.
                .args(["--protected-mode", "no"])
                .arg("--dir")
                .arg(dir.path())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let child = cmd.spawn().map_err(|e| format!("redis-server: {e}"))?;
            let mut redis = Redis {
                child,
                address: SocketAddr::from((ip, port)),
                _dir: dir,
            };
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if redis.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                if ping(redis.address).is_ok() {
                    return Ok(redis);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(format!("redis-server did not start on {ip_text}"))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(nix::sys::signal::Signal::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ping(address: SocketAddr) -> std::io::Result<()> {
    let mut s = StdStream::connect_timeout(&address, Duration::from_millis(300))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"*1\r\n$4\r\nPING\r\n")?;
    let mut reply = [0u8; 7];
    s.read_exact(&mut reply)?;
    if &reply == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other("no PONG"))
    }
}

fn find_binary(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

// === network namespaces ===

/// A network namespace joined to the host by a veth pair, with a redis-server inside;
/// deleted (and so the pair) on drop. Addresses are a link-local /30 per namespace,
/// used on that pair only.
struct Namespace {
    name: String,
    redis: Option<Redis>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Namespace {
    fn create(index: usize, redis: &Path) -> Result<Namespace, String> {
        let id = std::process::id() % 10_000;
        let name = format!("tether-b{id}-{index}");
        let (host_if, peer_if) = (format!("tdb{id}{index}a"), format!("tdb{id}{index}b"));
        // 169.254.200-249.x: apart from the integration tests' 169.254.100-199.
        let net = 200 + (id % 50) as u8;
        let base = 4 * index as u8;
        let host_ip = [169, 254, net, base + 1];
        let peer_ip = [169, 254, net, base + 2];
        let dotted = |a: [u8; 4]| format!("{}.{}.{}.{}/30", a[0], a[1], a[2], a[3]);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name])?;
        let mut ns = Namespace { name, redis: None };
        let name = ns.name.clone();
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", &peer_if,
        ])?;
        ip(&["link", "set", &peer_if, "netns", &name])?;
        ip(&["addr", "add", &dotted(host_ip), "dev", &host_if])?;
        ip(&["link", "set", &host_if, "up"])?;
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &dotted(peer_ip),
            "dev",
            &peer_if,
        ])?;
        ip(&["-n", &name, "link", "set", &peer_if, "up"])?;
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        ns.redis = Some(Redis::start(redis, peer_ip, Some(&name))?);
        Ok(ns)
    }

    fn address(&self) -> SocketAddr {
        self.redis.as_ref().expect("started with redis").address
    }

    /// Drops every packet in and out of the namespace, or lets them through again.
    fn blackhole(&self, on: bool) -> Result<(), String> {
        let rules = if on {
            "table inet blackhole {\n\
             chain in { type filter hook input priority -300; policy drop; }\n\
             chain out { type filter hook output priority -300; policy drop; }\n}\n"
        } else {
            "delete table inet blackhole\n"
        };
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("nft: {e}"))?;
        nft.stdin
            .take()
            .expect("piped")
            .write_all(rules.as_bytes())
            .map_err(|e| e.to_string())?;
        let out = nft.wait_with_output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "nft: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.redis = None;
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Why the blackhole lanes cannot run here, if they cannot.
fn namespaces_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { nix::libc::geteuid() } != 0 {
        return Some("network namespaces need root".into());
    }
    if find_binary("nft").is_none() {
        return Some("nft (nftables) is not installed".into());
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        _ => Some("`ip netns` does not work (iproute2 missing?)".into()),
    }
}

// === the lanes ===

/// Crash, outage, restore, `rounds` times, on one target: the crash and restore figures.
#[allow(clippy::too_many_arguments)]
async fn outage_lane(
    profile: &'static str,
    target: String,
    mut server: Server,
    mut inbox: Inbox,
    outage: Duration,
    restore: Fault,
    rounds: usize,
    deadline: Instant,
    results: Shared,
) {
    let mut rng = Rng::new(server.address.port() as u64);
    let r = async {
        inbox
            .next(&target, "connect", epoch(), Duration::from_secs(30))
            .await?;
        for _ in 0..rounds {
            tokio::time::sleep(rng.below(Duration::from_secs(1))).await;
            if Instant::now() + outage + Duration::from_secs(20) > deadline {
                return Err("out of time".to_string());
            }
            let crashed = Instant::now();
            server.crash().await;
            let down = inbox
                .next(&target, "disconnect", crashed, Duration::from_secs(20))
                .await?;
            record(&results, profile, Fault::Crash, down - crashed);
            tokio::time::sleep_until((crashed + outage).into()).await;
            server.listen().map_err(|e| format!("relisten: {e}"))?;
            let restored = Instant::now();
            let up = inbox
                .next(&target, "connect", restored, Duration::from_secs(60))
                .await?;
            record(&results, profile, restore, up - restored);
        }
        Ok(())
    };
    if let Err(e) = r.await {
        failed(&results, format!("{profile} {target}: {e}"));
    }
}

/// SIGSTOP and SIGCONT of a real redis-server, `rounds` times: the freeze figure.
#[allow(clippy::too_many_arguments)]
async fn freeze_lane(
    profile: &'static str,
    target: String,
    redis: Redis,
    mut inbox: Inbox,
    phase: Duration,
    rounds: usize,
    deadline: Instant,
    results: Shared,
) {
    use nix::sys::signal::Signal;
    let mut rng = Rng::new(redis.address.port() as u64 ^ 0xf00d);
    let r = async {
        inbox
            .next(&target, "connect", epoch(), Duration::from_secs(30))
            .await?;
        for _ in 0..rounds {
            tokio::time::sleep(rng.below(phase)).await;
            if Instant::now() + Duration::from_secs(30) > deadline {
                return Err("out of time".to_string());
            }
            let frozen = Instant::now();
            redis.signal(Signal::SIGSTOP);
            let down = inbox
                .next(&target, "disconnect", frozen, Duration::from_secs(30))
                .await;
            redis.signal(Signal::SIGCONT);
            let down = down?;
            record(&results, profile, Fault::Freeze, down - frozen);
            inbox
                .next(&target, "connect", down, Duration::from_secs(60))
                .await?;
        }
        Ok(())
    };
    if let Err(e) = r.await {
        failed(&results, format!("{profile} {target}: {e}"));
    }
    drop(redis);
}

/// Blackholes one namespace `rounds` times; each round gives a sample for every
/// (config, probe) pair watching it.
async fn blackhole_lane(
    ns: Namespace,
    targets: Vec<(&'static str, Fault, String)>,
    mut inbox: Inbox,
    phase: Duration,
    rounds: usize,
    deadline: Instant,
    results: Shared,
) {
    let names: Vec<String> = targets.iter().map(|t| t.2.clone()).collect();
    let mut rng = Rng::new(ns.address().ip().to_string().len() as u64 ^ ns.name.len() as u64);
    let r = async {
        inbox
            .all(&names, "connect", epoch(), Duration::from_secs(30))
            .await?;
        for _ in 0..rounds {
            tokio::time::sleep(rng.below(phase)).await;
            if Instant::now() + Duration::from_secs(60) > deadline {
                return Err("out of time".to_string());
            }
            // Stamped before nft runs: the drop cannot start earlier, so a figure is
            // never shorter than the truth.
            let cut = Instant::now();
            ns.blackhole(true)?;
            let downs = inbox
                .all(&names, "disconnect", cut, Duration::from_secs(40))
                .await;
            ns.blackhole(false)?;
            let downs = downs?;
            for ((profile, fault, _), down) in targets.iter().zip(&downs) {
                record(&results, profile, *fault, *down - cut);
            }
            let last = downs.iter().max().copied().unwrap_or(cut);
            inbox
                .all(&names, "connect", last, Duration::from_secs(60))
                .await?;
        }
        Ok(())
    };
    if let Err(e) = r.await {
        failed(&results, format!("blackhole {}: {e}", ns.name));
    }
    drop(ns);
}

// === the run ===

/// Targets of one config, as TOML, and the lanes that drive them.
struct Plan {
    toml: HashMap<&'static str, String>,
    routes: HashMap<String, mpsc::UnboundedSender<Stamp>>,
    lanes: Vec<JoinHandle<()>>,
}

impl Plan {
    fn target(&mut self, profile: &'static str, name: &str, address: SocketAddr, probe: &str) {
        let toml = self.toml.entry(profile).or_default();
        toml.push_str(&format!(
            "\n[[targets]]\nname = \"{name}\"\naddress = \"{address}\"\nprobe = \"{probe}\"\n"
        ));
    }

    fn inbox(&mut self, names: &[String]) -> Inbox {
        let (tx, rx) = mpsc::unbounded_channel();
        for n in names {
            self.routes.insert(n.clone(), tx.clone());
        }
        Inbox(rx)
    }
}

fn lanes_for(runs: usize) -> (usize, usize) {
    let lanes = runs.clamp(1, MAX_LANES);
    (lanes, runs.div_ceil(lanes))
}

struct Report {
    results: Results,
    profiles: Vec<Profile>,
    skipped: Vec<String>,
    settings: Vec<String>,
    took: Duration,
}

async fn run(o: &Options) -> Result<Report, String> {
    let started = Instant::now();
    let deadline = started + if o.full { FULL_LIMIT } else { SMOKE_LIMIT };
    let profiles = profiles(&o.tether);
    let mut stamps = Stamps::open(o.hook_program).map_err(|e| format!("hook stamps: {e}"))?;
    let results: Shared = Arc::default();
    let mut skipped = Vec::new();
    let mut plan = Plan {
        toml: HashMap::new(),
        routes: HashMap::new(),
        lanes: Vec::new(),
    };
    let redis = find_binary("redis-server");
    if redis.is_none() {
        skipped.push("freeze and blackhole: redis-server is not installed".to_string());
    }
    // Make the servers first, then start tether on them, then let the lanes loose.
    let mut pending: Vec<Box<dyn FnOnce(Shared) -> JoinHandle<()> + Send>> = Vec::new();

    for p in &profiles {
        let profile = p.name;
        // Crash and restore: short outages a few lanes many times, long outages one
        // lane per run, all at once.
        let (short_lanes, short_rounds) = lanes_for(o.runs);
        for (fault, lanes, rounds, outage) in [
            (
                Fault::RestoreShort,
                short_lanes,
                short_rounds,
                o.short_outage,
            ),
            (Fault::RestoreLong, o.runs, 1, o.long_outage),
        ] {
            for i in 0..lanes {
                let server = Server::start()
                    .await
                    .map_err(|e| format!("listener: {e}"))?;
                let kind = if fault == Fault::RestoreShort {
                    "short"
                } else {
                    "long"
                };
                let name = format!("{}-{kind}{i}", p.prefix);
                plan.target(profile, &name, server.address, "tcp");
                let inbox = plan.inbox(std::slice::from_ref(&name));
                pending.push(Box::new(move |results| {
                    tokio::spawn(outage_lane(
                        profile, name, server, inbox, outage, fault, rounds, deadline, results,
                    ))
                }));
            }
        }
        // Freeze: one redis-server per lane.
        if let Some(binary) = &redis {
            let (lanes, rounds) = lanes_for(o.runs);
            let phase = if o.full {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(500)
            };
            for i in 0..lanes {
                let server = Redis::start(binary, [127, 0, 0, 1], None)?;
                let name = format!("{}-freeze{i}", p.prefix);
                plan.target(profile, &name, server.address, "redis");
                let inbox = plan.inbox(std::slice::from_ref(&name));
                pending.push(Box::new(move |results| {
                    tokio::spawn(freeze_lane(
                        profile, name, server, inbox, phase, rounds, deadline, results,
                    ))
                }));
            }
        }
    }

    // Blackhole: namespaces shared by both configs, each watched with tcp and redis.
    let namespaces = match (&redis, namespaces_unavailable()) {
        (Some(_), Some(why)) => {
            if std::env::var_os("CI").is_some() {
                return Err(format!("CI must run the blackhole lanes: {why}"));
            }
            skipped.push(format!("blackhole: {why}"));
            None
        }
        (Some(binary), None) => Some(binary.clone()),
        (None, _) => None,
    };
    if let Some(binary) = namespaces {
        let (lanes, rounds) = lanes_for(o.runs);
        let phase = if o.full {
            Duration::from_secs(3)
        } else {
            Duration::from_millis(500)
        };
        for i in 0..lanes {
            let ns = Namespace::create(i, &binary)?;
            let mut targets = Vec::new();
            for p in &profiles {
                for (probe, fault) in [
                    ("tcp", Fault::BlackholeTcp),
                    ("redis", Fault::BlackholeProbe),
                ] {
                    let name = format!("{}-bh-{probe}{i}", p.prefix);
                    plan.target(p.name, &name, ns.address(), probe);
                    targets.push((p.name, fault, name));
                }
            }
            let names: Vec<String> = targets.iter().map(|t| t.2.clone()).collect();
            let inbox = plan.inbox(&names);
            pending.push(Box::new(move |results| {
                tokio::spawn(blackhole_lane(
                    ns, targets, inbox, phase, rounds, deadline, results,
                ))
            }));
        }
    }

    // One tether per config, every target's connect and disconnect hooks stamped.
    let hook = stamps.hook_action();
    let mut tethers = Vec::new();
    let mut configs = Vec::new();
    let mut settings = Vec::new();
    for p in &profiles {
        let targets = plan.toml.remove(p.name).unwrap_or_default();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n\n[defaults]\n{}\n[defaults.hooks]\n\
             on_connect = {hook}\non_disconnect = {hook}\n{targets}",
            harness::free_port().map_err(|e| e.to_string())?,
            p.defaults,
        );
        settings.push(format!(
            "{}: {}",
            p.name,
            effective_defaults(&o.tether, &text)?
        ));
        let mut file = tempfile::Builder::new()
            .prefix("tether-detection-")
            .suffix(".toml")
            .tempfile()
            .map_err(|e| e.to_string())?;
        file.write_all(text.as_bytes()).map_err(|e| e.to_string())?;
        configs.push(file);
    }
    harness::route_stamps(
        std::mem::replace(&mut stamps.received, mpsc::unbounded_channel().1),
        plan.routes,
    );
    for file in &configs {
        tethers.push(Tether::spawn(&o.tether, file.path()).map_err(|e| format!("tether: {e}"))?);
    }
    for start in pending {
        plan.lanes.push(start(results.clone()));
    }
    let all = join_all(plan.lanes);
    if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
        failed(&results, "the run reached its time limit".into());
    }
    for mut t in tethers {
        if let Some(status) = t.exited() {
            failed(
                &results,
                format!("tether exited early ({status}): {:?}", t.log_tail(5)),
            );
        }
        let _ = t.stop(Duration::from_secs(10)).await;
    }
    let results = std::mem::take(&mut *results.lock().unwrap());
    Ok(Report {
        results,
        profiles,
        skipped,
        settings,
        took: started.elapsed(),
    })
}

/// Waits for every lane; a lane reports its own failures into the results.
async fn join_all(lanes: Vec<JoinHandle<()>>) {
    for lane in lanes {
        let _ = lane.await;
    }
}

/// The settings that shape detection, as `tether check-config` fills them in for a
/// target with a protocol probe (the first target when none has one).
fn effective_defaults(binary: &Path, text: &str) -> Result<String, String> {
    let full = harness::effective_config(binary, text)?;
    let blocks: Vec<&str> = full.split("[[targets]]").skip(1).collect();
    let block = blocks
        .iter()
        .find(|b| b.contains("kind = \"redis\""))
        .or(blocks.first())
        .ok_or("check-config printed no target")?;
    let keys = ["connect_timeout", "check_interval", "check_timeout"];
    let tables = ["[targets.backoff]", "[targets.keepalive]"];
    let mut section = "";
    let mut found = Vec::new();
    for line in block.lines().map(str::trim) {
        if line.starts_with('[') {
            section = tables
                .iter()
                .find(|t| **t == line)
                .copied()
                .unwrap_or("other");
            continue;
        }
        let Some((key, value)) = line.split_once(" = ") else {
            continue;
        };
        match section {
            "" if keys.contains(&key) => found.push(format!("{key} {value}")),
            "" | "other" => {}
            table => {
                let table = table.trim_start_matches("[targets.").trim_end_matches(']');
                found.push(format!("{table}.{key} {value}"));
            }
        }
    }
    Ok(found.join(", ").replace('"', ""))
}

// === the report ===

/// An acceptance figure: a bound on the p95 of one (config, fault).
struct Bound {
    profile: &'static str,
    fault: Fault,
    limit: Duration,
    what: String,
}

fn bounds(o: &Options, profiles: &[Profile]) -> Vec<Bound> {
    let mut b = vec![
        Bound {
            profile: "defaults",
            fault: Fault::RestoreShort,
            limit: Duration::from_secs(3),
            what: "defaults: restore after a 3 s outage ≤ 3 s".into(),
        },
        Bound {
            profile: "defaults",
            fault: Fault::BlackholeTcp,
            limit: Duration::from_secs(10),
            what: "defaults: blackhole (tcp) ≤ 10 s".into(),
        },
        Bound {
            profile: "defaults",
            fault: Fault::Freeze,
            limit: Duration::from_secs(4),
            what: "defaults: freeze (redis probe) ≤ 4 s".into(),
        },
    ];
    if o.short_outage != Duration::from_secs(3) {
        b[0].what = format!("defaults: restore after {:?} ≤ 3 s", o.short_outage);
    }
    if let Some(period) = profiles
        .iter()
        .find(|p| p.name == "tight")
        .and_then(|p| p.check_period)
    {
        let limit = period.mul_f64(1.1);
        for fault in [Fault::Freeze, Fault::RestoreShort, Fault::RestoreLong] {
            b.push(Bound {
                profile: "tight",
                fault,
                limit,
                what: format!(
                    "tight: {} ≤ 1.1 × (100ms + 50ms) = {}",
                    fault_short(fault),
                    ms(limit)
                ),
            });
        }
    }
    b
}

fn fault_short(f: Fault) -> &'static str {
    match f {
        Fault::Crash => "crash",
        Fault::RestoreShort => "restore (short outage)",
        Fault::RestoreLong => "restore (long outage)",
        Fault::Freeze => "freeze",
        Fault::BlackholeTcp => "blackhole (tcp)",
        Fault::BlackholeProbe => "blackhole (probe)",
    }
}

fn cell(r: &Results, profile: &str, fault: Fault) -> Option<Summary> {
    r.samples
        .iter()
        .find(|((p, f), _)| *p == profile && *f == fault)
        .and_then(|(_, s)| Summary::of(s))
}

/// Prints the figures; returns how many acceptance figures were missed.
fn report(o: &Options, rep: &Report) -> usize {
    println!();
    println!(
        "tether detection benchmark ({}): {} runs per fault, binary {}",
        if o.full { "full" } else { "smoke" },
        o.runs,
        o.tether.display()
    );
    println!(
        "cores: {}; load average {}; took {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        harness::load_average(),
        ms(rep.took),
    );
    println!("hooks run {}", o.hook_program.describe());
    for s in &rep.settings {
        println!("  {s}");
    }
    if rep.profiles.iter().all(|p| p.check_period.is_none()) {
        println!(
            "  (this tether has no check_interval/check_timeout: probes run at keepalive.interval)"
        );
    }
    println!();
    println!(
        "  {:<44} {:>34}  {:>34}",
        "fault → hook started", "defaults: median / p95 / max", "tight: median / p95 / max"
    );
    for fault in Fault::ALL {
        let col = |profile: &str| match cell(&rep.results, profile, fault) {
            Some(s) => format!("{} / {} / {} ({})", ms(s.median), ms(s.p95), ms(s.max), s.n),
            None => "-".into(),
        };
        println!(
            "  {:<44} {:>34}  {:>34}",
            fault.describe(o),
            col("defaults"),
            col("tight")
        );
    }
    println!();
    let mut missed = 0;
    for b in bounds(o, &rep.profiles) {
        let (verdict, value) = match cell(&rep.results, b.profile, b.fault) {
            Some(s) if s.p95 <= b.limit => ("PASS", ms(s.p95)),
            Some(s) => {
                missed += 1;
                ("MISS", ms(s.p95))
            }
            None => {
                missed += 1;
                ("MISS", "no figure".into())
            }
        };
        println!("  {verdict}  {:<56} p95 {value}", b.what);
    }
    for s in &rep.skipped {
        println!("  skipped: {s}");
    }
    for e in &rep.results.errors {
        println!("  error: {e}");
    }
    println!();
    missed
}

fn main() -> ExitCode {
    epoch();
    let o = match Options::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("detection: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = harness::raise_open_files_limit(1024) {
        eprintln!("detection: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let rep = match runtime.block_on(run(&o)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("detection: {e}");
            return ExitCode::FAILURE;
        }
    };
    let missed = report(&o, &rep);
    drop(runtime);
    if !o.full {
        // A smoke run proves the harness works: every fault that could run here gave a
        // figure for both configs. Its timings prove nothing on a busy CI machine.
        let skipped = |word: &str| rep.skipped.iter().any(|s| s.contains(word));
        let mut absent = Vec::new();
        for fault in Fault::ALL {
            let could_run = match fault {
                Fault::Freeze => !skipped("freeze"),
                Fault::BlackholeTcp | Fault::BlackholeProbe => !skipped("blackhole"),
                _ => true,
            };
            for p in rep.profiles.iter().filter(|_| could_run) {
                if cell(&rep.results, p.name, fault).is_none() {
                    absent.push(format!("{} {}", p.name, fault_short(fault)));
                }
            }
        }
        assert!(
            absent.is_empty(),
            "no figures for {absent:?}; errors {:?}",
            rep.results.errors
        );
        println!("detection: smoke run passed");
        return ExitCode::SUCCESS;
    }
    if missed == 0 && rep.results.errors.is_empty() {
        println!("detection: every acceptance figure met");
        ExitCode::SUCCESS
    } else {
        println!(
            "detection: {missed} acceptance figure(s) MISSED, {} error(s)",
            rep.results.errors.len()
        );
        ExitCode::FAILURE
    }
}
