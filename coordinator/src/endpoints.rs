//! What a host may report as its WireGuard endpoints. Every peer sends
//! probes and traffic to these addresses, so a host must not be able to
//! point its peers at loopback, multicast, link-local or overlay addresses
//! (or at anything, a thousand times over): the coordinator keeps only
//! plausible unicast endpoints, at most [`MAX_ENDPOINTS`] of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use weft_proto::HostSubnet;

/// Endpoints kept per host; the rest are dropped.
pub const MAX_ENDPOINTS: usize = 16;

/// The endpoints of `reported` that peers may be pointed at, in order,
/// without duplicates, at most [`MAX_ENDPOINTS`]. Loopback addresses pass
/// only with `allow_loopback` (benchmarks on one machine).
pub fn checked_endpoints(
    reported: &[SocketAddr],
    pool: HostSubnet,
    allow_loopback: bool,
) -> Vec<SocketAddr> {
    let mut kept: Vec<SocketAddr> = Vec::new();
    for ep in reported {
        if kept.len() == MAX_ENDPOINTS {
            break;
        }
        if plausible(*ep, pool, allow_loopback) && !kept.contains(ep) {
            kept.push(*ep);
        }
    }
    kept
}

fn plausible(ep: SocketAddr, pool: HostSubnet, allow_loopback: bool) -> bool {
    if ep.port() == 0 {
        return false;
    }
    let ip = match ep.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    match ip {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_link_local()
                || (v4.is_loopback() && !allow_loopback)
                || in_pool(v4, pool))
        }
        IpAddr::V6(v6) => {
            let link_local = (v6.segments()[0] & 0xffc0) == 0xfe80;
            !(v6.is_unspecified()
                || v6.is_multicast()
                || link_local
                || (v6.is_loopback() && !allow_loopback))
        }
    }
}

fn in_pool(ip: Ipv4Addr, pool: HostSubnet) -> bool {
    let p = u32::from(pool.prefix_len.min(32));
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    (u32::from(ip) & mask) == (u32::from(pool.addr) & mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool() -> HostSubnet {
        HostSubnet {
            addr: Ipv4Addr::new(100, 64, 0, 0),
            prefix_len: 10,
        }
    }

    fn eps(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn only_plausible_unicast_endpoints_are_kept() {
        let reported = eps(&[
            "203.0.113.5:51820",
            "127.0.0.1:51820",
            "0.0.0.0:51820",
            "224.0.0.1:51820",
            "255.255.255.255:51820",
            "169.254.1.1:51820",
            "100.64.3.1:51820",
            "100.127.255.1:51820",
            "198.18.1.10:0",
            "[::1]:51820",
            "[::]:51820",
            "[ff02::1]:51820",
            "[fe80::1]:51820",
            "[::ffff:127.0.0.1]:51820",
            "[2001:db8::5]:51820",
            "198.18.1.10:51820",
            "203.0.113.5:51820",
        ]);
        assert_eq!(
            checked_endpoints(&reported, pool(), false),
            eps(&[
                "203.0.113.5:51820",
                "[2001:db8::5]:51820",
                "198.18.1.10:51820"
            ])
        );
        let with_lo = checked_endpoints(&reported, pool(), true);
        assert!(with_lo.contains(&"127.0.0.1:51820".parse().unwrap()));
        assert!(with_lo.contains(&"[::1]:51820".parse().unwrap()));
    }

    #[test]
    fn at_most_sixteen_are_kept() {
        let many: Vec<SocketAddr> = (0..75_000u32)
            .map(|i| {
                SocketAddr::from((
                    Ipv4Addr::from(0xC633_6400 + (i % 250)),
                    1000 + (i % 60_000) as u16,
                ))
            })
            .collect();
        let kept = checked_endpoints(&many, pool(), false);
        assert_eq!(kept.len(), MAX_ENDPOINTS);
    }
}
