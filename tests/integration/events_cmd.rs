//! `tether events` against a running `tether run` and a real redis-server: the snapshot
//! and transitions (as lines and as JSON), `--target`, the exit codes, following a
//! restarted sidecar, and a resume across cut connections that prints every event once.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::redis::RedisServer;
use crate::support::tether_process::{TetherProcess, command as tether};
use crate::support::{TestServer, free_port, poll_until, process, workdir};

const LIMIT: Duration = Duration::from_secs(20);

fn write_config(dir: &Path, listen: &str, targets: &[(&str, String)]) -> PathBuf {
    let path = dir.join("tether.toml");
    let mut text = format!("[server]\nlisten = \"{listen}\"\n");
    for (name, address) in targets {
        text.push_str(&format!(
            "[[targets]]\nname = \"{name}\"\naddress = \"{address}\"\nprobe = \"redis\"\n\
             failure_threshold = 2\ncheck_interval = \"200ms\"\ncheck_timeout = \"100ms\"\n\
             backoff = {{ initial = \"10ms\", max = \"50ms\" }}\n"
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

/// The lines printed so far, and whether the output has ended; notified at each.
type Printed = Arc<(Mutex<(Vec<String>, bool)>, Condvar)>;

/// A running `tether events`, its standard output collected line by line.
struct Follower {
    child: Child,
    lines: Printed,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Follower {
    fn start(args: &[&str]) -> Follower {
        let mut command = tether();
        command
            .arg("events")
            .args(args)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = process::spawn(command).expect("start tether events");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let lines: Printed = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
        thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.0.lock().unwrap().0.push(line);
                    lines.1.notify_all();
                }
                lines.0.lock().unwrap().1 = true;
                lines.1.notify_all();
            }
        });
        let errors = Arc::new(Mutex::new(Vec::new()));
        thread::spawn({
            let errors = errors.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    errors.lock().unwrap().push(line);
                }
            }
        });
        Follower {
            child,
            lines,
            stderr: errors,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.0.lock().unwrap().0.clone()
    }

    /// The JSON lines printed so far.
    fn objects(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect()
    }

    /// Waits until some line satisfies `found`, returning it.
    fn wait_line(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + LIMIT;
        let mut state = self.lines.0.lock().unwrap();
        loop {
            if let Some(line) = state.0.iter().find(|l| found(l)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !state.1 && !left.is_zero(),
                "tether events printed no {what}; stdout:\n{}\nstderr:\n{}",
                state.0.join("\n"),
                self.stderr.lock().unwrap().join("\n")
            );
            state = self.lines.1.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Waits until some JSON line satisfies `found`.
    fn wait_object(&self, what: &str, found: impl Fn(&Value) -> bool) -> Value {
        let line = self.wait_line(what, |l| {
            serde_json::from_str::<Value>(l).is_ok_and(|v| found(&v))
        });
        serde_json::from_str(&line).unwrap()
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let child = &mut self.child;
        poll_until(limit, || child.try_wait().ok().flatten())
            .unwrap_or_else(|| panic!("tether events did not exit within {limit:?}"))
            .code()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_sidecar(config: &Path) -> (TetherProcess, SocketAddr) {
    let sidecar = TetherProcess::run(config, &[]);
    let addr = sidecar.http_addr(LIMIT);
    (sidecar, addr)
}

#[test]
fn events_prints_the_snapshot_and_the_transition_of_a_killed_redis_as_lines_and_as_json() {
    let mut redis = RedisServer::start();
    let dir = workdir("events-cmd");
    let config = write_config(dir.path(), "127.0.0.1:0", &[("cache", redis.addr())]);
    let (sidecar, addr) = start_sidecar(&config);
    sidecar.wait_for("cache is up", LIMIT);
    let url = format!("http://{addr}");
    let human = Follower::start(&["--url", &url]);
    let json = Follower::start(&["--url", &url, "--json"]);
    human.wait_line("snapshot line", |l| {
        l.contains("  cache  snapshot  up  cache:0")
    });
    let snapshot = json.wait_object("snapshot", |v| v["type"] == "snapshot");
    assert_eq!(snapshot["status"]["targets"][0]["name"], "cache");
    assert!(snapshot["id"].as_str().is_some_and(|id| id.contains(':')));

    redis.kill();
    let line = human.wait_line("disconnect line", |l| {
        l.contains("  cache  disconnect  up -> down  cache:1")
    });
    assert!(line.starts_with("20"), "a timestamp first: {line}");
    let t = json.wait_object("disconnect", |v| {
        v["type"] == "transition" && v["event"] == "disconnect"
    });
    assert_eq!(t["target"], "cache");
    assert_eq!(t["state"], "down");
    assert_eq!(t["previous_state"], "up");
    assert_eq!(t["event_id"], "cache:1");
    // The stream's id is the event's position, of this run.
    assert_eq!(t["id"], t["position"], "{t}");
    assert_eq!(
        t["id"].as_str().unwrap().split(':').next(),
        t["instance"].as_str()
    );

    // --since resumes after a position: the events after the snapshot, no snapshot.
    let since = snapshot["id"].as_str().unwrap();
    let resumed = Follower::start(&["--url", &url, "--json", "--since", since]);
    let first = resumed.wait_object("a replayed event", |_| true);
    assert_eq!(first["type"], "transition", "{first}");
    assert_eq!(first["event_id"], "cache:1", "{first}");
    drop(sidecar);
}

#[test]
fn events_with_target_prints_only_that_targets_events() {
    let mut redis = RedisServer::start();
    let dir = workdir("events-filter");
    let dead = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        dir.path(),
        "127.0.0.1:0",
        &[("cache", redis.addr()), ("other", dead)],
    );
    let (sidecar, addr) = start_sidecar(&config);
    let url = format!("http://{addr}");
    let json = Follower::start(&["--url", &url, "--json", "--target", "cache"]);
    let human = Follower::start(&["--url", &url, "--target=cache,nosuch"]);
    json.wait_object("snapshot", |v| v["type"] == "snapshot");
    human.wait_line("snapshot", |l| l.contains("cache  snapshot"));
    redis.kill();
    json.wait_object("cache's disconnect", |v| v["event"] == "disconnect");
    human.wait_line("cache's disconnect", |l| l.contains("cache  disconnect"));
    // `other` fails meanwhile; none of it is printed.
    sidecar.wait_for("other is failed", LIMIT);
    sidecar.wait_for("cache is failed", LIMIT);
    json.wait_object("cache's failure", |v| v["event"] == "failure");
    for line in json.lines().iter().chain(&human.lines()) {
        assert!(!line.contains("other"), "{line}");
    }
    let snapshot = json.wait_object("snapshot", |v| v["type"] == "snapshot");
    assert_eq!(snapshot["status"]["targets"].as_array().unwrap().len(), 1);
}

#[test]
fn events_exits_2_when_nothing_answers_at_the_first_attempt() {
    for url in [
        format!("http://127.0.0.1:{}", free_port()),
        "unix:/nonexistent/tether.sock".to_owned(),
    ] {
        let mut follower = Follower::start(&["--url", &url]);
        assert_eq!(follower.wait_exit(LIMIT), Some(2), "{url}");
        let stderr = follower.stderr.lock().unwrap().join("\n");
        assert!(stderr.contains("cannot follow"), "{stderr}");
    }
}

#[test]
fn events_exits_0_on_sigint_and_on_sigterm() {
    let redis = RedisServer::start();
    let dir = workdir("events-sigint");
    let config = write_config(dir.path(), "127.0.0.1:0", &[("cache", redis.addr())]);
    let (_sidecar, addr) = start_sidecar(&config);
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let mut follower = Follower::start(&["--url", &format!("http://{addr}")]);
        follower.wait_line("snapshot", |l| l.contains("snapshot"));
        follower.signal(sig);
        assert_eq!(follower.wait_exit(LIMIT), Some(0), "{sig}");
    }
}

#[test]
fn events_follows_a_restarted_sidecar_on_the_same_address_with_reset_and_a_new_snapshot() {
    let redis = RedisServer::start();
    let dir = workdir("events-restart");
    let port = free_port();
    let config = write_config(
        dir.path(),
        &format!("127.0.0.1:{port}"),
        &[("cache", redis.addr())],
    );
    let (sidecar, _) = start_sidecar(&config);
    let json = Follower::start(&["--url", &format!("http://127.0.0.1:{port}"), "--json"]);
    let first = json.wait_object("snapshot", |v| v["type"] == "snapshot");
    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");

    let (_restarted, _) = start_sidecar(&config);
    let reset = json.wait_object("reset", |v| v["type"] == "reset");
    assert!(reset.get("id").is_none(), "{reset}");
    let instance = |v: &Value| v["status"]["instance"].as_str().unwrap().to_owned();
    let second = json.wait_object("a snapshot of the new run", |v| {
        v["type"] == "snapshot" && instance(v) != instance(&first)
    });
    let objects = json.objects();
    let at = |v: &Value| objects.iter().position(|o| o == v).unwrap();
    assert!(at(&reset) < at(&second), "reset comes first: {objects:?}");
}

/// A TCP forwarder between `tether events` and tether that the test can cut.
struct Forwarder {
    addr: SocketAddr,
    open: Arc<Mutex<Vec<TcpStream>>>,
    /// While set, new connections are closed as soon as they are accepted.
    refusing: Arc<AtomicBool>,
    accepted: Arc<Mutex<usize>>,
}

impl Forwarder {
    fn start(upstream: SocketAddr) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(Mutex::new(Vec::new()));
        let refusing = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(Mutex::new(0));
        thread::spawn({
            let (open, refusing, accepted) = (open.clone(), refusing.clone(), accepted.clone());
            move || {
                for client in listener.incoming().map_while(Result::ok) {
                    if refusing.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect(upstream) else {
                        continue;
                    };
                    *accepted.lock().unwrap() += 1;
                    let mut open = open.lock().unwrap();
                    open.push(client.try_clone().unwrap());
                    open.push(server.try_clone().unwrap());
                    for (mut from, mut to) in [
                        (client.try_clone().unwrap(), server.try_clone().unwrap()),
                        (server, client),
                    ] {
                        thread::spawn(move || {
                            let _ = std::io::copy(&mut from, &mut to);
                            let _ = to.shutdown(Shutdown::Both);
                            let _ = from.shutdown(Shutdown::Both);
                        });
                    }
                }
            }
        });
        Forwarder {
            addr,
            open,
            refusing,
            accepted,
        }
    }

    /// Cuts every open connection and refuses new ones until [`Forwarder::reopen`].
    fn cut(&self) {
        self.refusing.store(true, Ordering::SeqCst);
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn reopen(&self) {
        self.refusing.store(false, Ordering::SeqCst);
    }

    fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }
}

#[test]
fn events_resumes_across_cut_connections_printing_every_event_once() {
    const ROUNDS: usize = 3;
    let mut redis = RedisServer::start();
    let dir = workdir("events-resume");
    let config = write_config(dir.path(), "127.0.0.1:0", &[("cache", redis.addr())]);
    let (sidecar, addr) = start_sidecar(&config);
    sidecar.wait_for("cache is up", LIMIT);
    let forwarder = Forwarder::start(addr);
    let json = Follower::start(&["--url", &format!("http://{}", forwarder.addr), "--json"]);
    json.wait_object("snapshot", |v| v["type"] == "snapshot");

    // Each round the connection is cut and held shut while redis goes down and comes
    // back: the events of the gap reach the follower only by its resume.
    let mut expected = 1;
    for round in 0..ROUNDS {
        forwarder.cut();
        redis.kill();
        let failed = format!("event_id=cache:{}", expected + 1);
        sidecar.wait_for(&failed, LIMIT);
        redis.restart();
        let up = format!("event_id=cache:{}", expected + 2);
        sidecar.wait_for(&up, LIMIT);
        expected += 3;
        forwarder.reopen();
        let last = format!("cache:{}", expected - 1);
        json.wait_object(&format!("round {round}'s last event"), |v| {
            v["event_id"] == last.as_str() && v["type"] == "transition"
        });
    }
    assert!(
        forwarder.accepted() > ROUNDS,
        "the follower reconnected each round"
    );

    // What tether announced (a loaded machine may add a transition to a round, a
    // failed check after a restart, say): the follower must print exactly that.
    let announced = sidecar
        .log()
        .match_indices("event_id=cache:")
        .filter_map(|(at, prefix)| {
            let rest = &sidecar.log()[at + prefix.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .max()
        .expect("tether logged its events");
    let last = format!("cache:{announced}");
    json.wait_object("the last event tether announced", |v| {
        v["event_id"] == last.as_str() && v["type"] == "transition"
    });
    let objects = json.objects();
    let snapshots = objects.iter().filter(|v| v["type"] == "snapshot").count();
    assert_eq!(snapshots, 1, "resumed, not started over: {objects:?}");
    assert!(objects.iter().all(|v| v["type"] != "reset"), "{objects:?}");
    let ids: Vec<u64> = objects
        .iter()
        .filter(|v| v["type"] == "transition")
        .map(|v| {
            let id = v["event_id"].as_str().unwrap();
            id.strip_prefix("cache:").unwrap().parse().unwrap()
        })
        .collect();
    assert!(
        announced >= expected as u64 - 1,
        "three events a round at least"
    );
    let wanted: Vec<u64> = (1..=announced).collect();
    assert_eq!(ids, wanted, "every event once, in order");
    // Stream positions too: none twice, none skipped.
    let positions: BTreeMap<u64, usize> = objects
        .iter()
        .filter(|v| v["type"] == "transition")
        .map(|v| {
            let id = v["id"].as_str().unwrap();
            (id.rsplit(':').next().unwrap().parse().unwrap(), 1)
        })
        .collect();
    assert_eq!(positions.len(), ids.len());
}

#[test]
fn events_ends_quietly_with_0_when_its_reader_goes_away() {
    let mut redis = RedisServer::start();
    let dir = workdir("events-pipe");
    let config = write_config(dir.path(), "127.0.0.1:0", &[("cache", redis.addr())]);
    let (sidecar, addr) = start_sidecar(&config);
    sidecar.wait_for("cache is up", LIMIT);
    // `tether events | head -1`.
    let mut command = tether();
    command
        .args(["events", "--url", &format!("http://{addr}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = process::spawn(command).unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.contains("snapshot"), "{first}");
    // The reader is gone; the next event's line cannot be written.
    redis.kill();
    sidecar.wait_for("cache is down", LIMIT);
    let status = poll_until(LIMIT, || child.try_wait().ok().flatten())
        .expect("tether events exits once nobody reads it");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}
