//! The real `tether` binary running as a sidecar for a test: started with a config file,
//! its log lines collected as they arrive, stopped with SIGTERM, and never outliving the
//! test.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

use super::{poll_until, process};

/// The `tether` binary cargo built for these tests.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tether"))
}

/// A running `tether run`, with its JSON log lines.
pub struct Sidecar {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sidecar {
    /// Spawns `command`, which must end up exec'ing `tether --log-format json run ...`;
    /// its stderr is read line by line on a thread of its own.
    pub fn spawn(mut command: Command) -> Sidecar {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = process::spawn(command).expect("start tether");
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        thread::spawn({
            let lines = lines.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    lines.lock().unwrap().push(line);
                }
            }
        });
        Sidecar {
            child: Some(child),
            lines,
        }
    }

    /// `tether --log-format json run -c CONFIG`, with `envs` added to its environment.
    pub fn run(config: &Path, envs: &[(&str, &str)]) -> Sidecar {
        let mut command = Command::new(binary());
        command
            .args(["--log-format", "json", "run", "-c"])
            .arg(config)
            .envs(envs.iter().copied());
        Sidecar::spawn(command)
    }

    /// Everything logged so far, one line per entry.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for a log line containing `needle`, and returns it; panics with the whole log
    /// after `limit`.
    pub fn wait_for(&self, needle: &str, limit: Duration) -> String {
        poll_until(limit, || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .find(|line| line.contains(needle))
                .cloned()
        })
        .unwrap_or_else(|| {
            panic!(
                "tether logged no {needle:?} within {limit:?}; log:\n{}",
                self.log()
            )
        })
    }

    /// Stops tether with SIGTERM and returns its exit status and complete log.
    pub fn stop(mut self) -> (ExitStatus, String) {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
        let _ = signal::kill(pid, Signal::SIGTERM);
        let status = poll_until(Duration::from_secs(10), || child.try_wait().ok().flatten())
            .unwrap_or_else(|| {
                let _ = child.kill();
                panic!(
                    "tether did not stop within 10s of SIGTERM; log:\n{}",
                    self.log()
                )
            });
        // The reader thread sees end-of-file once tether is gone; let it catch up.
        poll_until(Duration::from_secs(2), || {
            self.lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("\"stopped\""))
                .then_some(())
        });
        (status, self.log())
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
