//! The state machine (see the crate docs for how to drive it): its state,
//! the netmap, the timer and the choice of path; probing is in [`probe`],
//! the reflector in [`reflect`].

mod birthday;
mod probe;
mod reflect;
mod schedule;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::SeedableRng as _;
use weft_proto::disco::{probe_key, TxId};
use weft_proto::policy::Cidr;
use weft_proto::NodeId;
use x25519_dalek::{PublicKey, StaticSecret};

use crate::candidates::{default_sources, CandidateSource, Origin, Proposal, LEARNED_TTL};
use crate::netcheck::{relay_reason, NetcheckReport};
use crate::peer::PeerPaths;
use crate::{Dest, Event, PathInfo, PathKind, PeerInput, Transmit, TICK};

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
    /// How long after its last data a peer stays on the full probing
    /// schedule (see [`crate::peer::ACTIVE_WINDOW`], the usual value).
    pub active_window: Duration,
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
    /// Where the sweep of idle peers goes on.
    sweep: usize,
    active_window: Duration,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Scratch for candidate proposals.
    proposals: Vec<Proposal>,
    /// Sprays, scans and side sockets ([`crate::birthday`]).
    birthday: crate::birthday::Birthday,
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
            sweep: 0,
            active_window: config.active_window,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            proposals: Vec::new(),
            birthday: Default::default(),
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
            self.upsert_peer(p, now);
        }
        let kept: std::collections::HashSet<NodeId> = keep.iter().copied().collect();
        self.peers.retain(|id, _| kept.contains(id));
        self.paths.retain(|id, _| kept.contains(id));
        self.birthday.retain_peers(|id| kept.contains(&id));
        self.probe_new(&keep, now);
        for id in keep {
            self.evaluate(id, now);
        }
    }

    /// Some peers of the netmap changed (`changed`) or left it (`removed`),
    /// the others did not: a netmap delta, in O(peers it names).
    pub fn handle_peers_changed<'a>(
        &mut self,
        changed: impl IntoIterator<Item = &'a PeerInput>,
        removed: &[NodeId],
        now: Instant,
    ) {
        if !removed.is_empty() {
            for id in removed {
                self.peers.remove(id);
                self.paths.remove(id);
            }
            let gone: std::collections::HashSet<NodeId> = removed.iter().copied().collect();
            self.birthday.retain_peers(|id| !gone.contains(&id));
        }
        let mut ids = Vec::new();
        for p in changed {
            ids.push(p.id);
            self.upsert_peer(p, now);
        }
        self.probe_new(&ids, now);
        for id in ids {
            self.evaluate(id, now);
        }
    }

    /// Takes one peer's netmap record: its key, whether it is online, and
    /// its candidates from the netmap.
    fn upsert_peer(&mut self, p: &PeerInput, now: Instant) {
        if self.peers.get(&p.id).is_some_and(|e| e.key != p.key) {
            // The node has a new key: what was learned of the old is void.
            self.peers.remove(&p.id);
            self.paths.remove(&p.id);
        }
        let entry = self.peers.entry(p.id).or_insert_with(|| {
            let shared = self.secret.diffie_hellman(&PublicKey::from(p.key));
            PeerPaths::with_window(
                p.key,
                probe_key(shared.as_bytes()),
                p.online,
                now,
                self.active_window,
            )
        });
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

    /// The driver could not apply an [`Event::SetPath`] for `node` (the
    /// data plane has no such peer yet): forget the choice, so the next
    /// evaluation makes it again.
    pub fn handle_path_refused(&mut self, node: NodeId) {
        if let Some(p) = self.peers.get_mut(&node) {
            p.current = None;
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
        self.probe_due(now);
        self.birthday_tick(now);
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
            endpoint: peer.current.map(crate::side::real_addr),
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

pub(crate) fn kind_of(nets: &[Cidr], endpoint: Option<SocketAddr>) -> PathKind {
    match endpoint {
        Some(e) if on_link(nets, e.ip()) => PathKind::Lan,
        Some(_) => PathKind::Direct,
        None => PathKind::Relay,
    }
}
