//! The HTTP endpoints as an operator, a kubelet and an abusive client see them:
//! `/healthz`, `/readyz` and `/status` over real loopback sockets, the state file, and
//! the server's defences against idle and slow clients.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tether::config::Config;
use tether::net::Hangup;
use tether::telemetry::Telemetry;
use tether::telemetry::http::{App, HttpServer, Limits};
use tether::telemetry::metrics::Metrics;
use tether::telemetry::status::Status;
use tether::watch::loss::Loss;
use tether::watch::machine::{Event, State, Transition};
use tether::watch::observe::Observer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::endpoint::{Sidecar, get, raise_open_files_limit, request};
use crate::support::eventually;
use crate::support::harness::{Behaviour, Listener, dead_port};

/// Reconnects fast so outages and returns take milliseconds.
const FAST: &str = "backoff = { initial = \"10ms\", max = \"50ms\" }\nfailure_threshold = 2\n";

fn target(name: &str, address: &str, extra: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\naddress = \"{address}\"\n{FAST}{extra}")
}

#[tokio::test(flavor = "multi_thread")]
async fn healthz_answers_while_the_sidecar_runs_and_other_requests_are_refused() {
    let sidecar = Sidecar::start(&target("dep", &format!("127.0.0.1:{}", dead_port()), "")).await;
    let addr = sidecar.addr();

    let ok = sidecar.get("/healthz").await;
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"));

    assert_eq!(sidecar.get("/nothing-here").await.status, 404);

    let post = request(
        addr,
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET"));

    let with_body = request(
        addr,
        b"GET /status HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await
    .unwrap();
    assert_eq!(with_body.status, 413);

    let huge = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(request(addr, huge.as_bytes()).await.unwrap().status, 431);

    let many: String = (0..100).map(|i| format!("X-H{i}: 1\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let refused = request(addr, many.as_bytes()).await.unwrap();
    assert!(refused.status >= 400, "100 headers accepted: {refused:?}");

    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn startupz_is_503_until_every_first_attempt_has_ended_even_one_that_fails() {
    // `silent` accepts but never answers PING: its first attempt lasts check_timeout.
    let silent = Listener::start(Behaviour::Hold).await;
    let up = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&format!(
        "{}{}",
        target(
            "silent",
            &silent.address(),
            "probe = \"redis\"\ncheck_interval = \"10s\"\ncheck_timeout = \"3s\"\n"
        ),
        target("up", &up.address(), "")
    ))
    .await;
    eventually(Duration::from_secs(10), "up connected", || async {
        (sidecar.telemetry.status().target("up")?.state == State::Up).then_some(())
    })
    .await;
    let waiting = sidecar.get("/startupz").await;
    assert_eq!(
        (waiting.status, waiting.body.as_str()),
        (503, "starting: silent without a first answer\n"),
        "the silent target's first attempt is still pending"
    );
    let started = Instant::now();
    let done = eventually(Duration::from_secs(10), "200 from /startupz", || async {
        let r = sidecar.get("/startupz").await;
        (r.status == 200).then_some(r)
    })
    .await;
    println!(
        "/startupz turned 200 {:?} after the first 503",
        started.elapsed()
    );
    assert_eq!(done.body, "started\n");
    assert_eq!(
        sidecar.telemetry.status().target("silent").unwrap().state,
        State::Down,
        "started means known, not up"
    );
    assert_eq!(sidecar.get("/readyz").await.status, 503);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_poll_on_status_returns_with_the_next_transition_and_not_before() {
    let mut db = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&target("db", &db.address(), "")).await;
    // The document may show `up` a moment before its index counts the connect (the
    // index is taken first, so no change is missed): wait for both.
    let first = eventually(Duration::from_secs(10), "db up", || async {
        let r = sidecar.get("/status").await;
        let counted = r
            .header("x-tether-index")
            .and_then(|i| i.rsplit_once(':'))
            .is_some_and(|(_, p)| p.parse::<u64>().is_ok_and(|p| p >= 1));
        (r.body.contains("\"up\"") && counted).then_some(r)
    })
    .await;
    let index = first
        .header("x-tether-index")
        .expect("X-Tether-Index")
        .to_owned();
    let (instance, position) = index.rsplit_once(':').unwrap();
    assert_eq!(instance, tether::instance::id());
    assert!(
        position.parse::<u64>().unwrap() >= 1,
        "db's connect moved it: {index}"
    );

    // Nothing happens: the answer comes at `wait`, with the same index.
    let started = Instant::now();
    let quiet = sidecar.get(&format!("/status?index={index}&wait=1s")).await;
    let waited = started.elapsed();
    println!("a long-poll without a change answered after {waited:?}");
    assert_eq!(quiet.status, 200);
    assert!(
        waited >= Duration::from_millis(990),
        "returned early: {waited:?}"
    );
    assert_eq!(quiet.header("x-tether-index"), Some(index.as_str()));

    // A transition ends the wait at once.
    let poll = {
        let addr = sidecar.addr();
        let path = format!("/status?index={index}&wait=20s");
        tokio::spawn(async move {
            let reply = crate::endpoint::get(addr, &path).await;
            (reply, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "answered before anything happened");
    let killed = Instant::now();
    db.kill().await;
    let (reply, answered) = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the long-poll answered")
        .unwrap();
    println!(
        "the long-poll answered {:?} after the kill",
        answered - killed
    );
    assert!(answered - killed < Duration::from_secs(2));
    assert_ne!(reply.header("x-tether-index"), Some(index.as_str()));
    assert!(
        reply.body.contains("\"down\"") || reply.body.contains("\"failed\""),
        "{}",
        reply.body
    );

    // An index from another run of tether answers at once; a malformed one is refused.
    let started = Instant::now();
    let other = sidecar
        .get("/status?index=0123456789abcdef:7&wait=20s")
        .await;
    assert_eq!(other.status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(sidecar.get("/status?index=7&wait=1s").await.status, 400);
    assert_eq!(sidecar.get("/status?wait=1s").await.status, 400);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_flips_to_503_while_a_required_target_is_down_and_ignores_an_optional_one() {
    let mut db = Listener::start(Behaviour::Hold).await;
    let optional = format!("127.0.0.1:{}", dead_port());
    let sidecar = Sidecar::start(&format!(
        "{}{}",
        target("db", &db.address(), ""),
        target("optional", &optional, "required = false\n")
    ))
    .await;

    // The optional target never connects, yet the sidecar becomes ready.
    let ready = eventually(Duration::from_secs(10), "200 from /readyz", || async {
        let r = sidecar.get("/readyz").await;
        (r.status == 200).then_some(r)
    })
    .await;
    assert_eq!(ready.body, "ready\n");
    assert_ne!(
        sidecar.telemetry.status().target("optional").unwrap().state,
        State::Up
    );

    db.kill().await;
    let down = eventually(Duration::from_secs(10), "503 from /readyz", || async {
        let r = sidecar.get("/readyz").await;
        (r.status == 503).then_some(r)
    })
    .await;
    assert_eq!(down.body, "not ready: db not up\n");

    db.restore(Behaviour::Hold).await;
    eventually(
        Duration::from_secs(10),
        "200 again from /readyz",
        || async { (sidecar.get("/readyz").await.status == 200).then_some(()) },
    )
    .await;

    sidecar.telemetry.stopping();
    assert_eq!(
        sidecar.get("/readyz").await.body,
        "stopping\n",
        "a stopping sidecar is not ready"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn status_reflects_a_transition_within_milliseconds() {
    let mut dep = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&target("dep", &dep.address(), "")).await;
    sidecar
        .recorder
        .nth_event("dep", Event::Connect, 1, Duration::from_secs(10))
        .await;
    dep.kill().await;
    let (t, seen) = sidecar
        .recorder
        .nth_event("dep", Event::Disconnect, 1, Duration::from_secs(10))
        .await;
    let doc = sidecar.get("/status").await.json();
    let lag = seen.elapsed();
    let entry = &doc["targets"][0];
    assert_ne!(entry["state"], "up", "{doc:#}");
    assert_eq!(entry["event_id"], format!("dep:{}", t.seq), "{doc:#}");
    println!("/status showed the disconnect {lag:?} after the checker published it");
    assert!(
        lag < Duration::from_millis(100),
        "/status took {lag:?} to show the transition"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_document_lists_every_target_with_the_documented_fields() {
    let dep = Listener::start(Behaviour::Hold).await;
    let dead = format!("127.0.0.1:{}", dead_port());
    let sidecar = Sidecar::start(&format!(
        "{}{}",
        target("web", &dep.address(), "probe = \"tcp\"\n"),
        target("cache", &dead, "required = false\n")
    ))
    .await;
    sidecar
        .recorder
        .nth_event("web", Event::Connect, 1, Duration::from_secs(10))
        .await;
    sidecar
        .recorder
        .nth_event("cache", Event::Failure, 1, Duration::from_secs(10))
        .await;

    let reply = sidecar.get("/status").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let doc = reply.json();
    let top: BTreeSet<&str> = doc
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(
        top,
        BTreeSet::from([
            "generated_at",
            "instance",
            "ready",
            "stopping",
            "targets",
            "version"
        ])
    );
    assert_eq!(doc["ready"], true, "cache is optional: {doc:#}");
    humantime::parse_rfc3339(doc["generated_at"].as_str().unwrap()).unwrap();
    assert_eq!(doc["instance"], tether::instance::id());

    let targets = doc["targets"].as_array().unwrap();
    let names: Vec<&str> = targets
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cache", "web"], "sorted by name");
    let fields = BTreeSet::from([
        "address",
        "event",
        "event_id",
        "failures",
        "fallback",
        "last_error",
        "name",
        "probe",
        "required",
        "role",
        "since",
        "state",
    ]);
    for t in targets {
        let keys: BTreeSet<&str> = t.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, fields, "{t:#}");
        humantime::parse_rfc3339(t["since"].as_str().unwrap()).unwrap();
    }
    let (cache, web) = (&targets[0], &targets[1]);
    assert_eq!(web["state"], "up");
    assert_eq!(web["address"], dep.address());
    assert_eq!(web["probe"], "tcp");
    assert_eq!(web["failures"], 0);
    assert_eq!(web["last_error"], serde_json::Value::Null);
    assert_eq!(web["event"], "connect");
    assert_eq!(web["event_id"], "web:0");
    assert_eq!(
        web["role"],
        serde_json::Value::Null,
        "a tcp probe learns no role"
    );
    assert_eq!(cache["state"], "failed");
    assert_eq!(cache["required"], false);
    assert_eq!(cache["fallback"], true);
    assert!(cache["failures"].as_u64().unwrap() >= 2, "{cache:#}");
    let error = cache["last_error"].as_str().unwrap();
    assert!(error.contains("refused"), "{error}");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_file_holds_the_status_document_after_every_change_and_is_never_torn() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let mut dep = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nstate_file = \"{}\"\n{}",
        path.display(),
        target("dep", &dep.address(), "")
    ))
    .await;

    // A reader in another process's shoes: every read must be a whole document.
    let stop_reading = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (path, stop) = (path.clone(), stop_reading.clone());
        move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let bytes = std::fs::read(&path).expect("the state file always exists");
                serde_json::from_slice::<serde_json::Value>(&bytes).unwrap_or_else(|e| {
                    panic!("torn state file ({e}): {}", String::from_utf8_lossy(&bytes))
                });
                reads += 1;
                // Paced, not spinning: thousands of reads a second still catch a torn
                // write, without taking a whole core from the sidecar under test.
                std::thread::sleep(Duration::from_micros(200));
            }
            reads
        }
    });

    let state_in_file = || {
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        doc["targets"][0]["state"].as_str().unwrap().to_owned()
    };
    eventually(Duration::from_secs(10), "up in the state file", || async {
        (state_in_file() == "up").then_some(())
    })
    .await;
    dep.kill().await;
    eventually(
        Duration::from_secs(10),
        "down in the state file",
        || async { (state_in_file() != "up").then_some(()) },
    )
    .await;
    dep.restore(Behaviour::Hold).await;
    eventually(
        Duration::from_secs(10),
        "up again in the state file",
        || async { (state_in_file() == "up").then_some(()) },
    )
    .await;

    sidecar.stop().await;
    stop_reading.store(true, Ordering::Relaxed);
    let reads = reader.join().unwrap();
    assert!(reads > 0);

    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(file["stopping"], true, "the last write follows the stop");
    assert_eq!(
        file["targets"][0]["name"], "dep",
        "targets are kept at stop"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["state.json"], "no temporary file left behind");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_file_in_a_missing_directory_stops_the_start() {
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_file = \"/nonexistent/dir/state.json\"\n{}",
            target("dep", "127.0.0.1:1", "")
        ),
        "test.toml".as_ref(),
    )
    .unwrap();
    let Err(e) = Telemetry::start(&config).await else {
        panic!("started with an unwritable state file");
    };
    assert!(
        e.to_string()
            .contains("cannot write the state file /nonexistent/dir/state.json"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_already_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let config = Config::parse(
        &format!(
            "[server]\nlisten = \"{addr}\"\n{}",
            target("dep", "127.0.0.1:1", "")
        ),
        "test.toml".as_ref(),
    )
    .unwrap();
    let Err(e) = Telemetry::start(&config).await else {
        panic!("bound a port that is taken");
    };
    let message = e.to_string();
    assert!(
        message.contains(&format!("cannot listen on {addr} ([server] listen)"))
            && message.contains("in use"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_server_stops_when_its_shutdown_future_resolves() {
    let config = Config::parse(&target("dep", "127.0.0.1:1", ""), "test.toml".as_ref()).unwrap();
    let app = App {
        status: Arc::new(Status::new(&config)),
        metrics: Arc::new(Metrics::new(&config).unwrap()),
        events: Arc::default(),
        admin: Default::default(),
    };
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), app, Limits::default())
        .await
        .unwrap();
    let addr = server.local_addr().expect("a TCP listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    // A kept-alive client, idle between requests, must not hold the shutdown up.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(idle.read(&mut buf).await.unwrap() > 0);
    assert_eq!(get(addr, "/healthz").await.status, 200);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), running)
        .await
        .expect("the server stops within its grace period")
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still listening");
    let closed = tokio::time::timeout(Duration::from_secs(1), idle.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the kept-alive connection was not closed: {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_idle_connections_do_not_stop_healthz_answering_another_client() {
    raise_open_files_limit();
    let sidecar = Sidecar::start(&target("dep", &format!("127.0.0.1:{}", dead_port()), "")).await;
    let addr = sidecar.addr();
    let flood = Instant::now();
    let mut idle = Vec::with_capacity(1000);
    for _ in 0..1000 {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let opened = flood.elapsed();

    let started = Instant::now();
    let reply = get(addr, "/healthz").await;
    let latency = started.elapsed();
    assert_eq!(reply.status, 200);
    println!("1000 idle connections opened in {opened:?}; /healthz then answered in {latency:?}");
    // Queued behind idle connections until their header timeout, it would take seconds.
    assert!(
        flood.elapsed() < Duration::from_secs(3),
        "flood {opened:?}, /healthz {latency:?}"
    );

    // The server holds at most `max_connections`: the oldest idle ones were let go.
    let bound = Limits::default().max_connections;
    let closed = eventually(Duration::from_secs(5), "idle connections closed", || {
        // EOF or a reset: the server closed it; WouldBlock: still open.
        let closed = idle
            .iter()
            .filter(|s| {
                !matches!(s.try_read(&mut [0u8; 1]),
                    Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .count();
        std::future::ready((closed >= 1000 - bound).then_some(closed))
    })
    .await;
    println!("{closed} of 1000 idle connections were closed by the server");
    drop(idle);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_a_header_byte_per_second_is_cut_off_without_delaying_others() {
    let sidecar = Sidecar::start(&target("dep", &format!("127.0.0.1:{}", dead_port()), "")).await;
    let addr = sidecar.addr();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    let slowloris = tokio::spawn(async move {
        let head = b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ";
        for byte in head.iter().chain(std::iter::repeat(&b'a')) {
            // Pacing is the behaviour under test here, not a synchronisation.
            if slow.write_all(&[*byte]).await.is_err() {
                break;
            }
            let mut buf = [0u8; 1024];
            tokio::select! {
                read = slow.read(&mut buf) => match read {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            if opened.elapsed() > Duration::from_secs(15) {
                panic!("the slow client was never cut off");
            }
        }
        opened.elapsed()
    });

    // While the slow client trickles, another one is served at once, twice.
    for _ in 0..2 {
        let started = Instant::now();
        assert_eq!(get(addr, "/healthz").await.status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(1500)).await;
    }
    let cut_after = slowloris.await.unwrap();
    println!("the slow client was cut off after {cut_after:?}");
    let timeout = Limits::default().header_read_timeout;
    assert!(
        cut_after >= timeout - Duration::from_millis(500)
            && cut_after < timeout + Duration::from_secs(3),
        "cut off after {cut_after:?}, header timeout {timeout:?}"
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_endpoints_stay_responsive_while_two_thousand_targets_change_state() {
    let targets: String = (0..2000)
        .map(|i| {
            format!(
                "[[targets]]\nname = \"t{i}\"\naddress = \"127.0.0.1:{}\"\n",
                1 + i % 60000
            )
        })
        .collect();
    let config = Config::parse(
        &format!("[server]\nlisten = \"127.0.0.1:0\"\n{targets}"),
        "test.toml".as_ref(),
    )
    .unwrap();
    let telemetry = Telemetry::start(&config).await.unwrap();
    let addr = telemetry.http_addr().expect("listen is set");
    let observer = Arc::new(telemetry.observers());
    let waiting = get(addr, "/readyz").await;
    assert_eq!(waiting.status, 503);
    assert!(
        waiting.body.starts_with("not ready: t0, t1, t10, ")
            && waiting.body.ends_with(" and 1990 more not up\n"),
        "a mass outage is summed up: {}",
        waiting.body
    );

    // One thread plays every checker at once, as fast as it can: each round takes every
    // target up or down.
    let stop = Arc::new(AtomicBool::new(false));
    let churn = std::thread::spawn({
        let (config, observer, stop) = (config.clone(), observer.clone(), stop.clone());
        move || {
            let targets: Vec<Arc<tether::config::Target>> =
                config.targets.iter().cloned().map(Arc::new).collect();
            let mut transitions = 0u64;
            let mut seq = 0;
            while !stop.load(Ordering::Relaxed) {
                let (previous, state, event) = if seq % 2 == 0 {
                    (State::Connecting, State::Up, Event::Connect)
                } else {
                    (State::Up, State::Down, Event::Disconnect)
                };
                for t in &targets {
                    observer.attempt(t, state == State::Up, Duration::from_micros(200));
                    observer.transition(
                        t,
                        &Transition {
                            seq,
                            event,
                            previous,
                            state,
                            failures: u32::from(state != State::Up),
                            last_error: (state != State::Up)
                                .then(|| Arc::new(Loss::from(Hangup::Reset))),
                            at: SystemTime::now(),
                        },
                    );
                    transitions += 1;
                }
                seq += 1;
            }
            transitions
        }
    });

    let mut worst = std::collections::BTreeMap::<&str, Duration>::new();
    let measuring = Instant::now();
    while measuring.elapsed() < Duration::from_secs(3) {
        for path in ["/healthz", "/readyz", "/status", "/metrics"] {
            let started = Instant::now();
            let reply = get(addr, path).await;
            assert!(reply.status == 200 || (path == "/readyz" && reply.status == 503));
            let took = started.elapsed();
            let w = worst.entry(path).or_default();
            *w = (*w).max(took);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let transitions = churn.join().unwrap();
    println!("{transitions} transitions in 3 s; slowest answers: {worst:?}");
    assert!(transitions > 2000, "the churn did not run");
    for probe in ["/healthz", "/readyz"] {
        assert!(
            worst[probe] < Duration::from_millis(500),
            "{probe}: {worst:?}"
        );
    }
    // The big documents grow with the number of targets; they must still come quickly.
    for document in ["/status", "/metrics"] {
        assert!(
            worst[document] < Duration::from_secs(3),
            "{document}: {worst:?}"
        );
    }
    telemetry.stop().await;
}

/// A server of its own with `limits`, for tests of its defences; stopped on drop of the
/// returned sender.
async fn server_with(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let config = Config::parse(&target("dep", "127.0.0.1:1", ""), "test.toml".as_ref()).unwrap();
    let app = App {
        status: Arc::new(Status::new(&config)),
        metrics: Arc::new(Metrics::new(&config).unwrap()),
        events: Arc::default(),
        admin: Default::default(),
    };
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), app, limits)
        .await
        .unwrap();
    let addr = server.local_addr().expect("a TCP listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_flood_arriving_while_connections_close_gracefully_does_not_delay_healthz() {
    let limits = Limits {
        max_connections: 8,
        header_read_timeout: Duration::from_secs(20),
        max_connection_age: Duration::from_millis(200),
        close_grace: Duration::from_secs(20),
    };
    let (addr, _stop) = server_with(limits).await;
    // Every slot taken by a client stuck in the middle of its request head: past the
    // connection age, each is asked to close and waits, within its grace, for the rest.
    let mut stuck = Vec::new();
    for _ in 0..limits.max_connections {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: stuck\r\n")
            .await
            .unwrap();
        stuck.push(s);
    }
    // Passing the age limit is the condition under test, not a synchronisation.
    tokio::time::sleep(limits.max_connection_age * 3).await;

    let flood = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..limits.max_connections {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let reply = get(addr, "/healthz").await;
    let latency = started.elapsed();
    println!(
        "/healthz answered in {latency:?} after an idle flood over closing connections ({:?} in all)",
        flood.elapsed()
    );
    assert_eq!(reply.status, 200);
    assert!(latency < Duration::from_secs(1), "took {latency:?}");
    // The closing connections were the oldest, so they gave up their slots.
    let closed = eventually(
        Duration::from_secs(5),
        "closing connections evicted",
        || {
            let closed = stuck
                .iter()
                .filter(|s| {
                    !matches!(s.try_read(&mut [0u8; 1]),
                    Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
                })
                .count();
            std::future::ready((closed == stuck.len()).then_some(closed))
        },
    )
    .await;
    assert_eq!(closed, limits.max_connections);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_half_closes_after_its_request_still_gets_its_answer() {
    let sidecar = Sidecar::start(&target("dep", &format!("127.0.0.1:{}", dead_port()), "")).await;
    let addr = sidecar.addr();
    for path in ["/healthz", "/status"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: nc\r\n\r\n").as_bytes())
            .await
            .unwrap();
        // shutdown(SHUT_WR), as `nc -N` does once its input has been sent.
        stream.shutdown().await.unwrap();
        let mut answer = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            matches!(read, Ok(Ok(_))),
            "{path}: no complete answer: {read:?} {answer:?}"
        );
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{path}: {answer:?}"
        );
    }
    sidecar.stop().await;
}
