//! What every real test server (Redis, PostgreSQL, MariaDB) can be made to do, written once over
//! the [`ServerProcess`] each of them runs in.

use std::io;
use std::path::Path;
use std::time::Duration;

use super::process::{ServerProcess, StartError};

/// A real server on loopback that a test can watch, freeze, kill and bring back.
///
/// Implementors only say how to reach their process and how to launch the server again on the
/// port it already has; the failure modes the tests inject are the same for every server, so
/// they live here once.
pub trait TestServer {
    /// The child process the server runs in.
    fn process(&self) -> &ServerProcess;

    fn process_mut(&mut self) -> &mut ServerProcess;

    /// The loopback port the server listens on, kept across restarts.
    fn port(&self) -> u16;

    /// The scratch directory holding the server's files and `server.log`.
    fn dir(&self) -> &Path;

    /// Launches the server on [`port`](Self::port) with the settings it first started with,
    /// returning once it is ready to serve.
    fn launch(&mut self) -> Result<(), StartError>;

    /// One exchange in the server's own protocol, as a client (or tether) would see it now.
    fn probe(&self, timeout: Duration) -> io::Result<()>;

    /// `127.0.0.1:PORT`, the form tether's configuration takes.
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// The pid of the server's main process; some servers fork children with their own.
    fn pid(&self) -> u32 {
        self.process().pid()
    }

    /// Everything the server has logged so far, for assertions and failure messages.
    fn log(&self) -> String {
        super::log_tail(self.process().log_path())
    }

    /// SIGKILLs the server (and its children) and waits until it is dead: a crash, not a
    /// shutdown, so servers with a journal run crash recovery on the next start.
    fn kill(&mut self) {
        self.process_mut().kill();
    }

    /// Freezes the server with SIGSTOP: connections still complete from the listen backlog but
    /// nothing answers, like a hung host.
    fn stop(&mut self) {
        self.process_mut().stop();
    }

    /// Thaws a server frozen by [`stop`](Self::stop).
    fn cont(&mut self) {
        self.process_mut().cont();
    }

    /// Starts the server again on the same port (shutting it down first if it still runs), so a
    /// dependency that went away comes back where clients expect it.
    fn restart(&mut self) {
        self.process_mut().shut_down();
        if let Err(err) = self.launch() {
            self.process()
                .fail(format_args!("restart on port {}: {err}", self.port()));
        }
    }
}
