//! A small HTTP/1.1 server on loopback whose answer a test can change while tether watches
//! it: the status code, keep-alive or `Connection: close`, and the body's framing.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How the server frames its answers and whether it keeps connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, connection kept open for the next request.
    KeepAlive,
    /// Chunked body, connection kept open.
    Chunked,
    /// `Connection: close`, and the server closes after each answer.
    Close,
}

/// What the server saw, for assertions.
#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    /// Connections accepted and not yet closed by either side.
    open: AtomicUsize,
    requests: AtomicUsize,
}

pub struct HttpServer {
    local: SocketAddr,
    status: Arc<AtomicU16>,
    counters: Arc<Counters>,
    /// The request heads received, newest last (for checking what tether sends).
    requests: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Starts on a free loopback port, answering every request with `200` and `framing`.
    pub async fn start(framing: Framing) -> HttpServer {
        HttpServer::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), framing)
            .await
            .expect("bind a free loopback port")
    }

    /// Like [`start`](Self::start), on `addr`.
    pub async fn bind(addr: SocketAddr, framing: Framing) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let status = Arc::new(AtomicU16::new(200));
        let counters = Arc::new(Counters::default());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (status, counters, requests) = (status.clone(), counters.clone(), requests.clone());
            async move {
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        continue;
                    };
                    counters.connections.fetch_add(1, Ordering::SeqCst);
                    counters.open.fetch_add(1, Ordering::SeqCst);
                    let counters = counters.clone();
                    let serving = serve(
                        stream,
                        framing,
                        status.clone(),
                        counters.clone(),
                        requests.clone(),
                    );
                    connections.spawn(async move {
                        serving.await;
                        counters.open.fetch_sub(1, Ordering::SeqCst);
                    });
                }
            }
        });
        Ok(HttpServer {
            local,
            status,
            counters,
            requests,
            task,
        })
    }

    /// `IP:PORT`, the form tether's configuration takes.
    pub fn addr(&self) -> String {
        self.local.to_string()
    }

    pub fn port(&self) -> u16 {
        self.local.port()
    }

    /// Every request from now on is answered with `status`.
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }

    /// Connections still open: a client closing one is seen at once, as the server is
    /// always reading.
    pub fn open_connections(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    pub fn request_heads(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        // Aborting the accept loop drops the JoinSet, which aborts every connection task.
        self.task.abort();
    }
}

async fn serve(
    stream: TcpStream,
    framing: Framing,
    status: Arc<AtomicU16>,
    counters: Arc<Counters>,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let mut stream = BufReader::new(stream);
    loop {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            match stream.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        counters.requests.fetch_add(1, Ordering::SeqCst);
        requests.lock().unwrap().push(head);
        let status = status.load(Ordering::SeqCst);
        let body = format!("status {status}\n");
        let answer = match framing {
            Framing::KeepAlive => format!(
                "HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            Framing::Chunked => format!(
                "HTTP/1.1 {status} X\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            ),
            Framing::Close => format!(
                "HTTP/1.1 {status} X\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        };
        if stream.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
        if framing == Framing::Close {
            return;
        }
    }
}
