//! A DNS outage costs the targets behind names and nothing else: the real `tether` binary
//! runs in a network namespace made by the test, whose `/etc/resolv.conf` (bind-mounted
//! in a private mount namespace, as in `moves.rs`) names a server that swallows every
//! query. Hundreds of names wait for answers that never come, while `/status`, the state
//! file, a target at an IP address and SIGTERM carry on as if nothing happened.
//!
//! The test reaches into the namespace from threads that entered it (`setns` moves only
//! the calling thread), so the sockets it makes there live in the namespace.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use nix::sys::signal::Signal;

use crate::support::tether_process::{self, TetherProcess};
use crate::support::{poll_until, running_as_root, workdir};

/// Names behind the dead resolver: more than tokio's blocking pool has threads (512),
/// so lookups on that pool would queue everything else behind them.
const NAMES: usize = 600;
/// Threads tether may have however many lookups are under way: runtime workers, a few
/// blocking threads for documents and hooks, the signal and log machinery.
const MAX_THREADS: usize = 64;
const LIMIT: Duration = Duration::from_secs(15);

/// A network namespace with only its loopback, removed on drop.
struct Namespace {
    name: String,
}

fn run(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Namespace {
    fn create() -> Namespace {
        let name = format!("tether-dns{}", std::process::id() % 100_000);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(&["ip", "netns", "add", &name]);
        let ns = Namespace { name };
        run(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    /// Runs `f` on a thread that entered the namespace: sockets it makes stay there.
    fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = PathBuf::from("/var/run/netns").join(&self.name);
        thread::spawn(move || {
            let file = fs::File::open(&path).unwrap();
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("enter the namespace");
            f()
        })
        .join()
        .unwrap()
    }

    /// `tether run -c config` in the namespace, with `resolv_conf` and `hosts` bind-mounted
    /// over the system's files in a mount namespace of its own.
    fn tether(&self, resolv_conf: &Path, hosts: &Path, config: &Path) -> TetherProcess {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.name])
            .args(["unshare", "--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                r#"mount --bind "$0" /etc/resolv.conf && mount --bind "$1" /etc/hosts && exec "$2" run -c "$3""#,
            )
            .arg(resolv_conf)
            .arg(hosts)
            .arg(tether_process::binary())
            .arg(config);
        TetherProcess::spawn(command)
    }

    /// `GET path` from inside the namespace: the time it took and the body, or why no
    /// answer came within [`LIMIT`].
    fn get(&self, addr: SocketAddr, path: &str) -> Result<(Duration, String), String> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        self.enter(move || {
            let started = Instant::now();
            let mut stream = TcpStream::connect_timeout(&addr, LIMIT).map_err(|e| e.to_string())?;
            stream.set_read_timeout(Some(LIMIT)).unwrap();
            stream
                .write_all(head.as_bytes())
                .map_err(|e| e.to_string())?;
            let mut answer = String::new();
            stream
                .read_to_string(&mut answer)
                .map_err(|e| format!("{e} after {:?}", started.elapsed()))?;
            let body = answer
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default();
            Ok((started.elapsed(), body))
        })
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn can_create_namespaces() -> bool {
    running_as_root()
        && Command::new("ip")
            .args(["netns", "list"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The `Threads:` line of `/proc/PID/status`.
fn threads(pid: u32) -> usize {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap()
}

fn state_of(document: &str, name: &str) -> Option<String> {
    let doc: serde_json::Value = serde_json::from_str(document).ok()?;
    doc["targets"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
        .and_then(|t| t["state"].as_str())
        .map(str::to_owned)
}

#[test]
fn a_resolver_that_swallows_queries_costs_only_the_targets_behind_names() {
    if !can_create_namespaces() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to create network namespaces (run as root with iproute2)"
        );
        eprintln!("skipped: creating network namespaces needs root and iproute2");
        return;
    }
    let ns = Namespace::create();
    // The dead resolver: queries arrive and are never read, let alone answered.
    let _resolver = ns.enter(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, 53)).unwrap());
    // A dependency at an IP address, whose connections are held open until dropped.
    let listener = ns.enter(|| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap());
    let direct = listener.local_addr().unwrap();
    // `None` once the dependency is gone: the accept loop then ends, closing the listener.
    let held = Arc::new(Mutex::new(Some(Vec::new())));
    let accepting = thread::spawn({
        let held = held.clone();
        move || {
            for stream in listener.incoming() {
                match (stream, held.lock().unwrap().as_mut()) {
                    (Ok(s), Some(held)) => held.push(s),
                    _ => break,
                }
            }
        }
    });

    let dir = workdir("dns-outage");
    let resolv_conf = dir.path().join("resolv.conf");
    fs::write(
        &resolv_conf,
        "nameserver 127.0.0.1\nsearch tether.svc.cluster.local svc.cluster.local\noptions ndots:5\n",
    )
    .unwrap();
    let hosts = dir.path().join("hosts");
    fs::write(&hosts, "127.0.0.1 localhost\n").unwrap();
    let state_file = dir.path().join("state.json");
    // Each name's target fails at its first attempt, and its webhook, to a name as well,
    // is another lookup; enough of them may run at once to fill a pool of threads.
    let mut config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{}\"\n\
         [supervisor]\nshutdown_grace = \"2s\"\n\
         [defaults]\nmax_concurrent_hooks = 1024\n\
         [[targets]]\nname = \"direct\"\naddress = \"{direct}\"\nconnect_timeout = \"1s\"\n",
        state_file.display()
    );
    for i in 0..NAMES {
        config.push_str(&format!(
            "[[targets]]\nname = \"n{i}\"\naddress = \"db{i}.example:5432\"\n\
             connect_timeout = \"1s\"\nfailure_threshold = 1\nhook_timeout = \"3s\"\n\
             [targets.hooks]\non_failure = {{ webhook = \"http://hooks{i}.example:8080/tether\" }}\n"
        ));
    }
    let config_path = dir.path().join("tether.toml");
    fs::write(&config_path, config).unwrap();

    let mut tether = ns.tether(&resolv_conf, &hosts, &config_path);
    let addr = tether.http_addr(LIMIT);
    let pid = tether.pid();
    let in_file = |name: &str| {
        fs::read_to_string(&state_file)
            .ok()
            .and_then(|d| state_of(&d, name))
    };
    poll_until(LIMIT, || {
        (in_file("direct").as_deref() == Some("up")).then_some(())
    })
    .unwrap_or_else(|| panic!("direct never up in the state file; log:\n{}", tether.log()));

    // The outage goes on: every name's lookups time out and are tried again.
    let (mut slowest, mut most_threads, mut samples) = (Duration::ZERO, 0, 0);
    let watching = Instant::now();
    while watching.elapsed() < Duration::from_secs(8) {
        let (took, body) = ns
            .get(addr, "/status")
            .unwrap_or_else(|e| panic!("no /status: {e}; {samples} answered before"));
        assert_eq!(
            state_of(&body, "direct").as_deref(),
            Some("up"),
            "{body:.300}"
        );
        slowest = slowest.max(took);
        most_threads = most_threads.max(threads(pid));
        samples += 1;
        // Sampling pace, not a synchronisation.
        thread::sleep(Duration::from_millis(250));
    }
    let lines = tether.lines();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    let (failed, webhooks) = (count("is failed (failure)"), count("hook failed"));
    println!(
        "DNS outage, {NAMES} names: /status slowest {slowest:?} of {samples}, \
         at most {most_threads} threads, {failed} targets failed, {webhooks} webhooks failed"
    );
    if let Some(line) = lines.iter().find(|l| l.contains("hook failed")) {
        println!("for instance: {line}");
    }
    assert!(
        failed >= NAMES / 2,
        "the names were not tried:\n{}",
        tether.log()
    );
    assert!(webhooks > 0, "no webhook was tried:\n{}", tether.log());
    assert!(
        state_of(&ns.get(addr, "/status").unwrap().1, "n0").is_some_and(|s| s != "up"),
        "a name resolved without DNS"
    );
    // Generous for a loaded host; queued behind lookups, it took over 15 s.
    assert!(slowest < Duration::from_secs(5), "/status took {slowest:?}");
    assert!(
        most_threads <= MAX_THREADS,
        "{most_threads} threads (at most {MAX_THREADS})"
    );

    // The state file still follows changes: the direct dependency goes away.
    let dropped = Instant::now();
    *held.lock().unwrap() = None;
    // Wakes the accept loop so that it ends.
    ns.enter(move || drop(TcpStream::connect(direct)));
    poll_until(LIMIT, || {
        (in_file("direct").as_deref() != Some("up")).then_some(())
    })
    .unwrap_or_else(|| panic!("the state file went stale; log:\n{}", tether.log()));
    println!(
        "the state file showed the loss after {:?}",
        dropped.elapsed()
    );
    assert!(dropped.elapsed() < Duration::from_secs(5));

    let asked = Instant::now();
    tether.signal(Signal::SIGTERM);
    let status = tether.wait_exit(LIMIT);
    println!("exited {:?} after SIGTERM", asked.elapsed());
    assert!(status.success(), "{status:?}\n{}", tether.log());
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "SIGTERM took {:?}",
        asked.elapsed()
    );
    let _ = accepting.join();
}
