//! The agent's Prometheus metrics, in the text exposition format: served on
//! `--metrics-listen ADDR` (`GET /metrics`) and printed by `weft metrics`.
//!
//! Built at each scrape from the status snapshot and the data plane's
//! counters (a scrape every 15 s costs one snapshot), so the packet path
//! carries only the per-path counters of [`crate::dataplane::traffic`].
//! Label values come from small fixed sets (direction, path, reason);
//! per-peer series, whose `peer` label grows with the cluster, only with
//! `--metrics-per-peer`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::status::Status;
use crate::dataplane::traffic::{PathClass, TrafficSnapshot};

type Labels = Vec<(String, String)>;

/// What the status does not carry.
#[derive(Clone, Copy, Debug, Default)]
pub struct Extra {
    /// Sessions with the coordinator established since the agent started.
    pub sessions: u64,
    /// Seconds since the last netmap update was applied.
    pub netmap_age_secs: Option<f64>,
    /// DNS queries by result, if the responder runs.
    pub dns: Option<[(&'static str, u64); 5]>,
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Handshake ages are bucketed from 1 s to about 34 min: sessions re-key
/// every 2 min, so anything past 3 min is a peer not talking.
fn handshake_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 12)
}

/// The metrics of a bare device (`weft wg --metrics-listen`): wire traffic
/// by path and the data plane's drops.
pub fn render_device(
    traffic: &TrafficSnapshot,
    counters: &crate::dataplane::CounterSnapshot,
) -> String {
    let mut reg = Registry::with_prefix("weft");
    register_wire(&mut reg, traffic);
    let drops = Family::<Labels, Counter>::default();
    for (reason, n) in super::status::drop_list(counters) {
        drops
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(n);
    }
    reg.register(
        "drops",
        "Packets dropped by the data plane, by reason",
        drops,
    );
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

/// The metrics text.
pub fn render(status: &Status, traffic: &TrafficSnapshot, extra: Extra, per_peer: bool) -> String {
    let mut reg = Registry::with_prefix("weft");
    register_wire(&mut reg, traffic);
    register_rest(&mut reg, status, extra, per_peer);
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &reg);
    out
}

fn register_wire(reg: &mut Registry, traffic: &TrafficSnapshot) {
    let bytes = Family::<Labels, Counter>::default();
    let packets = Family::<Labels, Counter>::default();
    for class in PathClass::ALL {
        let i = class as usize;
        for (dir, b, p) in [
            ("rx", traffic.rx_bytes[i], traffic.rx_packets[i]),
            ("tx", traffic.tx_bytes[i], traffic.tx_packets[i]),
        ] {
            let l = labels(&[("direction", dir), ("path", class.name())]);
            bytes.get_or_create(&l).inc_by(b);
            packets.get_or_create(&l).inc_by(p);
        }
    }
    reg.register_with_unit(
        "wire",
        "WireGuard datagrams on the wire, by direction and path (lan, direct, relay)",
        Unit::Bytes,
        bytes,
    );
    reg.register(
        "wire_packets",
        "WireGuard datagrams on the wire, by direction and path",
        packets,
    );
}

fn register_rest(reg: &mut Registry, status: &Status, extra: Extra, per_peer: bool) {
    let drops = Family::<Labels, Counter>::default();
    for (reason, n) in &status.drops {
        drops
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(*n);
    }
    let rule_drops: u64 = status.policy.rules.iter().map(|r| r.drops).sum();
    for (reason, n) in [
        ("filter_default", status.policy.default_drops),
        ("filter_rule", rule_drops),
        ("filter_malformed", status.policy.malformed),
    ] {
        drops
            .get_or_create(&labels(&[("reason", reason)]))
            .inc_by(n);
    }
    reg.register(
        "drops",
        "Packets dropped, by reason: the data plane's checks (rx_dst_not_local is the destination check) and the policy filter's",
        drops,
    );

    let peers = Family::<Labels, Gauge>::default();
    for p in ["lan", "direct", "relay", "none"] {
        // Every path appears, at 0 when no peer takes it.
        let _ = peers.get_or_create(&labels(&[("path", p)]));
    }
    let ages = Histogram::new(handshake_buckets());
    let mut max_age = 0u64;
    for p in &status.peers {
        let path = p.path.as_deref().unwrap_or("none");
        peers.get_or_create(&labels(&[("path", path)])).inc();
        if let Some(a) = p.last_handshake_secs {
            ages.observe(a as f64);
            max_age = max_age.max(a);
        }
    }
    reg.register("peers", "Peers, by the path their traffic takes", peers);
    let max = Gauge::<i64>::default();
    max.set(i64::try_from(max_age).unwrap_or(i64::MAX));
    reg.register_with_unit(
        "handshake_age_max",
        "Time since the latest handshake of the peer that handshook longest ago",
        Unit::Seconds,
        max,
    );
    reg.register_with_unit(
        "handshake_age",
        "Time since each peer's latest handshake (peers that have one)",
        Unit::Seconds,
        ages,
    );

    let version = Gauge::<i64>::default();
    version.set(i64::try_from(status.coordinator.netmap_version).unwrap_or(i64::MAX));
    reg.register("netmap_version", "Version of the netmap in force", version);
    if let Some(age) = extra.netmap_age_secs {
        let g = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        g.set(age);
        reg.register_with_unit(
            "netmap_age",
            "Time since the last netmap update was applied",
            Unit::Seconds,
            g,
        );
    }
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(status.coordinator.connected));
    reg.register(
        "coordinator_connected",
        "1 while a session with the coordinator is up",
        connected,
    );
    let reconnects = Counter::<u64>::default();
    reconnects.inc_by(extra.sessions.saturating_sub(1));
    reg.register(
        "coordinator_reconnects",
        "Sessions with the coordinator established after the first",
        reconnects,
    );

    if let Some(dns) = extra.dns {
        let queries = Family::<Labels, Counter>::default();
        for (result, n) in dns {
            queries
                .get_or_create(&labels(&[("result", result)]))
                .inc_by(n);
        }
        reg.register(
            "dns_queries",
            "Queries to the host's DNS for services, by result (dropped: malformed, unanswered)",
            queries,
        );
    }

    if per_peer {
        let peer_bytes = Family::<Labels, Counter>::default();
        for p in &status.peers {
            for (dir, n) in [("rx", p.rx_bytes), ("tx", p.tx_bytes)] {
                peer_bytes
                    .get_or_create(&labels(&[("peer", &p.name), ("direction", dir)]))
                    .inc_by(n);
            }
        }
        reg.register_with_unit(
            "peer_wire",
            "WireGuard datagrams on the wire, per peer (--metrics-per-peer)",
            Unit::Bytes,
            peer_bytes,
        );
    }
}
