//! From netmap to data-plane configuration: which peers to add, change and
//! remove. Pure, so it is tested without a device.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use weft_proto::{HostSubnet, Netmap, NetmapChange, NodeId, Peer};

use crate::allowed_ips::Cidr;
use crate::dataplane::settings::{DeviceUpdate, PeerUpdate};
use crate::key::Key;

/// Keepalive that keeps NAT and firewall mappings open between hosts.
pub const PERSISTENT_KEEPALIVE_SECS: u16 = 25;

/// Remembers what was last applied, so a netmap update only touches what
/// changed. Endpoints are not set here: the traversal engine picks each
/// peer's path (see `agent::traversal`).
#[derive(Debug, Default)]
pub struct PeerReconciler {
    applied: HashMap<Key, Applied>,
    /// Each applied node's key: a removal names the node only.
    keys: HashMap<NodeId, Key>,
}

#[derive(Debug, PartialEq, Eq)]
struct Applied {
    subnet: HostSubnet,
    routes: Vec<weft_proto::policy::Cidr>,
}

impl PeerReconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// The update that brings a device holding `current` peers in line with
    /// `netmap`. Empty (no peers) when nothing changed. One pass over the
    /// netmap with a hash lookup per peer: nothing is allocated for peers
    /// that did not change (about 0.1 ms per 1,000 peers). For a whole new
    /// map and for a new session; a delta takes [`PeerReconciler::plan_change`].
    pub fn plan(&mut self, netmap: &Netmap, current: &HashSet<Key>) -> DeviceUpdate {
        let mut update = DeviceUpdate::default();
        let mut wanted = HashSet::with_capacity(netmap.len());
        self.keys.clear();
        for peer in netmap.peers() {
            let key = Key(peer.public_key.0);
            wanted.insert(key);
            self.keys.insert(peer.id, key);
            let known = current.contains(&key);
            self.upsert(peer, known, &mut update);
        }
        for key in current {
            if !wanted.contains(key) {
                update.peers.push(removal(*key));
                self.applied.remove(key);
            }
        }
        update
    }

    /// The update for one netmap delta (`change`, already folded into
    /// `netmap`): O(peers it names), whatever the size of the map. It
    /// trusts that the device holds what this reconciler applied last;
    /// a full change takes [`PeerReconciler::plan`] against the device.
    pub fn plan_change(&mut self, netmap: &Netmap, change: &NetmapChange) -> DeviceUpdate {
        let mut update = DeviceUpdate::default();
        // Keys that may have lost their node: those of removed nodes, and
        // the old keys of nodes with a new one. Only those no node holds
        // after the whole delta go (a key may move between nodes in it).
        let mut released = Vec::new();
        for id in &change.removed {
            if netmap.contains(*id) {
                continue; // removed, then added again in the same update
            }
            if let Some(key) = self.keys.remove(id) {
                released.push(key);
            }
        }
        let mut upserted = Vec::new();
        for id in &change.upserted {
            let Some(peer) = netmap.peer(*id) else {
                continue;
            };
            let key = Key(peer.public_key.0);
            if let Some(old) = self.keys.insert(*id, key) {
                if old != key {
                    released.push(old);
                }
            }
            upserted.push(peer);
        }
        if !released.is_empty() {
            let held: HashSet<Key> = upserted.iter().map(|p| Key(p.public_key.0)).collect();
            for key in released {
                if !held.contains(&key) && self.applied.remove(&key).is_some() {
                    update.peers.push(removal(key));
                }
            }
        }
        for peer in upserted {
            self.upsert(peer, true, &mut update);
        }
        update
    }

    /// Adds `peer` to `update` unless the device (`known`) has it as
    /// applied.
    fn upsert(&mut self, peer: &Peer, known: bool, update: &mut DeviceUpdate) {
        let key = Key(peer.public_key.0);
        let same = self
            .applied
            .get(&key)
            .is_some_and(|a| a.subnet == peer.subnet && a.routes == peer.routes);
        if known && same {
            return;
        }
        let now = Applied {
            subnet: peer.subnet,
            routes: peer.routes.clone(),
        };
        let mut p = PeerUpdate::new(key);
        p.replace_allowed_ips = true;
        p.allowed_ips = vec![subnet_net(peer.subnet)];
        // Approved routes through this peer (networks outside the mesh).
        p.allowed_ips.extend(peer.routes.iter().copied());
        p.persistent_keepalive = Some(PERSISTENT_KEEPALIVE_SECS);
        update.peers.push(p);
        self.applied.insert(key, now);
    }
}

fn removal(key: Key) -> PeerUpdate {
    let mut p = PeerUpdate::new(key);
    p.remove = true;
    p
}

/// The network a host subnet covers, as an allowed-IPs entry.
pub fn subnet_net(s: HostSubnet) -> Cidr {
    Cidr::new_truncating(IpAddr::V4(s.addr), s.prefix_len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_proto::netmap::NetmapUpdate;
    use weft_proto::Peer;
    use weft_proto::{NodeId, WgPublicKey};

    fn peer(id: u8, ep: &str) -> Peer {
        Peer {
            id: NodeId(u64::from(id)),
            name: format!("h{id}"),
            public_key: WgPublicKey([id; 32]),
            subnet: HostSubnet {
                addr: format!("100.64.{id}.0").parse().unwrap(),
                prefix_len: 24,
            },
            endpoints: vec![ep.parse().unwrap()],
            tags: vec![],
            online: true,
            routes: Vec::new(),
        }
    }

    fn keys(k: &[u8]) -> HashSet<Key> {
        k.iter().map(|b| Key([*b; 32])).collect()
    }

    fn map(version: u64, peers: Vec<Peer>) -> Netmap {
        let mut m = Netmap::new();
        m.apply(NetmapUpdate {
            upserts: peers,
            ..NetmapUpdate::empty(1, 0, version, true)
        })
        .unwrap();
        m
    }

    #[test]
    fn adds_then_leaves_unchanged_peers_alone() {
        let mut r = PeerReconciler::new();
        let m = map(
            1,
            vec![peer(1, "198.18.1.10:51820"), peer(2, "198.18.2.10:51820")],
        );
        let u = r.plan(&m, &keys(&[]));
        assert_eq!(u.peers.len(), 2);
        let p1 = u
            .peers
            .iter()
            .find(|p| p.public_key == Key([1; 32]))
            .unwrap();
        assert_eq!(p1.endpoint, None, "paths are the traversal engine's");
        assert_eq!(p1.allowed_ips, vec!["100.64.1.0/24".parse().unwrap()]);
        assert!(p1.replace_allowed_ips);
        let again = r.plan(&m, &keys(&[1, 2]));
        assert!(again.peers.is_empty(), "{again:?}");
    }

    #[test]
    fn removes_peers_gone_from_the_netmap() {
        let mut r = PeerReconciler::new();
        let m = map(1, vec![peer(1, "198.18.1.10:51820")]);
        r.plan(&m, &keys(&[]));
        let u = r.plan(&m, &keys(&[1, 5]));
        assert_eq!(u.peers.len(), 1);
        assert!(u.peers[0].remove);
        assert_eq!(u.peers[0].public_key, Key([5; 32]));
    }

    #[test]
    fn a_peer_missing_from_the_device_is_re_added() {
        let mut r = PeerReconciler::new();
        let m = map(1, vec![peer(1, "198.18.1.10:51820")]);
        r.plan(&m, &keys(&[]));
        let u = r.plan(&m, &keys(&[]));
        assert_eq!(u.peers.len(), 1);
        assert!(!u.peers[0].remove);
    }

    fn delta(m: &mut Netmap, up: Vec<Peer>, rm: Vec<u64>) -> NetmapChange {
        let v = m.version();
        m.apply(NetmapUpdate {
            upserts: up,
            removed: rm.into_iter().map(NodeId).collect(),
            ..NetmapUpdate::empty(1, v, v + 1, false)
        })
        .unwrap()
        .unwrap()
    }

    #[test]
    fn a_delta_touches_only_the_peers_it_names() {
        let mut r = PeerReconciler::new();
        let mut m = map(1, (1..=50).map(|i| peer(i, "198.18.1.10:51820")).collect());
        assert_eq!(r.plan(&m, &keys(&[])).peers.len(), 50);
        // An endpoint change is the traversal engine's: nothing to apply.
        let c = delta(&mut m, vec![peer(7, "198.18.9.9:1")], vec![]);
        assert!(r.plan_change(&m, &c).peers.is_empty());
        // A new route: that peer, its subnet and the route.
        let mut p = peer(8, "198.18.1.10:51820");
        p.routes = vec!["198.18.200.0/24".parse().unwrap()];
        let c = delta(&mut m, vec![p], vec![]);
        let u = r.plan_change(&m, &c);
        assert_eq!(u.peers.len(), 1);
        assert_eq!(u.peers[0].allowed_ips.len(), 2);
        // A new node, and one removed.
        let c = delta(&mut m, vec![peer(60, "198.18.1.10:51820")], vec![3]);
        let u = r.plan_change(&m, &c);
        let removed: Vec<Key> = u
            .peers
            .iter()
            .filter(|p| p.remove)
            .map(|p| p.public_key)
            .collect();
        assert_eq!(removed, vec![Key([3; 32])]);
        assert_eq!(u.peers.len(), 2);
        // A node with a new key: the old peer goes, the new one comes.
        let mut p = peer(9, "198.18.1.10:51820");
        p.public_key = WgPublicKey([99; 32]);
        let c = delta(&mut m, vec![p], vec![]);
        let u = r.plan_change(&m, &c);
        assert!(u
            .peers
            .iter()
            .any(|p| p.remove && p.public_key == Key([9; 32])));
        assert!(u
            .peers
            .iter()
            .any(|p| !p.remove && p.public_key == Key([99; 32])));
        // A full plan afterwards agrees that the device is in line.
        let mut device: HashSet<Key> = m.peers().map(|p| Key(p.public_key.0)).collect();
        assert!(r.plan(&m, &device).peers.is_empty());
        device.insert(Key([3; 32]));
        assert_eq!(r.plan(&m, &device).peers.len(), 1);
    }

    #[test]
    fn removed_and_added_again_in_one_delta_stays() {
        let mut r = PeerReconciler::new();
        let mut m = map(1, vec![peer(1, "198.18.1.10:51820")]);
        r.plan(&m, &keys(&[]));
        let c = delta(&mut m, vec![peer(1, "198.18.1.11:51820")], vec![1]);
        assert!(r.plan_change(&m, &c).peers.is_empty());
    }

    #[test]
    fn a_key_that_moves_between_nodes_in_one_delta_stays() {
        let mut r = PeerReconciler::new();
        let mut m = map(
            1,
            vec![peer(1, "198.18.1.10:51820"), peer(2, "198.18.1.11:51820")],
        );
        r.plan(&m, &keys(&[]));
        // Node 1 takes node 2's key, node 2 a new one, in one delta.
        let mut a = peer(1, "198.18.1.10:51820");
        a.public_key = WgPublicKey([2; 32]);
        let mut b = peer(2, "198.18.1.11:51820");
        b.public_key = WgPublicKey([3; 32]);
        for order in [vec![a.clone(), b.clone()], vec![b, a]] {
            let mut r2 = PeerReconciler::new();
            let mut m2 = m.clone();
            r2.plan(&m2, &keys(&[]));
            let c = delta(&mut m2, order, vec![]);
            let u = r2.plan_change(&m2, &c);
            let removed: Vec<Key> = u
                .peers
                .iter()
                .filter(|p| p.remove)
                .map(|p| p.public_key)
                .collect();
            assert_eq!(
                removed,
                vec![Key([1; 32])],
                "only the key no node holds goes"
            );
            let added: HashSet<Key> = u
                .peers
                .iter()
                .filter(|p| !p.remove)
                .map(|p| p.public_key)
                .collect();
            assert_eq!(added, keys(&[2, 3]));
            let device: HashSet<Key> = keys(&[2, 3]);
            assert!(
                r2.plan(&m2, &device).peers.is_empty(),
                "the device is in line"
            );
        }
        let c = delta(&mut m, vec![], vec![]);
        assert!(r.plan_change(&m, &c).peers.is_empty());
    }
}
