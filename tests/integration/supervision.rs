//! The supervisor's promise: an actor that panics is restarted on its own, continues
//! its event numbering, and never disturbs the actors of other targets.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    assert_eq!(*observer.restarts.lock().unwrap(), ["fragile"]);

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
