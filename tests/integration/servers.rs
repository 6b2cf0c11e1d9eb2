//! Smoke tests for the real-server harness in `support`: each server starts, freezes, thaws,
//! dies and comes back on the same port exactly as the failover tests assume, so a failure there
//! points at tether rather than at the harness.

use std::io;
use std::net::TcpStream;
use std::panic;
use std::path::Path;
use std::time::Duration;

use crate::support::TestServer;
use crate::support::mariadb::MariadbServer;
use crate::support::postgres::PostgresServer;
use crate::support::redis::RedisServer;
use crate::support::{is_timeout, loopback};

/// Ample for a healthy server on loopback, even on a loaded CI machine.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a probe waits on a frozen server. A frozen server never answers, so this only
/// bounds how long the test spends proving it.
const FROZEN_TIMEOUT: Duration = Duration::from_millis(300);

/// Whether a process with this pid exists and is not a zombie. Only meaningful for a pid the
/// test reaped moments ago: pids are recycled, but not that quickly.
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit(')')
            .next()
            .and_then(|rest| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

fn assert_refused(port: u16) {
    let err = TcpStream::connect_timeout(&loopback(port), ANSWER_TIMEOUT)
        .expect_err("a killed server must not accept connections");
    assert_eq!(
        err.kind(),
        io::ErrorKind::ConnectionRefused,
        "connect to killed server on port {port}: {err}"
    );
}

fn assert_frozen(result: io::Result<()>) {
    let err = result.expect_err("a SIGSTOPped server must not answer");
    assert!(
        is_timeout(&err),
        "a SIGSTOPped server should time out, not fail: {err}"
    );
}

fn assert_cleaned_up(pid: u32, dir: &Path) {
    assert!(!alive(pid), "server {pid} survived its owner");
    assert!(!dir.exists(), "{} survived its owner", dir.display());
}

/// The same lifecycle for every server type; a macro because the types share an API by
/// convention, not by trait.
macro_rules! lifecycle_test {
    ($test:ident, $start:expr) => {
        #[test]
        fn $test() {
            let mut server = $start;
            let port = server.port();
            assert_eq!(server.addr(), format!("127.0.0.1:{port}"));
            server
                .probe(ANSWER_TIMEOUT)
                .expect("a started server answers");

            server.stop();
            assert_frozen(server.probe(FROZEN_TIMEOUT));
            server.cont();
            server
                .probe(ANSWER_TIMEOUT)
                .expect("a thawed server answers");

            let first_pid = server.pid();
            server.kill();
            assert!(
                !alive(first_pid),
                "server {first_pid} still alive after kill()"
            );
            assert_refused(port);

            server.restart();
            assert_eq!(server.port(), port, "restart must reuse the port");
            server
                .probe(ANSWER_TIMEOUT)
                .expect("a restarted server answers");

            // Restart also works on a server that was never killed, and dropping a frozen
            // server still cleans up.
            server.restart();
            server.stop();
            let (pid, dir) = (server.pid(), server.dir().to_path_buf());
            drop(server);
            assert_cleaned_up(pid, &dir);
            assert_refused(port);
        }
    };
}

lifecycle_test!(redis_lifecycle, RedisServer::start());
lifecycle_test!(
    postgres_lifecycle,
    PostgresServer::start_with(&[("authentication_timeout", "1s")])
);
lifecycle_test!(
    mariadb_lifecycle,
    MariadbServer::start_with(&[("connect_timeout", "2")])
);

#[test]
fn server_is_reaped_when_its_test_panics() {
    let mut seen = None;
    let outcome = panic::catch_unwind(panic::AssertUnwindSafe(|| {
        let server = RedisServer::start();
        seen = Some((server.pid(), server.dir().to_path_buf(), server.port()));
        panic!("simulated test failure");
    }));
    assert!(outcome.is_err());
    let (pid, dir, port) = seen.expect("the server started before the panic");
    assert_cleaned_up(pid, &dir);
    assert_refused(port);
}
