//! Drives the library's supervisor against real loopback listeners and records what
//! the checkers publish, with bounded waits instead of sleeps.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether::config::{Config, Target};
use tether::probe::Role;
use tether::watch::machine::{Event, State, Transition};
use tether::watch::observe::{HookResult, Observer, Observers};
use tether::watch::supervisor::Supervisor;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// What a checker reported, with the moment the test saw it.
#[derive(Clone, Debug)]
pub enum Record {
    Attempt {
        ok: bool,
        at: Instant,
    },
    Lost {
        error: String,
        at: Instant,
    },
    Transition {
        t: Transition,
        at: Instant,
    },
    Hook {
        event: Event,
        result: HookResult,
    },
    /// The target's role changed (`None`: unknown).
    Role {
        role: Option<Role>,
        at: Instant,
    },
    Coalesced {
        count: u64,
    },
    Restarted,
    /// A reload was applied (`true`) or refused; recorded under the target name "".
    Reloaded {
        ok: bool,
    },
}

/// An observer that keeps every report of every target.
#[derive(Default)]
pub struct Recorder {
    records: Mutex<Vec<(String, Record)>>,
    changed: Notify,
}

impl Recorder {
    pub fn new() -> Arc<Recorder> {
        Arc::new(Recorder::default())
    }

    fn push(&self, target: &Target, r: Record) {
        self.records.lock().unwrap().push((target.name.clone(), r));
        self.changed.notify_waiters();
    }

    /// The records of one target so far.
    pub fn of(&self, target: &str) -> Vec<Record> {
        self.records
            .lock()
            .unwrap()
            .iter()
            .filter(|(n, _)| n == target)
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The held connections of `target` that were lost, reconnected or not.
    pub fn losses(&self, target: &str) -> Vec<Record> {
        self.of(target)
            .into_iter()
            .filter(|r| matches!(r, Record::Lost { .. }))
            .collect()
    }

    pub fn transitions(&self, target: &str) -> Vec<(Transition, Instant)> {
        self.of(target)
            .into_iter()
            .filter_map(|r| match r {
                Record::Transition { t, at } => Some((t, at)),
                _ => None,
            })
            .collect()
    }

    pub fn events(&self, target: &str) -> Vec<Event> {
        self.transitions(target)
            .into_iter()
            .map(|(t, _)| t.event)
            .collect()
    }

    pub fn state(&self, target: &str) -> Option<State> {
        self.transitions(target).last().map(|(t, _)| t.state)
    }

    /// Waits until `done` holds for the target's records, or panics after `limit`
    /// showing what was recorded.
    pub async fn until<T>(
        &self,
        target: &str,
        limit: Duration,
        what: &str,
        done: impl Fn(&[Record]) -> Option<T>,
    ) -> T {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(v) = done(&self.of(target)) {
                return v;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "{target}: no {what} within {limit:?}; recorded: {:#?}",
                    self.of(target)
                );
            }
        }
    }

    /// Waits for the first lost connection recorded at or after `since`; returns when it
    /// was recorded and why.
    pub async fn lost_since(
        &self,
        target: &str,
        since: Instant,
        limit: Duration,
    ) -> (Instant, String) {
        self.until(target, limit, "lost connection", |records| {
            records.iter().find_map(|r| match r {
                Record::Lost { at, error } if *at >= since => Some((*at, error.clone())),
                _ => None,
            })
        })
        .await
    }

    /// Waits for the `n`-th (from 1) occurrence of `event` and returns it.
    pub async fn nth_event(
        &self,
        target: &str,
        event: Event,
        n: usize,
        limit: Duration,
    ) -> (Transition, Instant) {
        self.until(target, limit, &format!("{event} #{n}"), |records| {
            records
                .iter()
                .filter_map(|r| match r {
                    Record::Transition { t, at } if t.event == event => Some((t.clone(), *at)),
                    _ => None,
                })
                .nth(n - 1)
        })
        .await
    }
}

impl Recorder {
    /// The roles reported so far, in order.
    pub fn roles(&self, target: &str) -> Vec<Option<Role>> {
        self.of(target)
            .into_iter()
            .filter_map(|r| match r {
                Record::Role { role, .. } => Some(role),
                _ => None,
            })
            .collect()
    }

    /// Waits for the first report of `role` at or after `since` and returns when it came.
    pub async fn role_since(
        &self,
        target: &str,
        role: Option<Role>,
        since: Instant,
        limit: Duration,
    ) -> Instant {
        let what = format!("role {role:?}");
        self.until(target, limit, &what, |records| {
            records.iter().find_map(|r| match r {
                Record::Role { role: r, at } if *r == role && *at >= since => Some(*at),
                _ => None,
            })
        })
        .await
    }

    /// Waits until `n` reloads have been applied.
    pub async fn reloads_applied(&self, n: usize, limit: Duration) {
        self.until("", limit, "applied reloads", |records| {
            let applied = records
                .iter()
                .filter(|r| matches!(r, Record::Reloaded { ok: true }))
                .count();
            (applied >= n).then_some(())
        })
        .await
    }
}

impl Observer for Recorder {
    fn reloaded(&self, ok: bool) {
        self.records
            .lock()
            .unwrap()
            .push((String::new(), Record::Reloaded { ok }));
        self.changed.notify_waiters();
    }

    fn attempt(&self, target: &Target, ok: bool, _elapsed: Duration) {
        self.push(
            target,
            Record::Attempt {
                ok,
                at: Instant::now(),
            },
        );
    }

    fn lost(&self, target: &Target, error: &str) {
        self.push(
            target,
            Record::Lost {
                error: error.to_owned(),
                at: Instant::now(),
            },
        );
    }

    fn transition(&self, target: &Arc<Target>, t: &Transition) {
        self.push(
            target,
            Record::Transition {
                t: t.clone(),
                at: Instant::now(),
            },
        );
    }

    fn role(&self, target: &Arc<Target>, role: Option<Role>) {
        self.push(
            target,
            Record::Role {
                role,
                at: Instant::now(),
            },
        );
    }

    fn hook_run(&self, target: &Target, event: Event, result: HookResult, _elapsed: Duration) {
        self.push(target, Record::Hook { event, result });
    }

    fn hooks_coalesced(&self, target: &Target, count: u64) {
        self.push(target, Record::Coalesced { count });
    }

    fn restarted(&self, target: &Target) {
        self.push(target, Record::Restarted);
    }
}

impl Recorder {
    /// Hook runs of a target so far, in completion order.
    pub fn hooks(&self, target: &str) -> Vec<(Event, HookResult)> {
        self.of(target)
            .into_iter()
            .filter_map(|r| match r {
                Record::Hook { event, result, .. } => Some((event, result)),
                _ => None,
            })
            .collect()
    }

    /// Waits until the target's hooks have run `n` times.
    pub async fn hook_runs(
        &self,
        target: &str,
        n: usize,
        limit: Duration,
    ) -> Vec<(Event, HookResult)> {
        self.until(target, limit, &format!("{n} hook runs"), |records| {
            let runs: Vec<_> = records
                .iter()
                .filter_map(|r| match r {
                    Record::Hook { event, result, .. } => Some((*event, *result)),
                    _ => None,
                })
                .collect();
            (runs.len() >= n).then_some(runs)
        })
        .await
    }
}

/// The whole sidecar (hooks included) running in this process.
pub struct Sidecar {
    control: tokio::sync::mpsc::Sender<tether::sidecar::Control>,
    task: JoinHandle<()>,
}

impl Sidecar {
    pub fn start(toml: &str, recorder: &Arc<Recorder>) -> Sidecar {
        let mut config = Config::parse(toml, "test.toml".as_ref()).expect("test config is valid");
        // Tests run side by side: each sidecar gets its own HTTP port.
        config.server.listen = Some("127.0.0.1:0".parse().unwrap());
        let (control, rx) = tokio::sync::mpsc::channel(4);
        let observers = Observers::new().with(recorder.clone());
        let task = tokio::spawn(async move {
            tether::sidecar::run(config, observers, rx)
                .await
                .expect("the sidecar starts");
        });
        Sidecar { control, task }
    }

    /// Most hook tests need a single target and want to see its hooks run: this is that
    /// sidecar, together with the recorder that sees what it does.
    pub fn with_target(name: &str, address: &str, extra: &str) -> (Sidecar, Arc<Recorder>) {
        let recorder = Recorder::new();
        let sidecar = Sidecar::start(&target(name, address, extra), &recorder);
        (sidecar, recorder)
    }

    /// Applies a new config, as SIGHUP would.
    pub async fn reload(&self, toml: &str) {
        let config = Config::parse(toml, "test.toml".as_ref()).map(|mut c| {
            c.server.listen = Some("127.0.0.1:0".parse().unwrap());
            c
        });
        self.control
            .send(tether::sidecar::Control::Reload(Box::new(config)))
            .await
            .unwrap();
    }

    /// Stops it and waits for hooks in flight, as SIGTERM would.
    pub async fn stop(mut self) {
        let _ = self.control.send(tether::sidecar::Control::Shutdown).await;
        (&mut self.task).await.unwrap();
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One `[[targets]]` table of a test config: `name` at `address`, then `extra` (more
/// settings, and perhaps its `[targets.hooks]` table).
pub fn target(name: &str, address: &str, extra: &str) -> String {
    format!("[[targets]]\nname = \"{name}\"\naddress = \"{address}\"\n{extra}\n")
}

/// Writes `dir/tether.toml` for a `tether run` of the tests: its endpoints on a free
/// loopback port, `server` more `[server]` settings (or none), then `tables` (its
/// targets, groups and other tables).
pub fn write_config(dir: &std::path::Path, server: &str, tables: &str) -> std::path::PathBuf {
    let path = dir.join("tether.toml");
    let text = format!("[server]\nlisten = \"127.0.0.1:0\"\n{server}\n{tables}");
    std::fs::write(&path, text).expect("write the config");
    path
}

/// Starts a supervisor for a config given as TOML text.
pub fn watch(toml: &str, recorder: &Arc<Recorder>) -> Supervisor {
    let config = Config::parse(toml, "test.toml".as_ref()).expect("test config is valid");
    Supervisor::start(&config, recorder.clone())
}

/// A loopback listener that accepts and holds connections, and can be killed and
/// brought back on the same port, like a server process.
pub struct Listener {
    port: u16,
    task: Option<JoinHandle<()>>,
    accepted: Arc<Mutex<usize>>,
    /// Held connections the peer has not closed.
    open: Arc<Mutex<usize>>,
}

/// What the listener does with each connection it accepts.
#[derive(Clone, Copy)]
pub enum Behaviour {
    /// Keep it open until killed.
    Hold,
    /// Close it after this long, while still accepting new ones.
    CloseAfter(Duration),
}

impl Listener {
    pub async fn start(behaviour: Behaviour) -> Listener {
        // Below the ephemeral range and spread at random: a port the kernel hands out
        // for `:0` is often one a test just closed, and that test's tether may still be
        // reconnecting to it, which this listener would count as its own.
        let mut bound = None;
        for _ in 0..100 {
            if let Ok(l) = TcpListener::bind(("127.0.0.1", crate::support::free_port())).await {
                bound = Some(l);
                break;
            }
        }
        let l = bound.expect("a free loopback port for a test listener");
        let port = l.local_addr().unwrap().port();
        let mut me = Listener {
            port,
            task: None,
            accepted: Arc::default(),
            open: Arc::default(),
        };
        me.serve(l, behaviour);
        me
    }

    fn serve(&mut self, l: TcpListener, behaviour: Behaviour) {
        let accepted = self.accepted.clone();
        let open = self.open.clone();
        self.task = Some(tokio::spawn(async move {
            // Owned by this task: aborting it closes every connection, as a crash would.
            let mut held = tokio::task::JoinSet::new();
            let mut closers = tokio::task::JoinSet::new();
            loop {
                let Ok((s, _)) = l.accept().await else {
                    continue;
                };
                *accepted.lock().unwrap() += 1;
                match behaviour {
                    Behaviour::Hold => {
                        let open = open.clone();
                        *open.lock().unwrap() += 1;
                        held.spawn(async move {
                            let _gone = OpenGuard(open);
                            let mut s: TcpStream = s;
                            let mut buf = [0u8; 64];
                            while let Ok(n) = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await
                            {
                                if n == 0 {
                                    break;
                                }
                            }
                        });
                    }
                    Behaviour::CloseAfter(d) => {
                        closers.spawn(async move {
                            tokio::time::sleep(d).await;
                            drop(s);
                        });
                    }
                }
            }
        }));
    }

    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Held connections still open from the peer's side.
    pub fn open(&self) -> usize {
        *self.open.lock().unwrap()
    }

    /// A handle on the accepted count that can move to another thread.
    pub fn accepted_counter(&self) -> impl Fn() -> usize + Send + 'static {
        let accepted = self.accepted.clone();
        move || *accepted.lock().unwrap()
    }

    /// Connections accepted since start.
    pub fn accepted(&self) -> usize {
        *self.accepted.lock().unwrap()
    }

    /// Asserts that exactly `n` connections were accepted. The client side completes
    /// its handshake before this listener's task gets to `accept`, so a client's report
    /// of a connection can come first: wait (bounded) for the count to reach `n`.
    pub async fn assert_accepted(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.accepted() < n && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            self.accepted(),
            n,
            "connections accepted on {}",
            self.address()
        );
    }

    /// Closes the listening socket and every accepted connection, as a crash would.
    pub async fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restore(&mut self, behaviour: Behaviour) {
        let l = TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.serve(l, behaviour);
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// Counts a held connection as closed when its task ends, however it ends.
struct OpenGuard(Arc<Mutex<usize>>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        *self.0.lock().unwrap() -= 1;
    }
}

/// A loopback port with nothing listening on it.
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
