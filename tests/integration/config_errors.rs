//! A malformed config is refused with exit status 2 and a `FILE:LINE:COL: KEY: message`
//! diagnostic pointing at the mistake, proved on the corpus in `tests/configs/invalid/`:
//! one file per mistake, whose first line states the diagnostic it must produce.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The binary under test, as users run it.
const TETHER: &str = env!("CARGO_BIN_EXE_tether");

/// Exit status for an invalid config (the CLI contract).
const EXIT_BAD_CONFIG: i32 = 2;

/// Fewer files than this means the corpus was lost or moved, not that tether got better.
const MIN_CORPUS_FILES: usize = 25;

/// A refused config exits at once; this only bounds a regression that starts the
/// sidecar on a bad config instead.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/configs/invalid")
}

fn corpus() -> Vec<PathBuf> {
    let dir = corpus_dir();
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("read {}: {err}", dir.display()))
        .map(|entry| entry.expect("list the corpus").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// The diagnostic a corpus file announces on its first line:
/// `# expect: LINE:COL: KEY: MESSAGE-SUBSTRING`, or `# expect: LINE:COL: MESSAGE-SUBSTRING`
/// for an error that no key can be blamed for (TOML syntax). The text before the first
/// `": "` is the key when it contains no whitespace; a message always does.
#[derive(Debug)]
struct Expected {
    line: usize,
    column: usize,
    key: String,
    message: String,
}

impl Expected {
    fn read(file: &Path) -> Result<Expected, String> {
        let text = fs::read_to_string(file).map_err(|err| format!("cannot read it: {err}"))?;
        let first = text.lines().next().unwrap_or_default();
        Expected::parse(first).ok_or_else(|| {
            format!(
                "first line {first:?} is not `# expect: LINE:COL: KEY: MESSAGE` \
                 or `# expect: LINE:COL: MESSAGE`"
            )
        })
    }

    fn parse(first_line: &str) -> Option<Expected> {
        let rest = first_line.strip_prefix("# expect: ")?;
        let (line, rest) = rest.split_once(':')?;
        let (column, rest) = rest.split_once(": ")?;
        let (key, message) = match rest.split_once(": ") {
            Some((key, message)) if !key.contains(char::is_whitespace) => (key, message),
            _ => ("", rest),
        };
        let expected = Expected {
            line: line.parse().ok()?,
            column: column.parse().ok()?,
            key: key.to_owned(),
            message: message.trim().to_owned(),
        };
        (!expected.message.is_empty()).then_some(expected)
    }

    /// What a matching stderr line starts with: position, then the key when there is one.
    fn prefix(&self, file: &Path) -> String {
        let mut prefix = format!("{}:{}:{}: ", file.display(), self.line, self.column);
        if !self.key.is_empty() {
            prefix.push_str(&self.key);
            prefix.push_str(": ");
        }
        prefix
    }

    fn is_reported_in(&self, file: &Path, stderr: &str) -> bool {
        let prefix = self.prefix(file);
        stderr.lines().any(|line| {
            line.strip_prefix(&prefix)
                .is_some_and(|message| message.contains(&self.message))
        })
    }

    fn describe(&self, file: &Path) -> String {
        format!("{}...{}...", self.prefix(file), self.message)
    }
}

/// What one run of the binary did.
struct Outcome {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn from_output(output: Output) -> Outcome {
        Outcome {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The lines of stderr that are diagnostics about `file`, in order.
    fn diagnostics_about(&self, file: &Path) -> Vec<&str> {
        let prefix = format!("{}:", file.display());
        self.stderr
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .collect()
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "exit status {:?}", self.code)?;
        for (name, text) in [("stdout", &self.stdout), ("stderr", &self.stderr)] {
            if !text.trim().is_empty() {
                write!(
                    f,
                    "\n    {name}: {}",
                    text.trim_end().replace('\n', "\n      ")
                )?;
            }
        }
        Ok(())
    }
}

/// Runs `tether ARGS...` to completion, killing it if it outlives [`EXIT_TIMEOUT`].
fn tether(args: &[&str]) -> Outcome {
    let child = Command::new(TETHER)
        .args(args)
        .env_remove("TETHER_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("start {TETHER}: {err}"));
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("a pid fits in i32"));
    // Waiting on another thread keeps draining both pipes, so a chatty child cannot
    // block on a full pipe while this thread watches the clock.
    let (done, finished) = mpsc::channel();
    thread::spawn(move || done.send(child.wait_with_output()));
    let output = finished.recv_timeout(EXIT_TIMEOUT).unwrap_or_else(|_| {
        // Not reaped yet, so the pid is still this child's.
        let _ = kill(pid, Signal::SIGKILL);
        let output = finished.recv().expect("the waiting thread reports");
        let outcome = Outcome::from_output(output.expect("reap tether"));
        panic!(
            "`tether {}` still ran after {EXIT_TIMEOUT:?}: {outcome}",
            args.join(" ")
        );
    });
    Outcome::from_output(output.expect("collect tether's output"))
}

fn check_config(file: &Path) -> Outcome {
    tether(&["check-config", "-c", path_arg(file)])
}

fn path_arg(file: &Path) -> &str {
    file.to_str().expect("the corpus lives under a UTF-8 path")
}

/// Why `file` was not refused the way its first line says, if it was not.
fn mismatch(file: &Path) -> Option<String> {
    let expected = match Expected::read(file) {
        Ok(expected) => expected,
        Err(why) => return Some(why),
    };
    let outcome = check_config(file);
    let mut problems = Vec::new();
    if outcome.code != Some(EXIT_BAD_CONFIG) {
        problems.push(format!("expected exit status {EXIT_BAD_CONFIG}"));
    }
    if !expected.is_reported_in(file, &outcome.stderr) {
        problems.push(format!("expected {}", expected.describe(file)));
    }
    let diagnostics = outcome.diagnostics_about(file);
    for (i, line) in diagnostics.iter().enumerate() {
        if diagnostics[..i].contains(line) {
            problems.push(format!("reported twice: {line}"));
        }
    }
    (!problems.is_empty()).then(|| format!("{}\n  got {outcome}", problems.join("\n  ")))
}

#[test]
fn every_malformed_config_is_refused_with_a_diagnostic_at_the_mistake() {
    let files = corpus();
    assert!(
        files.len() >= MIN_CORPUS_FILES,
        "{} holds {} config files, expected at least {MIN_CORPUS_FILES}",
        corpus_dir().display(),
        files.len()
    );
    let failures: Vec<String> = files
        .iter()
        .filter_map(|file| {
            let why = mismatch(file)?;
            let name = file.file_name().unwrap_or_default().to_string_lossy();
            Some(format!("{name}:\n  {why}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} malformed configs were not refused as announced:\n\n{}",
        failures.len(),
        files.len(),
        failures.join("\n\n")
    );
}

#[test]
fn run_refuses_a_malformed_config_before_starting_with_the_same_diagnostic() {
    let file = corpus_dir().join("zero_connect_timeout.toml");
    let expected = Expected::read(&file).unwrap_or_else(|why| panic!("{}: {why}", file.display()));

    let run = tether(&["run", "-c", path_arg(&file)]);

    assert_eq!(run.code, Some(EXIT_BAD_CONFIG), "tether run: {run}");
    assert!(
        expected.is_reported_in(&file, &run.stderr),
        "tether run should report {}\n  got {run}",
        expected.describe(&file)
    );
    let check = check_config(&file);
    assert_eq!(
        run.diagnostics_about(&file),
        check.diagnostics_about(&file),
        "run and check-config should report a config the same way"
    );
}

#[test]
fn a_missing_config_file_is_refused_naming_the_path() {
    let dir = tempfile::tempdir().expect("create a scratch directory");
    let missing = dir.path().join("no-such-tether.toml");

    for command in ["check-config", "run"] {
        let outcome = tether(&[command, "-c", path_arg(&missing)]);

        assert_eq!(
            outcome.code,
            Some(EXIT_BAD_CONFIG),
            "tether {command}: {outcome}"
        );
        assert!(
            outcome.stderr.contains(path_arg(&missing)),
            "tether {command} should name {}\n  got {outcome}",
            missing.display()
        );
    }
}

#[test]
fn an_expectation_line_names_the_key_only_when_there_is_one() {
    let keyed = Expected::parse("# expect: 5:19: targets[0].connect_timeout: must be > 0")
        .expect("a keyed expectation parses");
    assert_eq!((keyed.line, keyed.column), (5, 19));
    assert_eq!(keyed.key, "targets[0].connect_timeout");
    assert_eq!(keyed.message, "must be > 0");

    let syntax = Expected::parse("# expect: 3:11: invalid basic string: expected `\"`")
        .expect("a syntax expectation parses");
    assert_eq!(syntax.key, "");
    assert_eq!(syntax.message, "invalid basic string: expected `\"`");

    assert!(Expected::parse("[[targets]]").is_none());
    assert!(Expected::parse("# expect: 3: no column").is_none());
}

#[test]
fn a_config_with_forty_thousand_mistakes_is_reported_quickly_showing_the_first_hundred() {
    let dir = tempfile::tempdir().expect("create a scratch directory");
    let file = dir.path().join("mangled.toml");
    // Each block holds two mistakes: a zero duration and, after the first, a duplicate name.
    let block =
        "[[targets]]\nname = \"db\"\naddress = \"db.internal:5432\"\nconnect_timeout = \"0s\"\n";
    fs::write(&file, block.repeat(20_000)).expect("write the config");

    let started = std::time::Instant::now();
    let outcome = check_config(&file);
    let took = started.elapsed();
    eprintln!("check-config of 39,999 mistakes took {took:?}");

    assert_eq!(outcome.code, Some(EXIT_BAD_CONFIG), "{outcome}");
    let diagnostics = outcome.diagnostics_about(&file);
    assert_eq!(diagnostics.len(), 100, "{outcome}");
    assert!(
        diagnostics[0].contains(":4:19: targets[0].connect_timeout:"),
        "{}",
        diagnostics[0]
    );
    assert_eq!(
        outcome.stderr.lines().last(),
        Some("and 39899 more"),
        "{outcome}"
    );
    // Placing each mistake by rescanning the file took minutes for this many.
    assert!(took < Duration::from_secs(15), "check-config took {took:?}");
}

#[test]
fn a_config_file_over_16_mib_is_refused_before_it_is_parsed() {
    let dir = tempfile::tempdir().expect("create a scratch directory");
    let file = dir.path().join("huge.toml");
    let comment = format!("#{}\n", "x".repeat(1023));
    fs::write(&file, comment.repeat(16 * 1024 + 1)).expect("write the config");

    for command in ["check-config", "run"] {
        let outcome = tether(&[command, "-c", path_arg(&file)]);
        assert_eq!(
            outcome.code,
            Some(EXIT_BAD_CONFIG),
            "tether {command}: {outcome}"
        );
        assert!(
            outcome.stderr.contains("at most 16777216 are read"),
            "tether {command}: {outcome}"
        );
    }
}
