//! A stand-in for systemd's notification socket: a Unix datagram socket in a scratch
//! directory that `tether run` is pointed at with `NOTIFY_SOCKET`, read with bounded
//! waits. Watchdog pings are kept apart, so a test can wait for the next state message
//! and still count the pings that came meanwhile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::UnixDatagram;

/// One datagram: `KEY=VALUE` lines, as `sd_notify(3)` sends them.
#[derive(Clone, Debug)]
pub struct Message {
    /// When the test received it.
    pub at: Instant,
    pub lines: Vec<String>,
}

impl Message {
    /// The value of `key`, if the message sets it.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines
            .iter()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
    }

    /// Whether the message sets `key` to `1` (`READY`, `RELOADING`, `STOPPING`).
    pub fn says(&self, key: &str) -> bool {
        self.get(key) == Some("1")
    }

    fn is_ping(&self) -> bool {
        self.lines == ["WATCHDOG=1"]
    }
}

pub struct NotifySocket {
    socket: UnixDatagram,
    path: PathBuf,
    /// When each watchdog ping arrived.
    pub pings: Vec<Instant>,
    /// Every state message so far, in order of arrival.
    pub seen: Vec<Message>,
    _dir: TempDir,
}

impl NotifySocket {
    pub fn bind() -> NotifySocket {
        let dir = super::workdir("notify");
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
        NotifySocket {
            socket,
            path,
            pings: Vec::new(),
            seen: Vec::new(),
            _dir: dir,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram, ping or not; `None` after `limit`.
    async fn recv(&mut self, limit: Duration) -> Option<Message> {
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(limit, self.socket.recv(&mut buf))
            .await
            .ok()?
            .expect("read the notify socket");
        let text = String::from_utf8(buf[..n].to_vec()).expect("notifications are UTF-8");
        let message = Message {
            at: Instant::now(),
            lines: text.lines().map(str::to_owned).collect(),
        };
        if message.is_ping() {
            self.pings.push(message.at);
        } else {
            self.seen.push(message.clone());
        }
        Some(message)
    }

    /// Waits up to `limit` for a state message that `wanted` accepts, recording every
    /// message and ping that comes before it; panics with what came if none does.
    pub async fn until(
        &mut self,
        limit: Duration,
        what: &str,
        wanted: impl Fn(&Message) -> bool,
    ) -> Message {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await {
                Some(m) if !m.is_ping() && wanted(&m) => return m,
                Some(_) => {}
                None => panic!("no {what} within {limit:?}; received: {:#?}", self.seen),
            }
        }
    }

    /// Reads everything that arrives for `window`, and returns the pings among it.
    pub async fn pings_during(&mut self, window: Duration) -> Vec<Instant> {
        let from = self.pings.len();
        let deadline = Instant::now() + window;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if self.recv(left).await.is_none() {
                break;
            }
        }
        self.pings[from..].to_vec()
    }
}
