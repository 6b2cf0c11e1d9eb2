//! Moving targets: a host name re-pointed to another server (a DNS failover, a re-pointed
//! Kubernetes service) is followed without a `down`.
//!
//! The name is served by a private `/etc/hosts`: the real `tether` binary runs in a mount
//! namespace of its own where a temporary file is bind-mounted over `/etc/hosts`, and the
//! test rewrites that file in place (same inode, so the bind mount keeps showing it). The
//! real `/etc/hosts` is never touched. Needs root, like the rest of the suite.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::http::{Framing, HttpServer};
use crate::support::tether_process::{self, TetherProcess};
use crate::support::{eventually, free_port, poll_until, workdir};

const NAME: &str = "db.tether.test";
const LIMIT: Duration = Duration::from_secs(15);

/// Two HTTP servers on the same port of two loopback addresses: `/etc/hosts` maps names
/// to addresses, not ports, so a move keeps the port.
async fn two_servers_on_one_port(a: Ipv4Addr, b: Ipv4Addr) -> (HttpServer, HttpServer) {
    for _ in 0..20 {
        let port = free_port();
        let Ok(first) = HttpServer::bind(SocketAddr::from((a, port)), Framing::KeepAlive).await
        else {
            continue;
        };
        if let Ok(second) = HttpServer::bind(SocketAddr::from((b, port)), Framing::KeepAlive).await
        {
            return (first, second);
        }
    }
    panic!("found no port free on both {a} and {b}");
}

/// Replaces the file's content without replacing the file: a rename would leave the bind
/// mount showing the old inode.
fn rewrite_in_place(path: &Path, content: &str) {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .create(true)
        .open(path)
        .unwrap();
    file.write_all(content.as_bytes()).unwrap();
}

fn hosts_pointing_to(ip: Ipv4Addr) -> String {
    format!("127.0.0.1 localhost\n{ip} {NAME}\n")
}

/// `tether run -c config` in a mount namespace where `hosts` is `/etc/hosts`.
fn tether_with_hosts(hosts: &Path, config: &Path) -> TetherProcess {
    let mut command = Command::new("unshare");
    command
        .args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount --bind "$0" /etc/hosts && exec "$1" --log-format json run -c "$2""#)
        .arg(hosts)
        .arg(tether_process::binary())
        .arg(config);
    TetherProcess::spawn(command)
}

/// Waits until `server` has answered at least `n` requests.
async fn until_requests(server: &HttpServer, n: usize, what: &str) {
    let what = format!("{what} with {n} requests");
    eventually(LIMIT, &what, || async {
        (server.requests() >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_name_re_pointed_to_another_live_server_is_followed_without_a_down() {
    let (old_ip, new_ip, dead_ip) = (
        Ipv4Addr::new(127, 0, 0, 2),
        Ipv4Addr::new(127, 0, 0, 3),
        Ipv4Addr::new(127, 0, 0, 4),
    );
    let (old, new) = two_servers_on_one_port(old_ip, new_ip).await;
    let port = old.port();
    let real_hosts = fs::metadata("/etc/hosts")
        .map(|m| (m.ino(), m.len(), m.mtime()))
        .ok();

    let dir = workdir("moves");
    let hosts = dir.path().join("hosts");
    rewrite_in_place(&hosts, &hosts_pointing_to(old_ip));
    let config = dir.path().join("tether.toml");
    fs::write(
        &config,
        format!(
            r#"
            [server]
            listen = "127.0.0.1:0"

            [[targets]]
            name = "db"
            address = "{NAME}:{port}"
            probe = "http"
            resolve_interval = "200ms"
            connect_timeout = "500ms"
            keepalive = {{ idle = "1s", interval = "1s", count = 3 }}
            "#
        ),
    )
    .unwrap();

    let tether = tether_with_hosts(&hosts, &config);
    tokio::task::block_in_place(|| tether.wait_for("db is up (connect)", LIMIT));
    until_requests(&old, 1, "the first server").await;

    // Re-pointed where nothing answers: tether keeps the connection it has.
    rewrite_in_place(&hosts, &hosts_pointing_to(dead_ip));
    tokio::task::block_in_place(|| {
        tether.wait_for(
            &format!(
                "db now resolves elsewhere, but no new address answers; keeping {old_ip}:{port}"
            ),
            LIMIT,
        )
    });
    let checked = old.requests();
    until_requests(&old, checked + 1, "the first server, still held").await;

    // Re-pointed to a live server: tether connects there first, then lets go.
    let repointed = Instant::now();
    rewrite_in_place(&hosts, &hosts_pointing_to(new_ip));
    tokio::task::block_in_place(|| {
        tether.wait_for(
            &format!("db moved from {old_ip}:{port} to {new_ip}:{port}"),
            LIMIT,
        )
    });
    eprintln!(
        "DETECTION dns move followed after {:?} (resolve_interval 200ms)",
        repointed.elapsed()
    );
    let old_requests = old.requests();
    until_requests(&new, 3, "the new server").await;
    assert_eq!(
        old.requests(),
        old_requests,
        "the old server is still being checked"
    );
    // The old connection was let go of.
    assert!(
        poll_until(LIMIT, || (old.open_connections() == 0).then_some(())).is_some(),
        "tether still holds {} connections to the old server",
        old.open_connections()
    );
    assert_eq!(old.connections(), 1, "tether reconnected to the old server");

    let (status, log) = tokio::task::block_in_place(|| tether.stop());
    assert!(status.success(), "{status:?}\n{log}");
    assert!(
        !log.contains("(disconnect)") && !log.contains("is down"),
        "the move caused an outage:\n{log}"
    );
    assert_eq!(
        fs::metadata("/etc/hosts")
            .map(|m| (m.ino(), m.len(), m.mtime()))
            .ok(),
        real_hosts,
        "the real /etc/hosts changed"
    );
}
