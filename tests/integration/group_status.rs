//! A failover group as the outside world sees it, from a real `tether run` watching two
//! real redis-servers: `/status` (and so the state file), `/metrics`, the `group` events
//! of `/events`, `/readyz` judging the group rather than its members, and the group's
//! row in `tether status`.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;

use crate::endpoint::{Reply, get};
use crate::events::Client;
use crate::support::TestServer;
use crate::support::eventually;
use crate::support::redis::RedisServer;
use crate::support::tether_process::{TetherProcess, command as tether};

const LIMIT: Duration = Duration::from_secs(20);

/// Reconnects fast so outages take milliseconds.
const FAST: &str = "backoff = { initial = \"10ms\", max = \"50ms\" }\nfailure_threshold = 2\n";

fn config(a: &RedisServer, b: &RedisServer) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "[server]\nlisten = \"127.0.0.1:0\"\n\
         [[targets]]\nname = \"a\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\
         [[targets]]\nname = \"b\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\
         [[groups]]\nname = \"store\"\nmembers = [\"a\", \"b\"]\nfallback = \"memory\"\n",
        a.addr(),
        b.addr()
    )
    .unwrap();
    file
}

/// `/status` once the group satisfies `done`.
async fn group_until(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    eventually(LIMIT, what, || async {
        let doc = get(addr, "/status").await.json();
        done(&doc["groups"][0]).then(|| doc["groups"][0].clone())
    })
    .await
}

fn sample(reply: &Reply, series: &str) -> f64 {
    reply
        .sample(series)
        .unwrap_or_else(|| panic!("no {series} in:\n{}", reply.body))
}

fn one_hot(metrics: &Reply) -> [f64; 3] {
    one_hot_of(metrics, ["a", "b", "memory"])
}

fn tether_status(addr: SocketAddr) -> Output {
    tokio::task::block_in_place(|| {
        tether()
            .args(["status", "--url", &format!("http://{addr}")])
            .output()
            .unwrap()
    })
}

/// The row of the group in `tether status`'s second table.
fn group_row(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("store "))
        .unwrap_or_else(|| panic!("no group row in:\n{text}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_active_member_switches_the_group_everywhere_and_readiness_follows_the_group() {
    let (mut a, mut b) =
        tokio::task::spawn_blocking(|| (RedisServer::start(), RedisServer::start()))
            .await
            .unwrap();
    let config = config(&a, &b);
    let sidecar = tokio::task::block_in_place(|| TetherProcess::run(config.path(), &[]));
    let addr = sidecar.http_addr(LIMIT);

    let first = group_until(addr, "the group on a", |g| g["active"] == "a").await;
    assert_eq!(first["fallback_active"], false);
    assert_eq!(first["members"], serde_json::json!(["a", "b"]));
    assert_eq!(first["role"], Value::Null);
    assert_eq!(get(addr, "/readyz").await.body, "ready\n");
    let metrics = get(addr, "/metrics").await;
    assert_eq!(one_hot(&metrics), [1.0, 0.0, 0.0]);
    let changes = sample(&metrics, "tether_group_changes_total{group=\"store\"}");
    assert!(changes >= 1.0, "{changes}");
    assert!(group_row(&tether_status(addr)).starts_with("store  a "));

    // Only the group's events, from a snapshot that already shows it on a.
    let mut stream = Client::connect(addr, "/events?target=store", "").await;
    let snapshot = stream.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let snapshot: Value = serde_json::from_str(&snapshot.data).unwrap();
    assert_eq!(snapshot["status"]["groups"][0]["active"], "a");

    tokio::task::block_in_place(|| a.kill());
    let switched = stream.next().await;
    assert_eq!(switched.event, "group", "{switched:?}");
    let data: Value = serde_json::from_str(&switched.data).unwrap();
    assert_eq!(
        (&data["group"], &data["event"], &data["active"]),
        (&"store".into(), &"change".into(), &"b".into()),
        "{data}"
    );
    assert_eq!(data["previous_active"], "a");
    assert_eq!(data["reason"], "active-lost");
    assert_eq!(
        Some(data["position"].as_str().unwrap()),
        switched.id.as_deref()
    );

    let now = group_until(addr, "the group on b", |g| g["active"] == "b").await;
    assert_eq!(now["reason"], "active-lost");
    assert_eq!(now["event_id"], data["event_id"], "the event /status names");
    assert_eq!(now["since"], data["timestamp"]);
    let metrics = get(addr, "/metrics").await;
    assert_eq!(one_hot(&metrics), [0.0, 1.0, 0.0]);
    assert_eq!(
        sample(&metrics, "tether_group_changes_total{group=\"store\"}"),
        changes + 1.0
    );
    let ready = get(addr, "/readyz").await;
    assert_eq!(
        (ready.status, ready.body.as_str()),
        (200, "ready\n"),
        "a is down, but the group has b"
    );
    let out = tether_status(addr);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let row = group_row(&out);
    assert!(
        row.starts_with("store  b ") && row.ends_with("active-lost"),
        "{row}"
    );

    tokio::task::block_in_place(|| b.kill());
    let fallback = stream.next().await;
    assert_eq!(fallback.event, "group", "{fallback:?}");
    let data: Value = serde_json::from_str(&fallback.data).unwrap();
    assert_eq!(
        (&data["active"], &data["fallback"]),
        (&"memory".into(), &true.into())
    );
    group_until(addr, "the group in its fallback", |g| {
        g["fallback_active"] == true
    })
    .await;
    let not_ready = get(addr, "/readyz").await;
    assert_eq!(
        (not_ready.status, not_ready.body.as_str()),
        (503, "not ready: group store in fallback\n")
    );
    assert_eq!(one_hot(&get(addr, "/metrics").await), [0.0, 0.0, 1.0]);
    let out = tether_status(addr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(group_row(&out).starts_with("store  memory (fallback) "));
    sidecar.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_adds_a_group_to_status_the_state_file_and_metrics_and_another_takes_it_away() {
    let (a, b) = tokio::task::spawn_blocking(|| (RedisServer::start(), RedisServer::start()))
        .await
        .unwrap();
    let dir = crate::support::workdir("group-reload");
    let state = dir.path().join("state.json");
    let config = dir.path().join("tether.toml");
    let targets = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{}\"\n\
         [[targets]]\nname = \"a\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\
         [[targets]]\nname = \"b\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}",
        state.display(),
        a.addr(),
        b.addr()
    );
    let group = "[[groups]]\nname = \"store\"\nmembers = [\"b\", \"a\"]\nfallback = \"memory\"\n";
    std::fs::write(&config, &targets).unwrap();
    let sidecar = tokio::task::block_in_place(|| TetherProcess::run(&config, &[]));
    let addr = sidecar.http_addr(LIMIT);
    tokio::task::block_in_place(|| {
        sidecar.wait_for("a is up", LIMIT);
        sidecar.wait_for("b is up", LIMIT);
    });
    let doc = get(addr, "/status").await.json();
    assert!(doc.get("groups").is_none(), "no groups, no key: {doc}");
    assert!(!get(addr, "/metrics").await.body.contains("tether_group_"));

    std::fs::write(&config, format!("{targets}{group}")).unwrap();
    sidecar.signal(nix::sys::signal::Signal::SIGHUP);
    // Both members are up: the added group decides as it starts.
    let g = group_until(addr, "the added group on b", |g| g["active"] == "b").await;
    assert_eq!(g["reason"], "preferred-eligible");
    assert_eq!(get(addr, "/readyz").await.status, 200);
    assert_eq!(
        one_hot_of(&get(addr, "/metrics").await, ["b", "a", "memory"]),
        [1.0, 0.0, 0.0]
    );
    let written = eventually(LIMIT, "the group in the state file", || async {
        let text = std::fs::read_to_string(&state).ok()?;
        let doc: Value = serde_json::from_str(&text).ok()?;
        (doc["groups"][0]["active"] == "b").then_some(doc)
    })
    .await;
    assert_eq!(written["groups"][0]["event_id"], g["event_id"]);

    std::fs::write(&config, &targets).unwrap();
    sidecar.signal(nix::sys::signal::Signal::SIGHUP);
    eventually(LIMIT, "the group gone from /status", || async {
        get(addr, "/status")
            .await
            .json()
            .get("groups")
            .is_none()
            .then_some(())
    })
    .await;
    let metrics = get(addr, "/metrics").await;
    assert!(!metrics.body.contains("tether_group_"), "{}", metrics.body);
    sidecar.stop();
}

fn one_hot_of(metrics: &Reply, members: [&str; 3]) -> [f64; 3] {
    members.map(|m| {
        sample(
            metrics,
            &format!("tether_group_active{{group=\"store\",member=\"{m}\"}}"),
        )
    })
}
