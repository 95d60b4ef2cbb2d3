//! An IPv4 or IPv6 network prefix, as packet filters and selectors use it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::types::HostSubnet;

/// A network prefix: an address whose bits past `len` are zero.
///
/// On the wire it is `"100.64.1.0/24"` in human-readable formats and, in
/// MessagePack, one byte string: the prefix length then the address
/// (5 bytes for IPv4, 17 for IPv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

/// Why a prefix was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("`{0}` is not an IP address")]
    BadAddress(String),
    #[error("`{0}` is not a prefix length")]
    BadLength(String),
    #[error("prefix length {len} is longer than {max}")]
    TooLong { len: u8, max: u8 },
    #[error("`{given}` has host bits set; did you mean `{suggested}`?")]
    HostBits { given: String, suggested: Cidr },
}

fn mask4(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

fn mask6(len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len.min(128)))
    }
}

impl Cidr {
    /// The prefix `addr/len`; refused if `len` is too long or host bits are set.
    pub fn new(addr: IpAddr, len: u8) -> Result<Cidr, CidrError> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if len > max {
            return Err(CidrError::TooLong { len, max });
        }
        let cidr = Cidr::new_truncating(addr, len);
        if cidr.addr != addr {
            return Err(CidrError::HostBits {
                given: format!("{addr}/{len}"),
                suggested: cidr,
            });
        }
        Ok(cidr)
    }

    /// The prefix of length `len` (clamped) that holds `addr`.
    pub fn new_truncating(addr: IpAddr, len: u8) -> Cidr {
        match addr {
            IpAddr::V4(a) => {
                let len = len.min(32);
                let net = u32::from(a) & mask4(len);
                Cidr {
                    addr: IpAddr::V4(Ipv4Addr::from(net)),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let len = len.min(128);
                let net = u128::from(a) & mask6(len);
                Cidr {
                    addr: IpAddr::V6(Ipv6Addr::from(net)),
                    len,
                }
            }
        }
    }

    /// A single address (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        let len = if addr.is_ipv4() { 32 } else { 128 };
        Cidr { addr, len }
    }

    /// Every IPv4 address, `0.0.0.0/0`.
    pub const ANY_V4: Cidr = Cidr {
        addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        len: 0,
    };

    /// Every IPv6 address, `::/0`.
    pub const ANY_V6: Cidr = Cidr {
        addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        len: 0,
    };

    /// The network address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// The first usable address: the one after the network address, unless
    /// the prefix is too small to have one (`/31`, `/32`, `/127`, `/128`).
    pub fn first_host(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) if self.len < 31 => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 1)),
            IpAddr::V6(a) if self.len < 127 => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 1)),
            other => other,
        }
    }

    /// Whether `ip` lies in this prefix. Never allocates.
    #[inline]
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => u32::from(a) & mask4(self.len) == u32::from(n),
            (IpAddr::V6(n), IpAddr::V6(a)) => u128::from(a) & mask6(self.len) == u128::from(n),
            _ => false,
        }
    }

    /// Whether every address of `other` lies in this prefix.
    pub fn contains_cidr(&self, other: &Cidr) -> bool {
        other.len >= self.len && self.contains(other.addr)
    }

    /// The addresses both prefixes hold: the longer one, or none.
    pub fn intersect(&self, other: &Cidr) -> Option<Cidr> {
        if self.contains_cidr(other) {
            Some(*other)
        } else if other.contains_cidr(self) {
            Some(*self)
        } else {
            None
        }
    }

    /// Whether the two prefixes share any address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        self.intersect(other).is_some()
    }

    /// The prefix of length `len` (at least this one's) whose bit at
    /// position `len - 1` is flipped relative to `inner`'s: the sibling of
    /// `inner`'s ancestor of that length.
    fn sibling_at(inner: &Cidr, len: u8) -> Cidr {
        match inner.addr {
            IpAddr::V4(a) => {
                let bit = 1u32 << (32 - u32::from(len));
                Cidr::new_truncating(IpAddr::V4(Ipv4Addr::from(u32::from(a) ^ bit)), len)
            }
            IpAddr::V6(a) => {
                let bit = 1u128 << (128 - u32::from(len));
                Cidr::new_truncating(IpAddr::V6(Ipv6Addr::from(u128::from(a) ^ bit)), len)
            }
        }
    }

    /// The addresses of `from` that are in none of `remove`, as a sorted
    /// list of disjoint prefixes (set subtraction for `except:` and for
    /// "everyone but the allowed clients"). At most 128 prefixes per
    /// removed prefix per input prefix.
    pub fn subtract(from: &[Cidr], remove: &[Cidr]) -> Vec<Cidr> {
        let mut out: Vec<Cidr> = from.to_vec();
        for r in remove {
            let mut next = Vec::with_capacity(out.len());
            for x in out {
                if r.contains_cidr(&x) {
                    continue;
                }
                if !x.contains_cidr(r) {
                    next.push(x);
                    continue;
                }
                // `r` lies strictly inside `x`: keep the siblings of every
                // ancestor of `r` below `x`.
                for len in x.len + 1..=r.len {
                    next.push(Cidr::sibling_at(r, len));
                }
            }
            out = next;
        }
        out.sort();
        out.dedup();
        out
    }
}

impl Cidr {
    /// Like [`FromStr`], but clears host bits instead of refusing them, as
    /// WireGuard does with `allowed_ip` (`10.0.0.1/24` is `10.0.0.0/24`).
    pub fn parse_truncating(s: &str) -> Result<Cidr, CidrError> {
        match s.trim().split_once('/') {
            None => s.parse(),
            Some((a, l)) => {
                let addr: IpAddr = a
                    .parse()
                    .map_err(|_| CidrError::BadAddress(a.to_string()))?;
                let len: u8 = l.parse().map_err(|_| CidrError::BadLength(l.to_string()))?;
                let max = if addr.is_ipv4() { 32 } else { 128 };
                if len > max {
                    return Err(CidrError::TooLong { len, max });
                }
                Ok(Cidr::new_truncating(addr, len))
            }
        }
    }
}

impl From<HostSubnet> for Cidr {
    fn from(s: HostSubnet) -> Cidr {
        Cidr::new_truncating(IpAddr::V4(s.addr), s.prefix_len)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// `ADDR/LEN`, or a bare address meaning that one address.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| CidrError::BadAddress(addr.to_string()))?;
        match len {
            None => Ok(Cidr::host(addr)),
            Some(l) => {
                let len: u8 = l.parse().map_err(|_| CidrError::BadLength(l.to_string()))?;
                Cidr::new(addr, len)
            }
        }
    }
}

impl Serialize for Cidr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            return s.collect_str(self);
        }
        let mut buf = [0u8; 17];
        buf[0] = self.len;
        let n = match self.addr {
            IpAddr::V4(a) => {
                buf[1..5].copy_from_slice(&a.octets());
                5
            }
            IpAddr::V6(a) => {
                buf[1..17].copy_from_slice(&a.octets());
                17
            }
        };
        s.serialize_bytes(&buf[..n])
    }
}

fn cidr_from_bytes(v: &[u8]) -> Option<Result<Cidr, CidrError>> {
    let (&len, rest) = v.split_first()?;
    let addr = match rest.len() {
        4 => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(rest).ok()?)),
        16 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(rest).ok()?)),
        _ => return None,
    };
    Some(Cidr::new(addr, len))
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Cidr;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a network prefix (ADDR/LEN, or 5 or 17 bytes)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Cidr, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Cidr, E> {
                match cidr_from_bytes(v) {
                    Some(r) => r.map_err(E::custom),
                    None => Err(E::invalid_length(v.len(), &self)),
                }
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cidr, A::Error> {
                let mut buf = Vec::with_capacity(17);
                while let Some(b) = seq.next_element::<u8>()? {
                    if buf.len() == 17 {
                        return Err(de::Error::invalid_length(18, &self));
                    }
                    buf.push(b);
                }
                self.visit_bytes(&buf)
            }
        }
        if d.is_human_readable() {
            d.deserialize_str(V)
        } else {
            d.deserialize_bytes(V)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_v4_v6_and_bare_addresses() {
        assert_eq!(c("100.64.1.0/24").to_string(), "100.64.1.0/24");
        assert_eq!(c("fd00::/64").to_string(), "fd00::/64");
        assert_eq!(c("10.0.0.7").prefix_len(), 32);
        assert_eq!(c("fd00::7").prefix_len(), 128);
    }

    #[test]
    fn refuses_host_bits_with_a_suggestion() {
        let err = "100.64.1.5/24".parse::<Cidr>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "`100.64.1.5/24` has host bits set; did you mean `100.64.1.0/24`?"
        );
        assert!("1.2.3.4/33".parse::<Cidr>().is_err());
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("nope/8".parse::<Cidr>().is_err());
        assert!("1.2.3.0/x".parse::<Cidr>().is_err());
    }

    #[test]
    fn contains_and_intersects() {
        assert!(c("100.64.0.0/10").contains(ip("100.100.1.1")));
        assert!(!c("100.64.0.0/10").contains(ip("100.128.0.1")));
        assert!(!c("100.64.0.0/10").contains(ip("::1")));
        assert!(Cidr::ANY_V6.contains(ip("fd00::1")));
        assert!(Cidr::ANY_V4.contains(ip("1.2.3.4")));
        assert_eq!(
            c("100.64.0.0/10").intersect(&c("100.64.3.0/24")),
            Some(c("100.64.3.0/24"))
        );
        assert_eq!(c("100.64.1.0/24").intersect(&c("100.64.2.0/24")), None);
        assert_eq!(c("fd00::/64").intersect(&c("100.64.2.0/24")), None);
    }

    #[test]
    fn first_host() {
        assert_eq!(c("100.64.1.0/24").first_host(), ip("100.64.1.1"));
        assert_eq!(c("100.64.1.9/32").first_host(), ip("100.64.1.9"));
        assert_eq!(c("fd00::/64").first_host(), ip("fd00::1"));
    }

    #[test]
    fn round_trips_in_messagepack_and_json_forms() {
        for s in ["100.64.1.0/24", "fd00:1::/48", "0.0.0.0/0"] {
            let x = c(s);
            let bytes = rmp_serde::to_vec(&x).unwrap();
            assert!(bytes.len() <= 19);
            assert_eq!(rmp_serde::from_slice::<Cidr>(&bytes).unwrap(), x);
        }
        assert!(rmp_serde::from_slice::<Cidr>(&rmp_serde::to_vec(&[1u8, 2]).unwrap()).is_err());
    }

    #[test]
    fn subtraction_leaves_exactly_the_rest() {
        let c = |s: &str| s.parse::<Cidr>().unwrap();
        let rest = Cidr::subtract(&[c("10.0.0.0/8")], &[c("10.1.2.0/24")]);
        assert_eq!(rest.len(), 16);
        for probe in ["10.0.0.1", "10.1.3.1", "10.255.0.0", "10.1.2.255"] {
            let ip: IpAddr = probe.parse().unwrap();
            let inside = rest.iter().any(|r| r.contains(ip));
            assert_eq!(inside, !c("10.1.2.0/24").contains(ip), "{probe}");
        }
        assert!(Cidr::subtract(&[c("10.1.2.0/24")], &[c("10.0.0.0/8")]).is_empty());
        assert_eq!(
            Cidr::subtract(&[c("10.0.0.0/8"), Cidr::ANY_V6], &[c("192.0.2.0/24")]),
            vec![c("10.0.0.0/8"), Cidr::ANY_V6]
        );
        let v6 = Cidr::subtract(&[Cidr::ANY_V6], &[c("fd00::1/128")]);
        assert_eq!(v6.len(), 128);
        assert!(!v6.iter().any(|r| r.contains("fd00::1".parse().unwrap())));
        assert!(v6.iter().any(|r| r.contains("fd00::2".parse().unwrap())));
    }
}
