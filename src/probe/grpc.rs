//! The `grpc` probe: `grpc.health.v1.Health/Check` (the standard health service), with
//! `service` naming what to ask about (empty: the server as a whole). `SERVING` is
//! healthy; `NOT_SERVING`, `UNKNOWN` and `SERVICE_UNKNOWN` (or `grpc-status` 5, the
//! server not knowing the service) are unhealthy, saying so.
//!
//! HTTP/2 is the `h2` crate's, which hyper uses: tether frames nothing by hand. The gRPC
//! message around it is written here: a 5-byte prefix (no compression, the length) and
//! a protobuf message of one field each way (`service`, string 1, in; `status`, enum 1,
//! out). Two fields do not justify a protobuf code generator and its build step.
//!
//! With `tls`, the same over TLS from the first byte, asking for `h2` by ALPN as gRPC
//! clients do.
//!
//! Every check is one unary call on the held connection: a new connection opens an
//! HTTP/2 session ([`crate::http2`]) that lasts as long as the connection, each check a
//! new stream on it. Between checks the session's driver answers the server's `PING`s
//! and notices its `GOAWAY` or the connection's end at once. The cost to the server is
//! one request per check.

use crate::http2::{Driven, Session};
use crate::tls::Stream;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use h2::client::SendRequest;
use hyper::header::HeaderMap;

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, quote};
use crate::config::kinds::{self, Kind};

pub const KIND: Kind = Kind {
    name: "grpc",
    summary: "grpc.health.v1.Health/Check (of --service) answers SERVING",
    healthy: "`grpc.health.v1.Health/Check` for `service` (default: the whole server) answers `SERVING` (one unary call over HTTP/2)",
    repeats: "on the held connection (one HTTP/2 session, a stream per check)",
    settings: &["service"],
    finish: kinds::fits,
    learns_roles: kinds::no_roles,
    build: |s, address| {
        Check::Grpc(Grpc::new(
            address.to_string(),
            s.service.clone().unwrap_or_default(),
        ))
    },
};

const PATH: &str = "/grpc.health.v1.Health/Check";
/// A `HealthCheckResponse` is two bytes; a larger answer is not one.
const MAX_RESPONSE: usize = 4096;

/// `service`: any text a protobuf string can carry, short enough to be a name.
pub fn check_service(service: &str) -> Result<(), String> {
    if service.len() > 1024 || service.chars().any(char::is_control) {
        return Err("must be a service name: at most 1024 bytes, no control characters".into());
    }
    Ok(())
}

#[derive(Debug)]
pub struct Grpc {
    /// The `:authority` of the request: the target's address.
    authority: String,
    /// The request message, built once.
    request: Bytes,
    service: String,
}

impl Grpc {
    pub fn new(authority: String, service: String) -> Grpc {
        Grpc {
            authority,
            request: request_message(&service),
            service,
        }
    }
}

impl Protocol for Grpc {
    /// gRPC servers over TLS serve HTTP/2 only to clients that ask for it by ALPN (Go's
    /// take a client that does not for HTTP/1.1, and the HTTP/2 preface breaks the pipe).
    const ALPN: &'static [&'static [u8]] = &[b"h2"];

    async fn session(&self, stream: Stream) -> Result<Stream, ProbeError> {
        let session = Session::open(stream).await.map_err(driven_error)?;
        Ok(Stream::Http2(Box::new(session)))
    }

    async fn check(&self, stream: &mut Stream, _fresh: bool) -> Result<Healthy, ProbeError> {
        let Stream::Http2(session) = stream else {
            // `session` made every stream this probe is given.
            return Err(ProbeError::Closed);
        };
        let scheme = if session.is_tls() { "https" } else { "http" };
        let call = health_check(
            session.sender(),
            scheme,
            &self.authority,
            self.request.clone(),
        );
        let answer = session.drive(call).await.map_err(driven_error)??;
        judge(answer, &self.service)?;
        Ok(Afterwards::Reuse.into())
    }
}

/// What the server answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// `HealthCheckResponse.status`.
    Status(u64),
    /// A call that failed: `grpc-status` and `grpc-message`.
    Failed(String, String),
}

/// One `Health/Check` call on a session; its answer arrives while the session is driven.
/// The outer error is HTTP/2's; the inner, what the answer says of gRPC.
async fn health_check(
    client: SendRequest<Bytes>,
    scheme: &str,
    authority: &str,
    request: Bytes,
) -> Result<Result<Answer, ProbeError>, h2::Error> {
    let call = async {
        let mut client = client.ready().await?;
        let head = hyper::Request::builder()
            .method("POST")
            .uri(format!("{scheme}://{authority}{PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("user-agent", concat!("tether/", env!("CARGO_PKG_VERSION")))
            .body(())
            .expect("a constant request is valid");
        let (response, mut body) = client.send_request(head, false)?;
        body.send_data(request, true)?;
        let response = response.await?;
        let (head, mut body) = response.into_parts();
        let mut data = BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
            if data.len() > MAX_RESPONSE {
                break;
            }
        }
        let trailers = if data.len() > MAX_RESPONSE {
            None
        } else {
            body.trailers().await?
        };
        Ok::<_, h2::Error>((head, data, trailers))
    };
    let (head, data, trailers) = call.await?;
    if head.status != hyper::StatusCode::OK {
        return Ok(Err(ProbeError::Garbled {
            protocol: "gRPC",
            detail: format!("HTTP status {}", head.status),
        }));
    }
    // A call that fails at once may send its status with the headers ("Trailers-Only").
    let status = grpc_status(&head.headers).or_else(|| trailers.as_ref().and_then(grpc_status));
    Ok(match status {
        Some((code, message)) if code != "0" => Ok(Answer::Failed(code, message)),
        _ => parse_response(&data).map(Answer::Status),
    })
}

fn driven_error(e: Driven) -> ProbeError {
    match e {
        Driven::Exchange(e) => h2_error(e),
        Driven::Ended(None) => ProbeError::Closed,
        Driven::Ended(Some(io)) => ProbeError::Io(io),
    }
}

fn h2_error(e: h2::Error) -> ProbeError {
    if e.is_io() {
        return match e.into_io() {
            Some(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => ProbeError::Closed,
            Some(io) => ProbeError::Io(io),
            None => ProbeError::Closed,
        };
    }
    ProbeError::Garbled {
        protocol: "gRPC",
        detail: format!("HTTP/2: {e}"),
    }
}

fn grpc_status(headers: &HeaderMap) -> Option<(String, String)> {
    let code = headers.get("grpc-status")?.to_str().ok()?.to_owned();
    let message = headers
        .get("grpc-message")
        .and_then(|m| m.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    Some((code, message))
}

/// The gRPC message of a `HealthCheckRequest`: field 1, `service`, a length-delimited
/// string (left out when empty, as proto3 does).
fn request_message(service: &str) -> Bytes {
    let mut proto = BytesMut::new();
    if !service.is_empty() {
        proto.put_u8(0x0a);
        put_varint(&mut proto, service.len() as u64);
        proto.put_slice(service.as_bytes());
    }
    let mut message = BytesMut::with_capacity(5 + proto.len());
    message.put_u8(0);
    message.put_u32(proto.len() as u32);
    message.put_slice(&proto);
    message.freeze()
}

fn put_varint(out: &mut BytesMut, mut n: u64) {
    while n >= 0x80 {
        out.put_u8((n as u8) | 0x80);
        n >>= 7;
    }
    out.put_u8(n as u8);
}

fn get_varint(buf: &mut &[u8]) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.first()?;
        buf.advance(1);
        n |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(n);
        }
    }
    None
}

/// `HealthCheckResponse.status` from a gRPC message; other fields are skipped.
fn parse_response(data: &[u8]) -> Result<u64, ProbeError> {
    let garbled = |detail: String| ProbeError::Garbled {
        protocol: "gRPC",
        detail,
    };
    if data.len() < 5 {
        return Err(garbled(format!("a message of {} bytes", data.len())));
    }
    if data[0] != 0 {
        return Err(garbled("a compressed message".to_owned()));
    }
    let length = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let Some(mut proto) = data.get(5..5 + length) else {
        return Err(garbled(format!("a message cut short: {}", quote(data))));
    };
    let mut status = 0; // proto3: an absent enum is its zero, UNKNOWN
    while !proto.is_empty() {
        let key = get_varint(&mut proto).ok_or_else(|| garbled("a bad field key".into()))?;
        match key & 7 {
            0 => {
                let value = get_varint(&mut proto).ok_or_else(|| garbled("a bad varint".into()))?;
                if key >> 3 == 1 {
                    status = value;
                }
            }
            2 => {
                let len = get_varint(&mut proto).ok_or_else(|| garbled("a bad length".into()))?;
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > proto.len() {
                    return Err(garbled("a field cut short".to_owned()));
                }
                proto.advance(len);
            }
            1 if proto.len() >= 8 => proto.advance(8),
            5 if proto.len() >= 4 => proto.advance(4),
            _ => return Err(garbled(format!("a field of wire type {}", key & 7))),
        }
    }
    Ok(status)
}

/// `SERVING` is healthy; anything else says what the server said.
fn judge(answer: Answer, service: &str) -> Result<(), ProbeError> {
    let subject = if service.is_empty() {
        "the server".to_owned()
    } else {
        format!("service \"{service}\"")
    };
    let state = match answer {
        Answer::Status(1) => return Ok(()),
        Answer::Status(0) => "UNKNOWN".to_owned(),
        Answer::Status(2) => "NOT_SERVING".to_owned(),
        Answer::Status(3) => "SERVICE_UNKNOWN".to_owned(),
        Answer::Status(n) => format!("status {n}"),
        Answer::Failed(code, _) if code == "5" => {
            "SERVICE_UNKNOWN (grpc-status 5, NOT_FOUND)".to_owned()
        }
        Answer::Failed(code, message) if code == "12" => {
            return Err(ProbeError::Unhealthy(format!(
                "the server has no grpc.health.v1 service (grpc-status 12, UNIMPLEMENTED{})",
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {}", quote(message.as_bytes()))
                }
            )));
        }
        Answer::Failed(code, message) => {
            return Err(ProbeError::Unhealthy(format!(
                "Health/Check failed: grpc-status {code} {}",
                quote(message.as_bytes())
            )));
        }
    };
    Err(ProbeError::Unhealthy(format!("{subject} is {state}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_names_the_service_in_field_one() {
        assert_eq!(&request_message("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &request_message("db")[..],
            [0, 0, 0, 0, 4, 0x0a, 2, b'd', b'b']
        );
    }

    #[test]
    fn the_response_status_is_read_and_judged() {
        assert_eq!(parse_response(&[0, 0, 0, 0, 2, 0x08, 1]).unwrap(), 1);
        assert_eq!(parse_response(&[0, 0, 0, 0, 0]).unwrap(), 0);
        assert!(parse_response(&[0, 0, 0, 0, 9, 0x08]).is_err());
        judge(Answer::Status(1), "").unwrap();
        assert_eq!(
            judge(Answer::Status(2), "").unwrap_err().to_string(),
            "the server is NOT_SERVING"
        );
        assert_eq!(
            judge(
                Answer::Failed("5".into(), "unknown service".into()),
                "orders"
            )
            .unwrap_err()
            .to_string(),
            "service \"orders\" is SERVICE_UNKNOWN (grpc-status 5, NOT_FOUND)"
        );
    }
}
