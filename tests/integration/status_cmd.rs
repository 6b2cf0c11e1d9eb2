//! `tether status` against a running `tether run`, as a person and a shell script use
//! it: the table, `--json`, `--watch`, the config's `listen` as default URL, and the
//! exit codes 0 (required targets up), 1 (not) and 2 (unreachable). Also what
//! `tether run` itself says about its endpoints: a port already taken, and one JSON log
//! event per transition.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use crate::support::harness::{Behaviour, Listener, dead_port};
use crate::support::stdout;
use crate::support::tether_process::{TetherProcess, command as tether};
use crate::support::{free_port, poll_until};

const FAST: &str = "backoff = { initial = \"10ms\", max = \"50ms\" }\nfailure_threshold = 2\n";

fn config_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file
}

fn targets(required: &str, optional: &str) -> String {
    format!(
        "[[targets]]\nname = \"db\"\naddress = \"{required}\"\n{FAST}\
         [[targets]]\nname = \"search\"\naddress = \"{optional}\"\nrequired = false\n{FAST}"
    )
}

/// `tether GLOBAL_ARGS run -c CONFIG`, once its HTTP server listens, and where.
fn start(config: &Path, global_args: &[&str]) -> (TetherProcess, SocketAddr) {
    let tether = TetherProcess::run(config, global_args);
    let addr = tether.http_addr(Duration::from_secs(20));
    (tether, addr)
}

fn status(args: &[&str]) -> Output {
    tether().arg("status").args(args).output().unwrap()
}

/// Runs `tether status --url URL` until its output satisfies `done`.
fn status_until(url: &str, what: &str, done: impl Fn(&Output) -> bool) -> Output {
    status_args_until(&["--url", url], what, done)
}

/// Runs `tether status ARGS` every [`POLL_INTERVAL`](crate::support::POLL_INTERVAL) until its output satisfies `done`, for at
/// most 15 s.
fn status_args_until(args: &[&str], what: &str, done: impl Fn(&Output) -> bool) -> Output {
    tokio::task::block_in_place(|| {
        let mut last = None;
        poll_until(Duration::from_secs(15), || {
            let out = status(args);
            if done(&out) {
                return Some(out);
            }
            last = Some(out);
            None
        })
        .unwrap_or_else(|| panic!("no {what}; last:\n{:?}", last.unwrap()))
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn status_prints_a_row_per_target_and_exits_by_the_required_targets() {
    let mut db = Listener::start(Behaviour::Hold).await;
    let dead = format!("127.0.0.1:{}", dead_port());
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        targets(&db.address(), &dead)
    ));
    let (sidecar, addr) = tokio::task::block_in_place(|| start(config.path(), &[]));
    let url = format!("http://{}", addr);

    // The optional target is failing, the required one is up: exit 0.
    let out = status_until(&url, "db up", |o| {
        o.status.code() == Some(0) && stdout(o).contains("failed")
    });
    let table = stdout(&out);
    assert!(!table.contains('\x1b'), "colour on a pipe:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines[0].contains(&format!("at http://{}/status: ready", addr)),
        "{table}"
    );
    let header: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TARGET", "STATE", "FOR", "FAILURES", "REQUIRED", "ADDRESS", "LAST", "ERROR"
        ]
    );
    let db_row: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(db_row[0], "db", "{table}");
    assert_eq!(db_row[1], "up", "{table}");
    assert_eq!(
        db_row[db_row.len() - 3..],
        ["yes", db.address().as_str(), "-"]
    );
    let search = lines[3];
    assert!(search.starts_with("search "), "{table}");
    assert!(search.contains("failed (fallback)"), "{table}");
    let cells: Vec<&str> = search.split_whitespace().collect();
    let address = cells.iter().position(|c| *c == dead).unwrap();
    assert_eq!(cells[address - 1], "no", "{table}");
    assert!(search.ends_with("connection refused"), "{table}");

    // The required target goes away: exit 1, and the row says why.
    db.kill().await;
    let out = status_until(&url, "db down", |o| o.status.code() == Some(1));
    let table = stdout(&out);
    assert!(
        table.lines().next().unwrap().contains("not ready"),
        "{table}"
    );
    let db_row = table.lines().nth(2).unwrap();
    assert!(
        db_row.contains(" down ") || db_row.contains(" failed"),
        "{table}"
    );

    // --json passes the document through; the exit code is the same.
    let out = tokio::task::block_in_place(|| status(&["--url", &url, "--json"]));
    assert_eq!(out.status.code(), Some(1));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["ready"], false);
    assert_eq!(doc["targets"][0]["name"], "db");

    db.restore(Behaviour::Hold).await;
    status_until(&url, "db up again", |o| o.status.code() == Some(0));

    let (stopped, log) = tokio::task::block_in_place(|| sidecar.stop());
    assert!(stopped.success(), "{stopped:?}\n{log}");
    // Nobody answers any more: exit 2, with the reason on stderr and nothing on stdout.
    let out = tokio::task::block_in_place(|| status(&["--url", &url]));
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot read {url}/status: cannot connect")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_finds_the_sidecar_through_the_config_listen_address() {
    let db = Listener::start(Behaviour::Hold).await;
    let port = free_port();
    let config = config_file(&format!(
        "[server]\nlisten = \"0.0.0.0:{port}\"\n{}",
        targets(&db.address(), &db.address())
    ));
    let (sidecar, addr) = tokio::task::block_in_place(|| start(config.path(), &[]));
    assert_eq!(addr.port(), port);
    let out = status_args_until(
        &["-c", config.path().to_str().unwrap()],
        "exit 0 with the config's address",
        |o| o.status.code() == Some(0),
    );
    assert!(
        stdout(&out).contains(&format!("at http://127.0.0.1:{port}/status")),
        "{out:?}"
    );
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread")]
async fn status_exits_2_when_nothing_answers_and_for_a_bad_url() {
    let url = format!("http://127.0.0.1:{}", dead_port());
    let out = status(&["--url", &url]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = status(&["--url", "https://127.0.0.1:9464"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only http:// and unix: URLs are supported"),
        "{out:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn status_watch_redraws_the_table_until_interrupted() {
    let db = Listener::start(Behaviour::Hold).await;
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{}",
        targets(&db.address(), &db.address())
    ));
    let (sidecar, addr) = tokio::task::block_in_place(|| start(config.path(), &[]));
    let url = format!("http://{}", addr);
    status_until(&url, "both up", |o| o.status.code() == Some(0));

    let mut watch = tether()
        .args(["status", "--watch", "--url", &url])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let headers = tokio::task::block_in_place(|| {
        let mut headers = 0;
        // Each refresh starts with the summary line; bounded by the refresh count.
        for line in lines.by_ref() {
            if line.unwrap().starts_with("tether ") {
                headers += 1;
                if headers == 2 {
                    break;
                }
            }
        }
        headers
    });
    assert_eq!(headers, 2, "the table was not redrawn");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(watch.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let code = tokio::task::block_in_place(|| {
        poll_until(Duration::from_secs(5), || watch.try_wait().unwrap()).map(|s| s.code())
    })
    .unwrap_or_else(|| {
        let _ = watch.kill();
        panic!("tether status --watch ignored SIGINT")
    });
    assert_eq!(code, Some(0), "the exit code of the last refresh");
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_exits_1_with_a_clear_error_when_its_port_is_taken() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let db = Listener::start(Behaviour::Hold).await;
    let config = config_file(&format!(
        "[server]\nlisten = \"{addr}\"\n{}",
        targets(&db.address(), &db.address())
    ));
    let out = tokio::task::block_in_place(|| {
        tether()
            .args(["run", "-c"])
            .arg(config.path())
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "tether: cannot listen on {addr} ([server] listen): Address already in use"
        )),
        "{err}"
    );
    assert_eq!(db.accepted(), 0, "tether connected before failing");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_carry_one_event_per_transition_with_its_fields() {
    let mut db = Listener::start(Behaviour::Hold).await;
    let config = config_file(&format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[[targets]]\nname = \"db\"\naddress = \"{}\"\n{FAST}",
        db.address()
    ));
    let (sidecar, addr) =
        tokio::task::block_in_place(|| start(config.path(), &["--log-format", "json"]));
    tokio::task::block_in_place(|| {
        sidecar.wait_for("\"to\":\"up\"", Duration::from_secs(10));
    });
    db.kill().await;
    tokio::task::block_in_place(|| {
        sidecar.wait_for("\"to\":\"failed\"", Duration::from_secs(10));
    });
    let log = sidecar.lines();
    let events: Vec<serde_json::Value> = log
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let transitions: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["target"] == "tether::transition")
        .collect();
    let moves: Vec<(&str, &str)> = transitions
        .iter()
        .map(|e| (e["from"].as_str().unwrap(), e["to"].as_str().unwrap()))
        .collect();
    assert_eq!(
        moves,
        [("connecting", "up"), ("up", "down"), ("down", "failed")],
        "{log:#?}"
    );
    let failure = transitions[2];
    assert_eq!(failure["target_name"], "db");
    assert_eq!(failure["level"], "WARN");
    assert_eq!(failure["event"], "failure");
    assert_eq!(failure["event_id"], "db:2");
    assert_eq!(failure["failures"], 2);
    assert!(
        failure["error"].as_str().unwrap().contains("refused"),
        "{failure}"
    );
    assert!(failure["timestamp"].is_string());
    let listening = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("listening on"))
        })
        .expect("a listening event");
    assert_eq!(listening["address"], addr.to_string());
    let (stopped, _) = tokio::task::block_in_place(|| sidecar.stop());
    assert!(stopped.success());
}
