//! The `tether` binary as scripts and init containers use it: exit codes, `probe`,
//! `wait`, and a clean stop on SIGTERM.

use std::io::Write;
use std::time::{Duration, Instant};

use crate::support::harness::{Behaviour, Listener, dead_port};
use crate::support::poll;
use crate::support::tether_process::{TetherProcess, command as tether};

#[tokio::test(flavor = "multi_thread")]
async fn run_watches_the_configured_targets_and_stops_cleanly_on_sigterm() {
    let listener = Listener::start(Behaviour::Hold).await;
    let mut file = tempfile::NamedTempFile::new().unwrap();
    write!(
        file,
        "[server]\nlisten = \"127.0.0.1:0\"\n[[targets]]\nname = \"dep\"\naddress = \"{}\"\n",
        listener.address()
    )
    .unwrap();
    let running = TetherProcess::run(file.path(), &[]);
    tokio::task::spawn_blocking({
        let l = listener.accepted_counter();
        move || {
            poll(Duration::from_secs(10), "connection from tether", || {
                l() >= 1
            })
        }
    })
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || running.stop())
        .await
        .unwrap();
    assert!(
        status.0.success(),
        "exit {:?}; log:\n{}",
        status.0,
        status.1
    );
    assert!(
        status.1.contains("dep is up (connect)"),
        "log:\n{}",
        status.1
    );
    assert!(status.1.contains("received SIGTERM"), "log:\n{}", status.1);
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_exits_0_for_a_live_address_and_1_for_a_dead_one() {
    let listener = Listener::start(Behaviour::Hold).await;
    let addr = listener.address();
    let out =
        tokio::task::spawn_blocking(move || tether().args(["probe", &addr]).output().unwrap())
            .await
            .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("is healthy"));

    let dead = format!("127.0.0.1:{}", dead_port());
    let out = tether().args(["probe", &dead]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("connection refused"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_returns_once_every_address_answers() {
    let mut late = Listener::start(Behaviour::Hold).await;
    let early = Listener::start(Behaviour::Hold).await;
    late.kill().await;
    let late_addr = late.address();
    let args = [
        "wait".to_owned(),
        early.address(),
        late.address(),
        "--timeout".into(),
        "20s".into(),
    ];
    let waiting = TetherProcess::spawn({
        let mut command = tether();
        command.args(&args);
        command
    });
    // Bring the second one up only once tether has seen it refuse.
    let mut waiting = tokio::task::spawn_blocking(move || {
        waiting.wait_for(&format!("waiting for {late_addr}"), Duration::from_secs(10));
        waiting
    })
    .await
    .unwrap();
    late.restore(Behaviour::Hold).await;
    let status = tokio::task::spawn_blocking(move || waiting.wait_exit(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn wait_gives_up_with_1_after_its_timeout() {
    let dead = format!("127.0.0.1:{}", dead_port());
    let started = Instant::now();
    let out = tether()
        .args(["wait", &dead, "--timeout", "700ms"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not healthy after"),
        "{out:?}"
    );
}

#[test]
fn version_and_help_describe_the_tool() {
    let out = tether().arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("tether {}", env!("CARGO_PKG_VERSION"))
    );
    let out = tether().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for command in ["run", "check-config", "probe", "wait"] {
        assert!(
            help.contains(command),
            "--help does not list {command}:\n{help}"
        );
    }
}

#[test]
fn the_config_path_falls_back_to_tether_config_then_the_working_directory() {
    let dir = tempfile::tempdir().unwrap();
    let good = "[[targets]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n";
    std::fs::write(dir.path().join("tether.toml"), good).unwrap();
    std::fs::write(
        dir.path().join("other.toml"),
        good.replace("\"a\"", "\"from_env\""),
    )
    .unwrap();

    let out = tether()
        .arg("check-config")
        .current_dir(dir.path())
        .env_remove("TETHER_CONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("name = \"a\""));

    let out = tether()
        .arg("check-config")
        .current_dir(dir.path())
        .env("TETHER_CONFIG", dir.path().join("other.toml"))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("name = \"from_env\""),
        "{out:?}"
    );
}

#[test]
fn the_demo_breaks_and_restores_a_service_and_shows_hooks_and_metrics_in_under_15_seconds() {
    let started = Instant::now();
    let out = tether().arg("demo").output().unwrap();
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    // Every event, in order, each with its hook's output.
    let mut rest = text.as_ref();
    for needle in [
        "connect    connecting -> up",
        "demo-db:0 connect: connection up",
        "disconnect up -> down",
        "failure    down -> failed",
        "switch the application to its fallback store",
        "tether_target_state{state=\"failed\",target=\"demo-db\"} 1",
        "connect    failed -> up",
        "recover    up -> up",
        "switch the application back to the primary",
        "tether_hook_runs_total{event=\"recover\",result=\"ok\",target=\"demo-db\"} 1",
    ] {
        let at = rest
            .find(needle)
            .unwrap_or_else(|| panic!("no {needle:?} after the previous step in:\n{text}"));
        rest = &rest[at + needle.len()..];
    }
    assert!(
        out.stderr.is_empty(),
        "no log noise: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_usage_of_probe_and_wait_exits_2_with_a_message_and_never_panics() {
    let cases: [&[&str]; 5] = [
        &["probe", "not-an-address"],
        &["wait", "127.0.0.1:5432", "no-port"],
        &["wait", "127.0.0.1:5432", "--timeout", "300000000000y"],
        &[
            "probe",
            "127.0.0.1:5432",
            "--timeout",
            "18446744073709551615s",
        ],
        &["probe", "127.0.0.1:5432", "--timeout", "0s"],
    ];
    for args in cases {
        let out = tether().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(
            stderr.starts_with("error: invalid value"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

#[test]
fn the_bash_completion_script_loads_in_bash_and_the_man_page_renders() {
    let script = tether().args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tether.bash");
    std::fs::write(&path, &script.stdout).unwrap();
    // Sourced for real, not only parsed: the completion function must get defined.
    let loaded = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!(
            "set -e; bash -n '{0}'; source '{0}'; complete -p tether",
            path.display()
        ))
        .output()
        .unwrap();
    assert!(
        loaded.status.success(),
        "{}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    assert!(String::from_utf8_lossy(&loaded.stdout).contains("tether"));

    let man = tether().arg("man").output().unwrap();
    assert!(man.status.success());
    let page = String::from_utf8(man.stdout).unwrap();
    assert!(
        page.contains(".TH tether 1"),
        "{}",
        &page[..80.min(page.len())]
    );
    assert!(page.contains("TETHER CHECK-CONFIG"));
}
