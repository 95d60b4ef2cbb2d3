//! The tokio driver of the path engine ([`weft_paths::PathEngine`]): it
//! owns the engine, the device handle, the relay link and one timer, and
//! does nothing but move inputs in and outputs out.
//!
//! ```text
//!  disco from the WireGuard socket ─┐                   ┌─► send_disco / relay link
//!  punches from the relay ──────────┤                   ├─► set_endpoint + set_path
//!  `weft ping`, address changes ────┼─► PathEngine ─────┼─► relay punch
//!  netmap applied (notified) ───────┤                   ├─► public mapping → endpoints
//!  the engine's own deadline ───────┘                   └─► netcheck, paths for status
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, watch, Notify};
use weft_paths::{Dest, EngineConfig, Event, PathEngine, PathKind, PeerInput, PingReply};
use weft_proto::{Netmap, NodeId};
use x25519_dalek::StaticSecret;

use super::{Inputs, NetmapCell, PeersChanged, Request, TraversalView};
use crate::dataplane::hooks::{relay_endpoint, relay_node};
use crate::dataplane::traffic::PathClass;
use crate::dataplane::DeviceHandle;
use crate::key::Key;

/// `weft ping` requests waiting for an answer, at most.
const MAX_PINGS: usize = 64;

/// What the driver reads and tells besides the device.
pub struct Wiring {
    pub view: TraversalView,
    pub netcheck: watch::Sender<weft_paths::NetcheckReport>,
    /// The netmap in force and what changed in it (read and taken when
    /// `netmap_changed` fires).
    pub netmap: Arc<std::sync::Mutex<NetmapCell>>,
    pub netmap_changed: Arc<Notify>,
    /// Called when this host's public mapping changes.
    pub on_public: Box<dyn Fn(Option<SocketAddr>) + Send>,
}

pub struct Driver {
    handle: DeviceHandle,
    wiring: Wiring,
    engine: PathEngine,
    pings: HashMap<u64, oneshot::Sender<PingReply>>,
    next_ping: u64,
    /// Peers by key (from the netmap), the other way round, and their
    /// data packets when last looked at.
    ids: HashMap<[u8; 32], NodeId>,
    keys: HashMap<NodeId, [u8; 32]>,
    data_seen: HashMap<[u8; 32], u64>,
}

/// How often the data plane's per-peer data counters are looked at.
const TRAFFIC_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Driver {
    pub fn new(
        handle: DeviceHandle,
        secret: StaticSecret,
        coordinator: Option<SocketAddr>,
        local_nets: Vec<weft_proto::policy::Cidr>,
        wiring: Wiring,
    ) -> Driver {
        let engine = PathEngine::new(
            EngineConfig {
                secret,
                coordinator,
                local_nets,
                seed: rand::random(),
                wall: std::time::SystemTime::now(),
                sources: Vec::new(),
                active_window: weft_paths::peer::ACTIVE_WINDOW,
            },
            Instant::now(),
        );
        let mut d = Driver {
            handle,
            wiring,
            engine,
            pings: HashMap::new(),
            next_ping: 0,
            ids: HashMap::new(),
            keys: HashMap::new(),
            data_seen: HashMap::new(),
        };
        d.flush();
        d
    }

    /// Runs until `stop` changes.
    pub async fn run(mut self, mut inputs: Inputs, mut stop: watch::Receiver<bool>) {
        let changed = self.wiring.netmap_changed.clone();
        lock(&self.wiring.netmap).changed.note(None);
        self.on_netmap();
        let mut traffic = tokio::time::interval(TRAFFIC_EVERY);
        traffic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let deadline = self
                .engine
                .poll_timeout()
                .map_or_else(far_future, tokio::time::Instant::from_std);
            tokio::select! {
                Some((src, bytes)) = inputs.disco.recv() => {
                    let from = match relay_node(&src) {
                        Some(n) => Dest::Relay(NodeId(n)),
                        None => Dest::Addr(src),
                    };
                    self.engine.handle_disco(from, &bytes, Instant::now());
                }
                Some(node) = inputs.punches.recv() => self.engine.handle_punch(node, Instant::now()),
                Some(req) = inputs.requests.recv() => self.on_request(req),
                _ = changed.notified() => self.on_netmap(),
                _ = traffic.tick() => self.on_traffic(),
                _ = tokio::time::sleep_until(deadline) => {
                    self.engine.handle_timeout(Instant::now());
                    // RTTs and reasons change without a path change.
                    let mut paths = lock(&self.wiring.view.paths);
                    for (id, p) in self.engine.paths() {
                        paths.insert(id, p.clone());
                    }
                }
                _ = stop.changed() => return,
            }
            self.flush();
        }
    }

    fn on_request(&mut self, req: Request) {
        match req {
            Request::Ping { node, reply } => {
                self.pings.retain(|_, r| !r.is_closed());
                if self.pings.len() >= MAX_PINGS {
                    return;
                }
                self.next_ping = self.next_ping.wrapping_add(1);
                self.pings.insert(self.next_ping, reply);
                self.engine.ping_peer(node, self.next_ping, Instant::now());
            }
            Request::NetworkChanged { local_nets } => {
                tracing::debug!("addresses changed; probing every candidate");
                self.engine
                    .handle_network_change(local_nets, Instant::now());
            }
        }
    }

    /// Tells the engine which peers had data since the last look (it
    /// probes only those, and sweeps the idle rest slowly).
    fn on_traffic(&mut self) {
        let now = Instant::now();
        for (key, n) in self.handle.data_packets() {
            let before = self.data_seen.insert(key.0, n);
            if before.is_some_and(|b| b != n) {
                if let Some(id) = self.ids.get(&key.0) {
                    self.engine.handle_traffic(*id, now);
                }
            }
        }
    }

    /// Takes what changed in the netmap since the last look: a whole map,
    /// or the peers a delta named.
    fn on_netmap(&mut self) {
        let (map, changed) = {
            let mut cell = lock(&self.wiring.netmap);
            (cell.map.clone(), std::mem::take(&mut cell.changed))
        };
        if changed.all {
            self.on_whole_netmap(&map);
        } else if !changed.ids.is_empty() {
            self.on_peers_changed(&map, &changed);
        }
    }

    fn on_whole_netmap(&mut self, map: &Netmap) {
        let peers: Vec<PeerInput> = map.peers().map(PeerInput::from).collect();
        self.engine.handle_netmap(&peers, Instant::now());
        self.ids = peers.iter().map(|p| (p.key, p.id)).collect();
        self.keys = peers.iter().map(|p| (p.id, p.key)).collect();
        let ids = &self.ids;
        self.data_seen.retain(|k, _| ids.contains_key(k));
        let keys = &self.keys;
        lock(&self.wiring.view.paths).retain(|id, _| keys.contains_key(id));
    }

    fn on_peers_changed(&mut self, map: &Netmap, changed: &PeersChanged) {
        let mut inputs = Vec::new();
        let mut removed = Vec::new();
        for id in &changed.ids {
            match map.peer(*id) {
                Some(p) => inputs.push(PeerInput::from(p)),
                None => removed.push(*id),
            }
        }
        let mut gone: Vec<[u8; 32]> = removed
            .iter()
            .filter_map(|id| self.keys.remove(id))
            .collect();
        let mut rekeyed = Vec::new();
        for p in &inputs {
            // A node with a new key: its old key is no one's now, and the
            // path found for it is void.
            if let Some(old) = self.keys.insert(p.id, p.key).filter(|old| *old != p.key) {
                gone.push(old);
                rekeyed.push(p.id);
            }
        }
        for key in &gone {
            self.ids.remove(key);
            self.data_seen.remove(key);
        }
        for p in &inputs {
            self.ids.insert(p.key, p.id);
        }
        self.engine
            .handle_peers_changed(&inputs, &removed, Instant::now());
        let mut paths = lock(&self.wiring.view.paths);
        for id in removed.iter().chain(&rekeyed) {
            paths.remove(id);
        }
    }

    /// Carries out everything the engine asked for.
    fn flush(&mut self) {
        while let Some(t) = self.engine.poll_transmit() {
            match t.dest {
                Dest::Addr(dst) => {
                    if let Err(e) = self.handle.send_disco(dst, &t.payload) {
                        tracing::trace!(%dst, error = %e, "probe send failed");
                    }
                }
                Dest::Relay(node) => self.wiring.view.link.send(node.0, &t.payload),
            }
        }
        while let Some(e) = self.engine.poll_event() {
            self.on_event(e);
        }
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::SetPath {
                peer,
                key,
                target,
                kind,
                only_if_unset,
            } => {
                let key = Key(key);
                let endpoint = match target {
                    Dest::Addr(a) => a,
                    Dest::Relay(n) => relay_endpoint(n.0),
                };
                if only_if_unset {
                    self.handle.set_endpoint_if_unset(&key, endpoint);
                } else if !self.handle.set_endpoint(&key, endpoint) {
                    // No such peer in the data plane yet: choose again later.
                    self.engine.handle_path_refused(peer);
                    return;
                }
                self.handle.set_path(&key, class(kind));
            }
            Event::Punch(node) => self.wiring.view.link.punch(node),
            Event::SideSockets(slots) => {
                if let Err((failed, e)) = self.handle.set_side_sockets(&slots) {
                    // Fewer sockets only lower the birthday technique's odds.
                    tracing::warn!(
                        error = %e,
                        failed = failed.len(),
                        asked = slots.len(),
                        "cannot open every side socket for NAT traversal; raise the open-file limit (ulimit -n) if this repeats"
                    );
                }
            }
            Event::PublicMapping(p) => {
                tracing::info!(public = %p, "public mapping of the WireGuard socket");
                (self.wiring.on_public)(Some(p));
            }
            Event::PingReply { request, reply } => {
                if let Some(r) = self.pings.remove(&request) {
                    let _ = r.send(reply);
                }
            }
            Event::Netcheck(report) => {
                self.wiring.netcheck.send_modify(|r| {
                    r.udp = report.udp;
                    r.public = report.public;
                    r.public_second = report.public_second;
                });
            }
            Event::PathChanged(node) => {
                let Some(info) = self.engine.path(node).cloned() else {
                    return;
                };
                match info.endpoint {
                    Some(ep) => {
                        tracing::info!(peer = node.0, endpoint = %ep, kind = %info.kind, "direct path")
                    }
                    None if info.direct_after_secs.is_some() => {
                        tracing::info!(peer = node.0, "direct path lost; relaying")
                    }
                    None => tracing::debug!(peer = node.0, "relayed until a direct path answers"),
                }
                lock(&self.wiring.view.paths).insert(node, info);
            }
        }
    }
}

fn class(kind: PathKind) -> PathClass {
    match kind {
        PathKind::Lan => PathClass::Lan,
        PathKind::Direct => PathClass::Direct,
        PathKind::Relay => PathClass::Relay,
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(3600)
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
