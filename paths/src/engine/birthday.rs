//! The birthday technique in the engine (see [`crate::birthday`]): the
//! hard side's spray, the easy side's scan, and the side sockets kept.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use rand::Rng as _;
use weft_proto::disco::DiscoMsg;
use weft_proto::NodeId;

use super::{on_link, PathEngine};
use crate::birthday::{
    Scan, Spray, MAX_KEPT, MAX_SCANS, SCAN_AGAIN, SCAN_MAX, SCAN_PER_TICK, SCAN_PORTS, SPRAY_AFTER,
    SPRAY_BACKOFF, SPRAY_BACKOFF_MAX, SPRAY_FOR, SPRAY_REFRESH,
};
use crate::netcheck::Mapping;
use crate::side::{parse_side, side_addr};
use crate::{Dest, Event, Transmit};

/// Pending probes at most before a scan holds back its next batch.
const MAX_PENDING: usize = 4096;

impl PathEngine {
    /// The side sockets in use ([`Event::SideSockets`] announces changes).
    pub fn side_sockets(&self) -> Vec<u16> {
        self.birthday.open_slots()
    }

    /// Once a tick: the spray and the scans go on, end, or start.
    pub(super) fn birthday_tick(&mut self, now: Instant) {
        let before = self.birthday.open_slots();
        self.release_unused_slots();
        self.spray_tick(now);
        self.scan_tick(now);
        let after = self.birthday.open_slots();
        if after != before {
            self.events.push_back(Event::SideSockets(after));
        }
    }

    /// A kept side socket whose peer has no candidate through it any more
    /// is closed.
    fn release_unused_slots(&mut self) {
        let peers = &self.peers;
        self.birthday.kept.retain(|slot, node| {
            peers.get(node).is_some_and(|p| {
                p.candidates
                    .keys()
                    .any(|a| parse_side(a).is_some_and(|(s, _)| s == *slot))
            })
        });
    }

    fn spray_tick(&mut self, now: Instant) {
        let hard = self.netcheck.mapping() == Mapping::EndpointDependent;
        if let Some(spray) = &self.birthday.spray {
            let peer = self.peers.get(&spray.peer);
            let won = peer
                .and_then(|p| p.current)
                .and_then(|c| parse_side(&c))
                .map(|(slot, _)| slot)
                .filter(|s| spray.slots.contains(s));
            let direct_otherwise = peer.is_some_and(|p| p.current.is_some());
            let over = now.duration_since(spray.started) >= SPRAY_FOR;
            if won.is_some() || direct_otherwise || over || peer.is_none() || !hard {
                let node = spray.peer;
                if let Some(slot) = won {
                    self.birthday.kept.insert(slot, node);
                }
                self.end_spray(node, won.is_some() || direct_otherwise, now);
                return;
            }
            let due = spray
                .pinged
                .is_none_or(|t| now.duration_since(t) >= SPRAY_REFRESH);
            if due {
                self.send_spray(now);
            }
            return;
        }
        if hard && self.birthday.kept.len() < MAX_KEPT {
            if let Some((node, targets)) = self.spray_candidate(now) {
                let slots = self.birthday.free_slots();
                tracing::debug!(
                    peer = node.0,
                    sockets = slots.len(),
                    "spraying toward a peer behind an endpoint-independent NAT"
                );
                self.birthday.spray = Some(Spray {
                    peer: node,
                    slots,
                    targets,
                    started: now,
                    pinged: None,
                });
            }
        }
    }

    /// The first relayed active peer due a spray, and its public IPv4
    /// endpoints from the netmap.
    fn spray_candidate(&self, now: Instant) -> Option<(NodeId, Vec<SocketAddrV4>)> {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.sort();
        ids.into_iter().find_map(|id| {
            let p = self.peers.get(&id)?;
            let due = p.current.is_none()
                && p.online
                && p.active(now)
                && now.duration_since(p.seen) >= SPRAY_AFTER
                && self
                    .birthday
                    .next_spray
                    .get(&id)
                    .is_none_or(|(at, _)| now >= *at);
            if !due {
                return None;
            }
            let mut targets: Vec<SocketAddrV4> = p
                .candidates
                .iter()
                .filter(|(_, c)| c.from_netmap)
                .filter_map(|(a, _)| match a {
                    SocketAddr::V4(v4) if !on_link(&self.local_nets, a.ip()) => Some(*v4),
                    _ => None,
                })
                .collect();
            targets.sort();
            targets.truncate(2);
            (!targets.is_empty()).then_some((id, targets))
        })
    }

    /// Pings the peer's public endpoints from every side socket of the
    /// spray; the first time, asks the peer to scan.
    fn send_spray(&mut self, now: Instant) {
        let Some(spray) = self.birthday.spray.as_mut() else {
            return;
        };
        let first = spray.pinged.is_none();
        spray.pinged = Some(now);
        let node = spray.peer;
        let sockets = u16::try_from(spray.slots.len()).unwrap_or(u16::MAX);
        let own_public = self.netcheck.public;
        let dests: Vec<SocketAddr> = spray
            .slots
            .iter()
            .flat_map(|&slot| spray.targets.iter().map(move |t| side_addr(slot, *t)))
            .collect();
        for d in dests {
            self.ping(node, Dest::Addr(d), None, now);
        }
        if let (true, Some(own_public)) = (first, own_public) {
            let txid = self.txid();
            let sent_at = self.sent_at(now);
            let public = self.public;
            if let Some(peer) = self.peers.get(&node) {
                let payload = DiscoMsg::ScanMe {
                    txid,
                    sender: public,
                    sent_at,
                    sockets,
                    public: own_public,
                }
                .encode(Some(&peer.probe_key));
                self.transmits.push_back(Transmit {
                    dest: Dest::Relay(node),
                    payload,
                });
            }
        }
    }

    /// The spray toward `node` is over: found a path (`found`), or not.
    fn end_spray(&mut self, node: NodeId, found: bool, now: Instant) {
        self.birthday.spray = None;
        let entry = self
            .birthday
            .next_spray
            .entry(node)
            .or_insert((now, SPRAY_BACKOFF / 2));
        let backoff = if found {
            SPRAY_BACKOFF
        } else {
            (entry.1 * 2).clamp(SPRAY_BACKOFF, SPRAY_BACKOFF_MAX)
        };
        *entry = (now + backoff, backoff);
    }

    /// An authenticated, fresh `ScanMe` from `node`: scan its public
    /// address `ip` if this host can help and may, and the netmap lists
    /// that address for `node` too.
    pub(super) fn on_scan_me(&mut self, node: NodeId, ip: IpAddr, now: Instant) {
        if self.netcheck.mapping() != Mapping::EndpointIndependent
            || self.birthday.scans.len() >= MAX_SCANS
            || self.birthday.scans.iter().any(|s| s.peer == node)
            || self
                .birthday
                .last_scan
                .get(&node)
                .is_some_and(|t| now.duration_since(*t) < SCAN_AGAIN)
        {
            return;
        }
        let Some(peer) = self.peers.get(&node) else {
            return;
        };
        if peer.current.is_some() {
            return;
        }
        let listed = peer
            .candidates
            .iter()
            .any(|(a, c)| c.from_netmap && a.ip() == ip);
        let IpAddr::V4(ip) = ip else {
            return;
        };
        if !listed || on_link(&self.local_nets, IpAddr::V4(ip)) {
            return;
        }
        tracing::debug!(peer = node.0, %ip, "scanning a peer behind a NAT that maps per destination");
        self.birthday.last_scan.insert(node, now);
        self.birthday.scans.push(Scan {
            peer: node,
            ip,
            sent: 0,
        });
        self.scan_batch(self.birthday.scans.len() - 1, now);
    }

    fn scan_tick(&mut self, now: Instant) {
        let peers = &self.peers;
        self.birthday.scans.retain(|s| {
            s.sent < SCAN_MAX && peers.get(&s.peer).is_some_and(|p| p.current.is_none())
        });
        for i in 0..self.birthday.scans.len() {
            self.scan_batch(i, now);
        }
    }

    /// The next [`SCAN_PER_TICK`] probes of scan `i`, to random ports.
    fn scan_batch(&mut self, i: usize, now: Instant) {
        if self.pending.len() >= MAX_PENDING {
            return;
        }
        let Some(scan) = self.birthday.scans.get_mut(i) else {
            return;
        };
        let n = SCAN_PER_TICK.min(SCAN_MAX - scan.sent);
        scan.sent += n;
        let (node, ip) = (scan.peer, scan.ip);
        for _ in 0..n {
            let port = self.rng.gen_range(SCAN_PORTS);
            self.ping(node, Dest::Addr(SocketAddr::from((ip, port))), None, now);
        }
    }
}
