//! The `http` probe: `GET <path>` answered with the expected status, written by hand as
//! HTTP/1.1 on the held connection and repeated on it at every interval (keep-alive).
//!
//! The whole response is read, so the connection stays in step for the next request:
//! a body delimited by `Content-Length` or chunked encoding, up to [`MAX_BODY`] bytes.
//! When the server will close the connection (`Connection: close`, HTTP/1.0 without
//! keep-alive, a body that runs to the end of the connection or is too large), the
//! connection is dropped and each check opens a fresh one. With `tls`, HTTPS: the same
//! exchange through TLS.

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote, read_line};
use crate::config::kinds::{self, Kind, Misfit};
use crate::config::{ProbeSettings, builtin};
use crate::tls::Stream;
use tokio::io::{AsyncBufRead, AsyncReadExt, AsyncWriteExt, BufReader};

pub const KIND: Kind = Kind {
    name: "http",
    summary: "GET --path is answered by --expect-status (default: GET / answered by 200)",
    healthy: "`GET path` answered with `expect_status`",
    repeats: "on the held connection (keep-alive); on a fresh one for each check when the server closes",
    settings: &["path", "expect_status", "host"],
    finish: defaults,
    learns_roles: kinds::no_roles,
    build: |s, address| {
        Check::Http(Http::new(
            s.path.as_deref().unwrap_or(builtin::HTTP_PATH),
            s.expect_status.unwrap_or(builtin::HTTP_STATUS),
            s.host.clone().unwrap_or_else(|| address.to_string()),
        ))
    },
};

/// `GET /` answered by 200 unless told otherwise, written out so that the effective
/// config shows what is asked.
fn defaults(s: &mut ProbeSettings) -> Result<(), Misfit> {
    s.path.get_or_insert_with(|| builtin::HTTP_PATH.to_owned());
    s.expect_status.get_or_insert(builtin::HTTP_STATUS);
    Ok(())
}

/// Bodies up to this size are read and discarded to keep the connection; a larger one
/// costs the connection instead.
const MAX_BODY: u64 = 64 * 1024;
/// Limits on the status line and each header line.
const MAX_LINE: usize = 8 * 1024;
/// A response with more header lines than this is not one a health endpoint sends.
const MAX_HEADERS: usize = 100;

#[derive(Debug)]
pub struct Http {
    /// The request, built once: it never changes.
    request: Vec<u8>,
    expect_status: u16,
}

impl Http {
    /// `host` is the `Host` header: the configured one, else the target's address.
    pub fn new(path: &str, expect_status: u16, host: String) -> Http {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tether/{}\r\nAccept: */*\r\n\r\n",
            env!("CARGO_PKG_VERSION")
        )
        .into_bytes();
        Http {
            request,
            expect_status,
        }
    }
}

impl Protocol for Http {
    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        stream.write_all(&self.request).await?;
        let mut reader = BufReader::new(stream);
        let head = loop {
            let head = read_head(&mut reader).await?;
            // Interim answers (100 Continue, 103 Early Hints) precede the real one.
            if !(100..200).contains(&head.status) || head.status == 101 {
                break head;
            }
        };
        if head.status != self.expect_status {
            return Err(ProbeError::Unhealthy(format!(
                "answered {} {}, expected {}",
                head.status,
                quote(head.reason.as_bytes()),
                self.expect_status
            )));
        }
        let body_read = match head.body {
            Body::None => true,
            Body::Length(n) if n <= MAX_BODY => {
                skip_exact(&mut reader, n).await?;
                true
            }
            Body::Chunked => skip_chunked(&mut reader).await?,
            Body::Length(_) | Body::UntilClose => false,
        };
        // Bytes beyond the response would be mistaken for the next one's start.
        let in_step = body_read && reader.buffer().is_empty();
        Ok(if head.keep_alive && in_step {
            Afterwards::Reuse
        } else {
            Afterwards::Drop
        }
        .into())
    }
}

/// What the status line and headers say.
#[derive(Debug, PartialEq)]
struct Head {
    status: u16,
    reason: String,
    keep_alive: bool,
    body: Body,
}

/// How the body is delimited.
#[derive(Debug, PartialEq)]
enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn garbled(detail: impl Into<String>) -> ProbeError {
    ProbeError::Garbled {
        protocol: "HTTP",
        detail: detail.into(),
    }
}

async fn read_head(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<Head, ProbeError> {
    let status_line = read_line(reader, MAX_LINE, "HTTP").await?;
    let mut lines = Vec::new();
    loop {
        let line = read_line(reader, MAX_LINE, "HTTP").await?;
        if line.is_empty() {
            break;
        }
        if lines.len() == MAX_HEADERS {
            return Err(garbled(format!("more than {MAX_HEADERS} header lines")));
        }
        lines.push(line);
    }
    parse_head(&status_line, &lines)
}

/// Parses `HTTP/1.x NNN reason` and the headers that decide framing and keep-alive.
fn parse_head(status_line: &[u8], headers: &[Vec<u8>]) -> Result<Head, ProbeError> {
    let text = std::str::from_utf8(status_line)
        .map_err(|_| garbled(format!("status line {}", quote(status_line))))?;
    let mut parts = text.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(garbled(format!("status line {}", quote(status_line)))),
    };
    let status: u16 = parts
        .next()
        .filter(|s| s.len() == 3)
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..=599).contains(s))
        .ok_or_else(|| garbled(format!("status line {}", quote(status_line))))?;
    let reason = parts.next().unwrap_or_default().to_owned();

    let mut keep_alive = minor == 1;
    let mut length = None;
    let mut chunked = false;
    for line in headers {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(garbled(format!("header line {}", quote(line))));
        };
        let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
        let value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_ascii_lowercase();
        match name.as_str() {
            "connection" => {
                for token in value.split(',').map(str::trim) {
                    match token {
                        "close" => keep_alive = false,
                        "keep-alive" => keep_alive = true,
                        _ => {}
                    }
                }
            }
            "content-length" => {
                let n: u64 = value
                    .parse()
                    .map_err(|_| garbled(format!("Content-Length {value:?}")))?;
                if length.is_some_and(|m| m != n) {
                    return Err(garbled("conflicting Content-Length headers"));
                }
                length = Some(n);
            }
            // The last coding decides the framing (RFC 9112, 6.3).
            "transfer-encoding" => {
                chunked = value.rsplit(',').next().map(str::trim) == Some("chunked");
            }
            _ => {}
        }
    }
    let body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Body::None
    } else if chunked {
        Body::Chunked
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        Body::UntilClose
    };
    Ok(Head {
        status,
        reason,
        keep_alive,
        body,
    })
}

/// Reads and discards exactly `n` bytes.
async fn skip_exact(reader: &mut (impl AsyncBufRead + Unpin), n: u64) -> Result<(), ProbeError> {
    let copied = tokio::io::copy(&mut reader.take(n), &mut tokio::io::sink()).await?;
    if copied < n {
        return Err(ProbeError::Closed);
    }
    Ok(())
}

/// Reads and discards a chunked body with its trailers. Returns `false`, leaving the rest
/// unread, once more than [`MAX_BODY`] bytes have arrived.
async fn skip_chunked(reader: &mut (impl AsyncBufRead + Unpin)) -> Result<bool, ProbeError> {
    let mut total: u64 = 0;
    loop {
        let line = read_line(reader, MAX_LINE, "HTTP").await?;
        let size_text = String::from_utf8_lossy(&line);
        let size_text = size_text.split(';').next().unwrap_or_default().trim();
        let size = u64::from_str_radix(size_text, 16)
            .map_err(|_| garbled(format!("chunk size {}", quote(&line))))?;
        if size == 0 {
            // Trailer fields, then the empty line that ends the message.
            while !read_line(reader, MAX_LINE, "HTTP").await?.is_empty() {}
            return Ok(true);
        }
        total = total.saturating_add(size);
        if total > MAX_BODY {
            return Ok(false);
        }
        skip_exact(reader, size).await?;
        if !read_line(reader, MAX_LINE, "HTTP").await?.is_empty() {
            return Err(garbled("chunk data longer than its size"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(status_line: &str, headers: &[&str]) -> Result<Head, ProbeError> {
        let headers: Vec<Vec<u8>> = headers.iter().map(|h| h.as_bytes().to_vec()).collect();
        parse_head(status_line.as_bytes(), &headers)
    }

    #[test]
    fn http_1_1_keeps_the_connection_unless_told_to_close() {
        let h = head("HTTP/1.1 200 OK", &["Content-Length: 2"]).unwrap();
        assert_eq!(
            (h.status, h.keep_alive, h.body),
            (200, true, Body::Length(2))
        );
        let h = head(
            "HTTP/1.1 200 OK",
            &["Connection: close", "Content-Length: 2"],
        )
        .unwrap();
        assert!(!h.keep_alive);
    }

    #[test]
    fn http_1_0_closes_unless_it_asks_for_keep_alive() {
        assert!(!head("HTTP/1.0 200 OK", &[]).unwrap().keep_alive);
        assert!(
            head("HTTP/1.0 200 OK", &["connection: Keep-Alive"])
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        assert_eq!(
            head(
                "HTTP/1.1 200 OK",
                &["Transfer-Encoding: gzip, chunked", "Content-Length: 5"]
            )
            .unwrap()
            .body,
            Body::Chunked
        );
        assert_eq!(
            head("HTTP/1.1 204 No Content", &[]).unwrap().body,
            Body::None
        );
        assert_eq!(head("HTTP/1.1 200 OK", &[]).unwrap().body, Body::UntilClose);
        assert!(
            head(
                "HTTP/1.1 200 OK",
                &["Content-Length: 1", "Content-Length: 2"]
            )
            .is_err()
        );
    }

    #[test]
    fn a_status_line_that_is_not_http_is_garbled() {
        for line in [
            "SSH-2.0-OpenSSH_9.2",
            "HTTP/2 200",
            "HTTP/1.1 2000 OK",
            "HTTP/1.1 OK",
        ] {
            assert!(
                matches!(head(line, &[]), Err(ProbeError::Garbled { .. })),
                "{line}"
            );
        }
    }

    #[tokio::test]
    async fn a_chunked_body_is_read_to_its_end_and_no_further() {
        let mut input: &[u8] = b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        assert!(skip_chunked(&mut input).await.unwrap());
        assert_eq!(input, b"NEXT");
    }

    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_abandoned() {
        let mut body = format!("{:x}\r\n", MAX_BODY + 1).into_bytes();
        body.extend(std::iter::repeat_n(b'x', 10));
        assert!(!skip_chunked(&mut body.as_slice()).await.unwrap());
    }
}
