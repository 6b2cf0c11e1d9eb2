//! TLS on probe connections: the client settings a target's `tls` table loads, the
//! stream a probe speaks through (plain or TLS, one type so that every probe and the
//! checker's watch of a held connection work on either), the handshake with its failures
//! worded for `last_error`, and the leaf certificate's expiry.
//!
//! rustls with the `ring` provider; the roots are the configured `ca_file`, else the
//! Mozilla roots of `webpki-roots` (the same the webhooks trust), so nothing depends on
//! the host's OpenSSL or its certificate directory.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use crate::http2::Session;
use crate::net::{self, Hangup, Readiness};

/// PEM files larger than this are not certificates or keys (a CA bundle of every public
/// root is about 250 KiB).
const MAX_PEM_FILE: u64 = 4 * 1024 * 1024;

/// A `ca_file`, `cert_file` or `key_file` that cannot be used, worded for a config
/// diagnostic at the key that names it.
#[derive(Debug, thiserror::Error)]
pub enum TlsFileError {
    #[error("cannot read {}: {}", .path.display(), net::describe(.source))]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is larger than {MAX_PEM_FILE} bytes: not a PEM file", .path.display())]
    TooLarge { path: PathBuf },
    #[error("{} is not valid PEM: {detail}", .path.display())]
    Pem { path: PathBuf, detail: String },
    #[error("{} holds no PEM {what}", .path.display())]
    Empty { path: PathBuf, what: &'static str },
    #[error("{} holds a certificate that cannot be a trust anchor: {detail}", .path.display())]
    Anchor { path: PathBuf, detail: String },
    #[error("the key in {} does not go with the certificate in {}: {detail}", .key.display(), .cert.display())]
    ClientCert {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

impl TlsFileError {
    /// Whether the problem is the key file's rather than the certificate's (for the
    /// config key a diagnostic names).
    pub fn is_key_file(&self) -> bool {
        matches!(self, TlsFileError::ClientCert { .. })
    }
}

/// The client settings of a `tls` table, loaded from its files once per distinct set of
/// files. Equal when built from the same file contents, so a reload that rotates a CA or
/// client certificate restarts the targets that use it, and one that changes nothing
/// does not.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// The bytes of every file it was built from, in order, for equality.
    material: Arc<[Vec<u8>]>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsClient")
    }
}

impl PartialEq for TlsClient {
    fn eq(&self, other: &TlsClient) -> bool {
        self.material == other.material
    }
}

impl TlsClient {
    /// Loads the roots (`ca`, else the bundled Mozilla roots) and the client certificate
    /// and key, if any. Blocking file reads: called while the config is validated, which
    /// runs off the runtime.
    pub fn load(
        ca: Option<&Path>,
        client: Option<(&Path, &Path)>,
    ) -> Result<TlsClient, TlsFileError> {
        let mut material = Vec::new();
        let mut roots = RootCertStore::empty();
        match ca {
            Some(path) => {
                let bytes = read(path)?;
                for cert in certificates(path, &bytes)? {
                    roots.add(cert).map_err(|e| TlsFileError::Anchor {
                        path: path.to_owned(),
                        detail: e.to_string(),
                    })?;
                }
                material.push(bytes);
            }
            None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        }
        let builder =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("ring supports the default protocol versions")
                .with_root_certificates(roots);
        let config = match client {
            None => builder.with_no_client_auth(),
            Some((cert_path, key_path)) => {
                let cert_bytes = read(cert_path)?;
                let chain = certificates(cert_path, &cert_bytes)?;
                let key_bytes = read(key_path)?;
                let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| match e {
                    rustls::pki_types::pem::Error::NoItemsFound => TlsFileError::Empty {
                        path: key_path.to_owned(),
                        what: "private key",
                    },
                    e => TlsFileError::Pem {
                        path: key_path.to_owned(),
                        detail: e.to_string(),
                    },
                })?;
                material.push(cert_bytes);
                material.push(key_bytes);
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsFileError::ClientCert {
                        cert: cert_path.to_owned(),
                        key: key_path.to_owned(),
                        detail: e.to_string(),
                    })?
            }
        };
        Ok(TlsClient {
            config: Arc::new(config),
            material: material.into(),
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    use std::io::Read;
    let read_err = |source| TlsFileError::Read {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .map_err(read_err)?
        .take(MAX_PEM_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_PEM_FILE {
        return Err(TlsFileError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

fn certificates(path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsFileError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsFileError::Empty {
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

/// What a probe's TLS handshake needs: the loaded client settings and the name the
/// server's certificate must carry.
#[derive(Clone)]
pub struct Handshake {
    connector: TlsConnector,
    server_name: ServerName<'static>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Handshake({})", name_of(&self.server_name))
    }
}

impl Handshake {
    /// `server_name` was checked when the config was validated; an invalid one here is
    /// an IP address or DNS name that rustls takes as it is.
    /// `alpn`: the application protocols to offer, if the protocol names them.
    pub fn new(
        client: &TlsClient,
        server_name: &str,
        alpn: &[&[u8]],
    ) -> Result<Handshake, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned())
            .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
        let config = if alpn.is_empty() {
            client.config.clone()
        } else {
            let mut config = (*client.config).clone();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        };
        Ok(Handshake {
            connector: TlsConnector::from(config),
            server_name,
        })
    }

    /// Runs the handshake on a connected socket, within `limit`.
    pub async fn run(&self, tcp: TcpStream, limit: Duration) -> Result<Stream, TlsError> {
        let handshake = self.connector.connect(self.server_name.clone(), tcp);
        match tokio::time::timeout(limit, handshake).await {
            Err(_) => Err(TlsError::Timeout(limit)),
            Ok(Err(e)) => Err(TlsError::from_io(e, &self.server_name)),
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
        }
    }
}

/// Why a TLS handshake failed, worded for `last_error` after "TLS handshake: ".
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "no answer within {0:?} (a server that does not speak TLS may be waiting for plain text)"
    )]
    Timeout(Duration),
    #[error("certificate expired at {}", humantime::format_rfc3339_seconds(*.0))]
    Expired(SystemTime),
    #[error("certificate expired")]
    ExpiredAt,
    #[error("certificate is not yet valid")]
    NotYetValid,
    #[error("certificate is not valid for name {expected} (it names {presented})")]
    NameMismatch { expected: String, presented: String },
    #[error(
        "certificate is not trusted: unknown CA (not signed by ca_file, or by a public root without it)"
    )]
    UnknownIssuer,
    #[error(
        "certificate is not trusted: its signature does not verify against the CA of its issuer's name"
    )]
    BadSignature,
    #[error("certificate is invalid: {0}")]
    BadCertificate(String),
    #[error("the server does not speak TLS (its answer is not a TLS record)")]
    NotTls,
    #[error("the server closed the connection during the handshake")]
    Closed,
    #[error("the server refused the handshake: alert {0}")]
    Alert(String),
    #[error("server name \"{0}\" is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("{}", net::describe(.0))]
    Io(io::Error),
    #[error("{0}")]
    Other(rustls::Error),
}

impl TlsError {
    fn from_io(e: io::Error, expected: &ServerName<'_>) -> TlsError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            return TlsError::Closed;
        }
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Io(e);
        };
        match tls {
            rustls::Error::InvalidCertificate(cert) => match cert {
                CertificateError::ExpiredContext { not_after, .. } => TlsError::Expired(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(not_after.as_secs()),
                ),
                CertificateError::Expired => TlsError::ExpiredAt,
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    TlsError::NotYetValid
                }
                CertificateError::NotValidForName => TlsError::NameMismatch {
                    expected: name_of(expected),
                    presented: "other names".to_owned(),
                },
                CertificateError::NotValidForNameContext { presented, .. } => {
                    TlsError::NameMismatch {
                        expected: name_of(expected),
                        presented: if presented.is_empty() {
                            "no names".to_owned()
                        } else {
                            presented
                                .iter()
                                .map(|p| plain_name(p))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    }
                }
                CertificateError::UnknownIssuer => TlsError::UnknownIssuer,
                CertificateError::BadSignature => TlsError::BadSignature,
                other => TlsError::BadCertificate(format!("{other:?}")),
            },
            rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                TlsError::NotTls
            }
            rustls::Error::AlertReceived(alert) => TlsError::Alert(format!("{alert:?}")),
            other => TlsError::Other(other.clone()),
        }
    }
}

/// A presented name as written in a certificate: rustls lists them as `DnsName("x")` and
/// `IpAddress(x)`.
fn plain_name(presented: &str) -> &str {
    for prefix in ["DnsName(\"", "IpAddress(", "URI(\""] {
        if let Some(rest) = presented.strip_prefix(prefix) {
            return rest.trim_end_matches(')').trim_end_matches('"');
        }
    }
    presented
}

fn name_of(name: &ServerName<'_>) -> String {
    match name {
        ServerName::DnsName(d) => d.as_ref().to_owned(),
        ServerName::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// A probe's connection: plain TCP, or TLS over it. One type, so that probes and the
/// checker's watch do not care which.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    /// Boxed: rustls's connection state is large, and a plain stream should not carry
    /// its size.
    Tls(Box<TlsStream<TcpStream>>),
    /// Either of the above, owned by an HTTP/2 session (the `grpc` probe's): read and
    /// written only through the session, and watched through its driver.
    Http2(Box<Session>),
}

impl Stream {
    /// The socket underneath, for its options and its readiness; `None` inside an
    /// HTTP/2 session, which alone may touch it.
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Http2(_) => None,
        }
    }

    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Plain(s) => s.peer_addr(),
            Stream::Tls(s) => s.get_ref().0.peer_addr(),
            Stream::Http2(s) => Ok(s.peer_addr()),
        }
    }

    pub fn is_tls(&self) -> bool {
        match self {
            Stream::Plain(_) => false,
            Stream::Tls(_) => true,
            Stream::Http2(s) => s.is_tls(),
        }
    }

    /// The leaf certificate's notAfter, if this is TLS and the certificate parses.
    pub fn not_after(&self) -> Option<SystemTime> {
        match self {
            Stream::Plain(_) => None,
            Stream::Tls(s) => not_after(s.get_ref().1.peer_certificates()?.first()?),
            Stream::Http2(s) => s.not_after(),
        }
    }

    /// Ready when the held connection has something to read or ended: the socket's
    /// read readiness, or for an HTTP/2 session its driver's end (polling the driver
    /// takes in and answers what the server says meanwhile).
    pub fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Plain(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.get_ref().0.poll_read_ready(cx),
            Stream::Http2(s) => s.poll_ended(cx),
        }
    }

    /// Reads whatever is pending on a held connection without blocking and discards it,
    /// as [`net::drain`] does. Through TLS, what the socket holds are records: session
    /// tickets and key updates are taken in by rustls and are nothing, application data
    /// is data, and a `close_notify` or the end of the socket is the end.
    pub fn drain(&mut self) -> Readiness {
        let tls = match self {
            Stream::Plain(s) => return net::drain(s),
            Stream::Tls(tls) => tls,
            Stream::Http2(session) => return session.drain(),
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut scratch = [0u8; 512];
        let mut read = 0;
        // Bounded: a peer that keeps sending is drained again at its next readiness.
        for _ in 0..16 {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut **tls).poll_read(&mut cx, &mut buf) {
                Poll::Pending => break,
                Poll::Ready(Ok(())) if buf.filled().is_empty() => {
                    return Readiness::Ended(Hangup::ClosedByPeer);
                }
                Poll::Ready(Ok(())) => read += buf.filled().len(),
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Readiness::Ended(Hangup::ClosedByPeer);
                }
                Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => break,
                Poll::Ready(Err(e)) => return Readiness::Ended(Hangup::from(e)),
            }
        }
        if read == 0 {
            Readiness::Nothing
        } else {
            Readiness::Data(read)
        }
    }

    /// Like [`net::peek`] on the socket underneath: through TLS, bytes may be a record
    /// that holds no message, and the check the caller then runs reads it harmlessly.
    pub fn peek(&self) -> Readiness {
        match self.tcp() {
            Some(tcp) => net::peek(tcp),
            None => Readiness::Nothing,
        }
    }
}

/// The notAfter of a DER certificate, parsed by `x509-parser`.
pub fn not_after(der: &[u8]) -> Option<SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

/// A stream owned by an HTTP/2 session is not read or written past it: bytes taken from
/// under the session would corrupt it.
fn in_session() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "the connection carries an HTTP/2 session",
    )
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            Stream::Http2(_) => Poll::Ready(Err(in_session())),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            Stream::Http2(_) => Poll::Ready(Err(in_session())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            Stream::Http2(_) => Poll::Ready(Err(in_session())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            Stream::Http2(_) => Poll::Ready(Err(in_session())),
        }
    }
}
