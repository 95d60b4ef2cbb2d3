//! The state machine (see the crate docs for how to drive it).

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{RngCore as _, SeedableRng as _};
use weft_proto::disco::{probe_key, DiscoMsg, TxId};
use weft_proto::policy::Cidr;
use weft_proto::NodeId;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::candidates::{
    default_sources, CandidateSource, Origin, Proposal, LEARNED_TTL, MAX_LEARNED,
};
use crate::netcheck::{reflectors, NetcheckReport};
use crate::peer::{Candidate, PeerPaths};
use crate::{Dest, Event, PathInfo, PathKind, PeerInput, PingReply, Transmit, TICK};

/// The largest datagram taken as disco.
const MAX_DISCO_LEN: usize = 256;
/// Probe interval of the current direct path.
const PROBE_CURRENT: Duration = Duration::from_secs(2);
/// Probe interval of other candidates while a direct path works.
const PROBE_OTHERS_DIRECT: Duration = Duration::from_secs(5);
/// Probe interval of candidates while relayed.
const PROBE_RELAYED: Duration = Duration::from_secs(1);
const PUNCH_EVERY: Duration = Duration::from_secs(3);
const PENDING_TTL: Duration = Duration::from_secs(5);
const REFLECT_EVERY: Duration = Duration::from_secs(30);
/// Soonest re-check of the public mapping after a direct path died.
const REFLECT_SOON: Duration = Duration::from_secs(2);
/// First wait before asking a reflector again that did not answer; it
/// doubles up to [`REFLECT_EVERY`].
const REFLECT_RETRY: Duration = Duration::from_secs(1);
/// A ping answered from the same candidate again no sooner than this.
const PING_BACK_AFTER: Duration = Duration::from_millis(500);

/// What the engine is built from.
pub struct EngineConfig {
    /// This host's WireGuard key: probes are authenticated with keys
    /// derived from it and each peer's public key.
    pub secret: StaticSecret,
    /// The coordinator's QUIC address (its reflectors are the next ports).
    pub coordinator: Option<SocketAddr>,
    /// This host's interface networks, to tell LAN candidates from others.
    pub local_nets: Vec<Cidr>,
    /// Seeds the transaction ids.
    pub seed: u64,
    /// The wall clock at `now` (probes carry a clock that must increase).
    pub wall: SystemTime,
    /// Where candidates come from ([`default_sources`] if empty).
    pub sources: Vec<Box<dyn CandidateSource>>,
}

struct Pending {
    node: NodeId,
    to: Dest,
    sent: Instant,
    request: Option<u64>,
}

/// The path engine. See the crate documentation for how to drive it.
pub struct PathEngine {
    public: [u8; 32],
    secret: StaticSecret,
    coordinator: Option<SocketAddr>,
    local_nets: Vec<Cidr>,
    sources: Vec<Box<dyn CandidateSource>>,
    rng: StdRng,
    /// The instant the wall clock was given at, and its microseconds then.
    clock: (Instant, u64),
    last_sent_at: u64,
    peers: HashMap<NodeId, PeerPaths>,
    paths: HashMap<NodeId, PathInfo>,
    pending: HashMap<TxId, Pending>,
    reflect_pending: HashMap<TxId, (usize, Instant)>,
    last_reflect: Option<Instant>,
    reflect_soon: bool,
    /// The reflector asked and not yet answered, when, and the wait before
    /// asking again.
    reflect_waiting: Option<(usize, Instant, Duration)>,
    netcheck: NetcheckReport,
    next_tick: Instant,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Scratch for candidate proposals.
    proposals: Vec<Proposal>,
}

impl PathEngine {
    pub fn new(config: EngineConfig, now: Instant) -> Self {
        let public = PublicKey::from(&config.secret).to_bytes();
        let wall_us = config
            .wall
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let sources = if config.sources.is_empty() {
            default_sources()
        } else {
            config.sources
        };
        let mut engine = PathEngine {
            public,
            secret: config.secret,
            coordinator: config.coordinator,
            local_nets: config.local_nets,
            sources,
            rng: StdRng::seed_from_u64(config.seed),
            clock: (now, wall_us),
            last_sent_at: 0,
            peers: HashMap::new(),
            paths: HashMap::new(),
            pending: HashMap::new(),
            reflect_pending: HashMap::new(),
            last_reflect: None,
            reflect_soon: false,
            reflect_waiting: None,
            netcheck: NetcheckReport::default(),
            next_tick: now,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            proposals: Vec::new(),
        };
        engine.reflect(now);
        engine
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`PathEngine::handle_timeout`] wants to be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Some(self.next_tick)
    }

    /// The current path to `node`.
    pub fn path(&self, node: NodeId) -> Option<&PathInfo> {
        self.paths.get(&node)
    }

    /// Every peer's current path.
    pub fn paths(&self) -> impl Iterator<Item = (NodeId, &PathInfo)> {
        self.paths.iter().map(|(id, p)| (*id, p))
    }

    /// The latest netcheck findings.
    pub fn netcheck(&self) -> &NetcheckReport {
        &self.netcheck
    }

    /// The netmap's peers, all of them (others are forgotten).
    pub fn handle_netmap<'a>(
        &mut self,
        peers: impl IntoIterator<Item = &'a PeerInput>,
        now: Instant,
    ) {
        let mut keep = Vec::new();
        for p in peers {
            keep.push(p.id);
            let entry = self.peers.entry(p.id).or_insert_with(|| {
                let shared = self.secret.diffie_hellman(&PublicKey::from(p.key));
                PeerPaths::new(p.key, probe_key(shared.as_bytes()), p.online, now)
            });
            if entry.key != p.key {
                continue;
            }
            entry.online = p.online;
            for c in entry.candidates.values_mut() {
                c.from_netmap = false;
            }
            self.proposals.clear();
            for s in &mut self.sources {
                s.on_netmap(p.id, &p.endpoints, &mut self.proposals);
            }
            for prop in &self.proposals {
                let c = entry.candidates.entry(prop.addr).or_default();
                match prop.origin {
                    Origin::Netmap => c.from_netmap = true,
                    Origin::Learned => {
                        c.learned.get_or_insert(now);
                    }
                }
            }
            // Drop stale candidates: gone from the netmap and not answering.
            entry
                .candidates
                .retain(|_, c| c.from_netmap || c.learned.is_some() || c.alive(now));
            // Until a direct path answers, traffic goes through the relay; a
            // peer the data plane dropped and added again gets the path in
            // use back (one that has an endpoint keeps it: it may roam).
            let (target, only_if_unset) = match entry.current {
                None => (Dest::Relay(p.id), false),
                Some(ep) => (Dest::Addr(ep), true),
            };
            let kind = kind_of(&self.local_nets, entry.current);
            self.events.push_back(Event::SetPath {
                peer: p.id,
                key: p.key,
                target,
                kind,
                only_if_unset,
            });
        }
        self.peers.retain(|id, _| keep.contains(id));
        self.paths.retain(|id, _| keep.contains(id));
        for id in keep {
            self.evaluate(id, now);
        }
    }

    /// This host's addresses changed (its interface networks are now
    /// `local_nets`): ask the reflector again and probe every candidate of
    /// every peer from the new address at once.
    pub fn handle_network_change(&mut self, local_nets: Vec<Cidr>, now: Instant) {
        self.local_nets = local_nets;
        self.reflect(now);
        let targets: Vec<(NodeId, SocketAddr)> = self
            .peers
            .iter()
            .flat_map(|(id, p)| p.candidates.keys().map(move |a| (*id, *a)))
            .collect();
        for (node, addr) in targets {
            self.ping(node, Dest::Addr(addr), None, now);
        }
    }

    /// `weft ping`: probe `node` on its current path; the answer comes as
    /// [`Event::PingReply`] with this `request` number.
    pub fn ping_peer(&mut self, node: NodeId, request: u64, now: Instant) {
        let Some(peer) = self.peers.get(&node) else {
            return;
        };
        let to = peer.current.map_or(Dest::Relay(node), Dest::Addr);
        self.ping(node, to, Some(request), now);
    }

    /// The driver could not apply an [`Event::SetPath`] for `node` (the
    /// data plane has no such peer yet): forget the choice, so the next
    /// evaluation makes it again.
    pub fn handle_path_refused(&mut self, node: NodeId) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.current = None;
        }
    }

    /// A punch request from `node`: probe all its candidates now.
    pub fn handle_punch(&mut self, node: NodeId, now: Instant) {
        let Some(peer) = self.peers.get(&node) else {
            return;
        };
        let targets: Vec<SocketAddr> = peer.candidates.keys().copied().collect();
        for t in targets {
            self.ping(node, Dest::Addr(t), None, now);
        }
    }

    /// A datagram that may be disco, from an address or the relay.
    pub fn handle_disco(&mut self, from: Dest, bytes: &[u8], now: Instant) {
        if bytes.len() > MAX_DISCO_LEN {
            return;
        }
        let Ok(msg) = DiscoMsg::decode(bytes) else {
            return;
        };
        if let Some(sender) = msg.sender() {
            let Some((&node, peer)) = self.peers.iter_mut().find(|(_, p)| p.key == sender) else {
                return;
            };
            let Ok(msg) = msg.verify(&peer.probe_key) else {
                return;
            };
            match msg {
                DiscoMsg::Ping { txid, sent_at, .. } if peer.replay.accept(sent_at, &txid) => {
                    self.on_ping(node, from, txid, now);
                }
                DiscoMsg::Pong { txid, .. } => self.on_pong(node, from, txid, now),
                _ => {}
            }
            return;
        }
        if let Some(DiscoMsg::ReflectReply { txid, observed }) = msg.unauthenticated() {
            let Some((which, _)) = self.reflect_pending.remove(&txid) else {
                return;
            };
            if self.reflect_waiting.is_some_and(|(w, _, _)| w == which) {
                self.reflect_waiting = None;
            }
            let before = self.netcheck.clone();
            self.netcheck.udp = true;
            if which == 0 {
                self.netcheck.public = Some(observed);
                if before.public != Some(observed) {
                    self.events.push_back(Event::PublicMapping(observed));
                }
                self.reflect_to(1, now);
            } else {
                self.netcheck.public_second = Some(observed);
            }
            if self.netcheck != before {
                self.events
                    .push_back(Event::Netcheck(self.netcheck.clone()));
            }
        }
    }

    /// Time passed: probes, punches, expiries and reflector checks due by
    /// `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now < self.next_tick {
            return;
        }
        self.next_tick = now + TICK;
        self.pending
            .retain(|_, p| now.duration_since(p.sent) < PENDING_TTL);
        let since = self.last_reflect.map(|t| now.duration_since(t));
        if since.is_none_or(|t| t >= REFLECT_EVERY)
            || (self.reflect_soon && since.is_none_or(|t| t >= REFLECT_SOON))
        {
            self.reflect_soon = false;
            self.reflect(now);
        } else if let Some((which, asked, wait)) = self.reflect_waiting {
            // A lost request or answer: ask again, backing off (a host
            // whose UDP is blocked asks at most every REFLECT_EVERY).
            if now.duration_since(asked) >= wait {
                self.reflect_to(which, now);
                if let Some(w) = &mut self.reflect_waiting {
                    w.2 = (wait * 2).min(REFLECT_EVERY);
                }
            }
        }
        for peer in self.peers.values_mut() {
            peer.expire(now, LEARNED_TTL);
        }
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.sort();
        for node in ids {
            self.evaluate(node, now);
            let Some(peer) = self.peers.get(&node) else {
                continue;
            };
            let direct_alive = peer.current.is_some();
            let mut due: Vec<SocketAddr> = peer
                .candidates
                .iter()
                .filter(|(addr, c)| {
                    let every = if peer.current == Some(**addr) {
                        PROBE_CURRENT
                    } else if direct_alive {
                        PROBE_OTHERS_DIRECT
                    } else {
                        PROBE_RELAYED
                    };
                    c.last_ping.is_none_or(|t| now.duration_since(t) >= every)
                })
                .map(|(a, _)| *a)
                .collect();
            due.sort();
            let punch = !direct_alive
                && peer.online
                && peer
                    .last_punch
                    .is_none_or(|t| now.duration_since(t) >= PUNCH_EVERY);
            if punch {
                self.events.push_back(Event::Punch(node));
                if let Some(p) = self.peers.get_mut(&node) {
                    p.last_punch = Some(now);
                }
            }
            for addr in due {
                self.ping(node, Dest::Addr(addr), None, now);
            }
        }
    }

    fn reflect(&mut self, now: Instant) {
        self.last_reflect = Some(now);
        self.reflect_to(0, now);
    }

    /// Asks reflector `which`; the second is asked once the first answers
    /// (two first packets racing through a NAT can get two mappings even
    /// where it maps endpoint-independently).
    fn reflect_to(&mut self, which: usize, now: Instant) {
        let Some(coord) = self.coordinator else {
            return;
        };
        let Some(r) = reflectors(coord).get(which).copied() else {
            return;
        };
        self.reflect_pending
            .retain(|_, (_, t)| now.duration_since(*t) < PENDING_TTL);
        let txid = self.txid();
        self.reflect_pending.insert(txid, (which, now));
        let wait = match self.reflect_waiting {
            Some((w, _, wait)) if w == which => wait,
            _ => REFLECT_RETRY,
        };
        self.reflect_waiting = Some((which, now, wait));
        self.transmits.push_back(Transmit {
            dest: Dest::Addr(r),
            payload: DiscoMsg::ReflectRequest { txid }.encode(None),
        });
    }

    fn txid(&mut self) -> TxId {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        txid
    }

    /// The clock a ping carries: wall-clock microseconds, but always past
    /// the last one sent, so the peer's replay guard sees it increase.
    fn sent_at(&mut self, now: Instant) -> u64 {
        let (base, base_us) = self.clock;
        let elapsed = u64::try_from(now.duration_since(base).as_micros()).unwrap_or(u64::MAX);
        self.last_sent_at = base_us
            .saturating_add(elapsed)
            .max(self.last_sent_at.saturating_add(1));
        self.last_sent_at
    }

    fn on_ping(&mut self, node: NodeId, from: Dest, txid: TxId, now: Instant) {
        let public = self.public;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let observed = match from {
            Dest::Addr(a) => a,
            // What a relayed ping was "observed" from does not matter.
            Dest::Relay(_) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0),
        };
        let pong = DiscoMsg::Pong {
            txid,
            sender: public,
            observed,
        }
        .encode(Some(&peer.probe_key));
        let mut due = false;
        if let Dest::Addr(src) = from {
            if !peer.candidates.contains_key(&src) && peer.learned_count() < MAX_LEARNED {
                self.proposals.clear();
                for s in &mut self.sources {
                    s.on_probe(node, src, &mut self.proposals);
                }
                for prop in &self.proposals {
                    if peer.learned_count() >= MAX_LEARNED {
                        break;
                    }
                    peer.candidates.entry(prop.addr).or_insert(Candidate {
                        learned: Some(now),
                        ..Candidate::default()
                    });
                }
            }
            due = peer.candidates.get(&src).is_some_and(|c| {
                c.last_ping
                    .is_none_or(|t| now.duration_since(t) >= PING_BACK_AFTER)
            });
        }
        self.transmits.push_back(Transmit {
            dest: from,
            payload: pong,
        });
        if due {
            self.ping(node, from, None, now);
        }
    }

    fn on_pong(&mut self, node: NodeId, from: Dest, txid: TxId, now: Instant) {
        let Some(p) = self.pending.remove(&txid) else {
            return;
        };
        if p.node != node {
            return;
        }
        let rtt = now.duration_since(p.sent);
        if let Some(request) = p.request {
            let endpoint = match p.to {
                Dest::Addr(a) => Some(a),
                Dest::Relay(_) => None,
            };
            self.events.push_back(Event::PingReply {
                request,
                reply: PingReply {
                    kind: kind_of(&self.local_nets, endpoint),
                    endpoint,
                    rtt_ms: rtt.as_secs_f64() * 1000.0,
                },
            });
        }
        let Dest::Addr(to) = p.to else {
            return;
        };
        // The pong must come from where the ping went.
        if from != p.to {
            return;
        }
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let c = peer.candidates.entry(to).or_default();
        c.last_pong = Some(now);
        c.rtt = Some(rtt);
        self.evaluate(node, now);
    }

    fn ping(&mut self, node: NodeId, to: Dest, request: Option<u64>, now: Instant) {
        if !self.peers.contains_key(&node) {
            return;
        }
        let txid = self.txid();
        let sent_at = self.sent_at(now);
        let public = self.public;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let bytes = DiscoMsg::Ping {
            txid,
            sender: public,
            sent_at,
        }
        .encode(Some(&peer.probe_key));
        if let Dest::Addr(a) = to {
            if let Some(c) = peer.candidates.get_mut(&a) {
                c.last_ping = Some(now);
            }
        }
        self.pending.insert(
            txid,
            Pending {
                node,
                to,
                sent: now,
                request,
            },
        );
        self.transmits.push_back(Transmit {
            dest: to,
            payload: bytes,
        });
    }

    /// Picks the path for `node` and asks the driver to apply it when it
    /// changes.
    fn evaluate(&mut self, node: NodeId, now: Instant) {
        let nets = &self.local_nets;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let next = peer.choose(now, |a| on_link(nets, a.ip()));
        if next != peer.current {
            let kind = kind_of(nets, next);
            self.events.push_back(Event::SetPath {
                peer: node,
                key: peer.key,
                target: next.map_or(Dest::Relay(node), Dest::Addr),
                kind,
                only_if_unset: false,
            });
            if next.is_some() && peer.direct_after.is_none() {
                peer.direct_after = Some(now.duration_since(peer.seen));
            }
            if next.is_none() && peer.current.is_some() {
                self.reflect_soon = true;
            }
            peer.current = next;
        }
        let kind = kind_of(nets, peer.current);
        let reason = (kind == PathKind::Relay)
            .then(|| relay_reason(peer.online, peer.direct_after.is_some(), &self.netcheck));
        let info = PathInfo {
            kind,
            endpoint: peer.current,
            rtt_ms: peer
                .current
                .and_then(|c| peer.candidates.get(&c))
                .and_then(|c| c.rtt)
                .map(|r| r.as_secs_f64() * 1000.0),
            reason,
            direct_after_secs: peer.direct_after.map(|d| d.as_secs_f64()),
        };
        let changed = self
            .paths
            .get(&node)
            .is_none_or(|old| old.kind != info.kind || old.endpoint != info.endpoint);
        self.paths.insert(node, info);
        if changed {
            self.events.push_back(Event::PathChanged(node));
        }
    }
}

fn on_link(nets: &[Cidr], ip: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(ip))
}

fn kind_of(nets: &[Cidr], endpoint: Option<SocketAddr>) -> PathKind {
    match endpoint {
        Some(e) if on_link(nets, e.ip()) => PathKind::Lan,
        Some(_) => PathKind::Direct,
        None => PathKind::Relay,
    }
}

/// Why a peer is relayed, in words; `was_direct`: it had a direct path
/// before.
pub(crate) fn relay_reason(online: bool, was_direct: bool, nc: &NetcheckReport) -> String {
    if !online {
        return "the peer is offline".into();
    }
    if was_direct {
        return "the direct path stopped answering probes; relaying while probing it again".into();
    }
    if !nc.udp {
        return "this host gets no UDP answer from the coordinator's reflector (UDP blocked?)"
            .into();
    }
    match nc.mapping() {
        crate::netcheck::Mapping::EndpointDependent => "no direct path answered: this host's NAT maps endpoint-dependently (symmetric), which only a peer NAT with endpoint-independent or address-dependent filtering lets through".into(),
        _ => "no direct path answered: the peer's NAT maps endpoint-dependently or filters strictly (see `weft netcheck` on the peer)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn relay_reasons_name_the_cause() {
        let mut nc = NetcheckReport::default();
        assert!(relay_reason(false, false, &nc).contains("offline"));
        assert!(relay_reason(true, false, &nc).contains("UDP"));
        nc.udp = true;
        nc.public = Some(addr("203.0.113.11:1"));
        nc.public_second = Some(addr("203.0.113.11:2"));
        assert!(relay_reason(true, false, &nc).contains("symmetric"));
        assert!(relay_reason(true, true, &nc).contains("stopped answering"));
    }

    fn engine(seed: u64, now: Instant) -> PathEngine {
        PathEngine::new(
            EngineConfig {
                secret: StaticSecret::from([seed as u8; 32]),
                coordinator: Some(addr("192.0.2.1:7443")),
                local_nets: vec![Cidr::new_truncating(IpAddr::from([198, 18, 0, 1]), 24)],
                seed,
                wall: SystemTime::UNIX_EPOCH,
                sources: Vec::new(),
            },
            now,
        )
    }

    #[test]
    fn asks_the_reflector_at_start_and_again_when_it_does_not_answer() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        let first = e.poll_transmit().map(|t| t.dest);
        assert_eq!(first, Some(Dest::Addr(addr("192.0.2.1:7444"))));
        assert_eq!(e.poll_transmit(), None);
        e.handle_timeout(t0 + Duration::from_millis(1100));
        let again = e.poll_transmit().map(|t| t.dest);
        assert_eq!(
            again,
            Some(Dest::Addr(addr("192.0.2.1:7444"))),
            "a lost request is retried"
        );
        assert!(e.poll_timeout().is_some_and(|t| t > t0));
    }

    #[test]
    fn a_new_peer_starts_on_the_relay_and_is_probed_and_punched() {
        let t0 = Instant::now();
        let mut e = engine(1, t0);
        while e.poll_transmit().is_some() {}
        let peer_secret = StaticSecret::from([9u8; 32]);
        let peer = PeerInput {
            id: NodeId(2),
            key: PublicKey::from(&peer_secret).to_bytes(),
            endpoints: vec![addr("203.0.113.9:51820")],
            online: true,
        };
        e.handle_netmap([&peer], t0);
        assert!(matches!(
            e.poll_event(),
            Some(Event::SetPath {
                target: Dest::Relay(NodeId(2)),
                kind: PathKind::Relay,
                ..
            })
        ));
        assert_eq!(e.path(NodeId(2)).map(|p| p.kind), Some(PathKind::Relay));
        e.handle_timeout(t0 + TICK);
        let sent: Vec<Dest> = std::iter::from_fn(|| e.poll_transmit())
            .map(|t| t.dest)
            .collect();
        assert!(
            sent.contains(&Dest::Addr(addr("203.0.113.9:51820"))),
            "{sent:?}"
        );
        let events: Vec<Event> = std::iter::from_fn(|| e.poll_event()).collect();
        assert!(events.contains(&Event::Punch(NodeId(2))), "{events:?}");
        // Garbage and oversized datagrams change nothing.
        e.handle_disco(Dest::Addr(addr("203.0.113.9:51820")), &[0xff; 40], t0);
        e.handle_disco(Dest::Addr(addr("203.0.113.9:51820")), &[0; 4000], t0);
        assert_eq!(e.poll_transmit(), None);
    }
}
