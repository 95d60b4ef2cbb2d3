//! A deterministic simulated internet for the path engine: hosts (each a
//! real [`PathEngine`]) on LANs behind NAT models or on public addresses,
//! a coordinator that reflects, relays and forwards punches, packet loss
//! and delay, and a fake clock. Nothing touches the network or sleeps: a
//! run of minutes of simulated time takes milliseconds.
//!
//! Addresses follow the lab plan: public hosts and NATs on 203.0.113.0/24,
//! the coordinator at 192.0.2.1, LANs behind NAT `n` on 198.18.n.0/24.

pub mod nat;
mod wire;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use weft_paths::{Dest, EngineConfig, Event, PathEngine, PathKind, PeerInput};
use weft_proto::policy::Cidr;
use weft_proto::NodeId;
use x25519_dalek::{PublicKey, StaticSecret};

pub use nat::{Dependence, Nat, NatKind};

pub const COORDINATOR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 7443);
const WG_PORT: u16 = 51820;
/// How long the coordinator takes to push a netmap after a change.
const NETMAP_DELAY: Duration = Duration::from_millis(30);

/// Where a host sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    /// On a public address.
    Public,
    /// On the LAN behind NAT `n`.
    Behind(usize),
    /// Behind a firewall that drops all UDP (relay only).
    UdpBlocked,
}

#[derive(Clone, Debug)]
pub struct Topology {
    pub nats: Vec<NatKind>,
    pub hosts: Vec<Place>,
    /// Chance a datagram is lost, 0..1.
    pub loss: f64,
    /// One-way delay, uniform in this range.
    pub delay: (Duration, Duration),
    pub seed: u64,
    /// Host 0 is a hub every other host peers with; the others do not peer
    /// with each other (one host with many peers, cheaply).
    pub star: bool,
}

enum Wire {
    Udp { src: SocketAddr, dst: SocketAddr },
    Relay { from: NodeId, to: NodeId },
    Punch { from: NodeId, to: NodeId },
}

struct Host {
    id: NodeId,
    key: [u8; 32],
    place: Place,
    /// Its own address (on its LAN, or public).
    inside: SocketAddr,
    engine: PathEngine,
    public_mapping: Option<SocketAddr>,
    /// The data plane: where each peer's traffic goes.
    targets: HashMap<NodeId, (Dest, PathKind)>,
    /// Datagrams it sent on its socket and through the relay.
    sent: u64,
    /// Of them, pings (probes it started, not answers).
    pings: u64,
    /// The side sockets open (slots; each bound at [`side_port`]).
    side: Vec<u16>,
    /// Times it asked for more side sockets than it had (sprays).
    sprays: u64,
}

/// The local port of side socket `slot`.
pub fn side_port(slot: u16) -> u16 {
    40000 + slot
}

pub struct Sim {
    pub now: Instant,
    start: Instant,
    rng: StdRng,
    pub nats: Vec<Nat>,
    hosts: Vec<Host>,
    queue: BTreeMap<(Instant, u64), (Wire, Vec<u8>)>,
    seq: u64,
    loss: f64,
    delay: (Duration, Duration),
    netmap_due: Option<Instant>,
    /// While false, the coordinator relays nothing and pushes no netmap.
    pub coordinator_up: bool,
    star: bool,
    /// Each host's next deadline (stale entries are skipped).
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
}

/// LAN `n` is 198.18.0.0/15 cut into /19s: 8,190 hosts each, 16 LANs.
pub const LAN_PREFIX: u8 = 19;
const LAN_BASE: u32 = u32::from_be_bytes([198, 18, 0, 0]);

fn lan_addr(nat: usize, i: usize) -> SocketAddr {
    assert!(
        nat < 16 && i < 8000,
        "the simulated LANs are /19s of 198.18.0.0/15"
    );
    let ip = LAN_BASE + ((nat as u32) << (32 - LAN_PREFIX)) + 10 + i as u32;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), WG_PORT)
}

/// The LAN an address is on, if any.
pub(crate) fn lan_of(addr: SocketAddr) -> Option<usize> {
    match addr.ip() {
        IpAddr::V4(ip) if u32::from(ip) >> 17 == LAN_BASE >> 17 => {
            Some(((u32::from(ip) - LAN_BASE) >> (32 - LAN_PREFIX)) as usize)
        }
        _ => None,
    }
}

/// Public hosts are 203.0.113.1-199; NATs 203.0.113.201 and up.
fn public_ip(i: usize) -> Ipv4Addr {
    assert!(
        i < 199 || (200..=254).contains(&i),
        "the simulated internet is 203.0.113.0/24"
    );
    Ipv4Addr::new(203, 0, 113, u8::try_from(i + 1).unwrap_or(u8::MAX))
}

impl Sim {
    pub fn new(topo: &Topology) -> Sim {
        Sim::with_window(topo, weft_paths::peer::ACTIVE_WINDOW)
    }

    /// With peers idle after `active_window` without data.
    pub fn with_window(topo: &Topology, active_window: Duration) -> Sim {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(topo.seed);
        let nats = topo
            .nats
            .iter()
            .enumerate()
            .map(|(n, k)| Nat::new(*k, public_ip(200 + n), Duration::from_secs(30)))
            .collect();
        let hosts = topo
            .hosts
            .iter()
            .enumerate()
            .map(|(i, place)| {
                let secret = StaticSecret::from(rng.gen::<[u8; 32]>());
                let key = PublicKey::from(&secret).to_bytes();
                let inside = match place {
                    Place::Behind(n) => lan_addr(*n, i),
                    Place::Public | Place::UdpBlocked => {
                        SocketAddr::new(IpAddr::V4(public_ip(i)), WG_PORT)
                    }
                };
                let local_nets = match inside.ip() {
                    IpAddr::V4(ip) => vec![Cidr::new_truncating(
                        IpAddr::V4(ip),
                        if matches!(place, Place::Behind(_)) {
                            LAN_PREFIX
                        } else {
                            24
                        },
                    )],
                    IpAddr::V6(_) => Vec::new(),
                };
                let engine = PathEngine::new(
                    EngineConfig {
                        secret,
                        coordinator: Some(COORDINATOR),
                        local_nets,
                        seed: rng.gen(),
                        wall: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
                        sources: Vec::new(),
                        active_window,
                    },
                    start,
                );
                Host {
                    id: NodeId(i as u64 + 1),
                    key,
                    place: *place,
                    inside,
                    engine,
                    public_mapping: None,
                    targets: HashMap::new(),
                    sent: 0,
                    pings: 0,
                    side: Vec::new(),
                    sprays: 0,
                }
            })
            .collect();
        let mut sim = Sim {
            now: start,
            start,
            rng,
            nats,
            hosts,
            queue: BTreeMap::new(),
            seq: 0,
            loss: topo.loss,
            delay: topo.delay,
            netmap_due: Some(start),
            coordinator_up: true,
            star: topo.star,
            timers: BinaryHeap::new(),
        };
        for i in 0..sim.hosts.len() {
            sim.drain(i);
        }
        sim
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn elapsed(&self) -> Duration {
        self.now.duration_since(self.start)
    }

    /// Host `i`'s engine's view of its path to host `j`.
    pub fn path(&self, i: usize, j: usize) -> Option<PathKind> {
        let peer = self.hosts.get(j)?.id;
        self.hosts.get(i)?.engine.path(peer).map(|p| p.kind)
    }

    /// Where host `i`'s data plane sends host `j`'s traffic.
    pub fn target(&self, i: usize, j: usize) -> Option<Dest> {
        let peer = self.hosts.get(j)?.id;
        self.hosts.get(i)?.targets.get(&peer).map(|t| t.0)
    }

    /// Datagrams host `i` has sent so far.
    pub fn sent(&self, i: usize) -> u64 {
        self.hosts.get(i).map_or(0, |h| h.sent)
    }

    /// Pings host `i` has sent so far (the probes it started).
    pub fn pings(&self, i: usize) -> u64 {
        self.hosts.get(i).map_or(0, |h| h.pings)
    }

    /// Side sockets host `i` has open now, and the sprays it started.
    pub fn side_sockets(&self, i: usize) -> (usize, u64) {
        self.hosts
            .get(i)
            .map_or((0, 0), |h| (h.side.len(), h.sprays))
    }

    pub fn place(&self, i: usize) -> Place {
        self.hosts[i].place
    }

    /// Runs until `now + d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        loop {
            let next_packet = self.queue.keys().next().map(|k| k.0);
            // Drop timers a host has since moved.
            while let Some(Reverse((t, i))) = self.timers.peek().copied() {
                if self.hosts[i].engine.poll_timeout() == Some(t) {
                    break;
                }
                self.timers.pop();
            }
            let next_timer = self.timers.peek().map(|Reverse((t, _))| *t);
            let next = [next_packet, next_timer, self.netmap_due]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = next.filter(|t| *t <= end) else {
                self.now = end;
                return;
            };
            self.now = self.now.max(next);
            let now = self.now;
            if self.netmap_due.is_some_and(|t| t <= now) {
                self.netmap_due = None;
                self.push_netmap();
            }
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > now {
                    break;
                }
                let (wire, payload) = entry.remove();
                self.deliver(wire, &payload);
            }
            while let Some(Reverse((t, i))) = self.timers.peek().copied() {
                if t > now {
                    break;
                }
                self.timers.pop();
                if self.hosts[i].engine.poll_timeout() == Some(t) {
                    self.hosts[i].engine.handle_timeout(now);
                    self.drain(i);
                }
            }
        }
    }

    fn push_netmap(&mut self) {
        if !self.coordinator_up {
            self.netmap_due = Some(self.now + Duration::from_secs(1));
            return;
        }
        let peers: Vec<PeerInput> = self
            .hosts
            .iter()
            .map(|h| {
                let mut endpoints = vec![h.inside];
                if let Some(p) = h.public_mapping.filter(|p| *p != h.inside) {
                    endpoints.push(p);
                }
                PeerInput {
                    id: h.id,
                    key: h.key,
                    endpoints,
                    online: true,
                }
            })
            .collect();
        let now = self.now;
        for i in 0..self.hosts.len() {
            let me = self.hosts[i].id;
            // In a star, the hub sees everyone and the others the hub.
            let others: Vec<&PeerInput> = if self.star && i > 0 {
                peers.iter().take(1).collect()
            } else {
                peers.iter().filter(|p| p.id != me).collect()
            };
            self.hosts[i].engine.handle_netmap(others, now);
            self.drain(i);
        }
    }

    /// Data flows between hosts `i` and `j` now (what the data plane tells
    /// each engine).
    pub fn traffic(&mut self, i: usize, j: usize) {
        let now = self.now;
        let (a, b) = (self.hosts[i].id, self.hosts[j].id);
        self.hosts[i].engine.handle_traffic(b, now);
        self.drain(i);
        self.hosts[j].engine.handle_traffic(a, now);
        self.drain(j);
    }

    fn drain(&mut self, i: usize) {
        while let Some(t) = self.hosts[i].engine.poll_transmit() {
            self.hosts[i].sent += 1;
            // A disco ping: the magic, then kind 3 (see weft_proto::disco).
            if t.payload.starts_with(&weft_proto::disco::MAGIC) && t.payload.get(4) == Some(&3) {
                self.hosts[i].pings += 1;
            }
            match t.dest {
                Dest::Addr(dst) => match weft_paths::side::parse_side(&dst) {
                    Some((slot, real)) => {
                        if self.hosts[i].side.contains(&slot) {
                            self.send_udp(i, side_port(slot), real.into(), t.payload);
                        }
                    }
                    None => self.send_udp(i, WG_PORT, dst, t.payload),
                },
                Dest::Relay(to) => {
                    let from = self.hosts[i].id;
                    self.schedule(Wire::Relay { from, to }, t.payload, 2);
                }
            }
        }
        while let Some(e) = self.hosts[i].engine.poll_event() {
            match e {
                Event::SetPath {
                    peer,
                    target,
                    kind,
                    only_if_unset,
                    ..
                } => {
                    let targets = &mut self.hosts[i].targets;
                    if !(only_if_unset && targets.contains_key(&peer)) {
                        targets.insert(peer, (target, kind));
                    }
                }
                Event::Punch(to) => {
                    let from = self.hosts[i].id;
                    self.schedule(Wire::Punch { from, to }, Vec::new(), 2);
                }
                Event::SideSockets(slots) => {
                    let h = &mut self.hosts[i];
                    if slots.len() > h.side.len() {
                        h.sprays += 1;
                    }
                    h.side = slots;
                }
                Event::PublicMapping(addr) => {
                    self.hosts[i].public_mapping = Some(addr);
                    self.netmap_due.get_or_insert(self.now + NETMAP_DELAY);
                }
                _ => {}
            }
        }
        if let Some(t) = self.hosts[i].engine.poll_timeout() {
            self.timers.push(Reverse((t, i)));
        }
    }

    fn index(&self, id: NodeId) -> Option<usize> {
        self.hosts.iter().position(|h| h.id == id)
    }
}

/// Whether theory allows a direct path between hosts placed `a` and `b`.
///
/// Between an easy NAT and a hard one: directly, if the hard side's
/// mapping lets in what the easy side sends to it (its filter does not
/// look at the port), or by the birthday technique if the hard side knows
/// it is hard: its mapping depends on the port too, so the coordinator's
/// two reflector ports see two mappings. A NAT whose mapping depends on
/// the address only looks easy to reflectors on one address, and is not
/// sprayed from.
pub fn direct_possible(a: Place, b: Place, nats: &[NatKind]) -> bool {
    use Place::*;
    match (a, b) {
        (UdpBlocked, _) | (_, UdpBlocked) => false,
        (Public, _) | (_, Public) => true,
        (Behind(x), Behind(y)) if x == y => true,
        (Behind(x), Behind(y)) => {
            let (kx, ky) = (nats[x], nats[y]);
            match (kx.easy(), ky.easy()) {
                (true, true) => true,
                // The hard side's new mapping toward the easy side is let in
                // only by a filter that does not look at the port.
                (true, false) => {
                    kx.filtering != Dependence::AddressAndPortDependent
                        || ky.mapping == Dependence::AddressAndPortDependent
                }
                (false, true) => {
                    ky.filtering != Dependence::AddressAndPortDependent
                        || kx.mapping == Dependence::AddressAndPortDependent
                }
                (false, false) => false,
            }
        }
    }
}
