//! `[server] state_file`: the `/status` document kept in a file, replaced atomically on
//! every change, so an application in the same pod can read its mode from a shared
//! volume without speaking HTTP.
//!
//! A reader never sees a partial file: each version is written to a temporary file in
//! the same directory, flushed to disk, and renamed over the old one. Bursts of changes
//! are coalesced: one writer task writes the latest document, at most once per
//! [`MIN_INTERVAL`], so a thousand flapping targets cost a few writes a second, and the
//! last change is always written.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::status::Status;

/// The shortest time between two writes.
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The state file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the state file {}: {source}", path.display())]
pub struct StateFileError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Replaces `path` with `contents` atomically: a reader sees the old file or the new
/// one, never a mix, even across a crash.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<(), StateFileError> {
    let fail = |source| StateFileError {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().ok_or_else(|| {
        fail(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file name",
        ))
    })?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(name);
    temp_name.push(format!(".{}.tmp", std::process::id()));
    let temp = dir.join(temp_name);
    let written = (|| {
        let mut file = File::create(&temp)?;
        file.write_all(contents)?;
        file.sync_all()?;
        fs::rename(&temp, path)?;
        // The rename itself is durable once the directory is.
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map_err(fail)
}

/// Writes the document once now; a failure here is a config problem (a missing or
/// read-only directory) worth refusing to start over.
pub async fn write_now(path: &Path, status: &Status) -> Result<(), StateFileError> {
    let contents = status.document_json();
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || write_atomically(&path, &contents))
        .await
        .expect("the state-file write does not panic")
}

/// Rewrites the file after every change of `status` until `stop` is cancelled, then
/// writes the final document once more if it changed.
pub async fn keep_written(path: PathBuf, status: Arc<Status>, stop: CancellationToken) {
    let mut writer = Writer {
        path,
        status,
        written: 0,
        failing: false,
    };
    writer.written = writer.status.version();
    let mut last_write = Instant::now();
    while !stop.is_cancelled() {
        tokio::select! {
            () = writer.status.changed() => {}
            () = stop.cancelled() => break,
        }
        tokio::select! {
            () = sleep_until(last_write + MIN_INTERVAL) => {}
            () = stop.cancelled() => {}
        }
        last_write = Instant::now();
        writer.write_if_changed().await;
    }
    // Whatever changed while the last write was under way, the stop included.
    writer.write_if_changed().await;
}

/// The writer task's state.
struct Writer {
    path: PathBuf,
    status: Arc<Status>,
    /// The status version last written.
    written: u64,
    /// The last write failed: the next failure is not logged again, so a full disk does
    /// not flood the log.
    failing: bool,
}

impl Writer {
    async fn write_if_changed(&mut self) {
        let version = self.status.version();
        if version == self.written {
            return;
        }
        match write_now(&self.path, &self.status).await {
            Ok(()) => {
                self.written = version;
                if self.failing {
                    tracing::info!(path = %self.path.display(), "state file written again");
                }
                self.failing = false;
            }
            Err(e) if !self.failing => {
                self.failing = true;
                tracing::error!(error = %e, "state file not updated");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_replaces_the_file_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"{\"v\":1}\n").unwrap();
        write_atomically(&path, b"{\"v\":2}\n").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"{\"v\":2}\n");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("state.json");
        let e = write_atomically(&path, b"{}").unwrap_err();
        assert!(e.to_string().contains("absent/state.json"), "{e}");
    }
}
