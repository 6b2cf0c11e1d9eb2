//! Host names to addresses the way glibc does it with `hosts: files dns`, without a
//! thread per lookup: `/etc/hosts` first, then DNS through an async resolver set up from
//! `/etc/resolv.conf` (`nameserver`, `search`/`domain`, `ndots`, `timeout`, `attempts`),
//! so Kubernetes service names resolve as they do for the application beside tether.
//!
//! `getaddrinfo` blocks, so it would run on tokio's blocking pool; a resolver that
//! swallows queries there kept hundreds of threads waiting and queued everything else
//! that pool runs (the `/status` document, the state file) behind them. Here a lookup is
//! a task waiting on a UDP socket, and at most [`MAX_IN_FLIGHT`] lookups query DNS at
//! once; the others wait their turn within their own time limit. A DNS outage costs the
//! targets behind names and nothing else.
//!
//! The webhooks' HTTP client resolves through here too ([`ForWebhooks`]).
//!
//! Like glibc, nothing is cached: each lookup asks again, so a moved target is followed
//! as soon as its records change. Both files are read again when they change.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::ProtoErrorKind;
use hickory_resolver::{ResolveError as DnsError, TokioResolver};
use tokio::sync::Semaphore;

/// DNS lookups under way at once. Each holds a socket (two: A and AAAA); a fleet of
/// names behind a dead resolver must not take the file descriptors that connections
/// and the HTTP server need.
pub const MAX_IN_FLIGHT: usize = 64;

/// What glibc assumes when `/etc/resolv.conf` names no server.
const DEFAULT_NAMESERVER: &str = "nameserver 127.0.0.1\n";

/// Why a name did not resolve, worded for `last_error` after "resolve HOST: ".
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("name not found")]
    NotFound,
    #[error("no answer from the DNS servers")]
    NoAnswer,
    #[error("cannot use {path}: {reason}")]
    Config { path: String, reason: String },
    #[error("{0}")]
    Dns(String),
}

/// The resolver of the system's `/etc/hosts` and `/etc/resolv.conf`.
pub fn system() -> &'static Resolver {
    static SYSTEM: LazyLock<Resolver> =
        LazyLock::new(|| Resolver::new("/etc/hosts", "/etc/resolv.conf"));
    &SYSTEM
}

/// Resolves names from a hosts file and a resolv.conf, re-reading each when it changes.
pub struct Resolver {
    hosts_path: PathBuf,
    resolv_conf_path: PathBuf,
    /// The DNS port; 53 but in tests, which cannot say another in a resolv.conf.
    dns_port: u16,
    loaded: Mutex<Loaded>,
    in_flight: Semaphore,
}

/// The files as last read, with what identified each version.
#[derive(Default)]
struct Loaded {
    hosts_version: Option<Version>,
    hosts: Arc<HostsFile>,
    conf_version: Option<Version>,
    dns: Option<Result<Arc<TokioResolver>, ResolveError>>,
}

/// Identifies a version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Version {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn version(path: &Path) -> Option<Version> {
    fs::metadata(path).ok().map(|m| Version {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        mtime: m.mtime(),
        mtime_nsec: m.mtime_nsec(),
    })
}

impl Resolver {
    pub fn new(hosts: impl Into<PathBuf>, resolv_conf: impl Into<PathBuf>) -> Resolver {
        Resolver::with_dns_port(hosts, resolv_conf, 53)
    }

    /// A resolver that asks the name servers of `resolv_conf` on `port`.
    pub fn with_dns_port(
        hosts: impl Into<PathBuf>,
        resolv_conf: impl Into<PathBuf>,
        port: u16,
    ) -> Resolver {
        Resolver {
            hosts_path: hosts.into(),
            resolv_conf_path: resolv_conf.into(),
            dns_port: port,
            loaded: Mutex::new(Loaded::default()),
            in_flight: Semaphore::new(MAX_IN_FLIGHT),
        }
    }

    /// The addresses of `host`: those the hosts file gives it, else those DNS does.
    /// Unbounded in time: the caller sets the limit (waiting for a turn counts).
    pub async fn lookup(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let (hosts, dns) = self.current();
        if let Some(addrs) = hosts.get(host) {
            return Ok(addrs.to_vec());
        }
        let dns = dns?;
        let _turn = self
            .in_flight
            .acquire()
            .await
            .expect("the lookup semaphore is never closed");
        match dns.lookup_ip(host).await {
            Ok(found) => {
                let addrs: Vec<IpAddr> = found.iter().collect();
                if addrs.is_empty() {
                    Err(ResolveError::NotFound)
                } else {
                    Ok(addrs)
                }
            }
            Err(e) => Err(describe(&e)),
        }
    }

    /// The files' current contents, read again where they changed since last time.
    fn current(&self) -> (Arc<HostsFile>, Result<Arc<TokioResolver>, ResolveError>) {
        let hosts_version = version(&self.hosts_path);
        let conf_version = version(&self.resolv_conf_path);
        // Updates are whole assignments: a poisoned lock still holds a usable state.
        let mut loaded = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if loaded.hosts_version != hosts_version || hosts_version.is_none() {
            loaded.hosts = Arc::new(
                fs::read_to_string(&self.hosts_path)
                    .map(|text| HostsFile::parse(&text))
                    .unwrap_or_default(),
            );
            loaded.hosts_version = hosts_version;
        }
        if loaded.dns.is_none() || loaded.conf_version != conf_version {
            loaded.dns = Some(self.dns_resolver().map(Arc::new));
            loaded.conf_version = conf_version;
        }
        let dns = loaded.dns.clone().expect("set just above");
        (loaded.hosts.clone(), dns)
    }

    fn dns_resolver(&self) -> Result<TokioResolver, ResolveError> {
        let failed = |reason: String| ResolveError::Config {
            path: self.resolv_conf_path.display().to_string(),
            reason,
        };
        let text = match fs::read(&self.resolv_conf_path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(failed(e.to_string())),
        };
        build_dns_resolver(&text, self.dns_port).map_err(failed)
    }
}

/// A DNS resolver for the text of a resolv.conf, asking its servers on `port`.
fn build_dns_resolver(resolv_conf: &[u8], port: u16) -> Result<TokioResolver, String> {
    let mut text = resolv_conf.to_vec();
    if !String::from_utf8_lossy(&text)
        .lines()
        .any(|l| l.trim_start().starts_with("nameserver"))
    {
        text.push(b'\n');
        text.extend_from_slice(DEFAULT_NAMESERVER.as_bytes());
    }
    let (config, mut options) =
        hickory_resolver::system_conf::parse_resolv_conf(&text).map_err(|e| e.to_string())?;
    let servers: Vec<NameServerConfig> = config
        .name_servers()
        .iter()
        .cloned()
        .map(|mut server| {
            server.socket_addr.set_port(port);
            server
        })
        .collect();
    let config =
        ResolverConfig::from_parts(config.domain().cloned(), config.search().to_vec(), servers);
    // The hosts file is read here, before any DNS, and only for the name as given.
    options.use_hosts_file = ResolveHosts::Never;
    // Every address is tried in turn; IPv4 first, the family most containers reach.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // As glibc: no cache, so a moved target is seen at the next lookup.
    options.cache_size = 0;
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    Ok(
        TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
            .with_options(options)
            .build(),
    )
}

/// The same resolution for the webhooks' HTTP client: a webhook to a name behind a dead
/// resolver waits on the runtime like a target does, never on a blocking thread.
pub struct ForWebhooks;

impl reqwest::dns::Resolve for ForWebhooks {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let ips = system().lookup(name.as_str()).await?;
            // The client puts the URL's port in.
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

fn describe(e: &DnsError) -> ResolveError {
    if e.is_nx_domain() || e.is_no_records_found() {
        ResolveError::NotFound
    } else if e
        .proto()
        .is_some_and(|p| matches!(p.kind(), ProtoErrorKind::Timeout))
    {
        ResolveError::NoAnswer
    } else {
        ResolveError::Dns(e.to_string())
    }
}

/// An `/etc/hosts`: each name (any case, with or without its final dot) to its
/// addresses, in the order of the file.
#[derive(Debug, Default)]
struct HostsFile(HashMap<String, Vec<IpAddr>>);

impl HostsFile {
    fn parse(text: &str) -> HostsFile {
        let mut names: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for line in text.lines() {
            let line = line.split('#').next().unwrap_or_default();
            let mut fields = line.split_whitespace();
            let Some(Ok(ip)) = fields.next().map(str::parse::<IpAddr>) else {
                continue;
            };
            for name in fields {
                let addrs = names.entry(normalise(name)).or_default();
                if !addrs.contains(&ip) {
                    addrs.push(ip);
                }
            }
        }
        HostsFile(names)
    }

    fn get(&self, host: &str) -> Option<&[IpAddr]> {
        self.0.get(&normalise(host)).map(Vec::as_slice)
    }
}

fn normalise(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
