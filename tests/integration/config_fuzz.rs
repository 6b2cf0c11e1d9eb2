//! Mangled config files never take tether down: the shipped examples with random byte
//! edits, truncations and huge values are either accepted or refused with diagnostics,
//! by `Config::parse`, by `tether check-config` (exit 0 or 2, in bounded time and memory)
//! and by a running sidecar's SIGHUP (applied or refused, the sidecar still answering).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use proptest::prelude::*;
use tether::config::Config;

use crate::support::poll;
use crate::support::tether_process::{TetherProcess, command as tether, run_command};

/// Values that have broken parsers and timers before.
const HUGE: [&str; 10] = [
    "\"300000000000y\"",
    "\"18446744073709551615s\"",
    "99999999999999999999",
    "-9223372036854775808",
    "1e308",
    "nan",
    "inf",
    "\"\\u0000\"",
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    "\"9999999999999999999999999999999999999999ms\"",
];

fn examples() -> Vec<(PathBuf, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files: Vec<(PathBuf, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the shipped examples are missing");
    files
}

/// One mutation of `text`, chosen by `choice` at `at` (both taken modulo what fits).
fn mutate(text: &[u8], choice: u8, at: usize, byte: u8) -> Vec<u8> {
    let mut out = text.to_vec();
    if out.is_empty() {
        return out;
    }
    let at = at % out.len();
    match choice % 5 {
        0 => out[at] = byte,
        1 => out.truncate(at),
        2 => {
            out.remove(at);
        }
        3 => {
            // A value replaced by a huge or hostile one: after the next '='.
            if let Some(eq) = out[at..].iter().position(|&b| b == b'=') {
                let start = at + eq + 1;
                let end = out[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(out.len(), |n| start + n);
                let huge = HUGE[usize::from(byte) % HUGE.len()];
                out.splice(start..end, format!(" {huge}").into_bytes());
            }
        }
        _ => out.insert(at, byte),
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn parsing_a_mangled_example_never_panics_and_refusals_say_where(
        example in 0usize..16,
        edits in proptest::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..4),
    ) {
        let files = examples();
        let (path, text) = &files[example % files.len()];
        let mut bytes = text.as_bytes().to_vec();
        for (choice, at, byte) in edits {
            bytes = mutate(&bytes, choice, at, byte);
        }
        let text = String::from_utf8_lossy(&bytes);
        let started = Instant::now();
        match Config::parse(&text, path) {
            Ok(config) => {
                // An accepted config prints, and what it prints is accepted again.
                let again = Config::parse(&config.to_toml(), path);
                prop_assert!(again.is_ok(), "{:?}", again.err());
            }
            Err(e) => {
                let shown = e.to_string();
                prop_assert!(!shown.is_empty());
                for line in shown.lines().filter(|l| !l.starts_with("and ")) {
                    prop_assert!(line.starts_with(&path.display().to_string()), "{line}");
                }
            }
        }
        prop_assert!(started.elapsed() < Duration::from_secs(5));
    }
}

/// Deterministic mutations for the runs of the binary: the same files on every run.
fn mangled_files(dir: &Path, count: usize) -> Vec<PathBuf> {
    let files = examples();
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..count)
        .map(|i| {
            let (_, text) = &files[i % files.len()];
            let mut bytes = text.as_bytes().to_vec();
            for _ in 0..(1 + next() % 3) {
                let r = next();
                bytes = mutate(&bytes, r as u8, (r >> 8) as usize, (r >> 40) as u8);
            }
            let path = dir.join(format!("mangled-{i}.toml"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

#[test]
fn check_config_on_mangled_examples_exits_0_or_2_within_bounded_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    for file in mangled_files(dir.path(), 40) {
        let mut command = tether();
        command
            .arg("check-config")
            .arg("-c")
            .arg(&file)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // 512 MiB of address space: a parser that blew up on a hostile value would
        // fail here instead of swapping the machine.
        unsafe {
            command.pre_exec(|| {
                let limit = 512 * 1024 * 1024;
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_AS, limit, limit)
                    .map_err(std::io::Error::from)
            });
        }
        let started = Instant::now();
        let out = command.output().unwrap();
        let took = started.elapsed();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            matches!(out.status.code(), Some(0 | 2)),
            "{}: {:?}\n{stderr}",
            file.display(),
            out.status
        );
        assert!(!stderr.contains("panicked"), "{}: {stderr}", file.display());
        assert!(
            took < Duration::from_secs(10),
            "{}: {took:?}",
            file.display()
        );
    }
}

#[test]
fn sighup_with_mangled_configs_applies_or_refuses_each_and_the_sidecar_keeps_answering() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.toml");
    let good = "[server]\nlisten = \"127.0.0.1:0\"\n[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:1\"\n";
    std::fs::write(&path, good).unwrap();
    let tether = TetherProcess::spawn(run_command(&path, &[]));
    let addr = tether.http_addr(Duration::from_secs(20));
    let outcomes = || {
        let log = tether.log();
        log.matches("config reloaded").count() + log.matches("keeping the running config").count()
    };
    for (i, file) in mangled_files(dir.path(), 25).into_iter().enumerate() {
        std::fs::copy(&file, &path).unwrap();
        tether.signal(Signal::SIGHUP);
        poll(Duration::from_secs(20), "the reload's outcome", || {
            outcomes() > i
        });
        let healthz = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5));
        assert!(
            healthz.is_ok(),
            "the sidecar stopped listening after {}",
            file.display()
        );
    }
    let log = tether.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(tether);
}
