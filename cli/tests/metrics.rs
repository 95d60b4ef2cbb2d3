//! The agents' and the coordinator's Prometheus metrics during a lab
//! cluster's traffic, scraped over HTTP (`--metrics-listen`) and through
//! `weft metrics`, parsed with a Prometheus text-format parser: relayed
//! bytes grow for a relayed pair (at the agent and at the coordinator's
//! relay), and drops by reason grow when the policy filter drops. Needs
//! root; in CI (`CI=true`) a missing privilege fails instead of skipping.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{in_netns, ping_with, require_root, wait_for, Lab, NatKind};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

const LISTEN: &str = "127.0.0.1:9586";
/// The coordinator's, in its namespace.
const COORDINATOR_LISTEN: &str = "127.0.0.1:9587";

/// `GET /metrics` of an agent, from inside its namespace `ns`.
fn scrape_http(ns: &str) -> prometheus_parse::Scrape {
    scrape_at(ns, LISTEN)
}

/// `GET /metrics` from `addr` inside namespace `ns`.
fn scrape_at(ns: &str, addr: &'static str) -> prometheus_parse::Scrape {
    let body = in_netns(ns, move || -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .join()
    .expect("scrape thread")
    .expect("scrape");
    let (head, text) = body.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    parse(text)
}

/// `weft metrics` of host `i`.
fn scrape_cli(c: &Cluster, i: usize) -> prometheus_parse::Scrape {
    let out = weft_tests::try_run(&[
        &weft().to_string_lossy(),
        "metrics",
        "--state-dir",
        &c.hosts[i].state_dir.to_string_lossy(),
    ])
    .expect("weft metrics");
    parse(&out)
}

fn parse(text: &str) -> prometheus_parse::Scrape {
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| panic!("not the Prometheus text format ({e}):\n{text}"))
}

/// The value of `name` with exactly these labels.
fn value(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)));
    match found.map(|x| &x.value) {
        Some(prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v)) => *v,
        Some(prometheus_parse::Value::Untyped(v)) => *v,
        other => panic!("{name} {labels:?}: {other:?}"),
    }
}

#[test]
fn counters_move_with_relayed_traffic_and_filter_drops() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("met");
    let spec = ClusterSpec {
        agent_args: &["--metrics-listen", LISTEN],
        coordinator_args: &["--metrics-listen", COORDINATOR_LISTEN],
        ..ClusterSpec::hosts_only(2)
    }
    .with_nat(&[NatKind::Symmetric, NatKind::Symmetric]);
    let c = Cluster::build(&lab, &weft(), spec).expect("cluster");
    wait_for(
        Duration::from_secs(15),
        "the pair to settle on the relay",
        || (c.path(0, "c2-h1")?.0 == "relay").then_some(()),
    )
    .expect("two symmetric NATs: relayed");
    let relay_tx = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "weft_wire_bytes_total",
            &[("direction", "tx"), ("path", "relay")],
        )
    };
    let before = scrape_http(&c.hosts[0].ns);
    let coord = |c: &Cluster| scrape_at(&c.coordinator_ns, COORDINATOR_LISTEN);
    let forwarded = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "weft_coordinator_relay_bytes_total",
            &[("result", "forwarded")],
        )
    };
    let coord_before = coord(&c);
    assert_eq!(value(&before, "weft_peers", &[("path", "relay")]), 1.0);
    assert_eq!(value(&before, "weft_coordinator_connected", &[]), 1.0);
    assert!(value(&before, "weft_netmap_version", &[]) > 0.0);
    let b = c.host_addr(1).expect("address").to_string();
    ping_with(
        &c.hosts[0].ns,
        &["-c", "20", "-i", "0.05", "-s", "1000", "-W", "2", &b],
    )
    .expect("pings through the relay");
    let after = scrape_http(&c.hosts[0].ns);
    let grew = relay_tx(&after) - relay_tx(&before);
    assert!(grew >= 20.0 * 1000.0, "relayed bytes grew by only {grew}");
    let direct = |s: &prometheus_parse::Scrape| {
        value(
            s,
            "weft_wire_bytes_total",
            &[("direction", "tx"), ("path", "direct")],
        )
    };
    assert!(
        direct(&after) - direct(&before) < 1000.0,
        "the relayed pings were counted as direct"
    );

    // The coordinator relayed them, and saw the joins, sessions, commits,
    // netmap fan-out and reflector requests that built the cluster.
    let coord_after = coord(&c);
    let relayed = forwarded(&coord_after) - forwarded(&coord_before);
    assert!(
        relayed >= 2.0 * 20.0 * 1000.0,
        "the coordinator relayed only {relayed} bytes of 20 pings and their replies"
    );
    assert_eq!(
        value(
            &coord_after,
            "weft_coordinator_sessions",
            &[("transport", "quic")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &coord_after,
            "weft_coordinator_joins_total",
            &[("result", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(&coord_after, "weft_coordinator_nodes_online", &[]),
        2.0
    );
    assert!(value(&coord_after, "weft_coordinator_netmap_updates_total", &[]) >= 2.0);
    assert!(
        value(
            &coord_after,
            "weft_coordinator_reflector_requests_total",
            &[]
        ) >= 2.0
    );
    for h in [
        "weft_coordinator_store_commit_seconds",
        "weft_coordinator_netmap_fanout_seconds",
    ] {
        let count = histogram_count(&coord_after, h);
        assert!(count >= 1, "{h} observed nothing");
    }
    check_dashboard(&coord_after, "weft-coordinator.json", 8);

    // Every metric the Grafana dashboard queries exists.
    check_dashboard(&after, "weft-agents.json", 10);

    // DNS: a name the cluster does not have is answered NXDOMAIN.
    let dns = |s: &prometheus_parse::Scrape| {
        value(s, "weft_dns_queries_total", &[("result", "nxdomain")])
    };
    let n0 = dns(&scrape_cli(&c, 0));
    let a = c.host_addr(0).expect("address").to_string();
    let _ = lab.exec(
        &c.hosts[0].ns,
        &["busybox", "nslookup", "nosuch.weft.internal", &a],
    );
    assert!(
        dns(&scrape_cli(&c, 0)) >= n0 + 1.0,
        "the NXDOMAIN was not counted"
    );

    // A policy that allows only TCP port 9: the receiver's filter drops
    // the pings under the default.
    let file = lab.tempdir().join("policy.yaml");
    std::fs::write(
        &file,
        "default: deny\nrules:\n  - allow: { from: ['*'], to: ['*'], ports: [tcp/9] }\n",
    )
    .expect("policy");
    c.admin(&["acl", "set", &file.to_string_lossy()])
        .expect("acl set");
    let drops = |s: &prometheus_parse::Scrape| {
        value(s, "weft_drops_total", &[("reason", "filter_default")])
    };
    let d0 = drops(&scrape_cli(&c, 1));
    let d1 = wait_for(Duration::from_secs(10), "the filter to drop pings", || {
        let _ = ping_with(&c.hosts[0].ns, &["-c", "3", "-i", "0.1", "-W", "1", &b]);
        let d = drops(&scrape_cli(&c, 1));
        (d >= d0 + 3.0).then_some(d)
    })
    .expect("drops by reason grow");
    assert!(d1 >= d0 + 3.0);
}

/// The sample count of histogram `name`.
fn histogram_count(s: &prometheus_parse::Scrape, name: &str) -> u64 {
    match s
        .samples
        .iter()
        .find(|x| x.metric == name)
        .map(|x| &x.value)
    {
        Some(prometheus_parse::Value::Histogram(h)) => {
            h.iter().map(|b| b.count).fold(0.0, f64::max) as u64
        }
        other => panic!("{name} is not a histogram: {other:?}"),
    }
}

/// Every `weft_*` metric the dashboard `file` in deploy/grafana queries is
/// in `scrape`, and it queries at least `min` of them.
fn check_dashboard(scrape: &prometheus_parse::Scrape, file: &str, min: usize) {
    let path = format!("{}/../deploy/grafana/{file}", env!("CARGO_MANIFEST_DIR"));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("the dashboard"))
            .expect("the dashboard is JSON");
    let have: std::collections::BTreeSet<&str> =
        scrape.samples.iter().map(|x| x.metric.as_str()).collect();
    let mut queried = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            for name in expr.split(|ch: char| !(ch.is_ascii_alphanumeric() || ch == '_')) {
                if let Some(base) = name.strip_prefix("weft_") {
                    let base = base
                        .trim_end_matches("_bucket")
                        .trim_end_matches("_count")
                        .trim_end_matches("_sum");
                    let full = format!("weft_{base}");
                    assert!(
                        have.contains(full.as_str()),
                        "{file} queries {full}, which is not exported"
                    );
                    queried += 1;
                }
            }
        }
    }
    assert!(queried >= min, "{file} queries only {queried} metrics");
}
