//! The supervisor's promise: a checker that panics is restarted on its own, lets go of
//! its connection, continues its event numbering without repeating an event, and
//! never disturbs the actors of other targets; a panicking listener is contained
//! without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tether::config::{Config, Target};
use tether::watch::machine::{Event, Transition};
use tether::watch::observe::{Observer, Observers};
use tether::watch::supervisor::Supervisor;

use crate::support::harness::{Behaviour, Listener, Record, Recorder};

const LIMIT: Duration = Duration::from_secs(10);

/// A listener with a bug: it panics on the first `connect` of the target `fragile`.
struct PanicsOnce {
    armed: AtomicBool,
}

impl Observer for PanicsOnce {
    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        if target.name == "fragile"
            && t.event == Event::Connect
            && self.armed.swap(false, Ordering::AcqRel)
        {
            panic!("deliberate panic in a listener of `fragile`");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_listener_does_not_keep_the_others_from_the_event_nor_crash_the_checker() {
    let listener = Listener::start(Behaviour::Hold).await;
    let toml = format!(
        "[[targets]]\nname = \"fragile\"\naddress = \"{}\"\n",
        listener.address()
    );
    let config = Config::parse(&toml, "test.toml".as_ref()).unwrap();
    let recorder = Recorder::new();
    // The buggy listener comes first, so the recorder after it proves containment.
    let observers = Observers::new()
        .with(Arc::new(PanicsOnce {
            armed: AtomicBool::new(true),
        }))
        .with(recorder.clone());
    let sup = Supervisor::start(&config, Arc::new(observers));
    let (connect, _) = recorder
        .nth_event("fragile", Event::Connect, 1, LIMIT)
        .await;
    assert_eq!(connect.seq, 0);
    assert!(
        !recorder
            .of("fragile")
            .iter()
            .any(|r| matches!(r, Record::Restarted)),
        "a listener's bug is not the checker's crash"
    );
    // The checker kept its connection.
    listener.assert_accepted(1).await;
    sup.shutdown().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checker_that_panics_while_up_lets_go_of_its_connection_and_reconnects_without_a_new_event()
 {
    use std::time::Instant;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let steady = Listener::start(Behaviour::Hold).await;
    let address = listener.local_addr().unwrap();
    tether::fault::panic_when_up("fragile-up", 1);
    let toml = format!(
        "[[targets]]\nname = \"fragile-up\"\naddress = \"{address}\"\n\
         [[targets]]\nname = \"steady\"\naddress = \"{}\"\n",
        steady.address()
    );
    let config = Config::parse(&toml, "test.toml".as_ref()).unwrap();
    let recorder = Recorder::new();
    let sup = Supervisor::start(&config, recorder.clone());

    let (mut first, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("tether connects")
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(LIMIT, first.read(&mut buf))
        .await
        .expect("the connection of the panicked checker is closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // The restarted checker connects again at once.
    let (_second, _) = tokio::time::timeout(LIMIT, listener.accept())
        .await
        .expect("the restarted checker reconnects")
        .unwrap();
    recorder
        .until("fragile-up", LIMIT, "restart", |r| {
            r.iter()
                .any(|r| matches!(r, Record::Restarted))
                .then_some(())
        })
        .await;
    // Wait until the replacement is held, then check nothing was announced twice.
    recorder
        .until("fragile-up", LIMIT, "second attempt", |r| {
            (r.iter()
                .filter(|r| matches!(r, Record::Attempt { ok: true, .. }))
                .count()
                >= 2)
                .then_some(())
        })
        .await;
    assert_eq!(
        recorder.events("fragile-up"),
        [Event::Connect],
        "the application was told once"
    );
    assert_eq!(recorder.events("steady"), [Event::Connect]);
    // The other actor kept its connection.
    steady.assert_accepted(1).await;
    sup.shutdown().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_running_hooks_is_contained_and_the_next_events_hooks_still_run() {
    use tether::watch::observe::HookResult;

    let mut listener = Listener::start(Behaviour::Hold).await;
    tether::fault::panic_in_hooks("hooky", 1);
    let (sidecar, recorder) = crate::support::harness::Sidecar::with_target(
        "hooky",
        &listener.address(),
        "[targets.hooks]\n\
         on_connect = { command = [\"/bin/true\"] }\non_disconnect = { command = [\"/bin/true\"] }",
    );
    recorder.nth_event("hooky", Event::Connect, 1, LIMIT).await;
    listener.kill().await;
    recorder
        .nth_event("hooky", Event::Disconnect, 1, LIMIT)
        .await;
    let runs = recorder.hook_runs("hooky", 2, LIMIT).await;
    assert_eq!(
        runs,
        [
            (Event::Connect, HookResult::Error),
            (Event::Disconnect, HookResult::Ok)
        ],
        "the connect hook's task panicked; the disconnect hook ran regardless"
    );
    sidecar.stop().await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_while_answering_http_is_contained_and_the_server_keeps_serving() {
    let listener = Listener::start(Behaviour::Hold).await;
    let sidecar = crate::endpoint::Sidecar::start(&format!(
        "[[targets]]\nname = \"web\"\naddress = \"{}\"\n",
        listener.address()
    ))
    .await;
    tether::fault::panic_in_http(1);
    assert_eq!(sidecar.get("/status").await.status, 500);
    assert_eq!(sidecar.get("/healthz").await.status, 200);
    assert_eq!(sidecar.get("/status").await.status, 200);
    sidecar.stop().await;
}
