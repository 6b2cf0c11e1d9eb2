//! How the commands reach a running sidecar: one small HTTP/1.1 client (hyper's, the
//! stack webhooks use too) over TCP (`http://HOST:PORT`) or over the unix socket
//! (`unix:/run/tether/tether.sock`), so `status`, `events` and the admin commands
//! connect, and pick their default address, the same way.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio::task::JoinHandle;

/// Where the sidecar answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port`, as connected to and sent in `Host`.
    Tcp(String),
    /// The socket file of `server.unix_socket`.
    Unix(PathBuf),
}

/// A sidecar's endpoint and, when the URL named one, a request path; without one each
/// command asks its own (`/status`, `/events`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Url {
    pub endpoint: Endpoint,
    path: Option<String>,
}

/// A `--url` that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UrlError {
    #[error("\"{0}\": only http:// and unix: URLs are supported (tether serves plain HTTP)")]
    Scheme(String),
    #[error("\"{0}\": expected http://HOST:PORT[/PATH]")]
    Malformed(String),
    #[error("\"{0}\": expected unix:/PATH/TO/SOCKET or unix:///PATH/TO/SOCKET")]
    Unix(String),
}

impl FromStr for Url {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Url, UrlError> {
        if let Some(rest) = s.strip_prefix("unix:") {
            // `unix:/p` and `unix:///p` (an empty authority) name the same file.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') || path.len() < 2 {
                return Err(UrlError::Unix(s.to_owned()));
            }
            return Ok(Url {
                endpoint: Endpoint::Unix(PathBuf::from(path)),
                path: None,
            });
        }
        let rest = match s.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some(_) => return Err(UrlError::Scheme(s.to_owned())),
            None => s,
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#', ' ']) {
            return Err(UrlError::Malformed(s.to_owned()));
        }
        // A port is whatever follows the last colon outside IPv6 brackets.
        let host_end = authority.rfind(']').unwrap_or(0);
        let authority = match authority[host_end..].rsplit_once(':') {
            Some((_, port)) if port.parse::<u16>().is_ok() => authority.to_owned(),
            Some(_) => return Err(UrlError::Malformed(s.to_owned())),
            None => format!("{authority}:80"),
        };
        let path = match path {
            "" | "/" => None,
            p => Some(p.to_owned()),
        };
        Ok(Url {
            endpoint: Endpoint::Tcp(authority),
            path,
        })
    }
}

impl Url {
    /// A sidecar listening on `listen`; a wildcard address is reached on loopback.
    pub fn from_listen(listen: std::net::SocketAddr) -> Url {
        let mut addr = listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        Url {
            endpoint: Endpoint::Tcp(addr.to_string()),
            path: None,
        }
    }

    /// A sidecar serving on the unix socket `path`.
    pub fn from_socket(path: PathBuf) -> Url {
        Url {
            endpoint: Endpoint::Unix(path),
            path: None,
        }
    }

    /// This URL, asking `path` unless it named a path of its own.
    pub fn or_path(mut self, path: &str) -> Url {
        self.path.get_or_insert_with(|| path.to_owned());
        self
    }

    /// The request path; `/` when none was set.
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }

    /// The same URL with a query string on its path.
    pub fn with_query(&self, query: &str) -> Url {
        let mut url = self.clone();
        if !query.is_empty() {
            let sep = if self.path().contains('?') { '&' } else { '?' };
            url.path = Some(format!("{}{sep}{query}", self.path()));
        }
        url
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.endpoint {
            Endpoint::Tcp(authority) => write!(f, "http://{authority}{}", self.path()),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// Why the sidecar could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect: {0}")]
    Connect(#[source] std::io::Error),
    #[error("{0}")]
    Http(#[from] hyper::Error),
    #[error("cannot read the answer: {0}")]
    Body(String),
}

/// An answer whose body is still arriving; the connection lives as long as it does.
pub struct Answer {
    pub response: Response<Incoming>,
    driver: JoinHandle<()>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// A GET of `url` over a connection of its own, with `headers`; returns once the
/// response head is in. Not bounded in time: callers wrap it in their own timeout.
pub async fn get(url: &Url, headers: &[(HeaderName, HeaderValue)]) -> Result<Answer, ClientError> {
    send(hyper::Method::GET, url, headers).await
}

/// A bodiless POST of `url` (an admin action) with its whole answer, up to `limit` bytes.
pub async fn post_body(url: &Url, limit: usize) -> Result<(StatusCode, Bytes), ClientError> {
    let answer = send(hyper::Method::POST, url, &[]).await?;
    read_whole(answer, limit).await
}

async fn send(
    method: hyper::Method,
    url: &Url,
    headers: &[(HeaderName, HeaderValue)],
) -> Result<Answer, ClientError> {
    let (host, io): (&str, Box<dyn Io>) = match &url.endpoint {
        Endpoint::Tcp(authority) => (
            authority,
            Box::new(
                TcpStream::connect(authority)
                    .await
                    .map_err(ClientError::Connect)?,
            ),
        ),
        // Any name will do: the socket is the only server there.
        Endpoint::Unix(path) => (
            "localhost",
            Box::new(
                UnixStream::connect(path)
                    .await
                    .map_err(ClientError::Connect)?,
            ),
        ),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = Request::builder()
        .method(method)
        .uri(url.path())
        .header(HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("a path and a host make a valid request");
    for (name, value) in headers {
        request.headers_mut().insert(name, value.clone());
    }
    match sender.send_request(request).await {
        Ok(response) => Ok(Answer { response, driver }),
        Err(e) => {
            driver.abort();
            Err(e.into())
        }
    }
}

/// A GET of `url` with its whole body, read up to `limit` bytes.
pub async fn get_body(url: &Url, limit: usize) -> Result<(StatusCode, Bytes), ClientError> {
    let answer = get(url, &[]).await?;
    read_whole(answer, limit).await
}

async fn read_whole(mut answer: Answer, limit: usize) -> Result<(StatusCode, Bytes), ClientError> {
    let status = answer.response.status();
    let body = Limited::new(answer.response.body_mut(), limit)
        .collect()
        .await
        .map_err(|e| ClientError::Body(e.to_string()))?
        .to_bytes();
    Ok((status, body))
}

/// The connection, whichever kind it is.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The sidecar `tether run` would start with `config`: its TCP listener, or its unix
/// socket when `listen = false`; the built-in default when no config was named and
/// `./tether.toml` does not exist. A config that serves neither is a usage error.
pub fn url_from_config(arg: &crate::cli::ConfigArg) -> Result<Url, std::process::ExitCode> {
    let path = crate::config::resolve_path(arg.path.as_deref());
    if arg.path.is_none() && !path.exists() {
        return Ok(Url::from_listen(
            crate::config::builtin::LISTEN
                .parse()
                .expect("the built-in listen address parses"),
        ));
    }
    let config = super::load(arg)?;
    match (config.server.listen, config.server.unix_socket) {
        (Some(listen), _) => Ok(Url::from_listen(listen)),
        (None, Some(socket)) => Ok(Url::from_socket(socket)),
        (None, None) => Err(super::usage_error(&format!(
            "{} serves no endpoints (listen = false and no unix_socket): give --url",
            path.display()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_default_to_the_commands_path_and_port_80() {
        let url: Url = "http://127.0.0.1:9464".parse().unwrap();
        assert_eq!(
            url.or_path("/status").to_string(),
            "http://127.0.0.1:9464/status"
        );
        let url: Url = "localhost:9464/".parse().unwrap();
        assert_eq!(
            url.or_path("/events").to_string(),
            "http://localhost:9464/events"
        );
        let url: Url = "http://[::1]:9/tether/status".parse().unwrap();
        assert_eq!(
            url.or_path("/status").to_string(),
            "http://[::1]:9/tether/status"
        );
        let url: Url = "http://sidecar".parse().unwrap();
        assert_eq!(url.to_string(), "http://sidecar:80/");
        assert!(matches!(
            "https://x:1".parse::<Url>(),
            Err(UrlError::Scheme(_))
        ));
        assert!(matches!(
            "http://x:port".parse::<Url>(),
            Err(UrlError::Malformed(_))
        ));
        assert!(matches!(
            "http://".parse::<Url>(),
            Err(UrlError::Malformed(_))
        ));
    }

    #[test]
    fn unix_urls_name_the_socket_file_with_one_or_three_slashes() {
        for s in [
            "unix:/run/tether/tether.sock",
            "unix:///run/tether/tether.sock",
        ] {
            let url: Url = s.parse().unwrap();
            assert_eq!(
                url.endpoint,
                Endpoint::Unix("/run/tether/tether.sock".into())
            );
            assert_eq!(url.to_string(), "unix:/run/tether/tether.sock");
        }
        for bad in [
            "unix:",
            "unix:relative.sock",
            "unix://host/x.sock",
            "unix:/",
        ] {
            assert!(
                matches!(bad.parse::<Url>(), Err(UrlError::Unix(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_wildcard_listen_address_is_reached_on_loopback() {
        let url = Url::from_listen("0.0.0.0:9464".parse().unwrap()).or_path("/status");
        assert_eq!(url.to_string(), "http://127.0.0.1:9464/status");
        let url = Url::from_listen("[::]:9464".parse().unwrap()).or_path("/status");
        assert_eq!(url.to_string(), "http://[::1]:9464/status");
    }

    #[test]
    fn a_query_is_added_to_the_path() {
        let url: Url = "http://127.0.0.1:1/events".parse().unwrap();
        assert_eq!(url.with_query("target=a").path(), "/events?target=a");
        assert_eq!(url.with_query("").path(), "/events");
    }
}
