//! The `redis` probe: `ROLE` and `PING`, pipelined in one write and answered in one
//! round trip, on the held connection at every interval (Redis answers any number of
//! commands on one connection).
//!
//! `ROLE` tells the replication role: `master` is [`Role::Primary`], `slave` (or
//! `replica`) is [`Role::Replica`], and a sentinel has none. `PING` keeps the health
//! verdict it always had: `ROLE` is answered even while the dataset loads or a replica's
//! link is down, where `PING` answers `-LOADING` or `-MASTERDOWN`, and a server that
//! serves nothing must not look like an eligible primary. Together they cost the server
//! two of its cheapest commands.
//!
//! A server that refuses `ROLE` itself (`-NOPERM`: an ACL user without it; `-ERR unknown
//! command`: renamed away, or a server too old) is asked `PING` alone from then on, its
//! role unknown.
//!
//! With `password_env` or `password_file`, each new connection first sends `AUTH
//! <password>` (as read at start or at the last reload, and never logged). Without it,
//! nothing that needs credentials or changes state is sent.
//!
//! - `-NOAUTH` is healthy: the server parsed and answered the command, and refuses only
//!   because it wants a password, which the application has and tether need not. The
//!   role is then unknown.
//! - `-LOADING` is unhealthy: the server is up but serves nothing until its dataset is in
//!   memory. So are `-BUSY` (a script is running), `-MASTERDOWN` and any other error.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, Role, quote, read_line};
use crate::config::kinds::{self, Kind};
use crate::secrets::{self, Source};
use crate::tls::Stream;
use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};

pub const KIND: Kind = Kind {
    name: "redis",
    summary: "ROLE and PING, PING answered by +PONG (or -NOAUTH); learns the role",
    healthy: "`ROLE` and `PING` pipelined (one round trip, two O(1) commands): `PING` answered by `+PONG`, `-NOAUTH` also counts (see below); `ROLE` tells the role",
    repeats: "on the held connection",
    settings: &["password_env", "password_file"],
    finish: kinds::fits,
    learns_roles: |_| true,
    build: |s, _| Check::Redis(Redis::new(s.password())),
};

const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";
const ROLE_AND_PING: &[u8] = b"*1\r\n$4\r\nROLE\r\n*1\r\n$4\r\nPING\r\n";
/// Simple-string and error replies are short; a longer line is not an answer to PING.
const MAX_LINE: usize = 4096;
/// The longest string kept or skipped in a `ROLE` reply: addresses, offsets and master
/// names are short.
const MAX_BULK: usize = 4096;
/// Elements of a `ROLE` reply, nested ones included: a master lists three per replica,
/// so this allows thousands of replicas while bounding what a garbled server can make
/// the probe read.
const MAX_ELEMENTS: usize = 16 * 1024;
/// Nesting of a `ROLE` reply: a master's list of replicas is two levels deep.
const MAX_DEPTH: usize = 4;

#[derive(Debug)]
pub struct Redis {
    /// Where the `AUTH` password comes from; `None`: nothing is sent but `ROLE` and `PING`.
    password: Option<Source>,
    /// Set once the server refused `ROLE` itself: only `PING` is sent from then on.
    ping_only: AtomicBool,
}

impl Redis {
    pub fn new(password: Option<Source>) -> Redis {
        Redis {
            password,
            ping_only: AtomicBool::new(false),
        }
    }
}

impl Protocol for Redis {
    async fn check(&self, stream: &mut Stream, fresh: bool) -> Result<Healthy, ProbeError> {
        let mut reader = BufReader::new(stream);
        if let (true, Some(source)) = (fresh, &self.password) {
            // As last loaded (at start or reload): a rotated password is used from the
            // next new connection on, and the one held stays authenticated.
            let password = secrets::current(source).map_err(|e| {
                ProbeError::Unhealthy(format!("no password: {e} (unset, empty or unreadable)"))
            })?;
            reader.get_mut().write_all(&auth_command(&password)).await?;
            let reply = read_line(&mut reader, MAX_LINE, "Redis").await?;
            if reply != b"+OK" {
                return Err(auth_refused(&reply));
            }
        }
        let ask_role = !self.ping_only.load(Ordering::Relaxed);
        let role = if ask_role {
            reader.get_mut().write_all(ROLE_AND_PING).await?;
            match read_role_reply(&mut reader).await? {
                RoleReply::Role(role) => role,
                RoleReply::Refused(error) if refuses_role(&error) => {
                    tracing::debug!(
                        peer = ?reader.get_ref().peer_addr().ok(),
                        reply = %quote(&error),
                        "redis refuses ROLE; asking PING alone from now on, role unknown"
                    );
                    self.ping_only.store(true, Ordering::Relaxed);
                    None
                }
                RoleReply::Refused(_) => None,
            }
        } else {
            reader.get_mut().write_all(PING).await?;
            None
        };
        let reply = read_line(&mut reader, MAX_LINE, "Redis").await?;
        classify_reply("PING", &reply)?;
        // Anything beyond the one reply would desynchronise the next check.
        let afterwards = if reader.buffer().is_empty() {
            Afterwards::Reuse
        } else {
            Afterwards::Hold
        };
        Ok(Healthy { afterwards, role })
    }
}

/// What the server said to `ROLE`.
#[derive(Debug, PartialEq, Eq)]
enum RoleReply {
    /// The role array, read whole; `None` for a sentinel (or a role this probe does not
    /// know), which has no replication role of its own.
    Role(Option<Role>),
    /// An error reply; its line.
    Refused(Vec<u8>),
}

/// Reads the whole reply to `ROLE`, so that the `PING` reply after it is next on the
/// stream, and keeps only its first element, the role's name.
async fn read_role_reply(
    reader: &mut (impl AsyncBufRead + Unpin),
) -> Result<RoleReply, ProbeError> {
    let garbled = |detail: String| ProbeError::Garbled {
        protocol: "Redis",
        detail: format!("ROLE answered {detail}"),
    };
    let head = read_line(reader, MAX_LINE, "Redis").await?;
    let count = match head.first() {
        Some(b'-') => return Ok(RoleReply::Refused(head)),
        Some(b'*') => match length(&head) {
            Some(n) if n >= 1 => n,
            _ => return Err(garbled(quote(&head))),
        },
        _ => return Err(garbled(quote(&head))),
    };
    let first = read_line(reader, MAX_LINE, "Redis").await?;
    let name = match first.first() {
        Some(b'+') => first[1..].to_vec(),
        Some(b'$') => match length(&first) {
            Some(n) if n <= MAX_BULK => read_bulk(reader, n).await?,
            _ => return Err(garbled(format!("a role name of {}", quote(&first)))),
        },
        _ => return Err(garbled(format!("a role name of {}", quote(&first)))),
    };
    skip_elements(reader, count - 1).await?;
    Ok(RoleReply::Role(match name.as_slice() {
        b"master" => Some(Role::Primary),
        b"slave" | b"replica" => Some(Role::Replica),
        _ => None,
    }))
}

/// Reads and drops `count` RESP elements, nested arrays included, within
/// [`MAX_ELEMENTS`], [`MAX_DEPTH`] and [`MAX_BULK`]: without recursion, so an async
/// reader needs no boxed futures.
async fn skip_elements(
    reader: &mut (impl AsyncBufRead + Unpin),
    count: usize,
) -> Result<(), ProbeError> {
    let garbled = |detail: String| ProbeError::Garbled {
        protocol: "Redis",
        detail: format!("ROLE answered {detail}"),
    };
    // Elements still to read at each level of nesting.
    let mut left = vec![count];
    let mut read = 0usize;
    while let Some(top) = left.last_mut() {
        if *top == 0 {
            left.pop();
            continue;
        }
        *top -= 1;
        read += 1;
        if read > MAX_ELEMENTS {
            return Err(garbled(format!("more than {MAX_ELEMENTS} elements")));
        }
        let line = read_line(reader, MAX_LINE, "Redis").await?;
        match line.first() {
            Some(b'+' | b'-' | b':') => {}
            Some(b'$') if line == b"$-1" => {}
            Some(b'$') => match length(&line) {
                Some(n) if n <= MAX_BULK => {
                    read_bulk(reader, n).await?;
                }
                _ => return Err(garbled(format!("a string of {}", quote(&line)))),
            },
            Some(b'*') if line == b"*-1" => {}
            Some(b'*') => match length(&line) {
                Some(n) if left.len() < MAX_DEPTH => left.push(n),
                Some(_) => return Err(garbled(format!("arrays nested beyond {MAX_DEPTH}"))),
                None => return Err(garbled(format!("an array of {}", quote(&line)))),
            },
            _ => return Err(garbled(quote(&line))),
        }
    }
    Ok(())
}

/// The length of a `$n` or `*n` header line.
fn length(line: &[u8]) -> Option<usize> {
    std::str::from_utf8(line.get(1..)?).ok()?.parse().ok()
}

/// Reads a bulk string's `n` bytes and its closing CRLF.
async fn read_bulk(
    reader: &mut (impl AsyncBufRead + Unpin),
    n: usize,
) -> Result<Vec<u8>, ProbeError> {
    let mut data = vec![0u8; n + 2];
    match reader.read_exact(&mut data).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(ProbeError::Closed);
        }
        Err(e) => return Err(e.into()),
    }
    if !data.ends_with(b"\r\n") {
        return Err(ProbeError::Garbled {
            protocol: "Redis",
            detail: "ROLE answered a string without its CRLF".to_owned(),
        });
    }
    data.truncate(n);
    Ok(data)
}

/// Whether an error reply to `ROLE` refuses the command itself, for good: the user may
/// not run it, or the server does not know it. `-NOAUTH` only wants a password, and other
/// errors say something about the moment, which `PING` judges.
fn refuses_role(error: &[u8]) -> bool {
    error.starts_with(b"-NOPERM") || error.starts_with(b"-ERR unknown command")
}

/// `AUTH` as a RESP array, so the password needs no quoting whatever it contains.
fn auth_command(password: &[u8]) -> Vec<u8> {
    let mut cmd = b"*2\r\n$4\r\nAUTH\r\n".to_vec();
    cmd.extend_from_slice(format!("${}\r\n", password.len()).as_bytes());
    cmd.extend_from_slice(password);
    cmd.extend_from_slice(b"\r\n");
    cmd
}

/// A reply to `AUTH` other than `+OK`, worded by its error code alone: the rest of the
/// text may echo the password (`-ERR unknown command 'AUTH', with args beginning with:
/// '<password>'` where `AUTH` is renamed away).
fn auth_refused(reply: &[u8]) -> ProbeError {
    let code: String = match reply.strip_prefix(b"-") {
        Some(error) => error
            .iter()
            .take_while(|b| b.is_ascii_uppercase())
            .take(32)
            .map(|&b| char::from(b))
            .collect(),
        None => String::new(),
    };
    if code.is_empty() {
        ProbeError::Unhealthy("AUTH refused (reply withheld: it may echo the password)".to_owned())
    } else {
        ProbeError::Unhealthy(format!(
            "AUTH refused: -{code} (reply text withheld: it may echo the password)"
        ))
    }
}

/// Decides on the reply line to `command`.
fn classify_reply(command: &str, reply: &[u8]) -> Result<(), ProbeError> {
    match reply.first() {
        Some(b'+') if command != "PING" || reply == b"+PONG" => Ok(()),
        Some(b'-') if reply.starts_with(b"-NOAUTH") => Ok(()),
        Some(b'-') => Err(ProbeError::Unhealthy(format!(
            "{command} answered {}",
            quote(reply)
        ))),
        _ => Err(ProbeError::Garbled {
            protocol: "Redis",
            detail: format!("{command} answered {}", quote(reply)),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pong_and_noauth_are_healthy() {
        classify_reply("PING", b"+PONG").unwrap();
        classify_reply("PING", b"-NOAUTH Authentication required.").unwrap();
    }

    #[test]
    fn loading_busy_and_other_errors_are_unhealthy_with_the_servers_words() {
        let e = classify_reply("PING", b"-LOADING Redis is loading the dataset in memory");
        assert_eq!(
            e.unwrap_err().to_string(),
            "PING answered -LOADING Redis is loading the dataset in memory"
        );
        assert!(classify_reply("PING", b"-BUSY Redis is busy running a script").is_err());
        assert!(classify_reply("PING", b"-MASTERDOWN Link with MASTER is down").is_err());
    }

    #[test]
    fn a_refused_auth_keeps_only_its_error_code() {
        let e = auth_refused(b"-WRONGPASS invalid username-password pair").to_string();
        assert_eq!(
            e,
            "AUTH refused: -WRONGPASS (reply text withheld: it may echo the password)"
        );
        let e = auth_refused(b"-ERR unknown command 'AUTH', with args beginning with: 'hunter2' ")
            .to_string();
        assert!(e.starts_with("AUTH refused: -ERR "), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = auth_refused(b"hunter2").to_string();
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn another_protocol_is_garbled() {
        assert_eq!(
            classify_reply("PING", b"HTTP/1.1 400 Bad Request")
                .unwrap_err()
                .to_string(),
            "not a Redis answer: PING answered HTTP/1.1 400 Bad Request"
        );
        assert!(classify_reply("PING", b"+OK").is_err());
    }

    /// Reads a `ROLE` reply from `bytes` and checks that it stops right at the `PING`
    /// reply after it.
    async fn role_of(bytes: &[u8]) -> Result<RoleReply, ProbeError> {
        let mut input = bytes;
        let reply = read_role_reply(&mut input).await?;
        assert_eq!(
            input, b"+PONG\r\n",
            "the ROLE reply must be read whole and no further"
        );
        Ok(reply)
    }

    #[tokio::test]
    async fn a_master_is_primary_with_or_without_replicas() {
        // Captured from redis-server 7.0.
        let alone = b"*3\r\n$6\r\nmaster\r\n:0\r\n*0\r\n+PONG\r\n";
        assert_eq!(
            role_of(alone).await.unwrap(),
            RoleReply::Role(Some(Role::Primary))
        );
        let with_two = b"*3\r\n$6\r\nmaster\r\n:3129659\r\n*2\r\n\
            *3\r\n$9\r\n127.0.0.1\r\n$4\r\n9001\r\n$7\r\n3129242\r\n\
            *3\r\n$9\r\n127.0.0.1\r\n$4\r\n9002\r\n$7\r\n3129543\r\n+PONG\r\n";
        assert_eq!(
            role_of(with_two).await.unwrap(),
            RoleReply::Role(Some(Role::Primary))
        );
    }

    #[tokio::test]
    async fn a_replica_is_a_replica_in_every_link_state() {
        for state in ["connect", "connecting", "handshake", "sync", "connected"] {
            let reply = format!(
                "*5\r\n$5\r\nslave\r\n$9\r\n127.0.0.1\r\n:16391\r\n${}\r\n{state}\r\n:-1\r\n+PONG\r\n",
                state.len()
            );
            assert_eq!(
                role_of(reply.as_bytes()).await.unwrap(),
                RoleReply::Role(Some(Role::Replica)),
                "{state}"
            );
        }
    }

    #[tokio::test]
    async fn a_sentinel_has_no_role() {
        // Captured from redis-server 7.0 --sentinel.
        let reply = b"*2\r\n$8\r\nsentinel\r\n*2\r\n$5\r\nother\r\n$8\r\nmymaster\r\n+PONG\r\n";
        assert_eq!(role_of(reply).await.unwrap(), RoleReply::Role(None));
    }

    #[tokio::test]
    async fn an_error_to_role_is_kept_for_the_caller_to_judge() {
        let reply = b"-NOPERM User probe has no permissions to run the 'role' command\r\n+PONG\r\n";
        let RoleReply::Refused(error) = role_of(reply).await.unwrap() else {
            panic!("an error reply is a refusal");
        };
        assert!(refuses_role(&error));
        assert!(refuses_role(
            b"-ERR unknown command 'ROLE', with args beginning with: "
        ));
        assert!(!refuses_role(b"-NOAUTH Authentication required."));
        assert!(!refuses_role(b"-BUSY Redis is busy running a script"));
    }

    #[tokio::test]
    async fn garbled_or_oversized_role_replies_are_refused_without_reading_on() {
        let cases: [&[u8]; 6] = [
            b"+PONG\r\n",
            b"*0\r\n",
            b"*2\r\n:1\r\n:2\r\n",
            b"*3\r\n$999999\r\nmaster\r\n",
            b"*2\r\n$6\r\nmaster\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"HTTP/1.1 400 Bad Request\r\n",
        ];
        for case in cases {
            let mut input = case;
            assert!(
                matches!(
                    read_role_reply(&mut input).await,
                    Err(ProbeError::Garbled { .. })
                ),
                "{}",
                quote(case)
            );
        }
        let mut endless = b"*2\r\n$6\r\nmaster\r\n*99999\r\n".to_vec();
        endless.extend(b":1\r\n".repeat(MAX_ELEMENTS + 1));
        let mut input = endless.as_slice();
        let e = read_role_reply(&mut input).await.unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
        let mut cut: &[u8] = b"*3\r\n$6\r\nmast";
        assert!(matches!(
            read_role_reply(&mut cut).await,
            Err(ProbeError::Closed)
        ));
    }

    #[test]
    fn auth_is_a_resp_array_so_any_password_survives() {
        assert_eq!(
            auth_command(b"p a\r\ns"),
            b"*2\r\n$4\r\nAUTH\r\n$6\r\np a\r\ns\r\n".to_vec()
        );
    }
}
