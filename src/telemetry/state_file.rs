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
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, sleep_until};
use tokio_util::sync::CancellationToken;

use crate::telemetry::status::Status;

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
///
/// The temporary file gets a random name and is created exclusively (`O_EXCL`), so a
/// link planted in a shared directory under a name tether might use is never followed:
/// creation fails on it instead of writing to the file it points at, and another
/// random name is tried. The rename replaces a link at `path` itself, not its target.
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
    let mut prefix = std::ffi::OsString::from(".");
    prefix.push(name);
    prefix.push(".");
    let mut temp = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        // What `File::create` gives, less the umask: readers in the pod may run as
        // another user.
        .permissions(fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .map_err(fail)?;
    temp.write_all(contents).map_err(fail)?;
    temp.as_file().sync_all().map_err(fail)?;
    // On failure the temporary file is removed when `persist`'s error is dropped.
    temp.persist(path).map_err(|e| fail(e.error))?;
    // The rename itself is durable once the directory is.
    File::open(dir).and_then(|d| d.sync_all()).map_err(fail)
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
    fn a_link_planted_at_a_guessable_temporary_name_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        let path = dir.path().join("state.json");
        // The names an attacker could guess: the old `.state.json.<pid>.tmp` scheme for
        // pids around ours, and the bare temporary name.
        let pid = std::process::id();
        let mut planted = vec![dir.path().join(".state.json.tmp")];
        planted.extend(
            (pid.saturating_sub(50)..pid + 50)
                .map(|p| dir.path().join(format!(".state.json.{p}.tmp"))),
        );
        for link in &planted {
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        for version in 0..20 {
            write_atomically(&path, format!("{{\"v\":{version}}}\n").as_bytes()).unwrap();
        }
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(fs::read(&path).unwrap(), b"{\"v\":19}\n");
        assert!(
            !fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        for link in &planted {
            assert!(fs::symlink_metadata(link).unwrap().file_type().is_symlink());
        }
        // Nothing else left behind: the victim, the links, the state file.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), planted.len() + 2);
    }

    #[test]
    fn the_state_file_is_readable_by_others_as_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        write_atomically(&path, b"{}").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        let umask = fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .map(|m| u32::from_str_radix(m.trim(), 8).unwrap())
            .unwrap();
        assert_eq!(mode, 0o666 & !umask);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("state.json");
        let e = write_atomically(&path, b"{}").unwrap_err();
        assert!(e.to_string().contains("absent/state.json"), "{e}");
    }
}
