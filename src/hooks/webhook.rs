//! Webhook hooks: a POST of the event's JSON, signed when a secret is configured, and
//! retried with backoff until the hook timeout.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, USER_AGENT};
use hyper::{Method, Request, Response, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::resolve::ForWebhooks;
use hyper_util::rt::TokioExecutor;
use sha2::Sha256;
use tokio::time::{Instant, sleep, timeout_at};

use crate::config::{self, HumanDuration};
use crate::watch::backoff::ReconnectBackoff;
use crate::watch::observe::HookResult;

/// How much of a receiver's answer is kept for the log.
const BODY_CAP: usize = 1024;
/// Bounds the TCP handshake of one attempt; the whole delivery is bounded by the hook
/// timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Idle connections to a receiver are kept this long for the next event.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client webhooks are delivered with: hyper's HTTP/1.1 client, plain or over
/// rustls with the webpki root certificates, keeping connections to receivers.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpsConnector<HttpConnector<ForWebhooks>>, Full<Bytes>>,
}

impl Client {
    /// A client that trusts the webpki (Mozilla) root certificates.
    pub fn new() -> Client {
        let roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        Client::with_roots(roots)
    }

    /// A client that trusts exactly `roots`.
    pub fn with_roots(roots: rustls::RootCertStore) -> Client {
        let tls = rustls::ClientConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(ForWebhooks);
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let inner = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(https);
        Client { inner }
    }
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

/// One attempt's failure before any answer.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("invalid request: {0}")]
    Request(#[from] hyper::http::Error),
    #[error(transparent)]
    Send(#[from] hyper_util::client::legacy::Error),
}

/// Retries start quickly: a receiver restarting alongside the dependency is common.
const RETRY: config::Backoff = config::Backoff {
    initial: HumanDuration(Duration::from_millis(100)),
    max: HumanDuration(Duration::from_secs(5)),
    multiplier: 2.0,
    jitter: 0.2,
};

/// An HMAC key read from the environment. Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(bytes)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `sha256=<hex HMAC-SHA256 of body>`, the value of `X-Tether-Signature`.
pub fn signature(secret: &Secret, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(&secret.0).expect("HMAC takes keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// How a delivery ended.
#[derive(Debug)]
pub struct Outcome {
    pub result: HookResult,
    pub status: String,
    pub body: String,
    pub attempts: u32,
}

/// Delivers `body` to `url`, retrying transient failures until `limit` has passed.
pub async fn deliver(
    client: &Client,
    url: &str,
    headers: &BTreeMap<String, String>,
    secret: Option<&Secret>,
    event_id: &str,
    body: Vec<u8>,
    limit: Duration,
) -> Outcome {
    let deadline = Instant::now() + limit;
    let mut backoff = ReconnectBackoff::new(&RETRY);
    let signature = secret.map(|s| signature(s, &body));
    let mut attempts = 0;
    // What the last finished attempt found: when the hook timeout cuts the next one
    // short, that is why the delivery failed (an unreachable receiver stays an
    // `error`, however slowly the last refused connection came back).
    let mut last: Option<(HookResult, String, String)> = None;
    loop {
        attempts += 1;
        let request = request(url, headers, signature.as_deref(), event_id, &body);
        let sent = match request {
            Ok(req) => timeout_at(deadline, client.inner.request(req))
                .await
                .map(|r| r.map_err(AttemptError::from)),
            Err(e) => Ok(Err(AttemptError::from(e))),
        };
        let (result, status, body_text, transient) = match sent {
            Ok(Ok(resp)) => {
                let code = resp.status();
                let text = read_capped(resp, deadline).await;
                if code.is_success() {
                    return Outcome {
                        result: HookResult::Ok,
                        status: format!("HTTP {}", code.as_u16()),
                        body: text,
                        attempts,
                    };
                }
                // A receiver that rejects the request itself will not change its mind.
                let transient = code.is_server_error()
                    || code == StatusCode::REQUEST_TIMEOUT
                    || code == StatusCode::TOO_MANY_REQUESTS;
                (
                    HookResult::Failed,
                    format!("HTTP {}", code.as_u16()),
                    text,
                    transient,
                )
            }
            Err(_) => match last.take() {
                Some((result, status, body)) => {
                    return Outcome {
                        result,
                        status: format!("{status}; the next attempt was cut by the hook timeout"),
                        body,
                        attempts: attempts - 1,
                    };
                }
                None => (
                    HookResult::Timeout,
                    "no answer before the hook timeout".to_owned(),
                    String::new(),
                    true,
                ),
            },
            // A URL or header that cannot make a request never will.
            Ok(Err(e @ AttemptError::Request(_))) => {
                (HookResult::Error, error_chain(&e), String::new(), false)
            }
            Ok(Err(e)) => (HookResult::Error, error_chain(&e), String::new(), true),
        };
        // Out of retries or out of time: the last attempt's failure stands.
        let delay = backoff.next_delay();
        if !transient || Instant::now() + delay >= deadline {
            return Outcome {
                result,
                status,
                body: body_text,
                attempts,
            };
        }
        tracing::debug!(url, attempt = attempts, status = %status, retry_in = ?delay, "webhook delivery failed; retrying");
        last = Some((result, status, body_text));
        sleep(delay).await;
    }
}

/// The POST of one attempt.
fn request(
    url: &str,
    headers: &BTreeMap<String, String>,
    signature: Option<&str>,
    event_id: &str,
    body: &[u8],
) -> Result<Request<Full<Bytes>>, hyper::http::Error> {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, "application/json")
        .header(USER_AGENT, concat!("tether/", env!("CARGO_PKG_VERSION")))
        .header("x-tether-event-id", event_id)
        .header("x-tether-instance", crate::instance::id());
    for (k, v) in headers {
        req = req.header(
            HeaderName::try_from(k.as_str())?,
            HeaderValue::try_from(v.as_str())?,
        );
    }
    if let Some(sig) = signature {
        req = req.header("x-tether-signature", sig);
    }
    req.body(Full::new(Bytes::copy_from_slice(body)))
}

/// The first `BODY_CAP` bytes of the answer, read until `deadline` at the latest.
async fn read_capped(resp: Response<hyper::body::Incoming>, deadline: Instant) -> String {
    let mut body = resp.into_body();
    let mut kept = Vec::new();
    while let Ok(Some(Ok(frame))) = timeout_at(deadline, body.frame()).await {
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        let room = BODY_CAP.saturating_sub(kept.len());
        kept.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if kept.len() >= BODY_CAP {
            break;
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_owned()
}

/// The client's top-level message ("client error (Connect)") hides the cause.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::TcpListener;

    /// A certificate authority made for one test, and a server certificate it signed
    /// for 127.0.0.1.
    struct TestPki {
        ca: CertificateDer<'static>,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    }

    fn test_pki() -> TestPki {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        TestPki {
            ca: ca.der().clone(),
            cert: cert.der().clone(),
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }

    fn roots(ca: &CertificateDer<'static>) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        roots
    }

    /// What the receiver saw of each request: its `X-Tether-Signature` and body.
    type Seen = Arc<Mutex<Vec<(Option<String>, Vec<u8>)>>>;

    /// An HTTPS receiver on loopback that answers 503 to the first `failures` requests
    /// and 200 after.
    async fn https_receiver(pki: &TestPki, failures: usize) -> (SocketAddr, Seen) {
        let tls = rustls::ServerConfig::builder_with_provider(
            rustls::crypto::ring::default_provider().into(),
        )
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![pki.cert.clone()], pki.key.clone_key())
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Seen::default();
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, record) = (acceptor.clone(), record.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                        let record = record.clone();
                        async move {
                            let signature = req
                                .headers()
                                .get("x-tether-signature")
                                .map(|v| v.to_str().unwrap().to_owned());
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            let n = {
                                let mut seen = record.lock().unwrap();
                                seen.push((signature, body.to_vec()));
                                seen.len()
                            };
                            let status = if n > failures {
                                StatusCode::OK
                            } else {
                                StatusCode::SERVICE_UNAVAILABLE
                            };
                            let mut resp = Response::new(Full::new(Bytes::from("noted")));
                            *resp.status_mut() = status;
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn an_https_webhook_is_retried_past_server_errors_and_arrives_signed() {
        let pki = test_pki();
        let (addr, seen) = https_receiver(&pki, 2).await;
        let secret = Secret::new(b"shared key".to_vec());
        let body = br#"{"event":"disconnect"}"#.to_vec();
        let outcome = deliver(
            &Client::with_roots(roots(&pki.ca)),
            &format!("https://{addr}/hook"),
            &BTreeMap::new(),
            Some(&secret),
            "db:1",
            body.clone(),
            Duration::from_secs(10),
        )
        .await;
        assert_eq!(outcome.result, HookResult::Ok, "{outcome:?}");
        assert_eq!(outcome.attempts, 3);
        assert_eq!(outcome.body, "noted");
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 3);
        for (sig, got) in seen.iter() {
            assert_eq!(got, &body);
            assert_eq!(sig.as_deref(), Some(signature(&secret, &body).as_str()));
        }
    }

    #[tokio::test]
    async fn an_https_receiver_with_an_untrusted_certificate_gets_nothing() {
        let pki = test_pki();
        let stranger = test_pki();
        let (addr, seen) = https_receiver(&pki, 0).await;
        let outcome = deliver(
            &Client::with_roots(roots(&stranger.ca)),
            &format!("https://{addr}/hook"),
            &BTreeMap::new(),
            None,
            "db:1",
            b"{}".to_vec(),
            Duration::from_millis(500),
        )
        .await;
        assert_eq!(outcome.result, HookResult::Error, "{outcome:?}");
        assert!(outcome.status.contains("certificate"), "{}", outcome.status);
        assert!(seen.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_header_that_cannot_be_sent_fails_at_once_without_retries() {
        let headers = BTreeMap::from([("bad header".to_owned(), "x".to_owned())]);
        let outcome = deliver(
            &Client::new(),
            "http://127.0.0.1:9/hook",
            &headers,
            None,
            "db:1",
            b"{}".to_vec(),
            Duration::from_secs(5),
        )
        .await;
        assert_eq!(outcome.result, HookResult::Error);
        assert_eq!(outcome.attempts, 1);
    }

    #[test]
    fn the_signature_is_the_hex_hmac_sha256_of_the_body() {
        // RFC 4231 test case 2.
        let sig = signature(
            &Secret::new(b"Jefe".to_vec()),
            b"what do ya want for nothing?",
        );
        assert_eq!(
            sig,
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_secret_never_shows_in_debug_output() {
        assert_eq!(
            format!("{:?}", Secret::new(b"hunter2".to_vec())),
            "Secret(<redacted>)"
        );
    }
}
