//! `GET /events` read as a client reads it: a snapshot, then every transition in order,
//! resumed after a dropped connection without loss, `reset` when the position is gone,
//! and a stream that outlives the HTTP server's connection age.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tether::config::Config;
use tether::telemetry::http::{App, HttpServer, Limits};
use tether::telemetry::metrics::Metrics;
use tether::telemetry::status::Status;
use tether::watch::machine::{Event, State, Transition};
use tether::watch::observe::Observer;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use crate::endpoint::Sidecar;
use crate::support::eventually;
use crate::support::harness::{Behaviour, Listener, target};

const LIMIT: Duration = Duration::from_secs(10);

/// One Server-Sent Event.
#[derive(Debug, Default)]
pub(crate) struct Sse {
    pub(crate) id: Option<String>,
    pub(crate) event: String,
    pub(crate) data: String,
}

/// A deliberately plain SSE client: HTTP/1.0, so the body is the stream itself.
pub(crate) struct Client {
    lines: BufReader<OwnedReadHalf>,
    _write: tokio::net::tcp::OwnedWriteHalf,
}

impl Client {
    pub(crate) async fn connect(addr: SocketAddr, path: &str, headers: &str) -> Client {
        let stream = TcpStream::connect(addr).await.unwrap();
        let (read, mut write) = stream.into_split();
        write
            .write_all(format!("GET {path} HTTP/1.0\r\n{headers}\r\n").as_bytes())
            .await
            .unwrap();
        let mut lines = BufReader::new(read);
        let mut status = String::new();
        lines.read_line(&mut status).await.unwrap();
        assert!(status.contains(" 200 "), "{status}");
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            lines.read_line(&mut line).await.unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        assert!(
            head.iter()
                .any(|h| h.starts_with("content-type: text/event-stream")),
            "{head:?}"
        );
        Client {
            lines,
            _write: write,
        }
    }

    /// The next event (comments such as heartbeats skipped), within `LIMIT`.
    pub(crate) async fn next(&mut self) -> Sse {
        tokio::time::timeout(LIMIT, async {
            let mut sse = Sse::default();
            loop {
                let mut line = String::new();
                let n = self.lines.read_line(&mut line).await.unwrap();
                assert!(n > 0, "the stream ended");
                let line = line.trim_end_matches(['\r', '\n']);
                if line.is_empty() {
                    if !sse.event.is_empty() {
                        return sse;
                    }
                    continue;
                }
                match line.split_once(": ") {
                    Some(("id", v)) => sse.id = Some(v.to_owned()),
                    Some(("event", v)) => sse.event = v.to_owned(),
                    Some(("data", v)) => sse.data = v.to_owned(),
                    _ => {}
                }
            }
        })
        .await
        .expect("an event within the limit")
    }
}

/// The endpoints alone, without actors, so a test can publish events itself; the
/// server stops when the returned sender is dropped.
async fn serve(
    config: &Config,
    limits: Limits,
) -> (App, SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let app = App {
        status: Arc::new(Status::new(config)),
        metrics: Arc::new(Metrics::new(config).unwrap()),
        events: Arc::default(),
    };
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), app.clone(), limits)
        .await
        .unwrap();
    let addr = server.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (app, addr, stop)
}

fn position(id: &str) -> u64 {
    id.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_gets_a_snapshot_then_each_transition_and_resumes_without_loss() {
    let mut db = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&target("db", &db.address(), "")).await;
    eventually(LIMIT, "db up", || async {
        sidecar
            .get("/status")
            .await
            .body
            .contains("\"up\"")
            .then_some(())
    })
    .await;

    let mut client = Client::connect(sidecar.addr(), "/events", "").await;
    let snapshot = client.next().await;
    assert_eq!(snapshot.event, "snapshot");
    assert!(snapshot.data.contains("\"status\""), "{}", snapshot.data);
    let at = position(snapshot.id.as_deref().unwrap());

    db.kill().await;
    let lost = client.next().await;
    assert_eq!(lost.event, "transition");
    assert!(
        lost.data.contains("\"event\":\"disconnect\""),
        "{}",
        lost.data
    );
    let lost_id = lost.id.unwrap();
    assert_eq!(
        position(&lost_id),
        at + 1,
        "the next position, none skipped"
    );
    drop(client);

    // While nobody listens, the target comes back.
    db.restore(Behaviour::Hold).await;
    eventually(LIMIT, "db up again", || async {
        sidecar
            .get("/status")
            .await
            .body
            .contains("\"up\"")
            .then_some(())
    })
    .await;
    let mut resumed = Client::connect(
        sidecar.addr(),
        "/events",
        &format!("Last-Event-ID: {lost_id}\r\n"),
    )
    .await;
    let missed = resumed.next().await;
    assert_eq!(
        missed.event, "transition",
        "no snapshot on a resume: {missed:?}"
    );
    assert!(
        missed.data.contains("\"event\":\"connect\""),
        "{}",
        missed.data
    );
    assert_eq!(position(missed.id.as_deref().unwrap()), at + 2);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_position_from_another_run_gets_reset_then_a_snapshot() {
    let db = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&target("db", &db.address(), "")).await;
    let mut client = Client::connect(sidecar.addr(), "/events?since=0123456789abcdef:42", "").await;
    assert_eq!(client.next().await.event, "reset");
    assert_eq!(client.next().await.event, "snapshot");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_outlives_the_connection_age_and_a_filter_keeps_its_targets() {
    let config = Config::parse(
        &format!(
            "{}{}",
            target("a", "127.0.0.1:1", ""),
            target("b", "127.0.0.1:2", "")
        ),
        "test.toml".as_ref(),
    )
    .unwrap();
    let limits = Limits {
        max_connection_age: Duration::from_millis(200),
        close_grace: Duration::from_millis(100),
        ..Limits::default()
    };
    let (app, addr, stop) = serve(&config, limits).await;

    let mut client = Client::connect(addr, "/events?target=b", "").await;
    assert_eq!(client.next().await.event, "snapshot");
    // Well past the age at which any other connection is closed.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let targets: Vec<Arc<tether::config::Target>> =
        config.targets.iter().cloned().map(Arc::new).collect();
    for (seq, t) in targets.iter().enumerate() {
        app.events.transition(
            t,
            &Transition {
                seq: seq as u64,
                event: Event::Connect,
                previous: State::Connecting,
                state: State::Up,
                failures: 0,
                last_error: None,
                at: SystemTime::now(),
            },
        );
    }
    let only = client.next().await;
    assert!(
        only.data.contains("\"target\":\"b\""),
        "a's event is filtered out: {only:?}"
    );
    drop(stop);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_holds_back_nobody_and_gets_reset_when_it_reads_again() {
    let config = Config::parse(&target("a", "127.0.0.1:1", ""), "test.toml".as_ref()).unwrap();
    let (app, addr, stop) = serve(&config, Limits::default()).await;
    let mut stalled = Client::connect(addr, "/events", "").await;
    assert_eq!(stalled.next().await.event, "snapshot");
    let mut reader = Client::connect(addr, "/events", "").await;
    let first = position(reader.next().await.id.as_deref().unwrap());

    // 20,000 events (several MB of stream), in rounds the live reader keeps up with;
    // the stalled one reads nothing meanwhile.
    let a = Arc::new(config.targets[0].clone());
    let started = std::time::Instant::now();
    let mut expected = first;
    for round in 0..200 {
        for i in 0..100 {
            let seq = round * 100 + i;
            app.events.transition(
                &a,
                &Transition {
                    seq,
                    event: if seq % 2 == 0 {
                        Event::Disconnect
                    } else {
                        Event::Connect
                    },
                    previous: State::Up,
                    state: State::Up,
                    failures: 0,
                    last_error: None,
                    at: SystemTime::now(),
                },
            );
        }
        for _ in 0..100 {
            let e = reader.next().await;
            expected += 1;
            assert_eq!(
                (e.event.as_str(), position(e.id.as_deref().unwrap())),
                ("transition", expected),
                "the live reader sees every event once, in order"
            );
        }
    }
    println!(
        "20,000 events reached the live reader in {:?}",
        started.elapsed()
    );

    // The stalled subscriber reads again: what it buffered, then the truth about the rest.
    // Its socket buffers held some of the stream: those come first, consecutive; a
    // gap is never skipped in silence.
    let mut saw_reset = false;
    let mut last = None;
    for _ in 0..30_000 {
        let e = stalled.next().await;
        if e.event == "reset" {
            saw_reset = true;
            break;
        }
        let at = position(e.id.as_deref().unwrap());
        if let Some(last) = last {
            assert_eq!(at, last + 1, "a gap without a reset");
        }
        last = Some(at);
    }
    println!(
        "the stalled subscriber had {:?} buffered before its reset",
        last.map(|l| l - first)
    );
    assert!(saw_reset, "a subscriber that fell behind is told so");
    assert_eq!(stalled.next().await.event, "snapshot");
    drop(stop);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_history_and_heartbeat_follow_their_settings() {
    let db = Listener::start(Behaviour::Hold).await;
    let sidecar = Sidecar::start(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nevents_history = 2\nevents_heartbeat = \"200ms\"\n{}",
        target("db", &db.address(), "")
    ))
    .await;
    let mut client = Client::connect(sidecar.addr(), "/events", "").await;
    assert_eq!(client.next().await.event, "snapshot");
    // An idle stream gets a comment at the configured interval.
    let started = std::time::Instant::now();
    tokio::time::timeout(LIMIT, async {
        loop {
            let mut line = String::new();
            client.lines.read_line(&mut line).await.unwrap();
            if line.starts_with(": heartbeat") {
                break;
            }
        }
    })
    .await
    .expect("a heartbeat");
    println!("first heartbeat after {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(2));

    // Three events with a history of two: a resume from before them is told `reset`.
    let before = sidecar
        .get("/status")
        .await
        .header("x-tether-index")
        .unwrap()
        .to_owned();
    let mut db = db;
    for _ in 0..2 {
        db.kill().await;
        eventually(LIMIT, "db down", || async {
            sidecar
                .get("/status")
                .await
                .body
                .contains("\"down\"")
                .then_some(())
        })
        .await;
        db.restore(Behaviour::Hold).await;
        eventually(LIMIT, "db up", || async {
            sidecar
                .get("/status")
                .await
                .body
                .contains("\"up\"")
                .then_some(())
        })
        .await;
    }
    let now = sidecar.get("/status").await;
    assert!(position(now.header("x-tether-index").unwrap()) >= position(&before) + 4);
    let mut late = Client::connect(
        sidecar.addr(),
        "/events",
        &format!("Last-Event-ID: {before}\r\n"),
    )
    .await;
    assert_eq!(late.next().await.event, "reset");
    assert_eq!(late.next().await.event, "snapshot");
    sidecar.stop().await;
}
