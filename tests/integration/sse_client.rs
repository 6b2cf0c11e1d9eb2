//! `/events` read by a real SSE client library (Python's sseclient-py) from a real
//! tether process, while two real redis-servers are killed and restarted again and
//! again: across the client's dropped connections and `Last-Event-ID` resumes, the
//! stream tells exactly the story tether's hooks were told.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::python::{python, root};
use crate::support::redis::RedisServer;
use crate::support::tether_process::TetherProcess;
use crate::support::{TestServer, poll, poll_until, workdir};

const LIMIT: Duration = Duration::from_secs(15);

/// Kill-and-restart rounds; each kills and restarts both servers, 200 in all.
const ROUNDS: usize = 100;

/// Every `BURST`-th round restarts the servers without waiting for tether to see them
/// go: the disconnect and the connect then reach the stream and the hooks back to back.
const BURST: usize = 4;

/// Connections the client drops (and resumes) along the way.
const DROPS: usize = 20;

/// A hook appending `<event_id> <event> <state>` to `<dir>/<target>.hooks`: tether's own
/// account of what it announced, one line per event, in order.
fn hook(dir: &Path) -> String {
    format!(
        r#"{{ command = ["/bin/sh", "-c", "echo \"$TETHER_EVENT_ID $TETHER_EVENT $TETHER_STATE\" >> \"$0/$TETHER_TARGET.hooks\"", "{}"] }}"#,
        dir.display()
    )
}

fn target(name: &str, server: &RedisServer, hook: &str) -> String {
    // Reconnects within milliseconds; never `failed`, so each kill is exactly one
    // disconnect and each restart one connect.
    format!(
        "[[targets]]\nname = \"{name}\"\naddress = \"{}\"\nprobe = \"redis\"\n\
         check_interval = \"200ms\"\ncheck_timeout = \"100ms\"\nfailure_threshold = 100000\n\
         backoff = {{ initial = \"5ms\", max = \"20ms\" }}\n\
         [targets.hooks]\non_connect = {hook}\non_disconnect = {hook}\n",
        server.addr()
    )
}

/// The hook lines of `target` so far: (event_id, event, state).
fn hooked(dir: &Path, target: &str) -> Vec<(String, String, String)> {
    std::fs::read_to_string(dir.join(format!("{target}.hooks")))
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let mut f = l.split(' ').map(str::to_owned);
            (
                f.next().unwrap(),
                f.next().unwrap_or_default(),
                f.next().unwrap_or_default(),
            )
        })
        .collect()
}

fn wait_hooks(dir: &Path, counts: [(&str, usize); 2]) {
    poll(LIMIT, &format!("hooks reaching {counts:?}"), || {
        counts.iter().all(|(t, n)| hooked(dir, t).len() >= *n)
    });
}

fn position(id: &str) -> u64 {
    id.rsplit_once(':').unwrap().1.parse().unwrap()
}

fn seq(event_id: &str) -> u64 {
    position(event_id)
}

fn status(addr: SocketAddr) -> crate::endpoint::Reply {
    tokio::runtime::Handle::current().block_on(crate::endpoint::get(addr, "/status"))
}

#[tokio::test(flavor = "multi_thread")]
async fn an_sse_client_library_resuming_twenty_times_sees_every_transition_of_two_hundred_redis_restarts_once()
 {
    tokio::task::block_in_place(sse_client_follows_redis_restarts);
}

fn sse_client_follows_redis_restarts() {
    let python = python();
    let started = Instant::now();
    let dir = workdir("sse-client");
    let hooks = dir.path().join("hooks");
    std::fs::create_dir(&hooks).unwrap();
    let mut servers = [RedisServer::start(), RedisServer::start()];
    let names = ["cache-a", "cache-b"];
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nevents_heartbeat = \"200ms\"\n{}{}",
            target(names[0], &servers[0], &hook(&hooks)),
            target(names[1], &servers[1], &hook(&hooks)),
        ),
    )
    .unwrap();
    let tether = TetherProcess::run(&config, &[]);
    let addr = tether.http_addr(LIMIT);
    wait_hooks(&hooks, [(names[0], 1), (names[1], 1)]);

    let seed = std::env::var("TETHER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                % 1_000_000
        });
    println!("seed {seed} (TETHER_TEST_SEED={seed} repeats this run's drops)");
    let out = dir.path().join("events.jsonl");
    let stop = dir.path().join("stop");
    let mut client = Command::new(&python)
        .arg("-B")
        .arg(root().join("tests/sse/follow.py"))
        .args(["--addr", &addr.to_string(), "--seed", &seed.to_string()])
        .args(["--drops", &DROPS.to_string()])
        // Well inside the 4 * ROUNDS events to come, so every drop happens.
        .args(["--within", &(3 * ROUNDS).to_string()])
        .arg("--out")
        .arg(&out)
        .arg("--stop")
        .arg(&stop)
        .args(["--limit", "80"])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the Python SSE client");
    // Nothing changes until the client has its snapshot: the stream then holds every
    // event after the first connects.
    poll(LIMIT, "the client's snapshot", || {
        std::fs::read_to_string(&out).is_ok_and(|s| s.contains("\"snapshot\""))
    });

    for round in 0..ROUNDS {
        let before = 1 + 2 * round;
        for server in &mut servers {
            server.kill();
        }
        if round % BURST != 0 {
            wait_hooks(&hooks, [(names[0], before + 1), (names[1], before + 1)]);
        }
        for server in &mut servers {
            server.restart();
        }
        wait_hooks(&hooks, [(names[0], before + 2), (names[1], before + 2)]);
    }
    // Ends with one of them down, so the final states differ.
    servers[1].kill();
    let total = 1 + 2 * ROUNDS;
    wait_hooks(&hooks, [(names[0], total), (names[1], total + 1)]);
    let changed = started.elapsed();

    let last = status(addr);
    let index = last.header("x-tether-index").unwrap().to_owned();
    std::fs::write(&stop, &index).unwrap();
    let exited = poll_until(Duration::from_secs(30), || client.try_wait().unwrap());
    let mut stderr = String::new();
    if let Some(mut e) = client.stderr.take() {
        use std::io::Read;
        if exited.is_none() {
            let _ = client.kill();
        }
        let _ = e.read_to_string(&mut stderr);
    }
    let exited = exited.expect("the client reached the final position");
    assert!(exited.success(), "the client failed: {exited}\n{stderr}");

    // What the client saw.
    let lines: Vec<Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kind = |v: &Value| v["type"].as_str().unwrap().to_owned();
    let resumes = lines.iter().filter(|v| kind(v) == "_resume").count();
    assert_eq!(resumes, DROPS, "every drop was resumed");
    assert!(
        !lines.iter().any(|v| kind(v) == "reset"),
        "no resume fell out of the history"
    );
    let snapshots: Vec<&Value> = lines.iter().filter(|v| kind(v) == "snapshot").collect();
    assert_eq!(snapshots.len(), 1, "resumes replay, they do not start over");
    assert_eq!(kind(&lines[0]), "snapshot");
    let mut at = position(lines[0]["id"].as_str().unwrap());
    for doc in snapshots[0]["data"]["status"]["targets"]
        .as_array()
        .unwrap()
    {
        assert_eq!(doc["state"], "up", "{doc}");
    }

    // The stream positions: consecutive after the snapshot, none twice, none missing.
    let mut streamed: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    let mut after_resume = false;
    for v in &lines[1..] {
        match kind(v).as_str() {
            "_resume" => {
                after_resume = true;
                continue;
            }
            "transition" => {}
            other => panic!("unexpected {other} event: {v}"),
        }
        let id = v["id"].as_str().unwrap();
        assert_eq!(
            position(id),
            at + 1,
            "position after {at}{}: {v}",
            if after_resume { " (just resumed)" } else { "" }
        );
        assert_eq!(v["data"]["position"].as_str(), Some(id));
        at += 1;
        after_resume = false;
        let d = &v["data"];
        streamed
            .entry(d["target"].as_str().unwrap().to_owned())
            .or_default()
            .push((
                d["event_id"].as_str().unwrap().to_owned(),
                d["event"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
            ));
    }
    assert_eq!(at, position(&index), "the stream reached /status's index");

    // Per target: exactly the hooks' list after the first connect, in the same order,
    // the event ids consecutive; the last one is /status's final state.
    let doc = last.json();
    for name in names {
        let hooks = hooked(&hooks, name);
        let stream = &streamed[name];
        assert_eq!(
            stream.as_slice(),
            &hooks[1..],
            "{name}: the stream's transitions are the hooks' ones"
        );
        for (i, (event_id, _, _)) in stream.iter().enumerate() {
            assert_eq!(seq(event_id), i as u64 + 1, "{name}: {event_id}");
        }
        let state = doc["targets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap()["state"]
            .as_str()
            .unwrap();
        assert_eq!(stream.last().unwrap().2, state, "{name}: final state");
    }
    let events = lines.len() - 1 - resumes;
    println!(
        "{events} transitions of {} kills and restarts streamed across {resumes} resumes \
         (per target: {:?}); changes took {changed:?}, the whole run {:?}; client: {}",
        2 * ROUNDS,
        streamed
            .iter()
            .map(|(t, e)| (t, e.len()))
            .collect::<Vec<_>>(),
        started.elapsed(),
        stderr.trim()
    );
    assert!(started.elapsed() < Duration::from_secs(90));
    drop(tether);
}
