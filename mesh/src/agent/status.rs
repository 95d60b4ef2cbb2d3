//! What `weft status` shows: this host, its coordinator connection and every
//! peer. Serialized as JSON over the local API and by `weft status --json`.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::lock;
use crate::dataplane::{DeviceHandle, FilterStats};
use crate::key::Key;

/// The whole status of one agent.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub host: HostStatus,
    pub coordinator: CoordinatorStatus,
    pub peers: Vec<PeerStatus>,
    /// Packets the data plane dropped, by reason.
    pub drops: Vec<(String, u64)>,
    /// The inbound packet filter: whether one is in force, and its drops
    /// per policy rule.
    #[serde(default)]
    pub policy: FilterStats,
    /// Services this host may reach (and answers DNS for).
    #[serde(default)]
    pub services: Vec<weft_proto::ServiceEntry>,
    #[serde(default)]
    pub domain: String,
    /// Whether the DNS responder runs on the gateway address.
    #[serde(default)]
    pub dns: bool,
    /// Routes through other hosts: `CIDR via NAME`.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Routes this host advertises.
    #[serde(default)]
    pub advertised: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostStatus {
    pub name: String,
    pub node_id: u64,
    /// The host's own overlay address (the bridge gateway).
    pub address: String,
    pub subnet: String,
    pub pool: String,
    pub interface: String,
    pub bridge: String,
    pub listen_port: u16,
    pub public_key: String,
    /// UDP endpoints reported to the coordinator.
    pub endpoints: Vec<String>,
    /// The tunnel's MTU now (picked from the uplinks unless `--mtu`).
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CoordinatorStatus {
    pub addrs: Vec<String>,
    pub connected: bool,
    /// Seconds since the connection was made or lost.
    pub since_secs: u64,
    pub last_error: Option<String>,
    pub netmap_version: u64,
    /// Milliseconds since anything arrived from the coordinator (on this
    /// session, or on the last one while reconnecting).
    #[serde(default)]
    pub last_heard_ms: Option<u64>,
    /// `quic` or `tcp`: the transport of the session (or the last one).
    #[serde(default)]
    pub transport: Option<String>,
    /// The protocol version the session speaks (or the last one spoke).
    #[serde(default)]
    pub protocol_version: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerStatus {
    pub name: String,
    pub node_id: u64,
    pub subnet: String,
    pub public_key: String,
    pub endpoint: Option<String>,
    /// Seconds since the latest handshake; `None` if none yet.
    pub last_handshake_secs: Option<u64>,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
    /// Whether the coordinator sees the peer connected.
    pub online: bool,
    /// `lan`, `direct` or `relay`.
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub path_rtt_ms: Option<f64>,
    /// Why the peer is relayed.
    #[serde(default)]
    pub relay_reason: Option<String>,
    /// Seconds from first sighting to the first direct path.
    #[serde(default)]
    pub direct_after_secs: Option<f64>,
}

/// Seconds from `t` to now, saturating at zero.
pub fn secs_since(t: SystemTime) -> u64 {
    SystemTime::now()
        .duration_since(t)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

fn ago(secs: Option<u64>) -> String {
    match secs {
        None => "never".into(),
        Some(s) if s < 120 => format!("{s}s ago"),
        Some(s) if s < 7200 => format!("{}m ago", s / 60),
        Some(s) => format!("{}h ago", s / 3600),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Status {
    /// The human-readable form `weft status` prints.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let h = &self.host;
        let _ = writeln!(
            out,
            "host {} (node {})  address {}  subnet {}  interface {} port {}{}",
            h.name,
            h.node_id,
            h.address,
            h.subnet,
            h.interface,
            h.listen_port,
            h.mtu.map_or_else(String::new, |m| format!(" mtu {m}"))
        );
        let c = &self.coordinator;
        let heard = match c.last_heard_ms {
            Some(ms) => format!(", last heard {:.1}s ago", ms as f64 / 1000.0),
            None => String::new(),
        };
        let state = if c.connected {
            let via = c.transport.as_deref().unwrap_or("quic");
            format!("connected over {via} for {}s{heard}", c.since_secs)
        } else {
            format!(
                "RECONNECTING for {}s{heard} ({}); tunnels keep running",
                c.since_secs,
                c.last_error.as_deref().unwrap_or("not yet connected")
            )
        };
        let _ = writeln!(
            out,
            "coordinator {}  {state}  netmap v{}",
            c.addrs.join(","),
            c.netmap_version
        );
        let _ = writeln!(out, "{} peers", self.peers.len());
        if !self.peers.is_empty() {
            let _ = writeln!(
                out,
                "  {:<16} {:<18} {:<7} {:<22} {:<14} {:>10} {:>10}",
                "NAME", "SUBNET", "PATH", "ENDPOINT", "HANDSHAKE", "RX", "TX"
            );
        }
        for p in &self.peers {
            let _ = writeln!(
                out,
                "  {:<16} {:<18} {:<7} {:<22} {:<14} {:>10} {:>10}{}",
                p.name,
                p.subnet,
                p.path.as_deref().unwrap_or("-"),
                p.endpoint.as_deref().unwrap_or("-"),
                ago(p.last_handshake_secs),
                bytes(p.rx_bytes),
                bytes(p.tx_bytes),
                if p.online { "" } else { "  (offline)" }
            );
            if let Some(r) = &p.relay_reason {
                let _ = writeln!(out, "      relayed: {r}");
            }
        }
        let p = &self.policy;
        if p.active {
            let _ = writeln!(
                out,
                "policy: inbound filter in force; dropped by default {}, malformed {}",
                p.default_drops, p.malformed
            );
            for r in p.rules.iter().filter(|r| r.drops > 0) {
                let _ = writeln!(out, "  rule {} ({}): {} dropped", r.rule, r.action, r.drops);
            }
        } else {
            let _ = writeln!(
                out,
                "policy: none in force (every peer may reach this host)"
            );
        }
        for s in &self.services {
            let _ = writeln!(
                out,
                "service {}.{} -> {}:{}/{}{}",
                s.name,
                self.domain,
                s.addr,
                s.port,
                s.proto,
                s.public
                    .map(|p| format!("  (public port {p} forwarded here)"))
                    .unwrap_or_default()
            );
        }
        if !self.services.is_empty() && !self.dns {
            let _ = writeln!(
                out,
                "DNS responder NOT running: service names will not resolve"
            );
        }
        for r in &self.routes {
            let _ = writeln!(out, "route {r}");
        }
        if !self.advertised.is_empty() {
            let _ = writeln!(
                out,
                "advertising {} (in force once an admin approves)",
                self.advertised.join(", ")
            );
        }
        let dropped: Vec<String> = self
            .drops
            .iter()
            .filter(|(_, v)| *v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if !dropped.is_empty() {
            let _ = writeln!(out, "dropped: {}", dropped.join(" "));
        }
        out
    }
}

impl super::Shared {
    /// The status `weft status` shows.
    pub fn status(&self, handle: &DeviceHandle) -> Status {
        let snap = handle.snapshot();
        let netmap = self.netmap();
        let v = self.view();
        let id = &v.identity;
        let peers = netmap
            .peers()
            .map(|p| {
                let key = Key(p.public_key.0);
                let live = snap.peers.iter().find(|s| s.public_key == key);
                let path = self.traversal.path(p.id);
                PeerStatus {
                    path: path.as_ref().map(|p| p.kind.to_string()),
                    path_rtt_ms: path.as_ref().and_then(|p| p.rtt_ms),
                    relay_reason: path.as_ref().and_then(|p| p.reason.clone()),
                    direct_after_secs: path.as_ref().and_then(|p| p.direct_after_secs),
                    name: p.name.clone(),
                    node_id: p.id.0,
                    subnet: p.subnet.to_string(),
                    public_key: key.to_base64(),
                    endpoint: live
                        .and_then(|s| s.endpoint)
                        .filter(|e| crate::dataplane::hooks::relay_node(e).is_none())
                        .map(|e| match weft_paths::side::parse_side(&e) {
                            Some((slot, remote)) => format!("{remote} (side socket {slot})"),
                            None => e.to_string(),
                        }),
                    last_handshake_secs: live.and_then(|s| s.last_handshake).map(secs_since),
                    rx_bytes: live.map_or(0, |s| s.rx_bytes),
                    tx_bytes: live.map_or(0, |s| s.tx_bytes),
                    online: p.online,
                }
            })
            .collect();
        let c = handle.counters();
        let (services, dns) = {
            let s = lock(&self.services);
            (s.entries().to_vec(), s.dns_up())
        };
        Status {
            host: HostStatus {
                name: id.name.clone(),
                node_id: id.node_id.0,
                address: id.subnet.host_addr().to_string(),
                subnet: id.subnet.to_string(),
                pool: id.pool.to_string(),
                interface: id.interface.clone(),
                bridge: self.bridge.clone(),
                listen_port: snap.listen_port,
                public_key: self.public_key.public_from_private().to_base64(),
                endpoints: v.endpoints.iter().map(ToString::to_string).collect(),
                mtu: std::fs::read_to_string(format!("/sys/class/net/{}/mtu", id.interface))
                    .ok()
                    .and_then(|m| m.trim().parse().ok()),
            },
            coordinator: CoordinatorStatus {
                addrs: id.coordinator.addrs.clone(),
                connected: v.connected,
                since_secs: v.since.elapsed().as_secs(),
                last_error: v.last_error.clone(),
                netmap_version: netmap.version(),
                last_heard_ms: v
                    .heard
                    .as_ref()
                    .map(|(h, _)| u64::try_from(h.ago().as_millis()).unwrap_or(u64::MAX)),
                transport: v.heard.as_ref().map(|(_, t)| (*t).to_string()),
                protocol_version: v.protocol_version,
            },
            peers,
            drops: drop_list(&c)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            policy: handle.filter_stats(),
            services,
            dns,
            domain: id.domain.clone(),
            routes: netmap
                .peers()
                .flat_map(|p| p.routes.iter().map(move |r| format!("{r} via {}", p.name)))
                .collect(),
            advertised: self
                .state
                .advertised_routes()
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }
}

/// The data plane's drop counters by name (the `reason` label).
pub fn drop_list(c: &crate::dataplane::CounterSnapshot) -> [(&'static str, u64); 8] {
    [
        ("tx_no_route", c.tx_no_route),
        ("tx_no_endpoint", c.tx_no_endpoint),
        ("tx_malformed", c.tx_malformed),
        ("tx_send_errors", c.tx_send_errors),
        ("rx_invalid", c.rx_invalid),
        ("rx_unknown_peer", c.rx_unknown_peer),
        ("rx_src_not_allowed", c.rx_src_not_allowed),
        ("rx_dst_not_local", c.rx_dst_not_local),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 * 1024 * 1024 / 2), "1.5 MiB");
        assert_eq!(ago(None), "never");
        assert_eq!(ago(Some(5)), "5s ago");
        assert_eq!(ago(Some(300)), "5m ago");
    }
}
