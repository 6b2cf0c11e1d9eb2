//! What tether and its spawner say to each other, one message per datagram of a
//! `SOCK_SEQPACKET` pair (so neither side frames or reassembles).
//!
//! A request carries the hook's argument vector and environment, each entry ended by a
//! NUL (neither may contain one), and, beside the bytes, the hook's standard input,
//! output and error as `SCM_RIGHTS`. Integers are little-endian.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};

/// The largest answer, with room to spare.
pub const REPLY_MAX: usize = 64;
/// The largest request a spawner reads: a hook's environment is tether's own, and an
/// environment larger than this is not started through the spawner (sending fails
/// and the hook starts from tether).
pub const REQUEST_MAX: usize = 256 * 1024;

const SPAWN: u8 = b'S';
const SPAWNED: u8 = b'P';
const FAILED: u8 = b'F';
const EXITED: u8 = b'X';

/// tether → spawner: start a hook.
#[derive(Debug)]
pub struct Request<'a> {
    pub id: u64,
    pub argv: &'a [OsString],
    pub env: &'a [OsString],
}

/// A request as the spawner read it.
#[derive(Debug, PartialEq, Eq)]
pub struct Spawn {
    pub id: u64,
    pub argv: Vec<OsString>,
    pub env: Vec<OsString>,
}

impl Request<'_> {
    pub fn encode(&self) -> Vec<u8> {
        let Request { id, argv, env } = self;
        let size: usize = argv.iter().chain(env.iter()).map(|s| s.len() + 1).sum();
        let mut out = Vec::with_capacity(17 + size);
        out.push(SPAWN);
        out.extend_from_slice(&id.to_le_bytes());
        out.extend_from_slice(&(argv.len() as u32).to_le_bytes());
        out.extend_from_slice(&(env.len() as u32).to_le_bytes());
        for s in argv.iter().chain(env.iter()) {
            out.extend_from_slice(s.as_bytes());
            out.push(0);
        }
        out
    }
}

impl Spawn {
    pub fn decode(bytes: &[u8]) -> Option<Spawn> {
        let (&tag, rest) = bytes.split_first()?;
        if tag != SPAWN || rest.len() < 16 {
            return None;
        }
        let id = u64::from_le_bytes(rest[..8].try_into().ok()?);
        let argc = u32::from_le_bytes(rest[8..12].try_into().ok()?) as usize;
        let envc = u32::from_le_bytes(rest[12..16].try_into().ok()?) as usize;
        // Every string ends with a NUL; no bytes at all when there are no strings.
        let mut strings = match &rest[16..] {
            [] => None,
            [body @ .., 0] => Some(body.split(|&b| b == 0)),
            _ => return None,
        }
        .into_iter()
        .flatten();
        let mut take = |n: usize| -> Option<Vec<OsString>> {
            (0..n)
                .map(|_| strings.next().map(|s| OsString::from_vec(s.to_vec())))
                .collect()
        };
        let argv = take(argc)?;
        let env = take(envc)?;
        if argv.is_empty() || strings.next().is_some() {
            return None;
        }
        Some(Spawn { id, argv, env })
    }
}

/// spawner → tether.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply {
    /// Request `id` started process `pid`.
    Spawned { id: u64, pid: u32 },
    /// Request `id` could not start: the error number of the attempt.
    Failed { id: u64, errno: i32 },
    /// Process `pid` ended with wait status `status`.
    Exited { pid: u32, status: i32 },
}

impl Reply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REPLY_MAX);
        match *self {
            Reply::Spawned { id, pid } => {
                out.push(SPAWNED);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&pid.to_le_bytes());
            }
            Reply::Failed { id, errno } => {
                out.push(FAILED);
                out.extend_from_slice(&id.to_le_bytes());
                out.extend_from_slice(&errno.to_le_bytes());
            }
            Reply::Exited { pid, status } => {
                out.push(EXITED);
                out.extend_from_slice(&pid.to_le_bytes());
                out.extend_from_slice(&status.to_le_bytes());
            }
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Reply> {
        let u64_at = |at: usize| Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?));
        let u32_at = |at: usize| Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        let i32_at = |at: usize| Some(i32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?));
        match (bytes.first()?, bytes.len()) {
            (&SPAWNED, 13) => Some(Reply::Spawned {
                id: u64_at(1)?,
                pid: u32_at(9)?,
            }),
            (&FAILED, 13) => Some(Reply::Failed {
                id: u64_at(1)?,
                errno: i32_at(9)?,
            }),
            (&EXITED, 9) => Some(Reply::Exited {
                pid: u32_at(1)?,
                status: i32_at(5)?,
            }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<OsString> {
        s.iter().map(OsString::from).collect()
    }

    #[test]
    fn a_request_reads_back_as_it_was_sent() {
        let argv = strings(&["/bin/sh", "-c", "echo 'a b' > /dev/null", ""]);
        let env = strings(&["PATH=/usr/bin", "TETHER_TARGET=db", "EMPTY="]);
        let bytes = Request {
            id: 7,
            argv: &argv,
            env: &env,
        }
        .encode();
        assert_eq!(Spawn::decode(&bytes), Some(Spawn { id: 7, argv, env }));
    }

    #[test]
    fn a_request_without_a_program_or_with_stray_bytes_is_refused() {
        let none: Vec<OsString> = Vec::new();
        let env = strings(&["A=1"]);
        let bytes = Request {
            id: 1,
            argv: &none,
            env: &env,
        }
        .encode();
        assert_eq!(Spawn::decode(&bytes), None);
        let argv = strings(&["/bin/true"]);
        let mut bytes = Request {
            id: 1,
            argv: &argv,
            env: &env,
        }
        .encode();
        bytes.extend_from_slice(b"extra\0");
        assert_eq!(Spawn::decode(&bytes), None);
        assert_eq!(Spawn::decode(&bytes[..10]), None);
    }

    #[test]
    fn every_answer_reads_back_as_it_was_sent() {
        for reply in [
            Reply::Spawned {
                id: u64::MAX,
                pid: 4_194_304,
            },
            Reply::Failed {
                id: 3,
                errno: libc::ENOENT,
            },
            Reply::Exited {
                pid: 42,
                status: 0x0f00,
            },
        ] {
            let bytes = reply.encode();
            assert!(bytes.len() <= REPLY_MAX);
            assert_eq!(Reply::decode(&bytes), Some(reply));
        }
        assert_eq!(Reply::decode(b"P123"), None);
        assert_eq!(Reply::decode(b""), None);
    }
}
