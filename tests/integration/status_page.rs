//! `GET /`, the status page: as a plain HTTP client reads it (rows rendered by the
//! server, a refresh for browsers without scripts, a policy that lets only its own
//! script run), and as a person sees it in a real headless Chromium that follows a
//! Redis outage, a reload and the recovery live, without reloading.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use base64::Engine as _;
use nix::sys::signal::Signal;
use sha2::{Digest, Sha256};
use tether::config::Config;
use tether::telemetry::http::{App, HttpServer, Limits};
use tether::telemetry::metrics::Metrics;
use tether::telemetry::status::Status;
use tether::watch::observe::Observer;

use crate::endpoint::{Reply, Sidecar, get};
use crate::support::harness::dead_port;
use crate::support::redis::RedisServer;
use crate::support::tether_process::TetherProcess;
use crate::support::{TestServer, eventually, require_binary, workdir};

const LIMIT: Duration = Duration::from_secs(10);

/// Reconnects fast so an outage shows at once.
const FAST: &str = "backoff = { initial = \"10ms\", max = \"50ms\" }\nfailure_threshold = 2\n";

/// The `<tag>…</tag>` text of the page's one inline style or script.
fn inline<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let start = html.find(&open).unwrap_or_else(|| panic!("no <{tag}>")) + open.len();
    let end = start + html[start..].find(&format!("</{tag}>")).unwrap();
    &html[start..end]
}

fn sha256_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The row the server rendered for `target`.
fn row<'a>(html: &'a str, target: &str) -> &'a str {
    let start = html
        .find(&format!("<tr data-target=\"{target}\""))
        .unwrap_or_else(|| panic!("no row for {target}:\n{html}"));
    let end = start + html[start..].find("</tr>").unwrap();
    &html[start..end]
}

async fn page(sidecar: &Sidecar) -> Reply {
    let reply = sidecar.get("/").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

#[tokio::test(flavor = "multi_thread")]
async fn the_page_renders_each_target_and_its_last_events_and_lets_only_its_own_script_run() {
    let mut redis = RedisServer::start();
    let toml = format!(
        "[[targets]]\nname = \"cache\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\n\
         [[targets]]\nname = \"sessions\"\naddress = \"127.0.0.1:{}\"\nrequired = false\n{FAST}",
        redis.addr(),
        dead_port()
    );
    let sidecar = Sidecar::start(&toml).await;
    // Sessions failed: its last transition until the end of the test, so the outage
    // below is the newest event.
    let html = eventually(
        LIMIT,
        "cache up and sessions failed on the page",
        || async {
            let html = page(&sidecar).await.body;
            (row(&html, "cache").contains("data-state=\"up\"")
                && row(&html, "sessions").contains("data-state=\"failed\""))
            .then_some(html)
        },
    )
    .await;
    let cache = row(&html, "cache");
    assert!(
        cache.contains("<span class=\"badge up\">up</span>"),
        "{cache}"
    );
    assert!(cache.contains("<td class=\"probe\">redis</td>"), "{cache}");
    assert!(cache.contains(&redis.addr()), "{cache}");
    let sessions = row(&html, "sessions");
    assert!(
        sessions.contains(">down</span>") || sessions.contains(">failed</span>"),
        "{sessions}"
    );
    assert!(sessions.contains("(optional)"), "{sessions}");
    assert!(sessions.contains("refused"), "its last error: {sessions}");
    assert!(html.contains("1 up / 1 down"), "the summary");
    assert!(html.contains("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>"));
    assert!(
        html.contains("new EventSource('events"),
        "a relative stream URL"
    );
    assert!(html.len() < 20 * 1024, "{} bytes", html.len());
    println!(
        "the page of two targets and their events: {} bytes",
        html.len()
    );

    redis.kill();
    let html = eventually(LIMIT, "the disconnect listed", || async {
        let html = page(&sidecar).await.body;
        html.contains("up \u{2192} down (disconnect)")
            .then_some(html)
    })
    .await;
    assert!(!row(&html, "cache").contains("data-state=\"up\""));
    let newest = &html[html.find("<table id=\"events\"").unwrap()..];
    let newest = &newest[newest.find("<tbody>").unwrap()..];
    assert!(
        newest.find("<th scope=\"row\">cache</th>")
            < newest.find("<th scope=\"row\">sessions</th>"),
        "newest first: cache's outage is after sessions' first failure"
    );

    let reply = page(&sidecar).await;
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    assert_eq!(reply.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(reply.header("referrer-policy"), Some("no-referrer"));
    let policy = reply.header("content-security-policy").expect("a CSP");
    for directive in [
        "default-src 'none'".to_owned(),
        format!(
            "script-src {}",
            sha256_source(inline(&reply.body, "script"))
        ),
        format!("style-src {}", sha256_source(inline(&reply.body, "style"))),
        "connect-src 'self'".to_owned(),
        "frame-ancestors 'none'".to_owned(),
    ] {
        assert!(policy.contains(&directive), "{directive} in {policy}");
    }
    assert!(!policy.contains("unsafe-inline"), "{policy}");

    let missing = sidecar.get("/nowhere").await;
    assert_eq!(missing.status, 404);
    assert!(missing.body.contains("try /, /metrics"), "{}", missing.body);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_error_carrying_a_script_tag_is_shown_as_text_and_never_runs() {
    let toml = "[[targets]]\nname = \"db\"\naddress = \"db.internal:5432\"\n";
    let config = Config::parse(toml, "test.toml".as_ref()).unwrap();
    let app = App {
        status: Arc::new(Status::new(&config)),
        metrics: Arc::new(Metrics::new(&config).unwrap()),
        events: Arc::default(),
        admin: Default::default(),
    };
    app.status.lost(
        &config.targets[0],
        "<script>alert('pwned')</script><img src=x onerror=alert(1)>",
    );
    let server = HttpServer::bind("127.0.0.1:0".parse().unwrap(), app, Limits::default())
        .await
        .unwrap();
    let addr = server.local_addr().expect("a TCP listener");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));

    let html = get(addr, "/").await.body;
    assert!(
        row(&html, "db").contains(
            "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&lt;img src=x onerror=alert(1)&gt;"
        ),
        "{html}"
    );
    assert_eq!(
        html.matches("<script").count(),
        1,
        "only the page's own script"
    );
    assert!(!html.contains("<img"), "{html}");
    drop(stop);
    serving.await.unwrap();
}

// === the browser ===

/// The Python with Selenium in it: `TETHER_TEST_VENV` from `./scripts/test`, else the
/// venv `./scripts/python-venv` makes (or finds up to date).
fn venv_python() -> PathBuf {
    let venv = match std::env::var_os("TETHER_TEST_VENV") {
        Some(venv) => PathBuf::from(venv),
        None => {
            let root = Path::new(env!("CARGO_MANIFEST_DIR"));
            let out = Command::new(root.join("scripts/python-venv"))
                .current_dir(root)
                .stderr(Stdio::inherit())
                .output()
                .expect("run ./scripts/python-venv");
            assert!(
                out.status.success(),
                "./scripts/python-venv failed; run the tests with ./scripts/test"
            );
            PathBuf::from(String::from_utf8(out.stdout).unwrap().trim())
        }
    };
    let python = venv.join("bin/python");
    assert!(
        python.exists(),
        "no {}; run the tests with ./scripts/test",
        python.display()
    );
    python
}

/// The browser script, one line at a time, each awaited with a deadline.
struct Browser {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: PathBuf,
}

impl Browser {
    fn start(url: &str, screenshot: &Path, stderr: PathBuf) -> Browser {
        Browser::run("status_page.py", url, screenshot, stderr)
    }

    /// `script` of `tests/browser/`, which takes the same arguments.
    fn run(script: &str, url: &str, screenshot: &Path, stderr: PathBuf) -> Browser {
        let script = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/browser")
            .join(script);
        let mut child = Command::new(venv_python())
            .arg(script)
            .arg(url)
            .arg(screenshot)
            .arg(require_binary("chromium", "chromium"))
            .arg(require_binary("chromedriver", "chromium-driver"))
            // No downloads: the driver and browser are named, and there is no internet.
            .env("SE_OFFLINE", "true")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start the browser script");
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Browser {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// The rest of the script's next line, which must start with `word`.
    fn expect(&mut self, word: &str, limit: Duration) -> String {
        let line = match self.lines.recv_timeout(limit) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => self.fail(&format!("no {word:?} within {limit:?}")),
            Err(RecvTimeoutError::Disconnected) => self.fail(&format!("ended before {word:?}")),
        };
        match line.split_once(' ') {
            Some((w, rest)) if w == word => rest.to_owned(),
            _ if line == word => String::new(),
            _ => self.fail(&format!("expected {word:?}, got {line:?}")),
        }
    }

    fn say(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("the browser script reads its input");
    }

    fn fail(&mut self, why: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        panic!("browser script: {why}; its stderr:\n{stderr}");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The page in Chromium, in step with the test: live and up, then down within moments
/// of redis-server being killed, with the disconnect listed; a reload's added and
/// removed targets; redis back up; the page at a phone's width; and all along the page
/// first loaded.
#[test]
fn a_browser_shows_redis_going_down_live_without_reloading_the_page() {
    let mut redis = RedisServer::start();
    let dir = workdir("status-page");
    let config = dir.path().join("tether.toml");
    let cache = redis.addr();
    let write = |other: &str, port: u16| {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\n\
             [[targets]]\nname = \"cache\"\naddress = \"{cache}\"\nprobe = \"redis\"\n{FAST}\n\
             [[targets]]\nname = \"{other}\"\naddress = \"127.0.0.1:{port}\"\nrequired = false\n{FAST}",
        );
        std::fs::write(&config, text).unwrap();
    };
    write("sessions", dead_port());
    let tether = TetherProcess::run(&config, &[]);
    let url = format!("http://{}/", tether.http_addr(LIMIT));
    tether.wait_for("cache is up", LIMIT);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&screenshot);
    let started = Instant::now();
    let mut browser = Browser::start(&url, &screenshot, dir.path().join("browser.log"));
    // Starting Chromium on a crowded machine takes seconds.
    let up = browser.expect("up-seen", Duration::from_secs(90));
    println!("page loaded and live in {:?}", started.elapsed());
    let (state, navigations) = up.split_once(' ').unwrap();
    assert_eq!(state, "up");

    redis.kill();
    let killed = Instant::now();
    browser.say("killed");
    let down = browser.expect("down-seen", Duration::from_secs(30));
    println!(
        "the page showed {down} {:?} after redis was killed",
        killed.elapsed()
    );
    assert!(down == "down" || down == "failed", "{down}");
    assert_eq!(
        browser.expect("kept", LIMIT),
        format!("loaded-once {navigations}"),
        "the page was updated in place, never reloaded"
    );
    let event = browser.expect("event", LIMIT);
    assert!(event.contains("up \u{2192} down (disconnect)"), "{event}");
    assert!(event.contains("cache:"), "the event id: {event}");
    assert_eq!(
        browser.expect("console-errors", LIMIT),
        "[]",
        "no CSP violation or error"
    );
    assert_eq!(
        browser.expect("screenshot", Duration::from_secs(30)),
        screenshot.display().to_string()
    );
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 1000);
    println!("screenshot: {}", screenshot.display());

    // A reload swaps one target for another: the page takes both events.
    let port = dead_port();
    write("search", port);
    tether.signal(Signal::SIGHUP);
    tether.wait_for("config reloaded", LIMIT);
    browser.say("reloaded");
    assert_eq!(
        browser.expect("added", LIMIT),
        format!("127.0.0.1:{port} tcp"),
        "the added target's address and probe, from /status"
    );
    assert_eq!(browser.expect("listed", LIMIT), "true true");

    redis.restart();
    browser.say("restored");
    assert_eq!(browser.expect("up-again", Duration::from_secs(30)), "up");
    let dark = browser.expect("dark", Duration::from_secs(30));
    println!("dark theme: {dark}");
    let phone = browser.expect("phone", LIMIT);
    let mut words = phone.split(' ');
    let page: u32 = words.next().unwrap().parse().unwrap();
    let window: u32 = words.next().unwrap().parse().unwrap();
    assert!(
        page <= window,
        "at a phone's width only the tables scroll sideways: {phone}"
    );
    println!("phone width: {phone}");
    assert_eq!(
        browser.expect("kept", LIMIT),
        format!("loaded-once {navigations}"),
        "still the page first loaded"
    );
    browser.expect("done", LIMIT);
    tether.stop();
}

/// A failover group on the page in Chromium: its active member highlighted, then, within
/// moments of that redis-server being killed, the other member, with the change listed,
/// on the page first loaded.
#[test]
fn a_browser_shows_a_group_switch_to_its_other_member_live() {
    let mut a = RedisServer::start();
    let b = RedisServer::start();
    let dir = workdir("group-page");
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n\
             [[targets]]\nname = \"a\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\
             [[targets]]\nname = \"b\"\naddress = \"{}\"\nprobe = \"redis\"\n{FAST}\
             [[groups]]\nname = \"store\"\nmembers = [\"a\", \"b\"]\nfallback = \"memory\"\n",
            a.addr(),
            b.addr()
        ),
    )
    .unwrap();
    let tether = TetherProcess::run(&config, &[]);
    let url = format!("http://{}/", tether.http_addr(LIMIT));
    tether.wait_for("group store now uses a", LIMIT);

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let screenshot = artifacts.join("status-page-group.png");
    let mut browser = Browser::run(
        "group_page.py",
        &url,
        &screenshot,
        dir.path().join("browser.log"),
    );
    let decided = browser.expect("decided", Duration::from_secs(90));
    let (active, navigations) = decided.split_once(' ').unwrap();
    assert_eq!(active, "a");

    a.kill();
    let killed = Instant::now();
    browser.say("killed");
    assert_eq!(browser.expect("switched", Duration::from_secs(30)), "b b");
    println!(
        "the page showed the group on b {:?} after a was killed",
        killed.elapsed()
    );
    let event = browser.expect("event", LIMIT);
    assert!(event.contains("a \u{2192} b (active-lost)"), "{event}");
    assert!(event.contains("store:"), "the event id: {event}");
    let summary = browser.expect("summary", LIMIT);
    assert!(
        summary.contains("\u{b7} ready \u{b7}"),
        "a is down but the group has b: {summary}"
    );
    assert_eq!(
        browser.expect("kept", LIMIT),
        format!("loaded-once {navigations}"),
        "the page was updated in place, never reloaded"
    );
    assert_eq!(browser.expect("console-errors", LIMIT), "[]");
    browser.expect("screenshot", Duration::from_secs(30));
    println!("screenshot: {}", screenshot.display());
    browser.expect("done", LIMIT);
    tether.stop();
}
