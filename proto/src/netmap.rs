//! The netmap: every other host a host should know about, and the pure
//! reducer that folds the coordinator's updates into it.
//!
//! The coordinator sends one full snapshot when a session starts (or when it
//! cannot resume from the host's version), then deltas. A large update is
//! split into chunks that share `epoch`, `from_version` and `version`; all but
//! the last have `more = true`. [`Netmap::apply`] buffers chunks and changes
//! the map only when the last one arrives, so a reader never sees half an
//! update.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::policy::{Cidr, PacketFilter, Proto};
use crate::types::{NodeId, Peer};

/// One netmap message (or one chunk of it) from the coordinator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetmapUpdate {
    /// Identifies the coordinator's version sequence; a new epoch means the
    /// host must take a full snapshot.
    pub epoch: u64,
    /// The version this delta applies on top of (ignored when `full`).
    pub from_version: u64,
    /// The version the host has once this update is applied.
    pub version: u64,
    /// Replace the whole map rather than patch it.
    pub full: bool,
    /// Peers added or changed: each is the peer's complete latest state.
    #[serde(default)]
    pub upserts: Vec<Peer>,
    /// Peers that left the cluster.
    #[serde(default)]
    pub removed: Vec<NodeId>,
    /// More chunks of this same update follow.
    #[serde(default)]
    pub more: bool,
    /// This host's inbound packet filter, when it changed (always in a full
    /// update). `None` leaves the current one in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<PacketFilter>,
    /// The published services this host may reach, for its DNS responder,
    /// when they changed (always in a full update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<Vec<ServiceEntry>>,
    /// Identifies what the coordinator let this host see (peers, filter,
    /// services); sent with them. A host resuming with the view still in
    /// force gets a delta instead of a full update.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<u64>,
    /// The networks this host routes for the mesh (advertised and
    /// approved), sent with the view: the host accepts packets from peers
    /// addressed to its subnet and these only. Added 2026-12-01; `None`
    /// from an older coordinator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<Vec<Cidr>>,
    /// The keep-alive interval the coordinator asks for now, in
    /// milliseconds (as `Welcome::keepalive_ms`; it grows with the
    /// cluster): a host whose session keeps alive at a very different
    /// interval opens a new session at this one. Added 2026-12-01; not
    /// part of the netmap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_ms: Option<u32>,
}

impl NetmapUpdate {
    /// An update that changes nothing but the version, to extend with
    /// struct-update syntax.
    pub fn empty(epoch: u64, from_version: u64, version: u64, full: bool) -> NetmapUpdate {
        NetmapUpdate {
            epoch,
            from_version,
            version,
            full,
            upserts: Vec::new(),
            removed: Vec::new(),
            more: false,
            filter: None,
            services: None,
            view: None,
            routes: None,
            keepalive_ms: None,
        }
    }
}

/// A published service as hosts see it: a name that resolves to an address
/// where the service listens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "a")]
    pub addr: std::net::IpAddr,
    #[serde(rename = "p")]
    pub port: u16,
    #[serde(rename = "t")]
    pub proto: Proto,
    /// Set only for the host that forwards this TCP port from outside the
    /// mesh to the service.
    #[serde(rename = "g", default, skip_serializing_if = "Option::is_none")]
    pub public: Option<u16>,
}

/// What one complete update changed, for the data plane to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetmapChange {
    /// The whole map was replaced: reconcile everything.
    pub full: bool,
    pub upserted: Vec<NodeId>,
    pub removed: Vec<NodeId>,
    /// The packet filter changed.
    pub filter: bool,
    /// The published services changed.
    pub services: bool,
}

/// Why an update could not be applied. The session must then ask for a full
/// snapshot (reconnect with no version).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NetmapError {
    #[error("netmap delta from version {from} does not follow the local version {local} (epoch {epoch}); a full snapshot is needed")]
    Gap { epoch: u64, local: u64, from: u64 },
    #[error("netmap chunk does not belong to the update in progress")]
    StrayChunk,
}

/// A host's view of the cluster. Cloning one is O(1) (its peers are a
/// persistent map, its filter and services shared), so the agent hands
/// copies to its readers on every delta without copying 10,000 peers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netmap {
    epoch: u64,
    version: u64,
    peers: imbl::OrdMap<NodeId, Peer>,
    filter: Option<Arc<PacketFilter>>,
    services: Arc<Vec<ServiceEntry>>,
    view: u64,
    /// This host's own routes in force; `None` until a coordinator said.
    routes: Option<Vec<Cidr>>,
    pending: Option<NetmapUpdate>,
    /// Set for a digest map: which peers there are, and the records of a
    /// few only.
    digest: Option<Digest>,
}

/// What a digest map ([`Netmap::digest`]) keeps: a bit per node id present,
/// each present peer's [`Peer::durable_digest`] (by id; ids are dense) and
/// their XOR, and the full records of the watched ids only.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Digest {
    watch: Vec<NodeId>,
    ids: Vec<u64>,
    count: usize,
    digests: Vec<u64>,
    xor: u64,
}

impl Digest {
    fn bit(id: NodeId) -> (usize, u64) {
        let i = usize::try_from(id.0).unwrap_or(usize::MAX);
        (i / 64, 1 << (i % 64))
    }

    fn insert(&mut self, id: NodeId) {
        let (w, b) = Self::bit(id);
        if w >= self.ids.len() {
            // Node ids are dense and assigned in order: the set grows with
            // the cluster (one bit per id ever assigned).
            self.ids.resize(w + 1, 0);
        }
        if self.ids[w] & b == 0 {
            self.ids[w] |= b;
            self.count += 1;
        }
    }

    fn remove(&mut self, id: NodeId) -> bool {
        let (w, b) = Self::bit(id);
        match self.ids.get_mut(w) {
            Some(word) if *word & b != 0 => {
                *word &= !b;
                self.count -= 1;
                self.set_digest(id, 0);
                true
            }
            _ => false,
        }
    }

    /// Records `id`'s durable digest (0: none), keeping the XOR.
    fn set_digest(&mut self, id: NodeId, d: u64) {
        let i = usize::try_from(id.0).unwrap_or(usize::MAX);
        if i >= self.digests.len() {
            if d == 0 {
                return;
            }
            self.digests.resize(i + 1, 0);
        }
        self.xor ^= self.digests[i] ^ d;
        self.digests[i] = d;
    }
}

impl Netmap {
    /// An empty map that has seen no update (version 0).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty digest map: it folds every update exactly as a full map
    /// does (chunks, gaps, versions, views) but keeps only which peers
    /// there are, and the full records of `watch`. For simulating many
    /// hosts in one process (the coordinator benchmark); [`Netmap::peer`]
    /// answers for watched ids only, [`Netmap::peers`] lists them only.
    pub fn digest(watch: Vec<NodeId>) -> Self {
        Netmap {
            digest: Some(Digest {
                watch,
                ..Digest::default()
            }),
            ..Self::default()
        }
    }

    /// The same kind of map (full or digest), empty.
    pub fn emptied(&self) -> Self {
        match &self.digest {
            Some(d) => Netmap::digest(d.watch.clone()),
            None => Netmap::new(),
        }
    }

    /// The XOR of every peer's [`Peer::durable_digest`]: what a resuming
    /// host sends so a restarted coordinator can tell whether the host's
    /// peers (all but their endpoints and online flags) are current.
    pub fn content_digest(&self) -> u64 {
        match &self.digest {
            Some(d) => d.xor,
            None => self.peers.values().fold(0, |x, p| x ^ p.durable_digest()),
        }
    }

    /// Whether `id` is in the map (in a digest map too).
    pub fn contains(&self, id: NodeId) -> bool {
        match &self.digest {
            Some(d) => {
                let (w, b) = Digest::bit(id);
                d.ids.get(w).is_some_and(|word| word & b != 0)
            }
            None => self.peers.contains_key(&id),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The version of the last complete update applied; 0 before the first.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn peers(&self) -> impl Iterator<Item = &Peer> {
        self.peers.values()
    }

    pub fn peer(&self, id: NodeId) -> Option<&Peer> {
        self.peers.get(&id)
    }

    pub fn len(&self) -> usize {
        self.digest.as_ref().map_or(self.peers.len(), |d| d.count)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The inbound packet filter this host enforces; `None` until the
    /// coordinator sent one (a coordinator always does in a full update).
    pub fn filter(&self) -> Option<&PacketFilter> {
        self.filter.as_deref()
    }

    /// The published services this host may reach.
    pub fn services(&self) -> &[ServiceEntry] {
        &self.services
    }

    /// The coordinator's id of the view this map holds (0: none).
    pub fn view(&self) -> u64 {
        self.view
    }

    /// This host's own routes in force (advertised and approved), if the
    /// coordinator said.
    pub fn own_routes(&self) -> Option<&[Cidr]> {
        self.routes.as_deref()
    }

    /// The whole map as one full update, for caching on disk.
    pub fn to_snapshot(&self) -> NetmapUpdate {
        NetmapUpdate {
            upserts: self.peers.values().cloned().collect(),
            filter: self.filter.as_deref().cloned(),
            services: Some(self.services.to_vec()),
            view: Some(self.view),
            routes: self.routes.clone(),
            ..NetmapUpdate::empty(self.epoch, 0, self.version, true)
        }
    }

    /// Folds one update (or chunk) into the map. Returns `Ok(None)` while
    /// chunks of an update are still arriving, and what changed once the
    /// update is complete. On error the map is left as it was before the
    /// update began.
    pub fn apply(&mut self, update: NetmapUpdate) -> Result<Option<NetmapChange>, NetmapError> {
        let whole = match self.pending.take() {
            Some(mut acc) => {
                if acc.epoch != update.epoch
                    || acc.version != update.version
                    || acc.from_version != update.from_version
                    || acc.full != update.full
                {
                    return Err(NetmapError::StrayChunk);
                }
                acc.upserts.extend(update.upserts);
                acc.removed.extend(update.removed);
                acc.more = update.more;
                if update.filter.is_some() {
                    acc.filter = update.filter;
                }
                if update.services.is_some() {
                    acc.services = update.services;
                }
                if update.view.is_some() {
                    acc.view = update.view;
                }
                if update.routes.is_some() {
                    acc.routes = update.routes;
                }
                acc
            }
            None => {
                if !update.full
                    && (update.epoch != self.epoch || update.from_version != self.version)
                {
                    return Err(NetmapError::Gap {
                        epoch: update.epoch,
                        local: self.version,
                        from: update.from_version,
                    });
                }
                update
            }
        };
        if whole.more {
            self.pending = Some(whole);
            return Ok(None);
        }
        let mut change = NetmapChange {
            full: whole.full,
            ..NetmapChange::default()
        };
        if whole.full {
            self.peers.clear();
            if let Some(d) = &mut self.digest {
                d.ids.clear();
                d.count = 0;
                d.digests.clear();
                d.xor = 0;
            }
        }
        for id in whole.removed {
            let was = match &mut self.digest {
                Some(d) => {
                    self.peers.remove(&id);
                    d.remove(id)
                }
                None => self.peers.remove(&id).is_some(),
            };
            if was {
                change.removed.push(id);
            }
        }
        for peer in whole.upserts {
            change.upserted.push(peer.id);
            match &mut self.digest {
                Some(d) => {
                    d.insert(peer.id);
                    d.set_digest(peer.id, peer.durable_digest());
                    if d.watch.contains(&peer.id) {
                        self.peers.insert(peer.id, peer);
                    }
                }
                None => {
                    self.peers.insert(peer.id, peer);
                }
            }
        }
        if let Some(f) = whole.filter {
            change.filter = self.filter.as_deref() != Some(&f);
            if change.filter {
                self.filter = Some(Arc::new(f));
            }
        }
        if let Some(v) = whole.view {
            self.view = v;
        }
        if let Some(s) = whole.services {
            change.services = *self.services != s;
            if change.services {
                self.services = Arc::new(s);
            }
        }
        if let Some(r) = whole.routes {
            self.routes = Some(r);
        }
        self.epoch = whole.epoch;
        self.version = whole.version;
        Ok(Some(change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{HostSubnet, WgPublicKey};
    use std::net::Ipv4Addr;

    fn peer(id: u64) -> Peer {
        Peer {
            id: NodeId(id),
            name: format!("h{id}"),
            public_key: WgPublicKey([id as u8; 32]),
            subnet: HostSubnet {
                addr: Ipv4Addr::new(100, 64, id as u8, 0),
                prefix_len: 24,
            },
            endpoints: vec![],
            tags: vec![],
            online: true,
            routes: Vec::new(),
        }
    }

    fn upd(
        from: u64,
        to: u64,
        full: bool,
        up: Vec<Peer>,
        rm: Vec<u64>,
        more: bool,
    ) -> NetmapUpdate {
        NetmapUpdate {
            upserts: up,
            removed: rm.into_iter().map(NodeId).collect(),
            more,
            ..NetmapUpdate::empty(9, from, to, full)
        }
    }

    #[test]
    fn snapshot_then_deltas() {
        let mut m = Netmap::new();
        m.apply(upd(0, 5, true, vec![peer(1), peer(2)], vec![], false))
            .unwrap();
        assert_eq!(m.len(), 2);
        let c = m
            .apply(upd(5, 7, false, vec![peer(3)], vec![1], false))
            .unwrap()
            .unwrap();
        assert_eq!(c.upserted, vec![NodeId(3)]);
        assert_eq!(c.removed, vec![NodeId(1)]);
        assert_eq!(m.version(), 7);
        assert!(m.peer(NodeId(1)).is_none());
    }

    /// A digest map folds the same updates to the same ids, versions and
    /// changes as a full map, keeps only the watched records, and refuses
    /// the same gaps.
    #[test]
    fn a_digest_map_agrees_with_a_full_one() {
        let mut full = Netmap::new();
        let mut dig = Netmap::digest(vec![NodeId(2)]);
        let steps = [
            upd(0, 5, true, vec![peer(1), peer(2), peer(70)], vec![], false),
            upd(5, 6, false, vec![peer(3)], vec![], true),
            upd(5, 6, false, vec![peer(2)], vec![1, 99], false),
            upd(6, 9, false, vec![], vec![70], false),
            upd(0, 12, true, vec![peer(2), peer(130)], vec![], false),
        ];
        for u in steps {
            assert_eq!(full.apply(u.clone()), dig.apply(u));
            assert_eq!((full.len(), full.version()), (dig.len(), dig.version()));
            for id in [1, 2, 3, 70, 99, 130] {
                assert_eq!(full.contains(NodeId(id)), dig.contains(NodeId(id)), "{id}");
            }
        }
        assert_eq!(dig.len(), 2);
        assert_eq!(dig.content_digest(), full.content_digest());
        assert_ne!(dig.content_digest(), 0);
        assert!(dig.peer(NodeId(2)).is_some());
        assert!(dig.peer(NodeId(130)).is_none(), "not watched");
        let gap = upd(3, 14, false, vec![], vec![], false);
        assert_eq!(full.apply(gap.clone()), dig.apply(gap));
        assert_eq!(dig.emptied(), Netmap::digest(vec![NodeId(2)]));
    }

    #[test]
    fn gap_is_refused_and_map_kept() {
        let mut m = Netmap::new();
        m.apply(upd(0, 5, true, vec![peer(1)], vec![], false))
            .unwrap();
        let before = m.clone();
        assert!(matches!(
            m.apply(upd(6, 7, false, vec![], vec![1], false)),
            Err(NetmapError::Gap { .. })
        ));
        assert_eq!(m, before);
    }

    #[test]
    fn chunks_commit_together() {
        let mut m = Netmap::new();
        assert_eq!(
            m.apply(upd(0, 3, true, vec![peer(1)], vec![], true)),
            Ok(None)
        );
        assert_eq!(m.len(), 0);
        let c = m
            .apply(upd(0, 3, true, vec![peer(2)], vec![], false))
            .unwrap()
            .unwrap();
        assert!(c.full);
        assert_eq!(m.len(), 2);
        assert_eq!(m.version(), 3);
    }
}
