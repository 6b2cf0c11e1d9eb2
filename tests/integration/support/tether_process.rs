//! The real `tether` binary as a child process of a test: spawned with the arguments,
//! environment and limits the test wants, its log collected line by line as it arrives,
//! signalled, waited on within bounds, and never outliving the test.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::{poll_until, process};

/// How long a stopped tether gets to exit after SIGTERM before the test fails.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the log reader gets to reach the end of the output of an exited tether.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The `tether` binary cargo built for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tether"))
}

/// A command for the `tether` binary, with no arguments yet.
pub fn command() -> Command {
    Command::new(binary())
}

/// `tether GLOBAL_ARGS run -c CONFIG`, open to more settings (environment, `pre_exec`
/// limits) before it is given to [`TetherProcess::spawn`].
pub fn run_command(config: &Path, global_args: &[&str]) -> Command {
    let mut command = command();
    command.args(global_args).args(["run", "-c"]).arg(config);
    command
}

/// What the reader thread has seen of tether's standard error.
#[derive(Default)]
struct Log {
    lines: Vec<String>,
    /// Whether the output has ended: no further line can arrive.
    closed: bool,
}

/// A running `tether` process with its log lines.
pub struct TetherProcess {
    /// `None` once the process has been waited for.
    child: Option<Child>,
    pid: Pid,
    /// Filled by the reader thread; `arrived` is notified at each line and at the end.
    log: Arc<(Mutex<Log>, Condvar)>,
}

impl TetherProcess {
    /// `tether GLOBAL_ARGS run -c CONFIG`.
    pub fn run(config: &Path, global_args: &[&str]) -> TetherProcess {
        TetherProcess::spawn(run_command(config, global_args))
    }

    /// Spawns `command` (any `tether` invocation, or a wrapper that execs one) with its
    /// standard error read line by line on a thread of its own. The process gets SIGKILL
    /// if the test binary dies first.
    pub fn spawn(mut command: Command) -> TetherProcess {
        command
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = process::spawn(command).expect("start tether");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        let stderr = child.stderr.take().expect("stderr is piped");
        let log = Arc::new((Mutex::new(Log::default()), Condvar::new()));
        thread::spawn({
            let log = log.clone();
            move || {
                let (state, arrived) = &*log;
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    state.lock().unwrap().lines.push(line);
                    arrived.notify_all();
                }
                state.lock().unwrap().closed = true;
                arrived.notify_all();
            }
        });
        TetherProcess {
            child: Some(child),
            pid,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    fn state(&self) -> MutexGuard<'_, Log> {
        self.log.0.lock().unwrap()
    }

    /// Every line logged so far.
    pub fn lines(&self) -> Vec<String> {
        self.state().lines.clone()
    }

    /// Everything logged so far, one line per entry.
    pub fn log(&self) -> String {
        self.state().lines.join("\n")
    }

    /// Waits for a log line containing `needle` (the first one since the start) and
    /// returns it; panics with the whole log after `limit`, or once the log has ended
    /// without one.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        let mut state = self.state();
        loop {
            if let Some(line) = state.lines.iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if state.closed || left.is_zero() {
                let why = if state.closed {
                    "before its log ended"
                } else {
                    "in time"
                };
                panic!(
                    "tether logged no {needle:?} within {limit:?} ({why}); log:\n{}",
                    state.lines.join("\n")
                );
            }
            state = self.log.1.wait_timeout(state, left).unwrap().0;
        }
    }

    /// Where tether's HTTP server listens, from its "listening on ADDR" log line (text or
    /// JSON), waiting up to `limit` for that line.
    pub fn http_addr(&self, limit: Duration) -> SocketAddr {
        let line = self.wait_for("listening on ", limit);
        listening_addr(&line).unwrap_or_else(|| panic!("no address in {line:?}"))
    }

    pub fn signal(&self, sig: Signal) {
        signal::kill(self.pid, sig).expect("signal tether");
    }

    /// The exit status if tether has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()?
            .try_wait()
            .expect("query tether's status")
    }

    /// Waits for tether to exit, then for its log to be read to the end (what it said
    /// last is why it exited); panics (and kills it) after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("tether was not waited for yet");
        let status = poll_until(limit, || child.try_wait().ok().flatten()).unwrap_or_else(|| {
            panic!("tether did not exit within {limit:?}; log:\n{}", self.log())
        });
        self.child = None;
        // The reader sees end-of-file once tether is gone; let it catch up.
        let (state, arrived) = &*self.log;
        drop(
            arrived
                .wait_timeout_while(state.lock().unwrap(), DRAIN_TIMEOUT, |log| !log.closed)
                .unwrap(),
        );
        status
    }

    /// Stops tether with SIGTERM and returns its exit status and its complete log; panics
    /// if it does not exit within 10 s.
    pub fn stop(mut self) -> (ExitStatus, String) {
        self.signal(Signal::SIGTERM);
        let status = self.wait_exit(STOP_TIMEOUT);
        (status, self.log())
    }
}

impl Drop for TetherProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The address in a "listening on ADDR" log line, text or JSON.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = &line[line.find("listening on ")? + "listening on ".len()..];
    let addr: String = rest
        .chars()
        .take_while(|c| c.is_ascii_hexdigit() || matches!(c, '.' | ':' | '[' | ']'))
        .collect();
    addr.parse().ok()
}

#[test]
fn the_address_is_read_from_text_and_json_log_lines() {
    let text =
        "2024-01-01T00:00:00Z  INFO tether: listening on 127.0.0.1:9464 address=127.0.0.1:9464";
    let json = r#"{"message":"listening on [::1]:80","address":"[::1]:80"}"#;
    assert_eq!(
        listening_addr(text),
        Some("127.0.0.1:9464".parse().unwrap())
    );
    assert_eq!(listening_addr(json), Some("[::1]:80".parse().unwrap()));
    assert_eq!(listening_addr("listening on nothing"), None);
}

/// `tether probe ARGS...`, run to completion (from an async test too).
pub fn probe(args: &[&str]) -> std::process::Output {
    super::blocking(|| {
        command()
            .arg("probe")
            .args(args)
            .output()
            .expect("run tether probe")
    })
}
