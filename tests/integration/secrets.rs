//! Credentials never reach an output: not through tether's own words, and not through a
//! server's reply that echoes what tether sent it.

use std::path::Path;
use std::time::Duration;

use crate::support::TestServer;
use crate::support::redis::RedisServer;
use crate::support::tether_process::{TetherProcess, command as tether, run_command};
use crate::support::{Exchange, poll_until};

const PASSWORD: &str = "pw-that-must-never-show-4f9c";
const LIMIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn a_password_echoed_by_a_redis_with_auth_renamed_reaches_no_output() {
    let redis =
        tokio::task::block_in_place(|| RedisServer::start_with(&["--rename-command", "AUTH", ""]));
    // The scenario is real: this server echoes the password it is sent.
    let mut exchange = Exchange::connect(redis.port(), LIMIT).unwrap();
    let auth = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{PASSWORD}\r\n", PASSWORD.len());
    exchange.send(auth.as_bytes()).unwrap();
    let reply = exchange.receive_until(b"\r\n", 512).unwrap();
    assert!(
        String::from_utf8_lossy(&reply).contains(PASSWORD),
        "{}",
        String::from_utf8_lossy(&reply)
    );

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let hook_env = dir.path().join("hook-env");
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen = "127.0.0.1:0"
            state_file = "{}"

            [[targets]]
            name = "cache"
            address = "{}"
            probe = {{ kind = "redis", password_env = "TEST_LEAK_PASSWORD" }}
            failure_threshold = 1
            backoff = {{ initial = "50ms", max = "200ms" }}
            [targets.hooks]
            on_failure = {{ shell = "env > '{}'" }}
            "#,
            state.display(),
            redis.addr(),
            hook_env.display()
        ),
    )
    .unwrap();
    let mut command = run_command(&config, &["--log-level", "debug"]);
    command.env("TEST_LEAK_PASSWORD", PASSWORD);
    let running = TetherProcess::spawn(command);
    let addr = running.http_addr(LIMIT);

    let hook_output = tokio::task::block_in_place(|| {
        poll_until(LIMIT, || {
            let text = std::fs::read_to_string(&hook_env).ok()?;
            text.contains("TETHER_LAST_ERROR=").then_some(text)
        })
    })
    .expect("on_failure ran");
    let last_error = hook_output
        .lines()
        .find_map(|l| l.strip_prefix("TETHER_LAST_ERROR="))
        .unwrap()
        .to_owned();
    assert!(last_error.contains("AUTH refused: -ERR"), "{last_error}");

    let status = crate::endpoint::get(addr, "/status").await.body;
    assert!(status.contains("AUTH refused"), "{status}");
    let cli = tokio::task::block_in_place(|| {
        tether()
            .args(["status", "--url", &format!("http://{addr}"), "--json"])
            .output()
            .unwrap()
    });
    let cli = String::from_utf8_lossy(&cli.stdout).into_owned();
    assert!(cli.contains("AUTH refused"), "{cli}");
    let state_file = tokio::task::block_in_place(|| {
        poll_until(LIMIT, || {
            let text = std::fs::read_to_string(&state).ok()?;
            text.contains("AUTH refused").then_some(text)
        })
    })
    .expect("the state file shows the failure");
    let log = running.log();

    for (output, text) in [
        ("TETHER_LAST_ERROR", last_error.as_str()),
        ("/status", &status),
        ("tether status", &cli),
        ("the state file", &state_file),
        ("the log", &log),
    ] {
        assert!(
            !text.contains(PASSWORD),
            "the password reached {output}:\n{text}"
        );
    }
    drop(running);
    assert_no_password_in(&hook_env);
}

fn assert_no_password_in(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(!text.is_empty());
    let leaked: Vec<&str> = text.lines().filter(|l| l.contains(PASSWORD)).collect();
    assert!(leaked.is_empty(), "{leaked:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn hooks_see_none_of_the_variables_tether_reads_secrets_from() {
    let listener =
        crate::support::harness::Listener::start(crate::support::harness::Behaviour::Hold).await;
    let dir = tempfile::tempdir().unwrap();
    let hook_env = dir.path().join("hook-env");
    let config = dir.path().join("tether.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [server]
            listen = "127.0.0.1:0"

            [[targets]]
            name = "web"
            address = "{}"
            [targets.hooks]
            on_connect = [
                {{ shell = "env > '{}'" }},
                {{ webhook = "http://127.0.0.1:9/", secret_env = "TEST_HOOK_KEY" }},
            ]

            [[targets]]
            name = "cache"
            address = "127.0.0.1:9"
            probe = {{ kind = "redis", password_env = "TEST_REDIS_KEY" }}
            "#,
            listener.address(),
            hook_env.display()
        ),
    )
    .unwrap();
    let mut command = run_command(&config, &[]);
    command
        .env("TEST_HOOK_KEY", PASSWORD)
        .env("TEST_REDIS_KEY", PASSWORD)
        .env("TEST_PLAIN_SETTING", "visible");
    let _running = TetherProcess::spawn(command);
    let env = tokio::task::block_in_place(|| {
        poll_until(LIMIT, || {
            let text = std::fs::read_to_string(&hook_env).ok()?;
            text.contains("TETHER_EVENT=").then_some(text)
        })
    })
    .expect("on_connect ran");
    assert!(env.contains("TEST_PLAIN_SETTING=visible"), "{env}");
    for var in ["TEST_HOOK_KEY", "TEST_REDIS_KEY"] {
        assert!(!env.contains(var), "the hook inherited {var}:\n{env}");
    }
    assert_no_password_in(&hook_env);
}
