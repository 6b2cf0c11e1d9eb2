//! The `expect` probe, for line protocols tether has no probe of its own for: send
//! `send` (if set), and healthy is what comes back matching the regular expression
//! `expect`.
//!
//! - **Without `send`**: the server's greeting (SMTP's `220`, FTP's `220`, SSH's
//!   `SSH-2.0-`) is the answer. A greeting comes once per connection, so each check
//!   opens a fresh connection and holds it until the next ([`Afterwards::Hold`], as the
//!   `mysql` probe does).
//! - **With `send`**: the request is sent on the held connection at every check, as
//!   line protocols answer any number of requests on one connection (Redis inline
//!   commands, SMTP `NOOP`, memcached). On a fresh connection a server that greets
//!   sends its greeting first, and the first check judges that line: the pattern must
//!   accept it too (`^(220|250) ` for SMTP); the late reply is drained between checks
//!   like any unasked bytes. An answer cut mid-line may have more to come, so the
//!   connection is then held and the next check opens a new one.
//!
//! What arrives is matched as it comes, up to [`MAX_ANSWER`] bytes, and judged whenever
//! it ends at a line end: a line protocol's answer is complete there, so an answer that
//! does not match is unhealthy at once, with what the server said, rather than a
//! timeout. The pattern is the `regex` crate's, matched on bytes in linear time.

use crate::tls::Stream;
use regex::bytes::{Regex, RegexBuilder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote};
use crate::config::ProbeSettings;
use crate::config::kinds::{self, Kind, Misfit};

pub const KIND: Kind = Kind {
    name: "expect",
    summary: "Sends --send (if given); what comes back matches the regex --expect",
    healthy: "what the server sends (after `send`, if set) matches the regular expression `expect` within 4 KiB (one request of your choosing per check, or only a greeting)",
    repeats: "without `send`: on a fresh connection, which then replaces the held one; with `send`: on the held connection",
    settings: &["send", "expect"],
    finish: needs_pattern,
    learns_roles: kinds::no_roles,
    build: |s, _| {
        Check::Expect(Expect::new(
            s.send
                .as_deref()
                .map(|send| unescape(send).expect("validated")),
            pattern(s.expect.as_deref().expect("validated")).expect("validated"),
        ))
    },
};

/// The most read for one answer: a greeting or a status line, not a document.
pub const MAX_ANSWER: usize = 4096;
/// Bounds the compiled pattern, so a config cannot make tether build a huge automaton.
const MAX_PATTERN_SIZE: usize = 1 << 20;

fn needs_pattern(s: &mut ProbeSettings) -> Result<(), Misfit> {
    if s.expect.is_some() {
        return Ok(());
    }
    Err(Misfit {
        key: None,
        message: "the expect probe needs `expect`: the regular expression a healthy answer \
                  matches, e.g. probe = { kind = \"expect\", send = 'PING\\r\\n', expect = '^\\+PONG' }"
            .to_owned(),
    })
}

/// `send` as written, with `\r`, `\n`, `\t`, `\\` and `\xHH` turned into their bytes:
/// what a TOML literal string or a command-line argument cannot hold otherwise.
pub fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex = [bytes.next(), bytes.next()];
                let digits: Option<Vec<u8>> = hex.into_iter().collect();
                let value = digits
                    .and_then(|d| std::str::from_utf8(&d).ok().map(str::to_owned))
                    .and_then(|d| u8::from_str_radix(&d, 16).ok())
                    .ok_or("\\x takes two hex digits, e.g. \\x00")?;
                out.push(value);
            }
            Some(other) => {
                return Err(format!(
                    "unknown escape \\{}: use \\r, \\n, \\t, \\\\ or \\xHH",
                    char::from(other)
                ));
            }
            None => return Err("ends in a lone backslash".to_owned()),
        }
    }
    if out.is_empty() {
        return Err("must not be empty: leave `send` out to read a greeting".to_owned());
    }
    Ok(out)
}

/// `expect` compiled, bounded in size.
pub fn pattern(text: &str) -> Result<Regex, String> {
    if text.is_empty() {
        return Err("must not be empty: an empty pattern matches anything".to_owned());
    }
    RegexBuilder::new(text)
        .size_limit(MAX_PATTERN_SIZE)
        .build()
        .map_err(|e| {
            format!(
                "not a valid regular expression: {}",
                one_line(&e.to_string())
            )
        })
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Debug)]
pub struct Expect {
    send: Option<Vec<u8>>,
    expect: Regex,
}

impl Expect {
    pub fn new(send: Option<Vec<u8>>, expect: Regex) -> Expect {
        Expect { send, expect }
    }
}

impl Protocol for Expect {
    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        check(stream, self.send.as_deref(), &self.expect).await
    }
}

/// Sends `send`, if any, and reads until what came back matches `expect`.
pub async fn check<S>(
    stream: &mut S,
    send: Option<&[u8]>,
    expect: &Regex,
) -> Result<Healthy, ProbeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    if let Some(send) = send {
        stream.write_all(send).await?;
    }
    let mut answer = Vec::with_capacity(256);
    let mut chunk = [0u8; 1024];
    loop {
        let room = (MAX_ANSWER - answer.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(if answer.is_empty() {
                ProbeError::Closed
            } else {
                ProbeError::Unhealthy(format!(
                    "answered {} and closed the connection, without a match for /{}/",
                    quote(&answer),
                    expect.as_str()
                ))
            });
        }
        answer.extend_from_slice(&chunk[..n]);
        if expect.is_match(&answer) {
            // An answer cut mid-line may have more to come, which the next check would
            // read as its own: only a whole-line answer leaves the connection in step.
            let in_step = send.is_some() && answer.ends_with(b"\n");
            return Ok(if in_step {
                Afterwards::Reuse
            } else {
                Afterwards::Hold
            }
            .into());
        }
        if answer.ends_with(b"\n") || answer.len() >= MAX_ANSWER {
            return Err(ProbeError::Unhealthy(format!(
                "answered {}, which does not match /{}/",
                quote(&answer),
                expect.as_str()
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_become_their_bytes() {
        assert_eq!(unescape(r"PING\r\n").unwrap(), b"PING\r\n");
        assert_eq!(unescape(r"a\tb\\c\x00\xff").unwrap(), b"a\tb\\c\x00\xff");
        assert_eq!(unescape("real\r\n").unwrap(), b"real\r\n");
        assert!(unescape(r"\q").unwrap_err().contains("unknown escape \\q"));
        assert!(unescape(r"\x4").is_err());
        assert!(unescape(r"\xzz").is_err());
        assert!(unescape("trailing\\").is_err());
        assert!(unescape("").is_err());
    }

    #[test]
    fn patterns_are_checked_and_bounded() {
        assert!(pattern(r"^\+PONG").is_ok());
        assert!(
            pattern("(")
                .unwrap_err()
                .starts_with("not a valid regular expression")
        );
        assert!(pattern("").is_err());
        assert!(pattern(r"\w{1000}{1000}").is_err());
    }

    #[tokio::test]
    async fn an_answer_is_judged_at_its_line_end() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        let expect = pattern(r"^\+PONG").unwrap();
        server.write_all(b"-ERR unknown\r\n").await.unwrap();
        let e = check(&mut client, Some(b"PING\r\n"), &expect)
            .await
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r"answered -ERR unknown\r\n, which does not match /^\+PONG/"
        );
        server.write_all(b"+PO").await.unwrap();
        let pending =
            tokio::spawn(async move { check(&mut client, Some(b"PING\r\n"), &expect).await });
        server.write_all(b"NG\r\n").await.unwrap();
        let healthy = pending.await.unwrap().unwrap();
        assert_eq!(healthy.afterwards, Afterwards::Reuse);
    }

    #[tokio::test]
    async fn a_greeting_is_held_for_the_next_check_to_replace() {
        let (mut client, mut server) = tokio::io::duplex(4096);
        server.write_all(b"220 mail ESMTP\r\n").await.unwrap();
        let healthy = check(&mut client, None, &pattern("^220 ").unwrap())
            .await
            .unwrap();
        assert_eq!(healthy.afterwards, Afterwards::Hold);
    }
}
