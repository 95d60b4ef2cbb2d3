//! The allowed-IPs table: longest-prefix match from an address to a peer.
//!
//! Outbound, a packet's destination picks the peer; inbound, a decrypted
//! packet's source must map back to the peer that sent it (cryptokey routing).
//!
//! Shape: one hash map per prefix length actually in use, probed from the
//! longest length down. A lookup costs one hash probe per distinct length
//! (typically one to three), with no allocation. The maps are persistent
//! (`imbl`): a copy of the table is O(1) and a change to the copy is
//! O(log n), so the data plane publishes a changed table per netmap delta
//! without rebuilding it from every peer.
//!
//! Networks are the workspace's one prefix type, [`Cidr`] (from
//! `weft-proto`), re-exported here for the data plane's callers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use weft_proto::policy::Cidr;

fn mask_v4(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix))
    }
}

fn mask_v6(prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix))
    }
}

/// One address family's table: (prefix length, network -> value), longest first.
#[derive(Clone, Debug)]
struct FamilyTable<K, T> {
    by_len: Vec<(u8, imbl::HashMap<K, T>)>,
}

impl<K: std::hash::Hash + Eq + Copy, T: Clone> FamilyTable<K, T> {
    fn new() -> Self {
        FamilyTable { by_len: Vec::new() }
    }

    fn insert(&mut self, len: u8, key: K, value: T) -> Option<T> {
        let pos = match self.by_len.binary_search_by(|(l, _)| len.cmp(l)) {
            Ok(pos) => pos,
            Err(pos) => {
                self.by_len.insert(pos, (len, imbl::HashMap::new()));
                pos
            }
        };
        self.by_len[pos].1.insert(key, value)
    }

    fn get(&self, len: u8, key: &K) -> Option<&T> {
        let pos = self.by_len.binary_search_by(|(l, _)| len.cmp(l)).ok()?;
        self.by_len[pos].1.get(key)
    }

    fn remove(&mut self, len: u8, key: &K) -> Option<T> {
        let pos = self.by_len.binary_search_by(|(l, _)| len.cmp(l)).ok()?;
        let old = self.by_len[pos].1.remove(key);
        if self.by_len[pos].1.is_empty() {
            self.by_len.remove(pos);
        }
        old
    }

    fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        for (_, map) in &mut self.by_len {
            map.retain(|_, v| keep(v));
        }
        self.by_len.retain(|(_, m)| !m.is_empty());
    }
}

/// Longest-prefix-match table from IPv4/IPv6 networks to values (peers).
#[derive(Clone, Debug)]
pub struct AllowedIps<T> {
    v4: FamilyTable<u32, T>,
    v6: FamilyTable<u128, T>,
}

impl<T: Clone> Default for AllowedIps<T> {
    fn default() -> Self {
        AllowedIps {
            v4: FamilyTable::new(),
            v6: FamilyTable::new(),
        }
    }
}

impl<T: Clone> AllowedIps<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `net` to `value`, returning the value it replaces. A network
    /// belongs to at most one peer: inserting it moves it.
    pub fn insert(&mut self, net: Cidr, value: T) -> Option<T> {
        match net.addr() {
            IpAddr::V4(a) => self.v4.insert(net.prefix_len(), u32::from(a), value),
            IpAddr::V6(a) => self.v6.insert(net.prefix_len(), u128::from(a), value),
        }
    }

    /// The value of exactly `net` (not of a network containing it).
    pub fn get(&self, net: &Cidr) -> Option<&T> {
        match net.addr() {
            IpAddr::V4(a) => self.v4.get(net.prefix_len(), &u32::from(a)),
            IpAddr::V6(a) => self.v6.get(net.prefix_len(), &u128::from(a)),
        }
    }

    /// Removes exactly `net` (not the networks inside it).
    pub fn remove(&mut self, net: &Cidr) -> Option<T> {
        match net.addr() {
            IpAddr::V4(a) => self.v4.remove(net.prefix_len(), &u32::from(a)),
            IpAddr::V6(a) => self.v6.remove(net.prefix_len(), &u128::from(a)),
        }
    }

    /// Keeps only the entries whose value passes `keep` (e.g. drop a peer).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.v4.retain(&mut keep);
        self.v6.retain(&mut keep);
    }

    /// The value of the longest prefix containing `ip`.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<&T> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .by_len
                    .iter()
                    .find_map(|(len, map)| map.get(&(a & mask_v4(*len))))
            }
            IpAddr::V6(a) => {
                let a = u128::from(a);
                self.v6
                    .by_len
                    .iter()
                    .find_map(|(len, map)| map.get(&(a & mask_v6(*len))))
            }
        }
    }

    /// Every (network, value) pair, longest prefixes first.
    pub fn iter(&self) -> impl Iterator<Item = (Cidr, &T)> {
        let v4 = self.v4.by_len.iter().flat_map(|(len, map)| {
            map.iter().map(move |(k, v)| {
                (
                    Cidr::new_truncating(IpAddr::V4(Ipv4Addr::from(*k)), *len),
                    v,
                )
            })
        });
        let v6 = self.v6.by_len.iter().flat_map(|(len, map)| {
            map.iter().map(move |(k, v)| {
                (
                    Cidr::new_truncating(IpAddr::V6(Ipv6Addr::from(*k)), *len),
                    v,
                )
            })
        });
        v4.chain(v6)
    }

    pub fn is_empty(&self) -> bool {
        self.v4.by_len.is_empty() && self.v6.by_len.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn net(s: &str) -> Cidr {
        Cidr::parse_truncating(s).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parse_clears_host_bits_and_rejects_bad_input() {
        assert_eq!(net("100.64.1.7/24").to_string(), "100.64.1.0/24");
        assert_eq!(net("fd00::1/64").to_string(), "fd00::/64");
        assert_eq!(net("10.0.0.1").prefix_len(), 32);
        for bad in ["100.64.0.0/33", "fd00::/129", "not-an-ip/8", "1.2.3.4/x"] {
            assert!(Cidr::parse_truncating(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn longest_prefix_wins_v4() {
        let mut t = AllowedIps::new();
        t.insert(net("0.0.0.0/0"), "default");
        t.insert(net("100.64.0.0/10"), "pool");
        t.insert(net("100.64.1.0/24"), "host1");
        t.insert(net("100.64.1.9/32"), "one");
        assert_eq!(t.lookup(ip("100.64.1.9")), Some(&"one"));
        assert_eq!(t.lookup(ip("100.64.1.10")), Some(&"host1"));
        assert_eq!(t.lookup(ip("100.64.2.1")), Some(&"pool"));
        assert_eq!(t.lookup(ip("192.0.2.1")), Some(&"default"));
        assert_eq!(t.lookup(ip("fd00::1")), None);
    }

    #[test]
    fn longest_prefix_wins_v6() {
        let mut t = AllowedIps::new();
        t.insert(net("fd00::/8"), 1);
        t.insert(net("fd00:1::/32"), 2);
        t.insert(net("fd00:1::5/128"), 3);
        assert_eq!(t.lookup(ip("fd00:1::5")), Some(&3));
        assert_eq!(t.lookup(ip("fd00:1::6")), Some(&2));
        assert_eq!(t.lookup(ip("fd99::1")), Some(&1));
        assert_eq!(t.lookup(ip("fe80::1")), None);
        assert_eq!(t.lookup(ip("100.64.0.1")), None);
    }

    #[test]
    fn replace_and_remove() {
        let mut t = AllowedIps::new();
        assert_eq!(t.insert(net("100.64.1.0/24"), 'a'), None);
        assert_eq!(t.insert(net("100.64.1.0/24"), 'b'), Some('a'));
        t.insert(net("100.64.0.0/16"), 'c');
        assert_eq!(t.lookup(ip("100.64.1.1")), Some(&'b'));
        assert_eq!(t.remove(&net("100.64.1.0/24")), Some('b'));
        assert_eq!(t.lookup(ip("100.64.1.1")), Some(&'c'));
        assert_eq!(t.remove(&net("100.64.1.0/24")), None);
        t.insert(net("fd00::/64"), 'c');
        t.insert(net("100.64.9.0/24"), 'd');
        t.retain(|v| *v != 'c');
        assert_eq!(t.lookup(ip("100.64.1.1")), None);
        assert_eq!(t.lookup(ip("fd00::1")), None);
        assert_eq!(t.lookup(ip("100.64.9.9")), Some(&'d'));
        assert_eq!(t.iter().count(), 1);
    }

    proptest! {
        /// The table agrees with a brute-force scan for the longest containing prefix.
        #[test]
        fn matches_brute_force(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 1..40),
            probes in proptest::collection::vec(any::<u32>(), 1..50),
        ) {
            let mut t = AllowedIps::new();
            let mut reference: Vec<Cidr> = Vec::new();
            for (i, (a, p)) in nets.iter().enumerate() {
                let n = Cidr::new_truncating(IpAddr::V4(Ipv4Addr::from(*a)), *p);
                t.insert(n, i);
                reference.retain(|r| *r != n);
                reference.push(n);
            }
            for probe in probes {
                let addr = IpAddr::V4(Ipv4Addr::from(probe));
                let want = reference
                    .iter()
                    .filter(|n| n.contains(addr))
                    .max_by_key(|n| n.prefix_len())
                    .copied();
                let got = t.lookup(addr).map(|i| {
                    let (a, p) = nets[*i];
                    Cidr::new_truncating(IpAddr::V4(Ipv4Addr::from(a)), p)
                });
                prop_assert_eq!(got, want);
            }
        }
    }
}
