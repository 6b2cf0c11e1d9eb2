//! `/metrics` as Prometheus scrapes it: counters and gauges that follow a real Redis
//! being killed and restarted, series that exist before anything happens and vanish
//! with their target, and an exposition `promtool check metrics` has nothing to say
//! about.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use tether::watch::machine::Event;
use tether::watch::observe::Observer;

use crate::endpoint::{Reply, Sidecar};
use crate::support::TestServer;
use crate::support::eventually;
use crate::support::harness::dead_port;
use crate::support::redis::RedisServer;
use crate::support::tls::{Pki, https_server};

/// Reconnects fast so outages and returns take milliseconds.
const FAST: &str = "backoff = { initial = \"10ms\", max = \"50ms\" }\nfailure_threshold = 3\n";

async fn scrape(sidecar: &Sidecar) -> Reply {
    let reply = sidecar.get("/metrics").await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply
}

/// Scrapes until `done` holds for the exposition.
async fn scrape_until(sidecar: &Sidecar, what: &str, done: impl Fn(&Reply) -> bool) -> Reply {
    eventually(Duration::from_secs(20), what, || async {
        let reply = scrape(sidecar).await;
        done(&reply).then_some(reply)
    })
    .await
}

fn value(reply: &Reply, series: &str) -> f64 {
    reply
        .sample(series)
        .unwrap_or_else(|| panic!("no {series} in:\n{}", reply.body))
}

#[tokio::test(flavor = "multi_thread")]
async fn counters_and_gauges_follow_a_real_redis_killed_and_restarted() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .unwrap();
    let sidecar = Sidecar::start(&format!(
        "[[targets]]\nname = \"cache\"\naddress = \"{}\"\n{FAST}",
        redis.addr()
    ))
    .await;
    let up = "tether_target_up{target=\"cache\"}";

    let first = scrape_until(&sidecar, "cache up", |r| r.sample(up) == Some(1.0)).await;
    assert_eq!(
        first.header("content-type"),
        Some(tether::telemetry::metrics::CONTENT_TYPE)
    );
    assert_eq!(
        value(&first, "tether_target_state{state=\"up\",target=\"cache\"}"),
        1.0
    );
    assert_eq!(
        value(
            &first,
            "tether_target_state{state=\"connecting\",target=\"cache\"}"
        ),
        0.0
    );
    assert_eq!(
        value(
            &first,
            "tether_connect_attempts_total{result=\"ok\",target=\"cache\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &first,
            "tether_connect_duration_seconds_count{target=\"cache\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &first,
            "tether_state_changes_total{target=\"cache\",to=\"up\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&first, "tether_disconnects_total{target=\"cache\"}"),
        0.0
    );

    tokio::task::block_in_place(|| redis.kill());
    let failed = "tether_target_state{state=\"failed\",target=\"cache\"}";
    let down = scrape_until(&sidecar, "cache failed", |r| r.sample(failed) == Some(1.0)).await;
    assert_eq!(value(&down, up), 0.0);
    assert_eq!(
        value(&down, "tether_target_state{state=\"up\",target=\"cache\"}"),
        0.0
    );
    // At least one: while a killed server's descriptors are being closed, the immediate
    // reconnect can still land in its listen backlog and be lost a moment later.
    assert!(value(&down, "tether_disconnects_total{target=\"cache\"}") >= 1.0);
    assert_eq!(
        value(
            &down,
            "tether_state_changes_total{target=\"cache\",to=\"down\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &down,
            "tether_state_changes_total{target=\"cache\",to=\"failed\"}"
        ),
        1.0
    );
    assert!(
        value(
            &down,
            "tether_target_consecutive_failures{target=\"cache\"}"
        ) >= 3.0
    );
    assert!(
        value(
            &down,
            "tether_connect_attempts_total{result=\"failed\",target=\"cache\"}"
        ) >= 3.0
    );

    tokio::task::block_in_place(|| redis.restart());
    let back = scrape_until(&sidecar, "cache up again", |r| r.sample(up) == Some(1.0)).await;
    assert_eq!(
        value(
            &back,
            "tether_state_changes_total{target=\"cache\",to=\"up\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &back,
            "tether_target_consecutive_failures{target=\"cache\"}"
        ),
        0.0
    );
    assert!(
        value(
            &back,
            "tether_connect_attempts_total{result=\"ok\",target=\"cache\"}"
        ) >= 2.0
    );
    assert_eq!(value(&back, failed), 0.0);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_series_exists_at_zero_before_the_first_connect() {
    let sidecar = Sidecar::start(&format!(
        "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:{}\"\nbackoff = {{ initial = \"1h\", max = \"1h\" }}\nhooks.on_failure = {{ command = [\"true\"] }}\n",
        dead_port()
    ))
    .await;
    // The first attempt fails at once; the next is an hour away.
    sidecar
        .recorder
        .nth_event("db", Event::Disconnect, 1, Duration::from_secs(10))
        .await;
    let r = scrape(&sidecar).await;
    for to in ["connecting", "up", "failed"] {
        let series = format!("tether_state_changes_total{{target=\"db\",to=\"{to}\"}}");
        assert_eq!(value(&r, &series), 0.0, "{series}");
    }
    assert_eq!(
        value(
            &r,
            "tether_connect_attempts_total{result=\"ok\",target=\"db\"}"
        ),
        0.0
    );
    for result in ["ok", "failed", "timeout", "error"] {
        let series = format!(
            "tether_hook_runs_total{{event=\"failure\",result=\"{result}\",target=\"db\"}}"
        );
        assert_eq!(value(&r, &series), 0.0, "{series}");
    }
    assert_eq!(
        value(
            &r,
            "tether_hook_duration_seconds_count{event=\"failure\",target=\"db\"}"
        ),
        0.0
    );
    for counter in [
        "tether_address_changes_total",
        "tether_actor_restarts_total",
        "tether_hooks_coalesced_total",
    ] {
        assert_eq!(value(&r, &format!("{counter}{{target=\"db\"}}")), 0.0);
    }
    let build = format!(
        "tether_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(value(&r, &build), 1.0);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_series_of_stopped_targets_are_removed() {
    let sidecar = Sidecar::start(&format!(
        "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:{}\"\n",
        dead_port()
    ))
    .await;
    assert!(scrape(&sidecar).await.body.contains("target=\"db\""));
    let Sidecar {
        telemetry,
        supervisor,
        ..
    } = sidecar;
    supervisor.shutdown().await;
    let r = crate::endpoint::get(telemetry.http_addr().expect("listen is set"), "/metrics").await;
    assert!(!r.body.contains("target=\"db\""), "{}", r.body);
    assert!(r.body.contains("tether_build_info"));
    telemetry.stop().await;
}

/// Whether `promtool` must be there: in CI it is installed by `scripts/test`, so its
/// absence is a broken setup, not a reason to skip.
fn promtool() -> Option<Command> {
    let found = Command::new("promtool")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if found {
        return Some(Command::new("promtool"));
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "promtool is missing in CI; scripts/test installs it (Debian package prometheus)"
    );
    eprintln!("SKIPPED: promtool not installed (apt-get install prometheus); CI runs this check");
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn promtool_finds_nothing_to_fix_in_the_exposition() {
    let Some(mut promtool) = promtool() else {
        return;
    };
    let dead = dead_port();
    let sidecar = Sidecar::start(&format!(
        "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:{dead}\"\n{FAST}\
         hooks.on_failure = {{ command = [\"true\"] }}\n\
         [[targets]]\nname = \"cache.v2\"\naddress = \"127.0.0.1:{dead}\"\nrequired = false\n\
         [[groups]]\nname = \"store\"\nmembers = [\"db\", \"cache.v2\"]\nfallback = \"memory\"\n\
         hooks.on_change = {{ command = [\"true\"] }}\n"
    ))
    .await;
    // Every family with samples in it, histograms included.
    sidecar
        .recorder
        .nth_event("db", Event::Failure, 1, Duration::from_secs(10))
        .await;
    // This sidecar runs no group machine: its first decision is told to the metrics.
    let config = tether::config::Config::parse(
        "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:1\"\n\
         [[groups]]\nname = \"store\"\nmembers = [\"db\"]\nfallback = \"memory\"\n",
        "t.toml".as_ref(),
    )
    .unwrap();
    let store = std::sync::Arc::new(config.groups[0].clone());
    sidecar.telemetry.metrics().group_event(
        &store,
        &tether::watch::groups::GroupEvent {
            seq: 0,
            kind: tether::watch::groups::GroupEventKind::Change,
            active: "memory".into(),
            fallback: true,
            previous_active: None,
            reason: tether::watch::group::Reason::NoEligibleMember,
            claimants: Vec::new(),
            conflict: false,
            at: std::time::SystemTime::now(),
        },
    );
    let body = scrape(&sidecar).await.body;
    for family in [
        "tether_group_active{group=\"store\",member=\"memory\"} 1",
        "tether_group_changes_total{group=\"store\"} 1",
        "tether_group_conflict{group=\"store\"} 0",
        "tether_group_hook_runs_total{event=\"change\",group=\"store\",result=\"ok\"} 0",
    ] {
        assert!(body.contains(family), "no {family} in:\n{body}");
    }
    sidecar.stop().await;

    let mut child = promtool
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics ({}):\n{findings}\nexposition:\n{body}",
        out.status
    );
}

#[test]
fn promtool_accepts_the_shipped_alerting_rules() {
    let Some(mut promtool) = promtool() else {
        return;
    };
    let rules = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/prometheus/tether-alerts.yml"
    );
    let out = promtool.args(["check", "rules", rules]).output().unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL expression shipped in `deploy/`: the dashboard's panel queries (its
/// template variables stood in for by `.*`) and the alerting rules' `expr`s.
fn shipped_queries() -> Vec<(String, String)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/deploy/grafana/tether.json")).unwrap(),
    )
    .unwrap();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            queries.push((
                format!("dashboard panel {:?}", panel["title"]),
                expr.replace("$job", ".*").replace("$target", ".*"),
            ));
        }
    }
    let alerts =
        std::fs::read_to_string(format!("{root}/deploy/prometheus/tether-alerts.yml")).unwrap();
    for line in alerts.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            queries.push(("alert rule".to_owned(), expr.to_owned()));
        }
    }
    queries
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_and_alert_queries_parse_and_name_only_metrics_tether_exposes() {
    let Some(mut promtool) = promtool() else {
        return;
    };
    let queries = shipped_queries();
    assert!(queries.len() > 15, "{queries:?}");

    // Every query parses: each one as a recording rule that promtool checks.
    let mut rules = String::from("groups:\n  - name: shipped\n    rules:\n");
    for (i, (_, expr)) in queries.iter().enumerate() {
        rules.push_str(&format!(
            "      - record: shipped:query_{i}\n        expr: {}\n",
            serde_json::to_string(expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("queries.yml");
    std::fs::write(&file, &rules).unwrap();
    let out = promtool
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Every metric they name is in a live scrape of a tether whose hook has run, that
    // holds a TLS connection and has a group.
    let dead = dead_port();
    let pki = Pki::new();
    let (https, server) = https_server(&pki, "good").await;
    let sidecar = Sidecar::start(&format!(
        "[[targets]]\nname = \"db\"\naddress = \"127.0.0.1:{dead}\"\n{FAST}\
         hooks.on_failure = {{ command = [\"true\"] }}\n\
         [[targets]]\nname = \"edge\"\naddress = \"{https}\"\ntls = {{ ca_file = \"{}\" }}\n\
         [[groups]]\nname = \"store\"\nmembers = [\"db\"]\n",
        pki.ca()
    ))
    .await;
    sidecar
        .recorder
        .nth_event("db", Event::Failure, 1, Duration::from_secs(10))
        .await;
    let exposed = scrape_until(&sidecar, "the hook's run and a certificate counted", |r| {
        r.body.contains("tether_hook_duration_seconds_bucket")
            && r.body.contains("tether_tls_cert_expiry_timestamp_seconds{")
    })
    .await
    .body;
    sidecar.stop().await;
    server.abort();
    let exposed: std::collections::BTreeSet<&str> = exposed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    for (place, expr) in &queries {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("tether_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            assert!(
                exposed.contains(name.as_str()),
                "{place} names {name}, which tether does not expose: {expr}"
            );
            rest = &rest[at + name.len()..];
        }
    }
}
