//! The `postgres` probe, in one of two modes.
//!
//! **Without `user`**: an `SSLRequest`, which every PostgreSQL server answers with one
//! byte, `S` or `N`, before any authentication, so no credentials are needed. After that
//! answer the server waits for a TLS handshake or a startup message, which tether never
//! sends: the connection cannot carry a second check, and the server closes it after
//! `authentication_timeout`. So the connection is held until the next check, which opens
//! a fresh one and holds that instead (see [`Afterwards::Hold`]). A client that hangs up
//! after `N` is not logged by the server. The role stays unknown.
//!
//! **With `tls`**: the `SSLRequest` must be answered `S` (an `N` is a failed attempt: the
//! server does not support TLS), and the TLS handshake follows; without `user`, a
//! completed handshake is the check, and the connection is held as above.
//!
//! **With `user`**: a real session. A fresh connection sends the startup message (through
//! TLS with `tls`, else in plain TCP) and authenticates as the server asks
//! (trust, cleartext, md5 or SCRAM-SHA-256, through `postgres-protocol`: no crypto of
//! tether's own). Every check, the first included, then runs `SELECT
//! pg_is_in_recovery()` on the held session: `f` is [`Role::Primary`], `t` is
//! [`Role::Replica`]. The server holds one backend for tether, and each check is one
//! trivial query.
//!
//! A session server may speak between checks: `ParameterStatus` (PostgreSQL 14 reports
//! `in_hot_standby` when a standby is promoted), `NoticeResponse`,
//! `NotificationResponse`, and the `FATAL` ErrorResponse it sends before closing a
//! terminated backend. None of it is drained blindly: the checker runs a check as soon as
//! bytes arrive (see [`super::Prober::hears_between_checks`]), and the check reads
//! messages whole, skipping the asynchronous ones, until the query's `ReadyForQuery`. A
//! `FATAL` on an established session is [`ProbeError::Ended`]: a lost connection.

use bytes::{BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Afterwards, Check, Healthy, ProbeError, Protocol, Role, quote};
use crate::config::ProbeSettings;
use crate::config::kinds::{Kind, Misfit};
use crate::secrets::{self, Source};
use crate::tls::Stream;

pub const KIND: Kind = Kind {
    name: "postgres",
    summary: "An SSLRequest is answered by S or N; with a user, SELECT pg_is_in_recovery() in a session",
    healthy: "without `user`: an `SSLRequest` answered by `S` or `N` (no credentials); with `user`: a logged-in session that answers `SELECT pg_is_in_recovery()` (one backend held, one trivial query per check), which tells the role",
    repeats: "without `user`: on a fresh connection, which then replaces the held one; with `user`: on the held session",
    settings: &["user", "database", "password_env", "password_file"],
    finish: needs_user,
    learns_roles: |s| s.user.is_some(),
    build: |s, _| {
        Check::Postgres(Postgres::new(
            s.user.as_deref(),
            s.database.as_deref(),
            s.password(),
        ))
    },
};

/// A password or a database without `user` would be ignored: only a session sends them.
fn needs_user(s: &mut ProbeSettings) -> Result<(), Misfit> {
    if s.user.is_some() {
        return Ok(());
    }
    let given = [
        ("password_env", s.password_env.is_some()),
        ("password_file", s.password_file.is_some()),
        ("database", s.database.is_some()),
    ];
    match given.into_iter().find(|(_, set)| *set) {
        None => Ok(()),
        Some((field, _)) => Err(Misfit {
            key: Some(field),
            message: format!(
                "`{field}` needs `user`: only a logged-in session uses it \
                 (without `user` the probe sends no credentials)"
            ),
        }),
    }
}

/// The request code of an `SSLRequest` (PostgreSQL protocol, "Message Formats").
const SSL_REQUEST_CODE: u32 = 80_877_103;
/// The query of every session check.
const ROLE_QUERY: &str = "SELECT pg_is_in_recovery()";
/// The longest message read: errors, notices and parameter reports are a few hundred
/// bytes; a larger one is not PostgreSQL talking to a probe.
const MAX_MESSAGE: usize = 64 * 1024;
/// Messages read in one login or one check: a login takes about twenty
/// (`ParameterStatus` for each reported setting), a check five plus what arrived between
/// checks.
const MAX_MESSAGES: usize = 256;

#[derive(Debug)]
pub struct Postgres {
    /// `None`: the credential-free `SSLRequest` probe.
    session: Option<Session>,
}

/// What a session logs in with.
#[derive(Debug)]
struct Session {
    user: String,
    database: String,
    /// Where the password comes from, read at start or at the last reload; `None`: only
    /// trust authentication can succeed.
    password: Option<Source>,
}

impl Postgres {
    /// The probe for a target's settings; `database` defaults to `user`, as in libpq.
    pub fn new(user: Option<&str>, database: Option<&str>, password: Option<Source>) -> Postgres {
        Postgres {
            session: user.map(|user| Session {
                user: user.to_owned(),
                database: database.unwrap_or(user).to_owned(),
                password,
            }),
        }
    }

    /// Whether the held connection is a session, on which the server's words between
    /// checks are messages to read rather than noise to drain.
    pub fn is_session(&self) -> bool {
        self.session.is_some()
    }
}

impl Protocol for Postgres {
    async fn start_tls(&self, tcp: &mut TcpStream) -> Result<(), ProbeError> {
        start_tls(tcp).await
    }

    async fn check(&self, stream: &mut Stream, fresh: bool) -> Result<Healthy, ProbeError> {
        let Some(session) = &self.session else {
            if stream.is_tls() {
                // The server answered `S` and completed the handshake: that was the check.
                return Ok(Afterwards::Hold.into());
            }
            return ssl_request(stream).await.map(Healthy::from);
        };
        if fresh {
            session.login(stream).await?;
        }
        let role = ask_role(stream).await?;
        Ok(Healthy {
            afterwards: Afterwards::Reuse,
            role: Some(role),
        })
    }
}

async fn ssl_request(stream: &mut Stream) -> Result<Afterwards, ProbeError> {
    classify(ssl_answer(stream).await?)
}

/// Asks a fresh connection for TLS: `S` and the handshake may begin; `N` is a server
/// that cannot, which a target with `tls` must not silently talk to in plain text.
async fn start_tls(tcp: &mut TcpStream) -> Result<(), ProbeError> {
    match ssl_answer(tcp).await? {
        b'S' => Ok(()),
        b'N' => Err(ProbeError::Unhealthy(
            "the server does not support TLS (it answered N to SSLRequest; is ssl = on?)"
                .to_owned(),
        )),
        other => classify(other).map(|_| ()),
    }
}

/// Sends an `SSLRequest` and reads its one-byte answer.
async fn ssl_answer(
    stream: &mut (impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin),
) -> Result<u8, ProbeError> {
    let mut request = [0u8; 8];
    request[..4].copy_from_slice(&8u32.to_be_bytes());
    request[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    stream.write_all(&request).await?;
    let mut answer = [0u8; 1];
    match stream.read(&mut answer).await? {
        0 => Err(ProbeError::Closed),
        _ => Ok(answer[0]),
    }
}

/// `S` (TLS available) and `N` (not) both mean a postmaster is accepting connections.
/// `E` is an ErrorResponse, which only servers that predate SSL negotiation send.
fn classify(answer: u8) -> Result<Afterwards, ProbeError> {
    match answer {
        b'S' | b'N' => Ok(Afterwards::Hold),
        b'E' => Err(ProbeError::Unhealthy(
            "SSLRequest answered with an error".to_owned(),
        )),
        other => Err(ProbeError::Garbled {
            protocol: "PostgreSQL",
            detail: format!("SSLRequest answered {}", quote(&[other])),
        }),
    }
}

impl Session {
    /// Starts the session and authenticates, up to the first `ReadyForQuery`.
    async fn login(&self, stream: &mut Stream) -> Result<(), ProbeError> {
        let mut out = BytesMut::new();
        frontend::startup_message(
            [
                ("user", self.user.as_str()),
                ("database", self.database.as_str()),
                ("application_name", "tether"),
            ],
            &mut out,
        )?;
        stream.write_all(&out).await?;
        let mut scram: Option<ScramSha256> = None;
        for _ in 0..MAX_MESSAGES {
            out.clear();
            match read_message(stream).await? {
                Message::AuthenticationOk
                | Message::ParameterStatus(_)
                | Message::BackendKeyData(_)
                | Message::NoticeResponse(_) => continue,
                Message::ReadyForQuery(_) => return Ok(()),
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(&self.password("password")?, &mut out)?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let password = self.password("md5")?;
                    let hash = md5_hash(self.user.as_bytes(), &password, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut out)?;
                }
                Message::AuthenticationSasl(body) => {
                    let offered: Vec<String> = body
                        .mechanisms()
                        .map(|m| Ok(m.to_owned()))
                        .collect()
                        .map_err(garbled)?;
                    if !offered.iter().any(|m| m == SCRAM_SHA_256) {
                        return Err(ProbeError::Unhealthy(format!(
                            "the server offers SASL {}, not {SCRAM_SHA_256}",
                            offered.join(", ")
                        )));
                    }
                    // No channel binding (SCRAM-SHA-256, not -PLUS), over TLS too: the
                    // certificate was verified, and binding adds nothing a probe needs.
                    let s = ScramSha256::new(
                        &self.password("scram-sha-256")?,
                        ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut out)?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| garbled("SASL out of turn"))?;
                    s.update(body.data()).map_err(scram_failed)?;
                    frontend::sasl_response(s.message(), &mut out)?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| garbled("SASL out of turn"))?;
                    // Proves the server knew the password too: not an impostor.
                    s.finish(body.data()).map_err(scram_failed)?;
                }
                Message::ErrorResponse(body) => {
                    return Err(ProbeError::Unhealthy(format!(
                        "login as \"{}\" to database \"{}\" refused: {}",
                        self.user,
                        self.database,
                        describe(&body)
                    )));
                }
                Message::AuthenticationGss
                | Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(ProbeError::Unhealthy(
                        "the server asks for GSSAPI/SSPI/Kerberos authentication, which the \
                         probe does not do (use trust, password, md5 or scram-sha-256)"
                            .to_owned(),
                    ));
                }
                other => return Err(unexpected("login", &other)),
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
            }
        }
        Err(garbled(format!(
            "more than {MAX_MESSAGES} messages without ReadyForQuery"
        )))
    }

    /// The password, as last loaded; `method` names what asked for it.
    fn password(&self, method: &str) -> Result<std::sync::Arc<[u8]>, ProbeError> {
        let Some(source) = &self.password else {
            return Err(ProbeError::Unhealthy(format!(
                "the server asks \"{}\" for a password ({method}) and none is configured \
                 (set password_env or password_file)",
                self.user
            )));
        };
        secrets::current(source).map_err(|e| {
            ProbeError::Unhealthy(format!("no password: {e} (unset, empty or unreadable)"))
        })
    }
}

/// Runs the role query on an established session and reads to its `ReadyForQuery`,
/// skipping what the server said unprompted since the last check.
async fn ask_role(stream: &mut Stream) -> Result<Role, ProbeError> {
    let mut out = BytesMut::new();
    frontend::query(ROLE_QUERY, &mut out)?;
    stream.write_all(&out).await?;
    let mut role = None;
    for _ in 0..MAX_MESSAGES {
        match read_message(stream).await? {
            Message::ParameterStatus(_)
            | Message::NoticeResponse(_)
            | Message::NotificationResponse(_)
            | Message::RowDescription(_)
            | Message::CommandComplete(_) => {}
            Message::DataRow(row) => role = Some(role_of(&row)?),
            Message::ReadyForQuery(_) => {
                return role.ok_or_else(|| garbled(format!("{ROLE_QUERY} returned no row")));
            }
            Message::ErrorResponse(body) => {
                let error = describe(&body);
                return Err(if is_fatal(&body) {
                    ProbeError::Ended(error)
                } else {
                    ProbeError::Unhealthy(format!("{ROLE_QUERY} failed: {error}"))
                });
            }
            other => return Err(unexpected(ROLE_QUERY, &other)),
        }
    }
    Err(garbled(format!(
        "more than {MAX_MESSAGES} messages without ReadyForQuery"
    )))
}

/// The role in the one-column row of [`ROLE_QUERY`] (text format: `t` or `f`).
fn role_of(row: &postgres_protocol::message::backend::DataRowBody) -> Result<Role, ProbeError> {
    let first = row
        .ranges()
        .next()
        .map_err(garbled)?
        .flatten()
        .map(|range| &row.buffer()[range]);
    match first {
        Some(b"f") => Ok(Role::Primary),
        Some(b"t") => Ok(Role::Replica),
        Some(other) => Err(garbled(format!("{ROLE_QUERY} returned {}", quote(other)))),
        None => Err(garbled(format!("{ROLE_QUERY} returned NULL"))),
    }
}

/// Reads exactly one message: nothing beyond it is taken off the socket, so what the
/// server sends next stays for the next read, and the checker's readiness watch.
async fn read_message(stream: &mut Stream) -> Result<Message, ProbeError> {
    let mut header = [0u8; 5];
    read_exact(stream, &mut header).await?;
    let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if !(4..=MAX_MESSAGE).contains(&length) {
        return Err(garbled(format!(
            "a message {} of {length} bytes",
            quote(&header[..1])
        )));
    }
    let mut buf = BytesMut::with_capacity(length + 1);
    buf.put_slice(&header);
    buf.resize(length + 1, 0);
    read_exact(stream, &mut buf[5..]).await?;
    match Message::parse(&mut buf) {
        Ok(Some(message)) => Ok(message),
        Ok(None) => Err(garbled("a cut message")),
        Err(e) => Err(garbled(format!("{} ({e})", quote(&header[..1])))),
    }
}

async fn read_exact(stream: &mut Stream, buf: &mut [u8]) -> Result<(), ProbeError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProbeError::Closed),
        Err(e) => Err(e.into()),
    }
}

/// An ErrorResponse as operators search for it: severity, SQLSTATE and message
/// (`FATAL 28P01 password authentication failed for user "app"`).
fn describe(body: &ErrorResponseBody) -> String {
    let (mut severity, mut localized, mut code, mut message) = (None, None, None, None);
    let mut fields = body.fields();
    while let Ok(Some(field)) = fields.next() {
        let value = String::from_utf8_lossy(field.value_bytes()).into_owned();
        match field.type_() {
            b'V' => severity = Some(value),
            b'S' => localized = Some(value),
            b'C' => code = Some(value),
            b'M' => message = Some(value),
            _ => {}
        }
    }
    [severity.or(localized), code, message]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether the error ends the session (`FATAL`, `PANIC`) rather than the query.
fn is_fatal(body: &ErrorResponseBody) -> bool {
    let mut fields = body.fields();
    let (mut severity, mut localized) = (None, None);
    while let Ok(Some(field)) = fields.next() {
        match field.type_() {
            b'V' => severity = Some(field.value_bytes().to_vec()),
            b'S' => localized = Some(field.value_bytes().to_vec()),
            _ => {}
        }
    }
    matches!(severity.or(localized).as_deref(), Some(b"FATAL" | b"PANIC"))
}

fn garbled(detail: impl ToString) -> ProbeError {
    ProbeError::Garbled {
        protocol: "PostgreSQL",
        detail: detail.to_string(),
    }
}

fn scram_failed(e: std::io::Error) -> ProbeError {
    ProbeError::Unhealthy(format!("SCRAM-SHA-256 authentication failed: {e}"))
}

/// A message that has no place at this point of the exchange.
fn unexpected(during: &str, message: &Message) -> ProbeError {
    let name = match message {
        Message::CopyInResponse(_) | Message::CopyOutResponse(_) | Message::CopyData(_) => {
            "a COPY message"
        }
        Message::EmptyQueryResponse => "EmptyQueryResponse",
        Message::AuthenticationOk
        | Message::AuthenticationCleartextPassword
        | Message::AuthenticationMd5Password(_)
        | Message::AuthenticationSasl(_)
        | Message::AuthenticationSaslContinue(_)
        | Message::AuthenticationSaslFinal(_) => "an authentication request",
        Message::DataRow(_) | Message::RowDescription(_) => "a row",
        _ => "an extended-protocol message",
    };
    garbled(format!("{name} during {during}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s_and_n_are_healthy_anything_else_is_not() {
        assert_eq!(classify(b'S').unwrap(), Afterwards::Hold);
        assert_eq!(classify(b'N').unwrap(), Afterwards::Hold);
        assert_eq!(
            classify(b'E').unwrap_err().to_string(),
            "SSLRequest answered with an error"
        );
        assert_eq!(
            classify(b'H').unwrap_err().to_string(),
            "not a PostgreSQL answer: SSLRequest answered H"
        );
    }

    #[test]
    fn the_database_defaults_to_the_user_like_libpq() {
        let p = Postgres::new(Some("app"), None, None);
        assert_eq!(p.session.as_ref().unwrap().database, "app");
        let p = Postgres::new(Some("app"), Some("orders"), None);
        assert_eq!(p.session.as_ref().unwrap().database, "orders");
        assert!(!Postgres::new(None, None, None).is_session());
    }

    fn error_body(fields: &[(u8, &str)]) -> ErrorResponseBody {
        let mut body = Vec::new();
        for (t, v) in fields {
            body.push(*t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut buf = BytesMut::new();
        buf.put_u8(b'E');
        buf.put_u32(u32::try_from(body.len() + 4).unwrap());
        buf.put_slice(&body);
        match Message::parse(&mut buf).unwrap().unwrap() {
            Message::ErrorResponse(body) => body,
            _ => unreachable!(),
        }
    }

    #[test]
    fn errors_read_as_severity_sqlstate_and_message() {
        let body = error_body(&[
            (b'S', "FATAL"),
            (b'V', "FATAL"),
            (b'C', "57P01"),
            (b'M', "terminating connection due to administrator command"),
            (b'F', "postgres.c"),
        ]);
        assert_eq!(
            describe(&body),
            "FATAL 57P01 terminating connection due to administrator command"
        );
        assert!(is_fatal(&body));
        let body = error_body(&[(b'S', "ERROR"), (b'C', "42501"), (b'M', "denied")]);
        assert_eq!(describe(&body), "ERROR 42501 denied");
        assert!(!is_fatal(&body));
    }
}
