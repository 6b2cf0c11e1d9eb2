//! The socket file of `[server] unix_socket`: created with its final mode and group
//! before anyone can connect, replacing only a socket a crashed run left behind, and
//! removed when the server stops.
//!
//! Access to the socket is access to tether's admin actions, so the file is bound under
//! a temporary name, given mode 0660 and its group, and only then renamed into place:
//! there is no moment at which the path accepts a connection the final permissions
//! would refuse.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Owner and group may connect; nobody else.
const MODE: u32 = 0o660;

/// The socket file cannot be created.
#[derive(Debug, thiserror::Error)]
pub enum UnixSocketError {
    #[error("cannot serve on {} ([server] unix_socket): the directory {} does not exist", path.display(), dir.display())]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot serve on {} ([server] unix_socket): {what} is there, and tether replaces only a socket left by an earlier run; remove it or choose another path", path.display())]
    Occupied { path: PathBuf, what: &'static str },
    #[error("cannot serve on {} ([server] unix_socket): another process is serving on it", path.display())]
    InUse { path: PathBuf },
    #[error("cannot serve on {} ([server] unix_socket): {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("[server] unix_socket_group: there is no group {group:?} on this host")]
    UnknownGroup { group: String },
    #[error("cannot give {} to group {group:?} ([server] unix_socket_group): {source}", path.display())]
    Group {
        path: PathBuf,
        group: String,
        #[source]
        source: io::Error,
    },
}

/// The socket file this process created; removed on drop unless something else has
/// taken the path since.
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino);
        if !ours {
            return;
        }
        if let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the unix socket");
        }
    }
}

/// Binds `path` with mode 0660 and, when given, `group` (a name or a numeric gid).
/// Must run inside the runtime.
pub fn bind(
    path: &Path,
    group: Option<&str>,
) -> Result<(UnixListener, SocketFile), UnixSocketError> {
    let io_err = |source| UnixSocketError::Io {
        path: path.to_owned(),
        source,
    };
    let gid = group.map(lookup_group).transpose()?;
    check_directory(path)?;
    check_occupant(path)?;
    let temporary = temporary_name(path);
    // A temporary name left by a crashed run with the same process id.
    let _ = fs::remove_file(&temporary);
    let listener = UnixListener::bind(&temporary).map_err(io_err)?;
    let placed = (|| {
        fs::set_permissions(&temporary, fs::Permissions::from_mode(MODE)).map_err(io_err)?;
        if let (Some(gid), Some(group)) = (gid, group) {
            std::os::unix::fs::chown(&temporary, None, Some(gid)).map_err(|source| {
                UnixSocketError::Group {
                    path: path.to_owned(),
                    group: group.to_owned(),
                    source,
                }
            })?;
        }
        fs::rename(&temporary, path).map_err(io_err)?;
        let meta = fs::symlink_metadata(path).map_err(io_err)?;
        Ok(SocketFile {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    })();
    match placed {
        Ok(file) => Ok((listener, file)),
        Err(e) => {
            let _ = fs::remove_file(&temporary);
            Err(e)
        }
    }
}

fn lookup_group(group: &str) -> Result<u32, UnixSocketError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(UnixSocketError::UnknownGroup {
            group: group.to_owned(),
        }),
    }
}

fn check_directory(path: &Path) -> Result<(), UnixSocketError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    match fs::metadata(dir) {
        Ok(m) if m.is_dir() => Ok(()),
        _ => Err(UnixSocketError::NoDirectory {
            path: path.to_owned(),
            dir: dir.to_owned(),
        }),
    }
}

/// A socket nobody answers on is what a crashed run leaves: it may go. Anything else
/// at the path is someone's data, or a live tether, and stays.
fn check_occupant(path: &Path) -> Result<(), UnixSocketError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(UnixSocketError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let kind = meta.file_type();
    let what = if kind.is_socket() {
        return match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => Err(UnixSocketError::InUse {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!(path = %path.display(), "replacing a stale unix socket left by an earlier run");
                Ok(())
            }
            Err(source) => Err(UnixSocketError::Io {
                path: path.to_owned(),
                source,
            }),
        };
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_file() {
        "a regular file"
    } else {
        "a special file"
    };
    Err(UnixSocketError::Occupied {
        path: path.to_owned(),
        what,
    })
}

/// Next to the final path, so the rename stays within one file system.
fn temporary_name(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.new", std::process::id()));
    PathBuf::from(name)
}
