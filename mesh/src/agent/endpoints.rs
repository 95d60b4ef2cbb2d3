//! The UDP endpoints this host reports to the coordinator: every address of
//! its interfaces that a peer could reach, with the WireGuard port.

use std::net::{IpAddr, SocketAddr};

use weft_proto::HostSubnet;

/// Addresses of this host's interfaces, excluding loopback, link-local IPv6,
/// the mesh's own interfaces and anything inside the overlay pool.
pub fn local_endpoints(port: u16, skip_ifaces: &[&str], pool: HostSubnet) -> Vec<SocketAddr> {
    let addrs = match if_addrs::get_if_addrs() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list interface addresses; peers will learn this host's endpoint only when it sends first");
            return Vec::new();
        }
    };
    let mut out: Vec<SocketAddr> = addrs
        .into_iter()
        .filter(|a| !skip_ifaces.contains(&a.name.as_str()))
        .map(|a| a.ip())
        .filter(|ip| usable(*ip, pool))
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    // IPv4 first: the usual underlay; stable order keeps reports quiet.
    out.sort_by_key(|a| (a.is_ipv6(), *a));
    out.dedup();
    out
}

fn usable(ip: IpAddr, pool: HostSubnet) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let in_pool = HostSubnet {
                addr: v4,
                prefix_len: 32,
            }
            .overlaps(&pool);
            !v4.is_loopback() && !v4.is_unspecified() && !v4.is_link_local() && !in_pool
        }
        IpAddr::V6(v6) => {
            !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_loopback_link_local_and_overlay() {
        let pool = HostSubnet {
            addr: "100.64.0.0".parse().unwrap(),
            prefix_len: 10,
        };
        assert!(!usable("127.0.0.1".parse().unwrap(), pool));
        assert!(!usable("100.64.3.1".parse().unwrap(), pool));
        assert!(!usable("169.254.1.1".parse().unwrap(), pool));
        assert!(!usable("fe80::1".parse().unwrap(), pool));
        assert!(usable("198.18.1.10".parse().unwrap(), pool));
        assert!(usable("2001:db8::1".parse().unwrap(), pool));
    }

    #[test]
    fn lists_no_loopback_endpoint() {
        let pool = HostSubnet {
            addr: "100.64.0.0".parse().unwrap(),
            prefix_len: 10,
        };
        let eps = local_endpoints(51820, &[], pool);
        assert!(eps
            .iter()
            .all(|e| !e.ip().is_loopback() && e.port() == 51820));
    }
}
