//! The tunnel MTU, picked from the underlay: the smallest MTU among this
//! host's uplinks (the interfaces its default routes leave by, or the
//! route's own `mtu` where one is set), minus what WireGuard adds to each
//! packet over that family. A host on a 1500-byte Ethernet gets 1440 over
//! IPv4 (1420 where it also has an IPv6 uplink); on GCP's 1460 it gets
//! 1400; on a 1280-byte link 1220. A fixed 1420 on such links made every
//! full-sized packet too big for the wire.
//!
//! The routes come from `ip -j route` (iproute2's JSON, as in
//! [`super::host_net`]): read once at start and again whenever netlink says
//! links or routes changed, never on a packet path.

use std::process::Command;

use serde_json::Value;

/// IPv4 (20) + UDP (8) + WireGuard data header and tag (16 + 16).
pub const IPV4_OVERHEAD: u16 = 60;
/// IPv6 (40) + UDP (8) + WireGuard (32).
pub const IPV6_OVERHEAD: u16 = 80;
/// The least the tunnel is given, whatever the links say (IPv4's minimum
/// datagram every host must take whole).
pub const MIN_TUNNEL_MTU: u16 = 576;

/// An interface a default route leaves by, and its MTU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uplink {
    pub dev: String,
    pub ipv6: bool,
    pub mtu: u32,
}

impl Uplink {
    /// The tunnel MTU this uplink allows.
    pub fn tunnel_mtu(&self) -> u16 {
        let overhead = if self.ipv6 {
            IPV6_OVERHEAD
        } else {
            IPV4_OVERHEAD
        };
        let mtu = u16::try_from(self.mtu).unwrap_or(u16::MAX);
        mtu.saturating_sub(overhead).max(MIN_TUNNEL_MTU)
    }
}

/// The tunnel MTU for these uplinks: the smallest any of them allows;
/// `None` without uplinks.
pub fn tunnel_mtu(uplinks: &[Uplink]) -> Option<u16> {
    uplinks.iter().map(Uplink::tunnel_mtu).min()
}

/// The tunnel MTU for this host now, or `fallback` where it has no
/// default route (then the links say nothing about the path).
pub fn pick(own: &[&str], fallback: u16) -> u16 {
    let up = uplinks(own);
    match tunnel_mtu(&up) {
        Some(m) => {
            tracing::info!(mtu = m, uplinks = ?up, "tunnel MTU picked from the uplinks (set one with --mtu)");
            m
        }
        None => {
            tracing::info!(
                mtu = fallback,
                "no default route to take the tunnel MTU from; using the default (set one with --mtu)"
            );
            fallback
        }
    }
}

/// Keeps the tunnel and bridge MTU at what the uplinks allow as they
/// change (a VM moved to another network, a PPPoE link came up). Containers
/// keep the MTU they were made with; the MSS clamp ([`super::host_nft`])
/// keeps their TCP within the new one.
#[derive(Debug)]
pub struct MtuFollower {
    pub interface: String,
    pub bridge: String,
    pub current: u16,
    pub state: super::state::StateDir,
}

impl MtuFollower {
    /// Reads the uplinks again and applies a changed MTU.
    pub fn check(&mut self) {
        let Some(mtu) = tunnel_mtu(&uplinks(&[&self.interface, &self.bridge])) else {
            return;
        };
        if mtu == self.current {
            return;
        }
        tracing::info!(
            before = self.current,
            after = mtu,
            "the uplinks' MTU changed; following it"
        );
        if let Err(e) = super::host_net::set_mtu(&self.interface, &self.bridge, mtu) {
            tracing::warn!(error = %e, "cannot change the tunnel MTU");
            return;
        }
        self.current = mtu;
        // New containers take the new MTU from network.json.
        match self.state.network() {
            Ok(Some(mut net)) => {
                net.mtu = mtu;
                if let Err(e) = self.state.save_network(&net) {
                    tracing::warn!(error = %e, "cannot record the new MTU for container plugins");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read network.json"),
        }
    }
}

/// This host's uplinks now, skipping `own` interfaces (the tunnel and the
/// bridge never carry the underlay).
pub fn uplinks(own: &[&str]) -> Vec<Uplink> {
    let mut out = Vec::new();
    for ipv6 in [false, true] {
        let family = if ipv6 { "-6" } else { "-4" };
        let Ok(o) = Command::new("ip")
            .args(["-j", family, "route", "show", "default"])
            .output()
        else {
            continue;
        };
        if !o.status.success() {
            continue;
        }
        out.extend(
            parse_default_routes(&o.stdout, ipv6, link_mtu)
                .into_iter()
                .filter(|u| !own.contains(&u.dev.as_str())),
        );
    }
    out
}

/// The uplinks in `ip -j route show default` output: each route's device
/// (each next hop's, for a multipath route), with the route's `mtu` metric
/// if it has one, else the device's MTU from `dev_mtu`.
pub fn parse_default_routes(
    json: &[u8],
    ipv6: bool,
    dev_mtu: impl Fn(&str) -> Option<u32>,
) -> Vec<Uplink> {
    let Ok(Value::Array(routes)) = serde_json::from_slice::<Value>(json) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for r in &routes {
        let route_mtu = r["metrics"]
            .as_array()
            .and_then(|m| m.iter().find_map(|m| m["mtu"].as_u64()))
            .and_then(|m| u32::try_from(m).ok());
        let devs: Vec<&str> = match r["nexthops"].as_array() {
            Some(hops) => hops.iter().filter_map(|h| h["dev"].as_str()).collect(),
            None => r["dev"].as_str().into_iter().collect(),
        };
        for dev in devs {
            let Some(mtu) = route_mtu.or_else(|| dev_mtu(dev)) else {
                continue;
            };
            let u = Uplink {
                dev: dev.to_string(),
                ipv6,
                mtu,
            };
            if !out.contains(&u) {
                out.push(u);
            }
        }
    }
    out
}

/// An interface's MTU from sysfs.
fn link_mtu(dev: &str) -> Option<u32> {
    if dev.contains('/') || dev.starts_with('.') {
        return None;
    }
    std::fs::read_to_string(format!("/sys/class/net/{dev}/mtu"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mtus(dev: &str) -> Option<u32> {
        match dev {
            "eth0" => Some(1500),
            "ens4" => Some(1460),
            "ppp0" => Some(1492),
            _ => None,
        }
    }

    #[test]
    fn the_smallest_uplink_wins_with_its_family_overhead() {
        let v4 = parse_default_routes(
            br#"[{"dst":"default","gateway":"198.18.1.1","dev":"eth0","flags":[]}]"#,
            false,
            mtus,
        );
        assert_eq!(tunnel_mtu(&v4), Some(1440));
        let v6 = parse_default_routes(
            br#"[{"dst":"default","gateway":"fd00::1","dev":"eth0","metric":1024}]"#,
            true,
            mtus,
        );
        assert_eq!(tunnel_mtu(&[v4.clone(), v6].concat()), Some(1420));
        let gcp = parse_default_routes(br#"[{"dst":"default","dev":"ens4"}]"#, false, mtus);
        assert_eq!(tunnel_mtu(&[v4, gcp].concat()), Some(1400));
        assert_eq!(tunnel_mtu(&[]), None);
    }

    #[test]
    fn a_route_mtu_and_multipath_next_hops_count() {
        let locked = parse_default_routes(
            br#"[{"dst":"default","dev":"eth0","metrics":[{"mtu":1280}]}]"#,
            false,
            mtus,
        );
        assert_eq!(tunnel_mtu(&locked), Some(1220));
        let multi = parse_default_routes(
            br#"[{"dst":"default","nexthops":[{"dev":"eth0"},{"dev":"ppp0"},{"dev":"gone"}]}]"#,
            false,
            mtus,
        );
        assert_eq!(multi.len(), 2, "{multi:?}");
        assert_eq!(tunnel_mtu(&multi), Some(1432));
    }

    #[test]
    fn nonsense_gives_no_uplink_and_tiny_links_a_floor() {
        assert!(parse_default_routes(b"not json", false, mtus).is_empty());
        assert!(parse_default_routes(br#"{"dev":"eth0"}"#, false, mtus).is_empty());
        let tiny = Uplink {
            dev: "x".into(),
            ipv6: false,
            mtu: 100,
        };
        assert_eq!(tiny.tunnel_mtu(), MIN_TUNNEL_MTU);
        let huge = Uplink {
            dev: "x".into(),
            ipv6: true,
            mtu: 1 << 20,
        };
        assert_eq!(huge.tunnel_mtu(), u16::MAX - IPV6_OVERHEAD);
    }
}
