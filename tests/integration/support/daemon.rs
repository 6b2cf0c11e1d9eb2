//! A throwaway server of any kind that takes its port on the command line and keeps its
//! files in a scratch directory (memcached, nats-server, mosquitto, etcd), on loopback.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::process::{ServerProcess, StartError};
use super::server::TestServer;
use super::{START_TIMEOUT, require_binary, workdir};

/// How to run one kind of server: its command for a port and a directory, and the
/// exchange in its own protocol that says it serves.
#[derive(Clone, Copy)]
pub struct Recipe {
    pub name: &'static str,
    pub binary: &'static str,
    pub package: &'static str,
    pub command: fn(&Path, u16, &Path) -> Command,
    pub ready: fn(u16, Duration) -> io::Result<()>,
}

#[derive(Debug)]
pub struct Daemon {
    // Declared before `dir`: the server is dead before its directory is removed.
    process: ServerProcess,
    port: u16,
    binary: PathBuf,
    command: fn(&Path, u16, &Path) -> Command,
    ready: fn(u16, Duration) -> io::Result<()>,
    dir: TempDir,
}

impl Daemon {
    /// Starts the server on a free port and returns once it serves.
    pub fn start(recipe: Recipe) -> Daemon {
        Daemon::start_with_files(recipe, &[])
    }

    /// Like [`Daemon::start`], with `files` copied into its directory first under their
    /// file names (certificates and keys its command names).
    pub fn start_with_files(recipe: Recipe, files: &[PathBuf]) -> Daemon {
        let binary = require_binary(recipe.binary, recipe.package);
        let dir = workdir(recipe.name);
        for file in files {
            let name = file.file_name().expect("a file name");
            std::fs::copy(file, dir.path().join(name))
                .unwrap_or_else(|e| panic!("copy {} for {}: {e}", file.display(), recipe.name));
        }
        let process = ServerProcess::new(recipe.name, dir.path().join("server.log"), None);
        let mut server = Daemon {
            process,
            port: 0,
            binary,
            command: recipe.command,
            ready: recipe.ready,
            dir,
        };
        let (binary, dir, command, ready) = (
            &server.binary,
            server.dir.path(),
            server.command,
            server.ready,
        );
        server.port = server.process.start_on_free_port(|process, port| {
            launch(process, command(binary, port, dir), port, ready)
        });
        server
    }
}

fn launch(
    process: &mut ServerProcess,
    command: Command,
    port: u16,
    ready: fn(u16, Duration) -> io::Result<()>,
) -> Result<(), StartError> {
    process.spawn(command);
    process.wait_ready(START_TIMEOUT, || ready(port, Duration::from_secs(1)))
}

impl TestServer for Daemon {
    fn process(&self) -> &ServerProcess {
        &self.process
    }

    fn process_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }

    fn port(&self) -> u16 {
        self.port
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn launch(&mut self) -> Result<(), StartError> {
        let command = (self.command)(&self.binary, self.port, self.dir.path());
        launch(&mut self.process, command, self.port, self.ready)
    }

    fn probe(&self, timeout: Duration) -> io::Result<()> {
        (self.ready)(self.port, timeout)
    }
}
