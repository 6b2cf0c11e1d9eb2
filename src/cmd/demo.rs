//! `tether demo`: a self-contained tour for a newcomer. It starts a throwaway TCP
//! service, watches it with the real sidecar (hooks, metrics and all), breaks it,
//! restores it, and prints each event, each hook's output and the metric lines that
//! changed. No config, no server, no network beyond loopback.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};

use crate::cmd::client;
use crate::config::{Config, Target};
use crate::sidecar::{self, Control};
use crate::watch::machine::{Event, Transition};
use crate::watch::observe::{HookResult, Observer, Observers};

/// How long any one step may take before the demo gives up.
const STEP_LIMIT: Duration = Duration::from_secs(8);
const TARGET: &str = "demo-db";
/// The most of an endpoint's answer the demo reads; its metrics are far smaller.
const MAX_ANSWER_BYTES: usize = 1 << 20;

/// Why the demo could not finish.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot set up the demo: {0}")]
    Setup(#[from] std::io::Error),
    #[error("the demo config is invalid: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("the sidecar failed: {0}")]
    Sidecar(#[from] sidecar::SidecarError),
    #[error("no {0} within {STEP_LIMIT:?}")]
    Timeout(String),
}

/// `tether demo`.
pub fn command() -> std::process::ExitCode {
    super::block_on(async {
        run().await?;
        Ok::<_, DemoError>(std::process::ExitCode::from(crate::exit::OK))
    })
}

/// Runs the tour; returns once the service was broken, restored and recovered.
pub async fn run() -> Result<(), DemoError> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("tether-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = tour(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    if result.is_ok() {
        say(&format!(
            "\nDone in {:.1} s. Next: `tether check-config -c config/tether.toml` shows every setting.",
            started.elapsed().as_secs_f64()
        ));
    }
    result
}

async fn tour(dir: &Path) -> Result<(), DemoError> {
    let mut service = Service::start().await?;
    let http = free_port()?;
    let hook_log = dir.join("hooks.log");
    std::fs::write(&hook_log, "")?;
    let config = Config::parse(
        &demo_config(service.addr, http, &hook_log),
        Path::new("demo.toml"),
    )?;

    say("tether demo: watching a throwaway TCP service, then breaking and restoring it.\n");
    say(&format!(
        "1. Started a local TCP service on {}.",
        service.addr
    ));
    say(&format!(
        "   tether holds one connection to it; failure_threshold = 3; metrics on http://127.0.0.1:{http}/metrics\n"
    ));

    let (events, mut seen) = mpsc::unbounded_channel();
    let printer = Printer {
        events,
        hook_log: hook_log.clone(),
        printed: Mutex::new(0),
    };
    let (control, control_rx) = mpsc::channel(1);
    let sidecar = tokio::spawn(sidecar::run(
        config,
        Observers::new().with(Arc::new(printer)),
        control_rx,
    ));
    let mut metrics = Metrics::new(http);

    wait_for(
        &mut seen,
        &[Seen::Event(Event::Connect), Seen::Hook(Event::Connect)],
    )
    .await?;
    metrics.show().await;

    say("\n2. Killing the service (its socket closes, as in a crash).");
    service.kill().await;
    wait_for(
        &mut seen,
        &[
            Seen::Event(Event::Disconnect),
            Seen::Event(Event::Failure),
            Seen::Hook(Event::Failure),
        ],
    )
    .await?;
    metrics.show().await;

    say("\n3. Restoring the service on the same port.");
    service.restore().await?;
    wait_for(
        &mut seen,
        &[
            Seen::Event(Event::Connect),
            Seen::Event(Event::Recover),
            Seen::Hook(Event::Recover),
        ],
    )
    .await?;
    metrics.show().await;

    say("\n4. Stopping tether (as on SIGTERM).");
    let _ = control.send(Control::Shutdown).await;
    match sidecar.await {
        Ok(result) => result?,
        Err(e) => return Err(DemoError::Setup(std::io::Error::other(e))),
    }
    Ok(())
}

/// The config the tour runs on: quick retries so the threshold passes in about a
/// second, and a shell hook per event that says what an application would do.
fn demo_config(service: SocketAddr, http: u16, hook_log: &Path) -> String {
    let hook = |what: &str| {
        format!(
            r#"{{ shell = "echo \"$TETHER_EVENT_ID $TETHER_EVENT: {what}\" >> '{}'" }}"#,
            hook_log.display()
        )
    };
    format!(
        r#"
        [server]
        listen = "127.0.0.1:{http}"

        [[targets]]
        name = "{TARGET}"
        address = "{service}"
        connect_timeout = "500ms"
        failure_threshold = 3
        backoff = {{ initial = "300ms", max = "1s", multiplier = 2.0, jitter = 0.0 }}
        hook_timeout = "5s"

        [targets.hooks]
        on_connect = {}
        on_disconnect = {}
        on_failure = {}
        on_recover = {}
        "#,
        hook("connection up"),
        hook("connection lost, still retrying"),
        hook("switch the application to its fallback store"),
        hook("switch the application back to the primary"),
    )
}

/// What the printer saw, for the tour to wait on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    Event(Event),
    Hook(Event),
}

/// Waits until every item of `want` was seen, in order.
async fn wait_for(
    seen: &mut mpsc::UnboundedReceiver<Seen>,
    want: &[Seen],
) -> Result<(), DemoError> {
    for w in want {
        let found = timeout(STEP_LIMIT, async {
            while let Some(s) = seen.recv().await {
                if s == *w {
                    return true;
                }
            }
            false
        })
        .await;
        if found != Ok(true) {
            return Err(DemoError::Timeout(format!("{w:?}")));
        }
    }
    Ok(())
}

/// Prints events and hook output as they happen.
struct Printer {
    events: mpsc::UnboundedSender<Seen>,
    hook_log: PathBuf,
    /// Bytes of the hook log already printed.
    printed: Mutex<usize>,
}

impl Observer for Printer {
    fn transition(&self, _target: &Arc<Target>, t: &Transition) {
        let error = t
            .last_error
            .as_ref()
            .map(|e| format!("  ({e})"))
            .unwrap_or_default();
        let error = if matches!(t.event, Event::Connect | Event::Recover) {
            String::new()
        } else {
            error
        };
        say(&format!(
            "   event  {TARGET}:{:<3} {:<10} {} -> {}{error}",
            t.seq,
            t.event.as_str(),
            t.previous.as_str(),
            t.state.as_str()
        ));
        let _ = self.events.send(Seen::Event(t.event));
    }

    fn hook_run(&self, _target: &Target, event: Event, result: HookResult, elapsed: Duration) {
        // The hook has finished: whatever it wrote is in the log now.
        let mut printed = self.printed.lock().unwrap_or_else(|p| p.into_inner());
        if let Ok(all) = std::fs::read_to_string(&self.hook_log) {
            for line in all.get(*printed..).unwrap_or_default().lines() {
                say(&format!("   hook   {line}"));
            }
            *printed = all.len();
        }
        say(&format!(
            "          on_{event} finished: {} in {} ms",
            result.as_str(),
            elapsed.as_millis()
        ));
        let _ = self.events.send(Seen::Hook(event));
    }
}

/// Reads the sidecar's own /metrics and prints the demo target's lines that changed.
struct Metrics {
    addr: SocketAddr,
    last: BTreeMap<String, String>,
}

impl Metrics {
    fn new(port: u16) -> Metrics {
        Metrics {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            last: BTreeMap::new(),
        }
    }

    async fn show(&mut self) {
        let Some(text) = get(self.addr, "/metrics").await else {
            say("   (metrics not reachable)");
            return;
        };
        let mut changed = Vec::new();
        for line in text.lines().filter(|l| relevant(l)) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            if self.last.get(series).map(String::as_str) != Some(value) {
                changed.push(line.to_owned());
                self.last.insert(series.to_owned(), value.to_owned());
            }
        }
        say("   metrics that changed:");
        for line in changed {
            say(&format!("     {line}"));
        }
    }
}

/// The demo target's lines worth showing: no histogram buckets, no zero counters.
fn relevant(line: &str) -> bool {
    const SHOWN: [&str; 7] = [
        "tether_target_up{",
        "tether_target_state{",
        "tether_target_consecutive_failures{",
        "tether_connect_attempts_total{",
        "tether_disconnects_total{",
        "tether_state_changes_total{",
        "tether_hook_runs_total{",
    ];
    !line.starts_with('#')
        && line.contains(&format!("target=\"{TARGET}\""))
        && SHOWN.iter().any(|p| line.starts_with(p))
        && !(line.starts_with("tether_target_state{") && line.ends_with(" 0"))
        && !(line.contains("_total{") && line.ends_with(" 0"))
}

/// A GET of the sidecar's own endpoint, whatever its status.
async fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let url = client::Url::from_listen(addr).or_path(path);
    let exchange = client::get_body(&url, MAX_ANSWER_BYTES);
    let (_, body) = timeout(Duration::from_secs(3), exchange).await.ok()?.ok()?;
    String::from_utf8(body.to_vec()).ok()
}

/// The throwaway service: accepts and holds connections until killed.
struct Service {
    addr: SocketAddr,
    task: Option<JoinHandle<()>>,
}

impl Service {
    async fn start() -> std::io::Result<Service> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        Ok(Service {
            addr,
            task: Some(serve(listener)),
        })
    }

    /// Closes the listening socket and every connection, as a crash would.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    async fn restore(&mut self) -> std::io::Result<()> {
        let listener = TcpListener::bind(self.addr).await?;
        self.task = Some(serve(listener));
        Ok(())
    }
}

fn serve(listener: TcpListener) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    })
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
