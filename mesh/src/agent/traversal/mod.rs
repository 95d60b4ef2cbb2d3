//! NAT traversal: finds and keeps the best path to every peer.
//!
//! Candidates for a peer are the endpoints it reports through the netmap
//! (its interface addresses and its public mapping) plus any address an
//! authenticated probe from it arrived from. The engine probes candidates
//! with authenticated disco pings on the WireGuard socket, asks the peer
//! through the coordinator to probe back at the same moment (a punch, which
//! opens both NATs), and points the data plane at the best candidate that
//! answers: on-link (LAN) first, then any other direct path, then the relay.
//!
//! Hysteresis: a direct path is kept until it misses pongs for
//! [`DEAD_AFTER`]; the relay is left as soon as a direct candidate answers;
//! one direct path replaces another only for a better class (LAN over
//! public) or when the current one is dead.

pub mod netcheck;
pub mod relay;

use crate::dataplane::traffic::PathClass;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use weft_proto::disco::{probe_key, DiscoMsg, ReplayGuard, TxId};
use weft_proto::{Netmap, NodeId};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::dataplane::hooks::{relay_endpoint, relay_node};
use crate::dataplane::DeviceHandle;
use crate::key::Key;
use netcheck::NetcheckReport;
use relay::RelayLink;

/// The largest datagram handed to the engine as disco.
const MAX_DISCO_LEN: usize = 256;

/// A direct path with no pong for this long is dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);
const TICK: Duration = Duration::from_millis(250);
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

/// Which way traffic to a peer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    /// Directly to an address on one of this host's own networks.
    Lan,
    /// Directly to an address elsewhere (through NATs).
    Direct,
    /// Through the coordinator's relay.
    Relay,
}

impl std::fmt::Display for PathKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathKind::Lan => "lan",
            PathKind::Direct => "direct",
            PathKind::Relay => "relay",
        })
    }
}

/// One peer's current path, for `weft status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PathInfo {
    pub kind: PathKind,
    pub endpoint: Option<SocketAddr>,
    pub rtt_ms: Option<f64>,
    /// Why the peer is relayed.
    pub reason: Option<String>,
    /// Seconds from the peer's first sighting to its first direct path.
    pub direct_after_secs: Option<f64>,
}

/// One answer to `weft ping`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PingReply {
    pub kind: PathKind,
    pub endpoint: Option<SocketAddr>,
    pub rtt_ms: f64,
}

/// What the API can ask of the engine.
pub enum Request {
    Ping {
        node: NodeId,
        reply: oneshot::Sender<PingReply>,
    },
    /// This host's addresses changed (its interface networks are now
    /// `local_nets`): ask the reflector again and probe every candidate of
    /// every peer from the new address at once.
    NetworkChanged { local_nets: Vec<(IpAddr, u8)> },
}

/// The shared, read-only side of the engine.
#[derive(Clone)]
pub struct TraversalView {
    pub link: RelayLink,
    pub paths: Arc<Mutex<HashMap<NodeId, PathInfo>>>,
    pub netcheck: watch::Receiver<NetcheckReport>,
    pub requests: mpsc::Sender<Request>,
    pub punches: mpsc::Sender<NodeId>,
}

impl TraversalView {
    pub fn path(&self, node: NodeId) -> Option<PathInfo> {
        self.paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&node)
            .cloned()
    }
}

/// Candidates a peer may have beyond those in the netmap (addresses its
/// probes came from); a probe from one more is answered but not kept.
const MAX_LEARNED_CANDIDATES: usize = 8;
/// A learned candidate that has not answered within this long is dropped.
const LEARNED_TTL: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Candidate {
    from_netmap: bool,
    /// When it was learned from a probe (`None`: from the netmap).
    learned: Option<Instant>,
    last_ping: Option<Instant>,
    last_pong: Option<Instant>,
    rtt: Option<Duration>,
}

struct PeerPaths {
    key: Key,
    probe_key: [u8; 32],
    /// Which of this peer's pings were already seen.
    replay: ReplayGuard,
    online: bool,
    candidates: HashMap<SocketAddr, Candidate>,
    /// `None`: relayed.
    current: Option<SocketAddr>,
    last_punch: Option<Instant>,
    seen: Instant,
    direct_after: Option<Duration>,
}

struct Pending {
    node: NodeId,
    to: SocketAddr,
    sent: Instant,
    api: Option<oneshot::Sender<PingReply>>,
}

/// The engine's inputs, built before the agent joins.
pub struct Inputs {
    pub disco: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    pub punches: mpsc::Receiver<NodeId>,
    pub requests: mpsc::Receiver<Request>,
}

/// Builds the engine's channels and plugs the data plane's hooks into them.
pub fn attach(handle: &DeviceHandle) -> (TraversalView, Inputs, watch::Sender<NetcheckReport>) {
    let (disco_tx, disco_rx) = mpsc::channel::<(SocketAddr, Vec<u8>)>(1024);
    handle.set_disco_sink(Box::new(move |src, bytes| {
        // Disco messages are under 128 bytes: anything larger is not one,
        // and the queue stays under 1024 x 256 bytes. Full: drop, like a
        // lost probe.
        if bytes.len() <= MAX_DISCO_LEN {
            let _ = disco_tx.try_send((src, bytes.to_vec()));
        }
    }));
    let link = RelayLink::default();
    let sink_link = link.clone();
    handle.set_relay_sink(Box::new(move |node, bytes| sink_link.send(node, bytes)));
    let (punch_tx, punch_rx) = mpsc::channel(256);
    let (req_tx, req_rx) = mpsc::channel(64);
    let (nc_tx, nc_rx) = watch::channel(NetcheckReport::default());
    (
        TraversalView {
            link,
            paths: Arc::default(),
            netcheck: nc_rx,
            requests: req_tx,
            punches: punch_tx,
        },
        Inputs {
            disco: disco_rx,
            punches: punch_rx,
            requests: req_rx,
        },
        nc_tx,
    )
}

/// The engine. Run it with [`Engine::run`].
pub struct Engine {
    pub handle: DeviceHandle,
    pub secret: StaticSecret,
    pub public: [u8; 32],
    pub view: TraversalView,
    pub netcheck: watch::Sender<NetcheckReport>,
    /// The coordinator's QUIC address (reflectors are the next ports).
    pub coordinator: Option<SocketAddr>,
    /// The current netmap, when its (epoch, version) differs from the one
    /// given (checked each tick; cloned only when it changed).
    pub netmap: Box<dyn Fn((u64, u64)) -> Option<Netmap> + Send>,
    /// Called when this host's public mapping changes.
    pub on_public: Box<dyn Fn(Option<SocketAddr>) + Send>,
    peers: HashMap<NodeId, PeerPaths>,
    pending: HashMap<TxId, Pending>,
    reflect_pending: HashMap<TxId, (usize, Instant)>,
    last_reflect: Option<Instant>,
    /// A direct path died: this host's public mapping may have changed.
    reflect_soon: bool,
    netmap_version: (u64, u64),
    local_nets: Vec<(IpAddr, u8)>,
    /// The clock of the last ping sent (see [`next_sent_at`]).
    last_sent_at: u64,
}

impl Engine {
    #[expect(clippy::too_many_arguments, reason = "built once, in the agent")]
    pub fn new(
        handle: DeviceHandle,
        secret: StaticSecret,
        view: TraversalView,
        netcheck: watch::Sender<NetcheckReport>,
        coordinator: Option<SocketAddr>,
        netmap: Box<dyn Fn((u64, u64)) -> Option<Netmap> + Send>,
        on_public: Box<dyn Fn(Option<SocketAddr>) + Send>,
        local_nets: Vec<(IpAddr, u8)>,
    ) -> Engine {
        let public = PublicKey::from(&secret).to_bytes();
        Engine {
            handle,
            secret,
            public,
            view,
            netcheck,
            coordinator,
            netmap,
            on_public,
            peers: HashMap::new(),
            pending: HashMap::new(),
            reflect_pending: HashMap::new(),
            last_reflect: None,
            reflect_soon: false,
            netmap_version: (u64::MAX, u64::MAX),
            local_nets,
            last_sent_at: 0,
        }
    }

    /// Runs until `stop` changes.
    pub async fn run(mut self, mut inputs: Inputs, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.reflect();
        loop {
            tokio::select! {
                Some((src, bytes)) = inputs.disco.recv() => self.on_disco(src, &bytes),
                Some(node) = inputs.punches.recv() => self.on_punch(node),
                Some(req) = inputs.requests.recv() => self.on_request(req),
                _ = tick.tick() => self.on_tick(),
                _ = stop.changed() => return,
            }
        }
    }

    fn send_disco(&self, dst: SocketAddr, bytes: &[u8]) {
        match relay_node(&dst) {
            Some(node) => self.view.link.send(node, bytes),
            None => {
                if let Err(e) = self.handle.send_disco(dst, bytes) {
                    tracing::trace!(%dst, error = %e, "probe send failed");
                }
            }
        }
    }

    /// Asks the first reflector for this host's public mapping; the second
    /// is asked once the first answers. One at a time: two first packets
    /// racing through a NAT can get two mappings even where the NAT maps
    /// endpoint-independently, which would misreport it as symmetric.
    fn reflect(&mut self) {
        self.last_reflect = Some(Instant::now());
        self.reflect_to(0);
    }

    fn reflect_to(&mut self, which: usize) {
        let Some(coord) = self.coordinator else {
            return;
        };
        let Some(r) = netcheck::reflectors(coord).get(which).copied() else {
            return;
        };
        let now = Instant::now();
        self.reflect_pending
            .retain(|_, (_, t)| now.duration_since(*t) < PENDING_TTL);
        let mut txid = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut txid);
        self.reflect_pending.insert(txid, (which, now));
        self.send_disco(r, &DiscoMsg::ReflectRequest { txid }.encode(None));
    }

    fn on_disco(&mut self, src: SocketAddr, bytes: &[u8]) {
        let Ok(msg) = DiscoMsg::decode(bytes) else {
            return;
        };
        if let Some(sender) = msg.sender() {
            let Some((&node, peer)) = self.peers.iter_mut().find(|(_, p)| p.key.0 == sender) else {
                return;
            };
            let Ok(msg) = msg.verify(&peer.probe_key) else {
                tracing::debug!(%src, "disco probe with a bad MAC dropped");
                return;
            };
            match msg {
                DiscoMsg::Ping { txid, sent_at, .. } => {
                    if peer.replay.accept(sent_at, &txid) {
                        self.on_ping(node, src, txid);
                    } else {
                        tracing::debug!(%src, "replayed or stale disco ping dropped");
                    }
                }
                DiscoMsg::Pong { txid, .. } => self.on_pong(node, src, txid),
                _ => {}
            }
            return;
        }
        if let Some(DiscoMsg::ReflectReply { txid, observed }) = msg.unauthenticated() {
            let Some((which, _)) = self.reflect_pending.remove(&txid) else {
                return;
            };
            let mut changed_public = None;
            self.netcheck.send_modify(|r| {
                r.udp = true;
                if which == 0 {
                    if r.public != Some(observed) {
                        changed_public = Some(observed);
                    }
                    r.public = Some(observed);
                } else {
                    r.public_second = Some(observed);
                }
            });
            if let Some(p) = changed_public {
                tracing::info!(public = %p, "public mapping of the WireGuard socket");
                (self.on_public)(Some(p));
            }
            if which == 0 {
                self.reflect_to(1);
            }
        }
    }

    fn on_ping(&mut self, node: NodeId, src: SocketAddr, txid: TxId) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let pong = DiscoMsg::Pong {
            txid,
            sender: self.public,
            observed: src,
        }
        .encode(Some(&peer.probe_key));
        let learned = peer.candidates.values().filter(|c| !c.from_netmap).count();
        if relay_node(&src).is_none()
            && !peer.candidates.contains_key(&src)
            && learned < MAX_LEARNED_CANDIDATES
        {
            // A peer-reflexive candidate: where its probe came from.
            tracing::debug!(peer = node.0, %src, "new candidate from a probe");
            peer.candidates.insert(
                src,
                Candidate {
                    learned: Some(Instant::now()),
                    ..Candidate::default()
                },
            );
        }
        let due = relay_node(&src).is_none()
            && peer.candidates.get(&src).is_some_and(|c| {
                c.last_ping
                    .is_none_or(|t| t.elapsed() >= Duration::from_millis(500))
            });
        self.send_disco(src, &pong);
        {
            if due {
                self.ping(node, src, None);
            }
        }
    }

    fn on_pong(&mut self, node: NodeId, src: SocketAddr, txid: TxId) {
        let Some(p) = self.pending.remove(&txid) else {
            return;
        };
        if p.node != node {
            return;
        }
        let rtt = p.sent.elapsed();
        if let Some(api) = p.api {
            let kind = self.kind_of(Some(p.to));
            let _ = api.send(PingReply {
                kind,
                endpoint: relay_node(&p.to).is_none().then_some(p.to),
                rtt_ms: rtt.as_secs_f64() * 1000.0,
            });
        }
        if relay_node(&p.to).is_some() {
            return;
        }
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        // The pong must come from where the ping went.
        if src != p.to {
            return;
        }
        let c = peer.candidates.entry(p.to).or_default();
        c.last_pong = Some(Instant::now());
        c.rtt = Some(rtt);
        self.evaluate(node);
    }

    fn on_punch(&mut self, node: NodeId) {
        let Some(peer) = self.peers.get(&node) else {
            return;
        };
        let targets: Vec<SocketAddr> = peer.candidates.keys().copied().collect();
        tracing::debug!(peer = node.0, candidates = targets.len(), "punch requested");
        for t in targets {
            self.ping(node, t, None);
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Ping { node, reply } => {
                let Some(peer) = self.peers.get(&node) else {
                    return;
                };
                let to = peer.current.unwrap_or_else(|| relay_endpoint(node.0));
                self.ping(node, to, Some(reply));
            }
            Request::NetworkChanged { local_nets } => {
                self.local_nets = local_nets;
                self.reflect();
                let targets: Vec<(NodeId, SocketAddr)> = self
                    .peers
                    .iter()
                    .flat_map(|(id, p)| p.candidates.keys().map(move |a| (*id, *a)))
                    .collect();
                tracing::debug!(
                    probes = targets.len(),
                    "addresses changed; probing every candidate"
                );
                for (node, addr) in targets {
                    self.ping(node, addr, None);
                }
            }
        }
    }

    fn ping(&mut self, node: NodeId, to: SocketAddr, api: Option<oneshot::Sender<PingReply>>) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let mut txid = [0u8; 12];
        rand::thread_rng().fill_bytes(&mut txid);
        let sent_at = next_sent_at(&mut self.last_sent_at);
        let bytes = DiscoMsg::Ping {
            txid,
            sender: self.public,
            sent_at,
        }
        .encode(Some(&peer.probe_key));
        let now = Instant::now();
        if let Some(c) = peer.candidates.get_mut(&to) {
            c.last_ping = Some(now);
        }
        self.pending.insert(
            txid,
            Pending {
                node,
                to,
                sent: now,
                api,
            },
        );
        self.send_disco(to, &bytes);
    }

    fn kind_of(&self, endpoint: Option<SocketAddr>) -> PathKind {
        match endpoint {
            Some(e) if relay_node(&e).is_none() => {
                if self.on_link(e.ip()) {
                    PathKind::Lan
                } else {
                    PathKind::Direct
                }
            }
            _ => PathKind::Relay,
        }
    }

    fn on_link(&self, ip: IpAddr) -> bool {
        self.local_nets
            .iter()
            .any(|(net, prefix)| same_net(*net, ip, *prefix))
    }

    fn sync_peers(&mut self) {
        let Some(map) = (self.netmap)(self.netmap_version) else {
            return;
        };
        self.netmap_version = (map.epoch(), map.version());
        let mut keep = Vec::new();
        for p in map.peers() {
            keep.push(p.id);
            let key = Key(p.public_key.0);
            let entry = self.peers.entry(p.id).or_insert_with(|| {
                let shared = self.secret.diffie_hellman(&PublicKey::from(key.0));
                PeerPaths {
                    key,
                    probe_key: probe_key(shared.as_bytes()),
                    replay: ReplayGuard::default(),
                    online: p.online,
                    candidates: HashMap::new(),
                    current: None,
                    last_punch: None,
                    seen: Instant::now(),
                    direct_after: None,
                }
            });
            if entry.key != key {
                continue;
            }
            entry.online = p.online;
            for c in entry.candidates.values_mut() {
                c.from_netmap = false;
            }
            for e in &p.endpoints {
                entry.candidates.entry(*e).or_default().from_netmap = true;
            }
            // Drop stale candidates: gone from the netmap and not answering.
            entry.candidates.retain(|_, c| {
                c.from_netmap || c.last_pong.is_some_and(|t| t.elapsed() < DEAD_AFTER)
            });
            match entry.current {
                // Until a direct path answers, traffic goes through the relay.
                None => {
                    self.handle.set_endpoint(&key, relay_endpoint(p.id.0));
                    self.handle.set_path(&key, PathClass::Relay);
                }
                // A peer the data plane dropped and added again (a policy
                // change can do that between two looks at the netmap)
                // comes back without an endpoint: give it the path in use.
                // One that has an endpoint keeps it (it may have roamed).
                Some(ep) => {
                    self.handle.set_endpoint_if_unset(&key, ep);
                    // A re-added peer starts as direct in the data plane.
                    let class = if self.on_link(ep.ip()) {
                        PathClass::Lan
                    } else {
                        PathClass::Direct
                    };
                    self.handle.set_path(&key, class);
                }
            }
        }
        self.peers.retain(|id, _| keep.contains(id));
        let mut paths = self.view.paths.lock().unwrap_or_else(|p| p.into_inner());
        paths.retain(|id, _| keep.contains(id));
    }

    fn on_tick(&mut self) {
        self.sync_peers();
        let now = Instant::now();
        self.pending
            .retain(|_, p| now.duration_since(p.sent) < PENDING_TTL);
        let since = self.last_reflect.map(|t| t.elapsed());
        if since.is_none_or(|t| t >= REFLECT_EVERY)
            || (self.reflect_soon && since.is_none_or(|t| t >= REFLECT_SOON))
        {
            self.reflect_soon = false;
            self.reflect();
        }
        // Learned candidates that never answered, or stopped, expire.
        for peer in self.peers.values_mut() {
            let current = peer.current;
            peer.candidates.retain(|a, c| {
                c.from_netmap
                    || current == Some(*a)
                    || c.last_pong
                        .is_some_and(|t| now.duration_since(t) < DEAD_AFTER)
                    || c.learned
                        .is_some_and(|t| now.duration_since(t) < LEARNED_TTL)
            });
        }
        let ids: Vec<NodeId> = self.peers.keys().copied().collect();
        for node in ids {
            self.evaluate(node);
            let Some(peer) = self.peers.get(&node) else {
                continue;
            };
            let direct_alive = peer.current.is_some();
            let mut due = Vec::new();
            for (addr, c) in &peer.candidates {
                let every = if peer.current == Some(*addr) {
                    PROBE_CURRENT
                } else if direct_alive {
                    PROBE_OTHERS_DIRECT
                } else {
                    PROBE_RELAYED
                };
                if c.last_ping.is_none_or(|t| now.duration_since(t) >= every) {
                    due.push(*addr);
                }
            }
            let punch = !direct_alive
                && peer.online
                && peer
                    .last_punch
                    .is_none_or(|t| now.duration_since(t) >= PUNCH_EVERY);
            if punch {
                self.view.link.punch(node);
                if let Some(p) = self.peers.get_mut(&node) {
                    p.last_punch = Some(now);
                }
            }
            for addr in due {
                self.ping(node, addr, None);
            }
        }
    }

    /// Picks the path for `node` and applies it when it changes.
    fn evaluate(&mut self, node: NodeId) {
        let now = Instant::now();
        let on_link: Vec<SocketAddr> = match self.peers.get(&node) {
            Some(p) => p
                .candidates
                .keys()
                .filter(|a| self.on_link(a.ip()))
                .copied()
                .collect(),
            None => return,
        };
        let netcheck = self.netcheck.borrow().clone();
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let alive = |c: &Candidate| {
            c.last_pong
                .is_some_and(|t| now.duration_since(t) < DEAD_AFTER)
        };
        let class = |a: &SocketAddr| u8::from(!on_link.contains(a));
        let best = peer
            .candidates
            .iter()
            .filter(|(_, c)| alive(c))
            .min_by_key(|(a, c)| (class(a), c.rtt.unwrap_or(Duration::MAX)))
            .map(|(a, _)| *a);
        let current_alive = peer
            .current
            .and_then(|c| peer.candidates.get(&c))
            .is_some_and(alive);
        let next = match (peer.current, best) {
            (_, None) => None,
            (Some(cur), Some(b)) if current_alive && class(&b) >= class(&cur) => Some(cur),
            (_, Some(b)) => Some(b),
        };
        if next != peer.current {
            let target = next.unwrap_or_else(|| relay_endpoint(node.0));
            if !self.handle.set_endpoint(&peer.key, target) {
                // The data plane has no such peer (yet): keep the old
                // choice so the next evaluation tries again.
                return;
            }
            self.handle.set_path(
                &peer.key,
                match next {
                    Some(a) if on_link.contains(&a) => PathClass::Lan,
                    Some(_) => PathClass::Direct,
                    None => PathClass::Relay,
                },
            );
            match next {
                Some(a) => {
                    if peer.direct_after.is_none() {
                        peer.direct_after = Some(peer.seen.elapsed());
                    }
                    tracing::info!(peer = node.0, endpoint = %a, after = ?peer.seen.elapsed(), "direct path");
                }
                None => {
                    tracing::info!(peer = node.0, "direct path lost; relaying");
                    if peer.current.is_some() {
                        self.reflect_soon = true;
                    }
                }
            }
            peer.current = next;
        }
        let kind = match peer.current {
            Some(a) if on_link.contains(&a) => PathKind::Lan,
            Some(_) => PathKind::Direct,
            None => PathKind::Relay,
        };
        let reason = (kind == PathKind::Relay)
            .then(|| relay_reason(peer.online, peer.direct_after.is_some(), &netcheck));
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
        self.view
            .paths
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, info);
    }
}

/// The clock a ping carries: wall-clock microseconds, but always past the
/// last one sent, so the peer's [`ReplayGuard`] sees it increase.
fn next_sent_at(last: &mut u64) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    *last = now.max(last.saturating_add(1));
    *last
}

/// Why a peer is relayed, in words; `was_direct`: it had a direct path
/// before.
fn relay_reason(online: bool, was_direct: bool, nc: &NetcheckReport) -> String {
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
        netcheck::Mapping::EndpointDependent => "no direct path answered: this host's NAT maps endpoint-dependently (symmetric), which only a peer NAT with endpoint-independent or address-dependent filtering lets through".into(),
        _ => "no direct path answered: the peer's NAT maps endpoint-dependently or filters strictly (see `weft netcheck` on the peer)".into(),
    }
}

fn same_net(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            (u32::from(a) & mask) == (u32::from(b) & mask)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            (u128::from(a) & mask) == (u128::from(b) & mask)
        }
        _ => false,
    }
}

/// This host's interface networks, to tell LAN candidates from others.
pub fn local_networks(skip: &[&str]) -> Vec<(IpAddr, u8)> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| !i.is_loopback() && !skip.contains(&i.name.as_str()))
        .map(|i| match i.addr {
            if_addrs::IfAddr::V4(v4) => {
                (IpAddr::V4(v4.ip), u32::from(v4.netmask).count_ones() as u8)
            }
            if_addrs::IfAddr::V6(v6) => {
                (IpAddr::V6(v6.ip), u128::from(v6.netmask).count_ones() as u8)
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_network_by_prefix() {
        let a: IpAddr = "198.18.1.11".parse().unwrap();
        assert!(same_net(a, "198.18.1.12".parse().unwrap(), 24));
        assert!(!same_net(a, "198.18.2.12".parse().unwrap(), 24));
        assert!(!same_net(a, "2001:db8::1".parse().unwrap(), 24));
        assert!(same_net(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            64
        ));
    }

    #[test]
    fn relay_reasons_name_the_cause() {
        let mut nc = NetcheckReport::default();
        assert!(relay_reason(false, false, &nc).contains("offline"));
        assert!(relay_reason(true, false, &nc).contains("UDP"));
        nc.udp = true;
        nc.public = Some("203.0.113.11:1".parse().unwrap());
        nc.public_second = Some("203.0.113.11:2".parse().unwrap());
        assert!(relay_reason(true, false, &nc).contains("symmetric"));
        assert!(relay_reason(true, true, &nc).contains("stopped answering"));
    }
}
