//! Addresses reached from a side socket: one of the extra UDP sockets a
//! host opens for the birthday technique (see [`crate::birthday`]), each
//! with its own NAT mapping toward one peer.
//!
//! The engine, the driver and the data plane all handle one `SocketAddr`
//! per path, so "IPv4 address `a:p`, from side socket `s`" is written as a
//! marker `SocketAddr`: `[100:0:0:1:s:a_hi:a_lo:0]:p`. `100::/64` is RFC
//! 6666's discard-only prefix, never routed; the relay's markers (in the
//! data plane's hooks) use the same prefix with `0` where this has `1`, and
//! port 0, so the two never collide. Only IPv4 remotes have side sockets:
//! NATs that need the birthday technique are IPv4 NATs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};

/// The marker for `remote` reached from side socket `slot`.
pub fn side_addr(slot: u16, remote: SocketAddrV4) -> SocketAddr {
    let [a, b, c, d] = remote.ip().octets();
    let ip = Ipv6Addr::new(
        0x100,
        0,
        0,
        1,
        slot,
        u16::from_be_bytes([a, b]),
        u16::from_be_bytes([c, d]),
        0,
    );
    SocketAddr::new(IpAddr::V6(ip), remote.port())
}

/// The side socket and real remote a marker stands for; `None` for any
/// other address.
pub fn parse_side(addr: &SocketAddr) -> Option<(u16, SocketAddrV4)> {
    let IpAddr::V6(v6) = addr.ip() else {
        return None;
    };
    let s = v6.segments();
    if s[..4] != [0x100, 0, 0, 1] || s[7] != 0 || addr.port() == 0 {
        return None;
    }
    let [a, b] = s[5].to_be_bytes();
    let [c, d] = s[6].to_be_bytes();
    Some((
        s[4],
        SocketAddrV4::new(Ipv4Addr::new(a, b, c, d), addr.port()),
    ))
}

/// The address a datagram really goes to: the remote of a side marker, or
/// the address itself.
pub fn real_addr(addr: SocketAddr) -> SocketAddr {
    parse_side(&addr).map_or(addr, |(_, r)| SocketAddr::V4(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_round_trip_and_nothing_else_is_one() {
        let r: SocketAddrV4 = "203.0.113.9:40123"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        for slot in [0u16, 1, 255, u16::MAX] {
            let m = side_addr(slot, r);
            assert_eq!(parse_side(&m), Some((slot, r)));
            assert_eq!(real_addr(m), SocketAddr::V4(r));
        }
        for other in [
            "203.0.113.9:40123",
            "[2001:db8::1]:51820",
            // A relay marker: the same prefix, 0 in the fourth group, port 0.
            "[100::2a]:0",
            "[100:0:0:1:5:cb00:7109:0]:0",
        ] {
            let a: SocketAddr = other.parse().unwrap_or_else(|_| unreachable!());
            assert_eq!(parse_side(&a), None, "{other}");
            assert_eq!(real_addr(a), a);
        }
    }
}
