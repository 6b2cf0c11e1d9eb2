//! The supervisor's promise: an actor that panics is restarted on its own, continues
//! its event numbering, and never disturbs the actors of other targets.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

use tether::config::{Config, Target};
use tether::machine::{Event, Transition};
use tether::observe::Observer;
use tether::supervisor::Supervisor;

use crate::harness::{Behaviour, Listener, Record, Recorder};

const LIMIT: Duration = Duration::from_secs(10);

/// Passes reports on to a recorder, panics once inside the first `connect` report of
/// the target named `fragile` (a listener bug is the likeliest panic in a checker),
/// and counts restarts per target.
struct PanicsOnce {
    recorder: Arc<Recorder>,
    armed: AtomicBool,
    restarts: Mutex<Vec<String>>,
}

impl PanicsOnce {
    /// The targets restarted so far, in order.
    fn restarted(&self) -> Vec<String> {
        self.restarts.lock().unwrap().clone()
    }
}

impl Observer for PanicsOnce {
    fn attempt(&self, target: &Target, ok: bool, elapsed: Duration) {
        self.recorder.attempt(target, ok, elapsed);
    }

    fn lost(&self, target: &Target, error: &str) {
        self.recorder.lost(target, error);
    }

    fn transition(&self, target: &Target, t: &Transition) {
        self.recorder.transition(target, t);
        if target.name == "fragile"
            && t.event == Event::Connect
            && self.armed.swap(false, Ordering::AcqRel)
        {
            panic!("deliberate panic in a listener of `fragile`");
        }
    }

    fn restarted(&self, target: &Target) {
        self.restarts.lock().unwrap().push(target.name.clone());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_panics_is_restarted_alone_and_keeps_numbering_its_events() {
    let listener = Listener::start(Behaviour::Hold).await;
    let address = listener.address();
    let toml = format!(
        r#"
        [defaults]
        backoff = {{ initial = "50ms", max = "200ms" }}

        [[targets]]
        name = "fragile"
        address = "{address}"

        [[targets]]
        name = "steady"
        address = "{address}"
        "#
    );
    let config = Config::parse(&toml, "test.toml".as_ref()).unwrap();
    let recorder = Recorder::new();
    let observer = Arc::new(PanicsOnce {
        recorder: recorder.clone(),
        armed: AtomicBool::new(true),
        restarts: Mutex::default(),
    });
    let sup = Supervisor::start(&config, observer.clone());

    let (first, _) = recorder
        .nth_event("fragile", Event::Connect, 1, LIMIT)
        .await;
    let (again, _) = recorder
        .nth_event("fragile", Event::Connect, 2, LIMIT)
        .await;
    assert_eq!(
        (first.seq, again.seq),
        (0, 1),
        "event ids never repeat across a restart"
    );
    assert_eq!(observer.restarted(), ["fragile"]);

    // The other actor connected once and kept its connection throughout.
    recorder.nth_event("steady", Event::Connect, 1, LIMIT).await;
    assert_eq!(recorder.events("steady"), [Event::Connect]);
    assert!(
        !recorder
            .of("steady")
            .iter()
            .any(|r| matches!(r, Record::Lost { .. })),
        "{:?}",
        recorder.of("steady")
    );
    sup.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_panics_lets_go_of_its_connection_before_the_restart_delay() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // The restart is paced like a reconnect: 10 s here, far beyond the test.
    let toml = format!(
        r#"
        [[targets]]
        name = "fragile"
        address = "{address}"
        backoff = {{ initial = "10s", max = "10s", jitter = 0.0 }}
        "#
    );
    let config = Config::parse(&toml, "test.toml".as_ref()).unwrap();
    let recorder = Recorder::new();
    let observer = Arc::new(PanicsOnce {
        recorder: recorder.clone(),
        armed: AtomicBool::new(true),
        restarts: Mutex::default(),
    });
    let sup = Supervisor::start(&config, observer.clone());

    let (mut held, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("tether connects")
        .unwrap();
    recorder
        .nth_event("fragile", Event::Connect, 1, LIMIT)
        .await;
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, held.read(&mut buf))
        .await
        .expect("the connection of the panicked checker is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let closed_after = started.elapsed();
    assert!(closed_after < Duration::from_secs(2), "{closed_after:?}");
    // The restart is reported right after the panicked checker is dropped.
    while observer.restarted().is_empty() {
        assert!(started.elapsed() < LIMIT, "no restart reported");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(observer.restarted(), ["fragile"]);
    sup.shutdown().await;
}
