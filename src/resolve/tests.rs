//! Resolution as glibc's `files dns` does it, against a resolv.conf and hosts file made
//! by each test and a small DNS server on loopback that answers from a table and
//! records what it was asked.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, ResponseCode};
use hickory_resolver::proto::rr::{RData, Record, RecordType, rdata::A};
use tokio::net::UdpSocket;

use super::*;

/// A DNS server for a table of A records; every other name is NXDOMAIN.
struct DnsServer {
    port: u16,
    table: Arc<Mutex<HashMap<String, Ipv4Addr>>>,
    /// The A queries it received, in order ("db.svc.cluster.local.").
    asked: Arc<Mutex<Vec<String>>>,
}

impl DnsServer {
    async fn start(records: &[(&str, Ipv4Addr)]) -> DnsServer {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        let table: Arc<Mutex<HashMap<String, Ipv4Addr>>> = Arc::new(Mutex::new(
            records
                .iter()
                .map(|(name, ip)| (name.to_string(), *ip))
                .collect(),
        ));
        let served = table.clone();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let log = asked.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                let answer = answer(&query, &served.lock().unwrap(), &log);
                let _ = socket.send_to(&answer, from).await;
            }
        });
        DnsServer { port, table, asked }
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn answer(query: &Message, table: &HashMap<String, Ipv4Addr>, log: &Mutex<Vec<String>>) -> Vec<u8> {
    let mut reply = Message::error_msg(query.id(), query.op_code(), ResponseCode::NoError);
    reply
        .set_recursion_desired(query.recursion_desired())
        .set_recursion_available(true)
        .set_authoritative(true);
    let q = query.queries()[0].clone();
    let name = q.name().to_ascii().to_ascii_lowercase();
    if q.query_type() == RecordType::A {
        log.lock().unwrap().push(name.clone());
    }
    match table.get(&name) {
        Some(ip) if q.query_type() == RecordType::A => {
            reply.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(*ip))));
        }
        // The name exists, without records of that type.
        Some(_) => {}
        None => {
            reply.set_response_code(ResponseCode::NXDomain);
        }
    }
    reply.add_query(q);
    reply.to_vec().unwrap()
}

/// A hosts file and a resolv.conf in a scratch directory, and a resolver of them that
/// asks `dns`.
struct Setup {
    dir: tempfile::TempDir,
    resolver: Resolver,
}

fn setup(hosts: &str, resolv_conf: &str, dns: &DnsServer) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("hosts"), hosts).unwrap();
    fs::write(dir.path().join("resolv.conf"), resolv_conf).unwrap();
    let resolver = Resolver::with_dns_port(
        dir.path().join("hosts"),
        dir.path().join("resolv.conf"),
        dns.port,
    );
    Setup { dir, resolver }
}

fn ip(s: &str) -> IpAddr {
    IpAddr::from_str(s).unwrap()
}

const KUBERNETES: &str = "nameserver 127.0.0.1\n\
    search tether.svc.cluster.local svc.cluster.local cluster.local\n\
    options ndots:5\n";

#[tokio::test]
async fn a_name_in_the_hosts_file_resolves_before_any_dns_query_in_any_case() {
    let dns = DnsServer::start(&[("db.internal.", Ipv4Addr::new(10, 9, 9, 9))]).await;
    let s = setup(
        "# comment\n127.0.0.1 localhost\n10.1.2.3 db.internal DB-Alias # trailing\n::1 db.internal\n",
        KUBERNETES,
        &dns,
    );
    assert_eq!(
        s.resolver.lookup("DB.Internal.").await.unwrap(),
        [ip("10.1.2.3"), ip("::1")]
    );
    assert_eq!(
        s.resolver.lookup("db-alias").await.unwrap(),
        [ip("10.1.2.3")]
    );
    assert_eq!(dns.asked(), Vec::<String>::new(), "DNS was asked");
}

#[tokio::test]
async fn a_short_name_is_tried_with_each_search_domain_in_order_below_ndots() {
    let dns = DnsServer::start(&[
        ("db.svc.cluster.local.", Ipv4Addr::new(10, 0, 0, 7)),
        ("db.", Ipv4Addr::new(10, 0, 0, 1)),
    ])
    .await;
    let s = setup("127.0.0.1 localhost\n", KUBERNETES, &dns);
    assert_eq!(s.resolver.lookup("db").await.unwrap(), [ip("10.0.0.7")]);
    assert_eq!(
        dns.asked(),
        ["db.tether.svc.cluster.local.", "db.svc.cluster.local."]
    );
    // Four dots, still below ndots:5: the search list first, the name as given last.
    let dns =
        DnsServer::start(&[("redis.cache.svc.cluster.local.", Ipv4Addr::new(10, 0, 0, 8))]).await;
    let s = setup("", KUBERNETES, &dns);
    assert_eq!(
        s.resolver
            .lookup("redis.cache.svc.cluster.local")
            .await
            .unwrap(),
        [ip("10.0.0.8")]
    );
    assert_eq!(
        dns.asked(),
        [
            "redis.cache.svc.cluster.local.tether.svc.cluster.local.",
            "redis.cache.svc.cluster.local.svc.cluster.local.",
            "redis.cache.svc.cluster.local.cluster.local.",
            "redis.cache.svc.cluster.local.",
        ]
    );
}

#[tokio::test]
async fn a_name_with_ndots_dots_is_tried_as_given_first() {
    let records = [
        ("db.internal.", Ipv4Addr::new(10, 0, 0, 8)),
        ("db.internal.example.test.", Ipv4Addr::new(10, 0, 0, 9)),
    ];
    let dns = DnsServer::start(&records).await;
    let s = setup(
        "",
        "nameserver 127.0.0.1\nsearch example.test\noptions ndots:1\n",
        &dns,
    );
    assert_eq!(
        s.resolver.lookup("db.internal").await.unwrap(),
        [ip("10.0.0.8")]
    );
    assert_eq!(dns.asked(), ["db.internal."]);

    let dns = DnsServer::start(&records).await;
    let s = setup(
        "",
        "nameserver 127.0.0.1\nsearch example.test\noptions ndots:2\n",
        &dns,
    );
    assert_eq!(
        s.resolver.lookup("db.internal").await.unwrap(),
        [ip("10.0.0.9")]
    );
    assert_eq!(dns.asked(), ["db.internal.example.test."]);

    // A final dot: the name as given, and only that.
    let dns = DnsServer::start(&records).await;
    let s = setup(
        "",
        "nameserver 127.0.0.1\nsearch example.test\noptions ndots:5\n",
        &dns,
    );
    assert!(matches!(
        s.resolver.lookup("internal.").await,
        Err(ResolveError::NotFound)
    ));
    assert_eq!(dns.asked(), ["internal."]);
}

#[tokio::test]
async fn a_name_found_nowhere_is_not_found_after_every_candidate() {
    let dns = DnsServer::start(&[]).await;
    let s = setup("", KUBERNETES, &dns);
    let e = s.resolver.lookup("nothing").await.unwrap_err();
    assert!(matches!(e, ResolveError::NotFound), "{e:?}");
    assert_eq!(e.to_string(), "name not found");
    assert_eq!(dns.asked().last().map(String::as_str), Some("nothing."));
    assert_eq!(dns.asked().len(), 4, "{:?}", dns.asked());
}

#[tokio::test]
async fn an_edited_hosts_file_is_followed_at_the_next_lookup() {
    let dns = DnsServer::start(&[]).await;
    let s = setup("10.0.0.1 db\n", KUBERNETES, &dns);
    assert_eq!(s.resolver.lookup("db").await.unwrap(), [ip("10.0.0.1")]);
    fs::write(
        s.dir.path().join("hosts"),
        "10.0.0.2 db\n# longer than before\n",
    )
    .unwrap();
    assert_eq!(s.resolver.lookup("db").await.unwrap(), [ip("10.0.0.2")]);
    assert!(dns.asked().is_empty());
}

#[tokio::test]
async fn a_changed_record_is_seen_at_the_next_lookup_as_nothing_is_cached() {
    let dns = DnsServer::start(&[("db.example.", Ipv4Addr::new(10, 0, 0, 1))]).await;
    let s = setup("", "nameserver 127.0.0.1\n", &dns);
    assert_eq!(
        s.resolver.lookup("db.example").await.unwrap(),
        [ip("10.0.0.1")]
    );
    dns.table
        .lock()
        .unwrap()
        .insert("db.example.".to_owned(), Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(
        s.resolver.lookup("db.example").await.unwrap(),
        [ip("10.0.0.2")]
    );
    assert_eq!(dns.asked().len(), 2);
}

#[tokio::test]
async fn without_a_resolv_conf_the_local_name_server_is_asked_as_glibc_does() {
    let dns = DnsServer::start(&[("db.example.", Ipv4Addr::new(10, 0, 0, 3))]).await;
    let s = setup("", "", &dns);
    fs::remove_file(s.dir.path().join("resolv.conf")).unwrap();
    assert_eq!(
        s.resolver.lookup("db.example").await.unwrap(),
        [ip("10.0.0.3")]
    );
}
