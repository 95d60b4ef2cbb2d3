//! The birthday technique in the engine (see [`crate::birthday`]): the
//! hard side's spray, the easy side's scan, and the side sockets kept.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::Instant;

use rand::Rng as _;
use weft_proto::disco::DiscoMsg;
use weft_proto::NodeId;

use super::{on_link, PathEngine};
use crate::birthday::{
    Scan, Spray, SprayPeer, MAX_KEPT, MAX_SCANS, MAX_SPRAY_PEERS, SCAN_AGAIN, SCAN_MAX,
    SCAN_ME_EVERY, SCAN_PER_TICK, SCAN_PORTS, SPRAY_AFTER, SPRAY_BACKOFF, SPRAY_BACKOFF_MAX,
    SPRAY_FOR, SPRAY_REFRESH,
};
use crate::netcheck::Mapping;
use crate::side::{parse_side, side_addr};
use crate::{Dest, Event, Transmit};

/// Pending probes at most before a scan holds back its next batch.
const MAX_PENDING: usize = 8192;

impl PathEngine {
    /// The side sockets in use ([`Event::SideSockets`] announces changes).
    pub fn side_sockets(&self) -> Vec<u16> {
        self.birthday.open_slots()
    }

    /// Once a tick: the spray and the scans go on, end, or start.
    pub(super) fn birthday_tick(&mut self, now: Instant) {
        let before = self.birthday.open_slots();
        self.keep_used_slots();
        self.spray_tick(now);
        self.scan_tick(now);
        let after = self.birthday.open_slots();
        if after != before {
            self.events.push_back(Event::SideSockets(after));
        }
    }

    /// Side sockets some peer's current path goes through stay open.
    fn keep_used_slots(&mut self) {
        let mut kept: BTreeSet<u16> = self
            .peers
            .values()
            .filter_map(|p| p.current.as_ref().and_then(parse_side))
            .map(|(slot, _)| slot)
            .collect();
        while kept.len() > MAX_KEPT {
            kept.pop_last();
        }
        self.birthday.kept = kept;
    }

    fn spray_tick(&mut self, now: Instant) {
        let hard = self.netcheck.mapping() == Mapping::EndpointDependent;
        // Peers done with: a path found (through a side socket or not),
        // their time up, gone, or this host no longer behind a hard NAT.
        let mut done = Vec::new();
        if let Some(spray) = &self.birthday.spray {
            for sp in &spray.peers {
                let direct = self.peers.get(&sp.node).map(|p| p.current.is_some());
                let over = now.duration_since(sp.started) >= SPRAY_FOR;
                if direct != Some(false) || over || !hard {
                    done.push((sp.node, direct == Some(true)));
                }
            }
        }
        for (node, found) in done {
            if let Some(spray) = self.birthday.spray.as_mut() {
                spray.peers.retain(|p| p.node != node);
            }
            self.backoff(node, found, now);
        }
        if self
            .birthday
            .spray
            .as_ref()
            .is_some_and(|s| s.peers.is_empty())
        {
            self.birthday.spray = None;
        }
        if !hard || self.birthday.kept.len() >= MAX_KEPT {
            return;
        }
        let room = MAX_SPRAY_PEERS - self.birthday.spray.as_ref().map_or(0, |s| s.peers.len());
        let joining = self.spray_candidates(now, room);
        if !joining.is_empty() {
            let free = self.birthday.free_slots();
            let spray = self.birthday.spray.get_or_insert_with(|| Spray {
                slots: free,
                peers: Vec::new(),
            });
            for (node, targets) in joining {
                tracing::debug!(
                    peer = node.0,
                    sockets = spray.slots.len(),
                    "spraying toward a peer, for the birthday technique"
                );
                spray.peers.push(SprayPeer {
                    node,
                    targets,
                    started: now,
                    pinged: None,
                    asked: None,
                });
            }
        }
        self.send_spray(now);
    }

    /// Up to `room` relayed active peers due a spray, and their public
    /// IPv4 endpoints from the netmap.
    fn spray_candidates(&self, now: Instant, room: usize) -> Vec<(NodeId, Vec<SocketAddrV4>)> {
        if room == 0 {
            return Vec::new();
        }
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.sort();
        ids.into_iter()
            .filter_map(|id| {
                let p = self.peers.get(&id)?;
                let due = p.current.is_none()
                    && p.online
                    && p.active(now)
                    && now.duration_since(p.seen) >= SPRAY_AFTER
                    && !self.birthday.spraying(id)
                    && self
                        .birthday
                        .next_spray
                        .get(&id)
                        .is_none_or(|(at, _)| now >= *at);
                if !due {
                    return None;
                }
                let targets = self.spray_targets(id);
                (!targets.is_empty()).then_some((id, targets))
            })
            .take(room)
            .collect()
    }

    /// The endpoints of `node` a spray pings: IPv4, from the netmap, not
    /// on this host's own networks (the first two).
    fn spray_targets(&self, node: NodeId) -> Vec<SocketAddrV4> {
        let Some(p) = self.peers.get(&node) else {
            return Vec::new();
        };
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
        targets
    }

    /// Pings every spray peer that is due from every side socket of the
    /// spray (all its endpoints every [`SPRAY_REFRESH`], and an endpoint
    /// the netmap just gave it at once), and asks it to scan (again).
    fn send_spray(&mut self, now: Instant) {
        let Some(spray) = &self.birthday.spray else {
            return;
        };
        let fresh: Vec<Vec<SocketAddrV4>> = spray
            .peers
            .iter()
            .map(|sp| self.spray_targets(sp.node))
            .collect();
        let Some(spray) = self.birthday.spray.as_mut() else {
            return;
        };
        let sockets = u16::try_from(spray.slots.len()).unwrap_or(u16::MAX);
        let mut pings = Vec::new();
        let mut ask = Vec::new();
        for (sp, fresh) in spray.peers.iter_mut().zip(fresh) {
            // New peers wait a tick: their sockets may be opening.
            if sp.started == now {
                continue;
            }
            let due: Vec<SocketAddrV4> = if sp
                .pinged
                .is_none_or(|t| now.duration_since(t) >= SPRAY_REFRESH)
            {
                sp.pinged = Some(now);
                fresh.clone()
            } else {
                fresh
                    .iter()
                    .filter(|t| !sp.targets.contains(t))
                    .copied()
                    .collect()
            };
            sp.targets = fresh;
            for &slot in &spray.slots {
                pings.extend(due.iter().map(|t| (sp.node, side_addr(slot, *t))));
            }
            if sp
                .asked
                .is_none_or(|t| now.duration_since(t) >= SCAN_ME_EVERY)
            {
                sp.asked = Some(now);
                ask.push(sp.node);
            }
        }
        for (node, d) in pings {
            self.ping(node, Dest::Addr(d), None, now);
        }
        let Some(own_public) = self.netcheck.public else {
            return;
        };
        for node in ask {
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

    /// A spray toward `node` is over: it found a path (`found`), or not.
    fn backoff(&mut self, node: NodeId, found: bool, now: Instant) {
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
