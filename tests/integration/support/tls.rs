//! Certificates made for a test (a CA and leaves it signed, written as PEM files) and a
//! small HTTPS server presenting one, for the TLS tests and for any test that needs a
//! TLS target.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, date_time_ymd};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;

use super::workdir;

/// The good leaf's notAfter, a whole second, for the expiry metric to equal exactly.
pub const NOT_AFTER: Date = (2035, 6, 1);

/// Year, month, day.
pub type Date = (i32, u8, u8);

/// The date `days` from today (UTC).
pub fn in_days(days: u64) -> Date {
    let at = std::time::SystemTime::now() + std::time::Duration::from_secs(days * 86400);
    let text = humantime::format_rfc3339_seconds(at).to_string();
    let field = |r: std::ops::Range<usize>| text[r].parse().expect("an RFC 3339 date");
    (field(0..4), field(5..7) as u8, field(8..10) as u8)
}

/// A CA and the leaves it signed, written as PEM files: `good` for localhost and
/// 127.0.0.1, `other-name` for db.example, `expired`; and `other-ca.pem`, a CA that
/// signed none of them.
pub struct Pki {
    dir: TempDir,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = workdir("tls");
        let (ca, ca_key) = ca("tether test CA");
        let (other_ca, _) = self::ca("another CA");
        write(dir.path(), "ca.pem", &ca.pem());
        write(dir.path(), "other-ca.pem", &other_ca.pem());
        let leaves: [(&str, &[&str], Date); 4] = [
            ("good", &["localhost", "127.0.0.1"], NOT_AFTER),
            ("other-name", &["db.example"], NOT_AFTER),
            ("expired", &["localhost", "127.0.0.1"], (2021, 1, 1)),
            ("soon", &["localhost", "127.0.0.1"], in_days(3)),
        ];
        for (name, names, (y, m, d)) in leaves {
            let key = KeyPair::generate().expect("a key");
            let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
            let mut params = CertificateParams::new(names).expect("leaf params");
            params.not_before = date_time_ymd(2020, 1, 1);
            params.not_after = date_time_ymd(y, m, d);
            let cert = params.signed_by(&key, &ca, &ca_key).expect("sign a leaf");
            write(dir.path(), &format!("{name}.crt"), &cert.pem());
            write(dir.path(), &format!("{name}.key"), &key.serialize_pem());
        }
        Pki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).expect("read a PEM file")
    }

    pub fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("a CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    (params.self_signed(&key).expect("self-sign the CA"), key)
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write a PEM file");
}

/// An HTTPS server answering every request `200 ok`, keep-alive, with the leaf `leaf`.
pub async fn https_server(pki: &Pki, leaf: &str) -> (String, JoinHandle<()>) {
    let (addr, task, _) = tls_server(pki, leaf, false).await;
    (addr, task)
}

/// A TLS server that completes each handshake and then closes the connection: every
/// connection to it is lost at once, and reconnected.
pub async fn hanging_up_tls_server(pki: &Pki, leaf: &str) -> (String, JoinHandle<()>, Accepted) {
    tls_server(pki, leaf, true).await
}

/// How many connections a test server accepted.
pub type Accepted = Arc<AtomicUsize>;

/// Accepts at most this many connections, then closes its listener.
const MAX_CONNECTIONS: usize = 200;

async fn tls_server(pki: &Pki, leaf: &str, hang_up: bool) -> (String, JoinHandle<()>, Accepted) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs =
        vec![CertificateDer::from_pem_slice(pki.pem(&format!("{leaf}.crt")).as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(pki.pem(&format!("{leaf}.key")).as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepted = Accepted::default();
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        for _ in 0..MAX_CONNECTIONS {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if hang_up {
                    let _ = tls.shutdown().await;
                    return;
                }
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                for _ in 0..64 {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                    if request.windows(4).any(|w| w == b"\r\n\r\n") {
                        request.clear();
                        let answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
                        if tls.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, task, accepted)
}
