//! `[server] unix_socket` and `listen = false` with a real `tether run`: the endpoints
//! over the socket, the file's mode and group, what is found at the path at start (a
//! stale socket replaced; a file, a directory or a missing directory refused and left
//! alone), the file removed at shutdown, and a sidecar with no TCP listener.

use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::support::redis::RedisServer;
use crate::support::tether_process::{TetherProcess, command as tether};
use crate::support::{TestServer, free_port, poll, running_as_root, workdir};

const LIMIT: Duration = Duration::from_secs(20);
/// A refused start exits at once; this bounds a regression that starts anyway.
const EXIT_LIMIT: Duration = Duration::from_secs(10);
const SERVING: &str = "serving HTTP on unix socket";

fn write_config(dir: &Path, server: &str, target: &str) -> PathBuf {
    let path = dir.join("tether.toml");
    std::fs::write(
        &path,
        format!(
            "[server]\n{server}\n[[targets]]\nname = \"cache\"\naddress = \"{target}\"\n\
             probe = \"redis\"\nfailure_threshold = 2\n\
             backoff = {{ initial = \"10ms\", max = \"50ms\" }}\n"
        ),
    )
    .unwrap();
    path
}

/// One HTTP/1.0 GET over the socket: the status line and the body.
fn get(socket: &Path, path: &str) -> (String, String) {
    let mut stream = UnixStream::connect(socket).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

/// The gid a test may give the socket: `daemon` (every Debian has it) as root; as
/// another user, the user's own group, the only one chown(2) allows.
fn test_group() -> (String, u32) {
    if running_as_root() {
        let group = nix::unistd::Group::from_name("daemon").unwrap().unwrap();
        ("daemon".to_owned(), group.gid.as_raw())
    } else {
        let gid = nix::unistd::getegid().as_raw();
        (gid.to_string(), gid)
    }
}

fn status(args: &[&str]) -> Output {
    tether().arg("status").args(args).output().unwrap()
}

#[test]
fn the_endpoints_answer_on_the_unix_socket_which_has_mode_0660_and_its_group_and_goes_at_shutdown()
{
    let redis = RedisServer::start();
    let dir = workdir("unix-socket");
    let socket = dir.path().join("tether.sock");
    let (group, gid) = test_group();
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:0\"\nunix_socket = \"{}\"\nunix_socket_group = \"{group}\"",
            socket.display()
        ),
        &redis.addr(),
    );
    let sidecar = TetherProcess::run(&config, &[]);
    sidecar.wait_for(SERVING, LIMIT);

    let meta = std::fs::symlink_metadata(&socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    assert_eq!(meta.gid(), gid);

    poll(LIMIT, "cache up over the socket", || {
        let (line, body) = get(&socket, "/status");
        let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        line.contains(" 200 ") && doc["targets"][0]["state"] == "up"
    });
    let (line, body) = get(&socket, "/status");
    assert!(line.contains(" 200 "), "{line}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["targets"][0]["name"], "cache");
    for (path, answer) in [
        ("/healthz", "ok"),
        ("/readyz", "ready"),
        ("/startupz", "started"),
    ] {
        let (line, body) = get(&socket, path);
        assert!(line.contains(" 200 "), "{path}: {line}");
        assert_eq!(body.trim(), answer, "{path}");
    }
    let (line, body) = get(&socket, "/metrics");
    assert!(
        line.contains(" 200 ") && body.contains("tether_target_up"),
        "{line}"
    );

    // The event stream opens with a snapshot, as on TCP.
    let mut stream = UnixStream::connect(&socket).unwrap();
    stream.set_read_timeout(Some(LIMIT)).unwrap();
    stream.write_all(b"GET /events HTTP/1.0\r\n\r\n").unwrap();
    let mut seen = Vec::new();
    let mut buf = [0; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: snapshot\ndata: ") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);

    // `tether status` reads the socket by URL, with one slash or three.
    let url = format!("unix:{}", socket.display());
    for url in [url.clone(), format!("unix://{}", socket.display())] {
        let out = status(&["--url", &url]);
        let table = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{table}");
        assert!(
            table.contains(&format!("at {}: ready", url.replace("unix://", "unix:"))),
            "{table}"
        );
        assert!(table.contains("cache "), "{table}");
    }

    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");
    assert!(!socket.exists(), "the socket outlived a clean shutdown");
}

#[test]
fn a_stale_socket_left_by_a_crashed_run_is_replaced() {
    let dir = workdir("unix-stale");
    let socket = dir.path().join("tether.sock");
    // Bound and closed: the file stays, nobody answers on it.
    drop(UnixListener::bind(&socket).unwrap());
    assert!(UnixStream::connect(&socket).is_err());
    let config = write_config(
        dir.path(),
        &format!("listen = false\nunix_socket = \"{}\"", socket.display()),
        &format!("127.0.0.1:{}", free_port()),
    );
    let sidecar = TetherProcess::run(&config, &[]);
    sidecar.wait_for("replacing a stale unix socket", LIMIT);
    sidecar.wait_for(SERVING, LIMIT);
    let (line, _) = get(&socket, "/healthz");
    assert!(line.contains(" 200 "), "{line}");
    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");
}

/// Starts tether with `unix_socket = path` and returns its exit code and log.
fn refused_start(dir: &Path, socket: &Path) -> (Option<i32>, String) {
    let config = write_config(
        dir,
        &format!("listen = false\nunix_socket = \"{}\"", socket.display()),
        &format!("127.0.0.1:{}", free_port()),
    );
    let mut sidecar = TetherProcess::run(&config, &[]);
    let code = sidecar.wait_exit(EXIT_LIMIT).code();
    (code, sidecar.log())
}

#[test]
fn a_regular_file_or_directory_at_the_socket_path_is_left_alone_and_tether_exits_1_naming_it() {
    let dir = workdir("unix-occupied");
    let file = dir.path().join("precious.sock");
    std::fs::write(&file, "someone's data\n").unwrap();
    let (code, log) = refused_start(dir.path(), &file);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&file.display().to_string()), "{log}");
    assert!(log.contains("a regular file is there"), "{log}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "someone's data\n");

    let directory = dir.path().join("a-directory");
    std::fs::create_dir(&directory).unwrap();
    let (code, log) = refused_start(dir.path(), &directory);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("a directory is there"), "{log}");
    assert!(directory.is_dir());

    let link = dir.path().join("link.sock");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let (code, log) = refused_start(dir.path(), &link);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("a symbolic link is there"), "{log}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );

    let nowhere = dir.path().join("missing").join("tether.sock");
    let (code, log) = refused_start(dir.path(), &nowhere);
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "the directory {} does not exist",
            dir.path().join("missing").display()
        )),
        "{log}"
    );
}

#[test]
fn with_listen_false_no_tcp_port_is_bound_while_the_socket_serves() {
    let dir = workdir("unix-only");
    let socket = dir.path().join("tether.sock");
    let port = free_port();
    let target = format!("127.0.0.1:{}", free_port());
    // First with the port, to show it would be listened on.
    let config = write_config(
        dir.path(),
        &format!(
            "listen = \"127.0.0.1:{port}\"\nunix_socket = \"{}\"",
            socket.display()
        ),
        &target,
    );
    let sidecar = TetherProcess::run(&config, &[]);
    sidecar.wait_for(SERVING, LIMIT);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");

    let config = write_config(
        dir.path(),
        &format!("listen = false\nunix_socket = \"{}\"", socket.display()),
        &target,
    );
    let sidecar = TetherProcess::run(&config, &[]);
    sidecar.wait_for("no TCP listener (server.listen = false)", LIMIT);
    sidecar.wait_for(SERVING, LIMIT);
    assert!(
        !sidecar.log().contains("listening on "),
        "{}",
        sidecar.log()
    );
    let refused = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    let (line, _) = get(&socket, "/healthz");
    assert!(line.contains(" 200 "), "{line}");

    // The commands find the socket through the config.
    let config_arg = config.to_str().unwrap();
    let out = status(&["-c", config_arg]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains(&format!("at unix:{}", socket.display())),
        "{table}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The effective config reads back as the same config.
    let printed = tether()
        .args(["check-config", "-c", config_arg])
        .output()
        .unwrap();
    let printed = String::from_utf8(printed.stdout).unwrap();
    assert!(printed.contains("listen = false\n"), "{printed}");
    let again = dir.path().join("printed.toml");
    std::fs::write(&again, &printed).unwrap();
    let reprinted = tether()
        .args(["check-config", "-c", again.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8(reprinted.stdout).unwrap(), printed);

    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");
}

#[test]
fn with_both_listeners_off_tether_runs_and_says_nothing_is_served() {
    let dir = workdir("no-listener");
    let state = dir.path().join("state.json");
    let config = write_config(
        dir.path(),
        &format!("listen = false\nstate_file = \"{}\"", state.display()),
        &format!("127.0.0.1:{}", free_port()),
    );
    let sidecar = TetherProcess::run(&config, &[]);
    sidecar.wait_for("no HTTP endpoints", LIMIT);
    // The state file still follows the target.
    poll(LIMIT, "the failed target in the state file", || {
        std::fs::read_to_string(&state)
            .ok()
            .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
            .is_some_and(|doc| doc["targets"][0]["state"] == "failed")
    });
    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");
}

#[test]
fn an_unknown_socket_group_stops_tether_at_start_with_exit_1() {
    let dir = workdir("unix-group");
    let socket = dir.path().join("tether.sock");
    let config = write_config(
        dir.path(),
        &format!(
            "listen = false\nunix_socket = \"{}\"\nunix_socket_group = \"no-such-group-here\"",
            socket.display()
        ),
        &format!("127.0.0.1:{}", free_port()),
    );
    let checked = tether()
        .args(["check-config", "-c", config.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(checked.status.code(), Some(0), "the file itself is valid");
    let mut sidecar = TetherProcess::run(&config, &[]);
    let code = sidecar.wait_exit(EXIT_LIMIT).code();
    let log = sidecar.log();
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("no group \"no-such-group-here\""), "{log}");
    assert!(!socket.exists());
}

#[test]
fn a_reload_that_moves_the_socket_keeps_serving_on_the_old_one_and_says_so() {
    let dir = workdir("unix-reload");
    let socket = dir.path().join("tether.sock");
    let moved = dir.path().join("moved.sock");
    let target = format!("127.0.0.1:{}", free_port());
    let config = write_config(
        dir.path(),
        &format!("listen = false\nunix_socket = \"{}\"", socket.display()),
        &target,
    );
    let sidecar = TetherProcess::run(&config, &[]);
    sidecar.wait_for(SERVING, LIMIT);
    write_config(
        dir.path(),
        &format!("listen = false\nunix_socket = \"{}\"", moved.display()),
        &target,
    );
    sidecar.signal(nix::sys::signal::Signal::SIGHUP);
    sidecar.wait_for("the listeners stay as they are until the next start", LIMIT);
    sidecar.wait_for("config reloaded", LIMIT);
    let (line, _) = get(&socket, "/healthz");
    assert!(line.contains(" 200 "), "{line}");
    assert!(!moved.exists());
    let (stopped, log) = sidecar.stop();
    assert!(stopped.success(), "{log}");
}

/// The server's defences hold on the socket as on TCP: a newcomer at the connection
/// bound displaces the oldest idle client, a client that sends no request head is
/// closed after the header timeout, and an event stream outlives the connection age.
#[tokio::test(flavor = "multi_thread")]
async fn the_socket_has_the_same_defences_as_the_tcp_listener() {
    use std::sync::Arc;
    use tether::config::Config;
    use tether::telemetry::http::{App, HttpServer, Limits};
    use tether::telemetry::metrics::Metrics;
    use tether::telemetry::status::Status;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = workdir("unix-defences");
    let socket = dir.path().join("tether.sock");
    let config = Config::parse(
        "[[targets]]\nname = \"dep\"\naddress = \"127.0.0.1:1\"\n",
        "test.toml".as_ref(),
    )
    .unwrap();
    let app = App {
        status: Arc::new(Status::new(&config)),
        metrics: Arc::new(Metrics::new(&config).unwrap()),
        events: Arc::default(),
        admin: Default::default(),
    };
    let limits = Limits {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(300),
        max_connection_age: Duration::from_millis(500),
        close_grace: Duration::from_secs(1),
    };
    let server = HttpServer::bind_unix(&socket, None, app, limits)
        .await
        .unwrap();
    assert_eq!(server.local_addr(), None);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let connect = || tokio::net::UnixStream::connect(&socket);
    let closed_within = |mut s: tokio::net::UnixStream, limit: Duration| async move {
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(limit, s.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    };

    // A stream, exempt from the age and the bound.
    let mut stream = connect().await.unwrap();
    stream
        .write_all(b"GET /events HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains(" 200 "));

    // Two idle clients fill the bound; a third request displaces the oldest.
    let oldest = connect().await.unwrap();
    let _second = connect().await.unwrap();
    let mut third = connect().await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(LIMIT, third.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(
        answer.contains(" 200 ") && answer.ends_with("ok\n"),
        "{answer}"
    );
    assert!(
        closed_within(oldest, Duration::from_secs(2)).await,
        "the oldest was displaced"
    );

    // A client that never sends its head is closed after the header timeout.
    let silent = connect().await.unwrap();
    assert!(
        closed_within(silent, Duration::from_secs(3)).await,
        "header timeout"
    );

    // Past the connection age the stream is still open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let still = tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buf)).await;
    assert!(
        still.is_err() || matches!(still, Ok(Ok(n)) if n > 0),
        "the stream was cut: {still:?}"
    );

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .unwrap()
        .unwrap();
    assert!(!socket.exists(), "the socket outlived its server");
}
