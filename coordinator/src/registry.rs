//! The in-memory node registry and its change log: the source of every
//! netmap the coordinator sends.
//!
//! Each change bumps the version and appends `(version, node)` to a bounded
//! log. A session remembers only the version it last sent, so its "queue" is
//! one number: when it wakes it asks [`Registry::changes_since`] for the
//! latest state of every peer changed after that version. A slow host thus
//! gets a collapsed update and never grows memory. When its version has
//! fallen off the log (or belongs to another epoch) it gets a full snapshot.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;

use weft_proto::{NodeId, Peer, WgPublicKey};

use crate::live_hint::{LiveHint, Loaded};

/// Changes kept for delta resumption.
const DEFAULT_LOG_CAPACITY: usize = 65_536;

#[derive(Debug, Clone)]
struct Entry {
    peer: Arc<Peer>,
    created_at: u64,
    /// [`Peer::durable_digest`] of `peer`.
    digest: u64,
    /// The version of its latest change (0: none since it was loaded).
    version: u64,
}

/// What a session must send to bring a host from its version to now.
#[derive(Debug, Clone, PartialEq)]
pub enum Changes {
    /// Nothing changed.
    None,
    Full {
        version: u64,
        peers: Vec<Arc<Peer>>,
    },
    Delta {
        from: u64,
        to: u64,
        upserts: Vec<Arc<Peer>>,
        removed: Vec<NodeId>,
    },
}

#[derive(Debug)]
pub struct Registry {
    epoch: u64,
    version: u64,
    nodes: HashMap<NodeId, Entry>,
    by_key: HashMap<WgPublicKey, NodeId>,
    by_name: HashMap<String, NodeId>,
    log: VecDeque<(u64, NodeId)>,
    log_capacity: usize,
    /// Deltas can be computed from any version >= this.
    log_floor: u64,
    /// On a replica (see `server::replica`): the etcd revision of each
    /// node's latest logged change ([`LOCAL`] until this replica's own
    /// write of it is seen), so a host that failed over from another
    /// replica, which had applied everything up to some revision, gets
    /// exactly what changed after it. `None` on a lone coordinator.
    revs: Option<Revisions>,
    /// XOR of every node's [`Peer::durable_digest`] (see
    /// [`Registry::digest_all`]).
    digest_all: u64,
    /// A lone coordinator's note of every change (see [`crate::live_hint`]).
    hint: Option<LiveHint>,
    /// Versions strictly between these two were handed out by a previous
    /// process after its last hint record: the log cannot answer them.
    gap: Option<(u64, u64)>,
    /// Expired nodes (see [`crate::expiry`]): in no netmap, but their key
    /// and name stay taken (their subnet too, in the IPAM) until removed.
    retired: Retired,
}

/// An expired node as the registry keeps it.
#[derive(Debug, Clone)]
pub struct RetiredNode {
    pub peer: Arc<Peer>,
    pub created_at: u64,
    pub expired_at: u64,
}

#[derive(Debug, Default)]
struct Retired {
    nodes: HashMap<NodeId, RetiredNode>,
    by_key: HashMap<WgPublicKey, NodeId>,
    by_name: HashMap<String, NodeId>,
}

/// A change this replica made that etcd has not shown back yet.
pub const LOCAL: u64 = u64::MAX;

#[derive(Debug, Default)]
struct Revisions {
    /// Per logged node: the version of its latest entry and that entry's
    /// revision (the highest of its entries').
    latest: HashMap<NodeId, (u64, u64)>,
    /// The revision changes being applied now carry.
    tag: u64,
    /// Deltas by revision can be computed from any revision >= this.
    floor: u64,
    /// Nodes whose latest change fell off the log while still [`LOCAL`]:
    /// in every delta by revision until etcd shows it.
    dropped_local: HashSet<NodeId>,
}

impl Registry {
    pub fn new(epoch: u64) -> Self {
        Self::with_log_capacity(epoch, DEFAULT_LOG_CAPACITY)
    }

    pub fn with_log_capacity(epoch: u64, log_capacity: usize) -> Self {
        Self {
            epoch,
            version: 1,
            nodes: HashMap::new(),
            by_key: HashMap::new(),
            by_name: HashMap::new(),
            log: VecDeque::new(),
            log_capacity: log_capacity.max(1),
            log_floor: 1,
            revs: None,
            digest_all: 0,
            hint: None,
            gap: None,
            retired: Retired::default(),
        }
    }

    /// Tracks revisions (a replica's registry): deltas by revision from
    /// `floor` on, the revision everything was loaded at.
    pub fn track_revisions(&mut self, epoch: u64, floor: u64) {
        self.epoch = epoch;
        self.revs = Some(Revisions {
            latest: HashMap::new(),
            tag: LOCAL,
            floor,
            dropped_local: HashSet::new(),
        });
    }

    /// Starts the version sequence at `version` (at least), with an empty
    /// log from there: a lone coordinator at start, so every version it
    /// hands out is above any its previous process did, and no host's older
    /// version is mistaken for one the log can answer.
    pub fn start_at(&mut self, version: u64) {
        self.version = self.version.max(version);
        self.log.clear();
        self.log_floor = self.version;
    }

    /// After [`Registry::start_at`]: takes a previous process's live hint
    /// as the truth about its nodes' online flags and endpoints, and its
    /// record of when each changed as the log, so a host resuming at any
    /// version since the hint's floor gets exactly what changed after it.
    /// A stored node the hint does not know (a join committed just before
    /// the previous process died) is a change now.
    pub fn seed(&mut self, hint: Loaded) {
        let start = self.version;
        if hint.floor >= start || hint.last >= start {
            // Not from a process before this one.
            return;
        }
        let mut log: Vec<(u64, NodeId)> = Vec::with_capacity(hint.nodes.len());
        let mut unknown = Vec::new();
        for (id, e) in &mut self.nodes {
            match hint.nodes.get(id) {
                Some(live) if live.version < start => {
                    if e.peer.online != live.online || e.peer.endpoints != live.endpoints {
                        let p = Arc::make_mut(&mut e.peer);
                        p.online = live.online;
                        p.endpoints.clone_from(&live.endpoints);
                    }
                    e.version = live.version;
                    if live.version > hint.floor {
                        log.push((live.version, *id));
                    }
                }
                _ => unknown.push(*id),
            }
        }
        for (id, v) in &hint.removed {
            if !self.nodes.contains_key(id) && *v > hint.floor && *v < start {
                log.push((*v, *id));
            }
        }
        // In the hint but no longer stored: removed, as far as anyone knows
        // at its last version.
        for id in hint.nodes.keys() {
            if !self.nodes.contains_key(id) && hint.last < start {
                log.push((hint.last, *id));
            }
        }
        log.sort_unstable();
        self.log = log.into();
        self.log_floor = hint.floor;
        self.gap = Some((hint.last, start));
        for id in unknown {
            self.touch(id);
        }
    }

    /// From now on every change is noted in `hint`, which starts over with
    /// what the registry holds.
    pub fn attach_hint(&mut self, hint: LiveHint) {
        self.hint = Some(hint);
        self.rewrite_hint();
    }

    /// Stops noting changes (a coordinator shutting down).
    pub fn detach_hint(&mut self) {
        self.hint = None;
    }

    fn rewrite_hint(&mut self) {
        let Some(hint) = self.hint.as_mut() else {
            return;
        };
        let mut removed: HashMap<NodeId, u64> = HashMap::new();
        for (v, id) in &self.log {
            if !self.nodes.contains_key(id) {
                removed.insert(*id, *v);
            }
        }
        hint.rewrite(
            self.epoch,
            self.log_floor,
            self.nodes.values().map(|e| (e.version, &*e.peer)),
            removed.into_iter().map(|(id, v)| (v, id)),
        );
    }

    /// Moves the version forward to at least `version` without logging a
    /// change.
    pub fn advance_to(&mut self, version: u64) {
        self.version = self.version.max(version);
    }

    /// Changes from now on carry etcd revision `rev` (on a registry that
    /// tracks revisions); the revision they carried before.
    pub fn tag_with(&mut self, rev: u64) -> u64 {
        self.revs
            .as_mut()
            .map_or(LOCAL, |r| std::mem::replace(&mut r.tag, rev))
    }

    /// Runs `f` with the changes it makes carrying etcd revision `rev`.
    pub fn at_revision<T>(&mut self, rev: u64, f: impl FnOnce(&mut Self) -> T) -> T {
        let before = self
            .revs
            .as_mut()
            .map(|r| std::mem::replace(&mut r.tag, rev));
        let out = f(self);
        if let (Some(r), Some(b)) = (self.revs.as_mut(), before) {
            r.tag = b;
        }
        out
    }

    /// Etcd showed this replica's own write of node `id`'s state at `rev`:
    /// if the node's latest change is still [`LOCAL`] and `matches` its
    /// record, it now carries `rev`.
    pub fn written(&mut self, id: NodeId, rev: u64, matches: impl FnOnce(&Peer) -> bool) {
        let Some(peer) = self.nodes.get(&id).map(|e| e.peer.clone()) else {
            return;
        };
        if let Some(r) = self.revs.as_mut() {
            if !matches(&peer) {
                return;
            }
            if let Some(latest) = r.latest.get_mut(&id) {
                if latest.1 == LOCAL {
                    latest.1 = rev;
                }
            }
            r.dropped_local.remove(&id);
        }
    }

    /// What changed after etcd revision `rev`, for a host whose netmap
    /// (epoch `epoch`) reflects every change up to it: the latest state of
    /// each node changed since, leaving out `me`. `None` when the log
    /// cannot tell (another epoch, older than the log).
    pub fn changes_after_revision(
        &self,
        epoch: u64,
        rev: u64,
        me: NodeId,
    ) -> Option<(Vec<Arc<Peer>>, Vec<NodeId>)> {
        let r = self.revs.as_ref()?;
        if epoch != self.epoch || rev < r.floor {
            return None;
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        let dropped = r
            .dropped_local
            .iter()
            .filter(|id| !r.latest.contains_key(id));
        let changed = r
            .latest
            .iter()
            .filter(|(_, (_, at))| *at > rev)
            .map(|(id, _)| id)
            .chain(dropped);
        for id in changed {
            if *id == me {
                continue;
            }
            match self.nodes.get(id) {
                Some(e) => upserts.push(e.peer.clone()),
                None => removed.push(*id),
            }
        }
        Some((upserts, removed))
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn get(&self, id: NodeId) -> Option<&Arc<Peer>> {
        self.nodes.get(&id).map(|e| &e.peer)
    }

    pub fn created_at(&self, id: NodeId) -> Option<u64> {
        self.nodes.get(&id).map(|e| e.created_at)
    }

    pub fn by_key(&self, key: &WgPublicKey) -> Option<NodeId> {
        self.by_key.get(key).copied()
    }

    pub fn by_name(&self, name: &str) -> Option<NodeId> {
        self.by_name.get(name).copied()
    }

    /// Whether a node has this name, an expired one included.
    pub fn name_taken(&self, name: &str) -> bool {
        self.by_name(name).is_some() || self.retired.by_name.contains_key(name)
    }

    /// The expired node `id`.
    pub fn retired(&self, id: NodeId) -> Option<&RetiredNode> {
        self.retired.nodes.get(&id)
    }

    pub fn retired_by_key(&self, key: &WgPublicKey) -> Option<NodeId> {
        self.retired.by_key.get(key).copied()
    }

    pub fn retired_by_name(&self, name: &str) -> Option<NodeId> {
        self.retired.by_name.get(name).copied()
    }

    pub fn retired_nodes(&self) -> impl Iterator<Item = &RetiredNode> {
        self.retired.nodes.values()
    }

    /// Adds an expired node loaded at start (or by a resync).
    pub fn load_retired(&mut self, peer: Peer, created_at: u64, expired_at: u64) {
        let id = peer.id;
        self.retired.by_key.insert(peer.public_key, id);
        self.retired.by_name.insert(peer.name.clone(), id);
        self.retired.nodes.insert(
            id,
            RetiredNode {
                peer: Arc::new(peer),
                created_at,
                expired_at,
            },
        );
    }

    /// Node `id` expired: out of every netmap (a removal is logged), its
    /// key and name still taken. Whether it was in the registry.
    pub fn retire(&mut self, id: NodeId, expired_at: u64) -> bool {
        let created_at = self.created_at(id).unwrap_or(0);
        let Some(peer) = self.remove(id) else {
            return false;
        };
        let mut peer = Peer::clone(&peer);
        peer.online = false;
        peer.endpoints.clear();
        self.load_retired(peer, created_at, expired_at);
        true
    }

    /// Takes an expired node out of the retired set (it is removed, or
    /// comes back).
    pub fn forget_retired(&mut self, id: NodeId) -> Option<RetiredNode> {
        let r = self.retired.nodes.remove(&id)?;
        self.retired.by_key.remove(&r.peer.public_key);
        if self.retired.by_name.get(&r.peer.name) == Some(&id) {
            self.retired.by_name.remove(&r.peer.name);
        }
        Some(r)
    }

    /// An expired node comes back into every netmap. Whether it was
    /// expired.
    pub fn revive(&mut self, id: NodeId) -> bool {
        let Some(r) = self.forget_retired(id) else {
            return false;
        };
        self.insert(Peer::clone(&r.peer), r.created_at);
        true
    }

    pub fn peers(&self) -> impl Iterator<Item = &Arc<Peer>> {
        self.nodes.values().map(|e| &e.peer)
    }

    fn touch(&mut self, id: NodeId) {
        self.version += 1;
        self.log.push_back((self.version, id));
        while self.log.len() > self.log_capacity {
            if let Some((v, old)) = self.log.pop_front() {
                self.log_floor = v;
                if let Some(r) = self.revs.as_mut() {
                    // Fallen off the log: deltas by revision no longer
                    // reach back past its change.
                    if let Some((latest, at)) = r.latest.get(&old).copied() {
                        if latest == v {
                            r.latest.remove(&old);
                            if at == LOCAL {
                                r.dropped_local.insert(old);
                            } else {
                                r.floor = r.floor.max(at);
                            }
                        }
                    }
                }
            }
        }
        let version = self.version;
        if let Some(e) = self.nodes.get_mut(&id) {
            e.version = version;
        }
        if let Some(h) = self.hint.as_mut() {
            h.node(version, id, self.nodes.get(&id).map(|e| &*e.peer));
            if h.due() {
                self.rewrite_hint();
            }
        }
        if let Some(r) = self.revs.as_mut() {
            let tag = r.tag;
            // The highest revision of the node's changes; a revision
            // replaces a local change (etcd's order wins over this
            // replica's for a node whose session moved away).
            r.latest
                .entry(id)
                .and_modify(|e| {
                    let at = if e.1 == LOCAL { tag } else { e.1.max(tag) };
                    *e = (version, at);
                })
                .or_insert((version, tag));
            if tag != LOCAL {
                r.dropped_local.remove(&id);
            }
        }
    }

    /// A new version with no node changed: what each host may see changed
    /// (a policy, service or route change), so every host gets an update
    /// and sees its netmap version move.
    pub fn bump(&mut self) {
        self.version += 1;
        if let Some(h) = self.hint.as_mut() {
            h.version(self.version);
        }
    }

    /// Adds a node loaded at start: no change is logged.
    pub fn load(&mut self, peer: Peer, created_at: u64) {
        self.by_key.insert(peer.public_key, peer.id);
        self.by_name.insert(peer.name.clone(), peer.id);
        let digest = peer.durable_digest();
        self.digest_all ^= digest;
        if let Some(old) = self.nodes.insert(
            peer.id,
            Entry {
                peer: Arc::new(peer),
                created_at,
                digest,
                version: 0,
            },
        ) {
            self.digest_all ^= old.digest;
        }
    }

    /// The XOR of every node's durable digest: with the host's own taken
    /// out, what a host that has every other node has as its netmap's
    /// [`weft_proto::Netmap::content_digest`].
    pub fn digest_all(&self) -> u64 {
        self.digest_all
    }

    /// Node `id`'s durable digest.
    pub fn digest_of(&self, id: NodeId) -> Option<u64> {
        self.nodes.get(&id).map(|e| e.digest)
    }

    /// A restarted coordinator, some time after its start: nodes that did
    /// not come back (`connected` says which did) go offline, and a change
    /// is logged for every offline node, so hosts that resumed without a
    /// snapshot or a hint of their version learn which peers are away.
    /// Returns how many are offline.
    pub fn announce_offline(&mut self, connected: impl Fn(NodeId) -> bool) -> usize {
        let ids: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|e| !e.peer.online || !connected(e.peer.id))
            .map(|e| e.peer.id)
            .collect();
        for id in &ids {
            if let Some(e) = self.nodes.get_mut(id) {
                if e.peer.online {
                    Arc::make_mut(&mut e.peer).online = false;
                }
            }
            self.touch(*id);
        }
        ids.len()
    }

    pub fn insert(&mut self, peer: Peer, created_at: u64) {
        let id = peer.id;
        self.load(peer, created_at);
        self.touch(id);
    }

    pub fn remove(&mut self, id: NodeId) -> Option<Arc<Peer>> {
        let entry = self.nodes.remove(&id)?;
        self.digest_all ^= entry.digest;
        self.by_key.remove(&entry.peer.public_key);
        if self.by_name.get(&entry.peer.name) == Some(&id) {
            self.by_name.remove(&entry.peer.name);
        }
        self.touch(id);
        Some(entry.peer)
    }

    /// Applies `f` to a node's peer record; logs a change if it changed.
    pub fn update(&mut self, id: NodeId, f: impl FnOnce(&mut Peer)) -> bool {
        let Some(entry) = self.nodes.get_mut(&id) else {
            return false;
        };
        let mut next = Peer::clone(&entry.peer);
        f(&mut next);
        if next == *entry.peer {
            return false;
        }
        let digest = next.durable_digest();
        self.digest_all ^= entry.digest ^ digest;
        entry.digest = digest;
        entry.peer = Arc::new(next);
        self.touch(id);
        true
    }

    pub fn set_online(
        &mut self,
        id: NodeId,
        online: bool,
        endpoints: Option<Vec<SocketAddr>>,
    ) -> bool {
        self.update(id, |p| {
            p.online = online;
            if let Some(e) = endpoints {
                p.endpoints = e;
            }
        })
    }

    /// What a host at `(epoch, from)` needs to catch up, leaving out the
    /// host's own node.
    pub fn changes_since(&self, epoch: u64, from: u64, me: NodeId) -> Changes {
        let lost = self.gap.is_some_and(|(a, b)| from > a && from < b);
        if epoch != self.epoch || from < self.log_floor || from > self.version || lost {
            return Changes::Full {
                version: self.version,
                peers: self
                    .nodes
                    .values()
                    .filter(|e| e.peer.id != me)
                    .map(|e| e.peer.clone())
                    .collect(),
            };
        }
        if from == self.version {
            return Changes::None;
        }
        let start = self.log.partition_point(|(v, _)| *v <= from);
        let mut seen = HashSet::new();
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for (_, id) in self.log.range(start..) {
            if *id == me || !seen.insert(*id) {
                continue;
            }
            match self.nodes.get(id) {
                Some(e) => upserts.push(e.peer.clone()),
                None => removed.push(*id),
            }
        }
        Changes::Delta {
            from,
            to: self.version,
            upserts,
            removed,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use weft_proto::{HostSubnet, Netmap, NetmapUpdate};

    /// A node record for tests: offline, no endpoints.
    pub(crate) fn peer(id: u64) -> Peer {
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
            online: false,
            routes: Vec::new(),
        }
    }

    fn to_update(epoch: u64, c: Changes) -> Option<NetmapUpdate> {
        match c {
            Changes::None => None,
            Changes::Full { version, peers } => Some(NetmapUpdate {
                upserts: peers.iter().map(|p| Peer::clone(p)).collect(),
                ..NetmapUpdate::empty(epoch, 0, version, true)
            }),
            Changes::Delta {
                from,
                to,
                upserts,
                removed,
            } => Some(NetmapUpdate {
                upserts: upserts.iter().map(|p| Peer::clone(p)).collect(),
                removed,
                ..NetmapUpdate::empty(epoch, from, to, false)
            }),
        }
    }

    #[test]
    fn deltas_collapse_and_fold_to_the_same_map() {
        let mut reg = Registry::with_log_capacity(7, 8);
        let me = NodeId(100);
        let mut host = Netmap::new();
        for i in 1..=3 {
            reg.insert(peer(i), 0);
        }
        host.apply(to_update(7, reg.changes_since(0, 0, me)).unwrap())
            .unwrap();
        assert_eq!(host.len(), 3);
        // many changes to one peer collapse to one upsert
        for port in 1..5 {
            reg.set_online(
                NodeId(1),
                true,
                Some(vec![SocketAddr::from(([192, 0, 2, 1], port))]),
            );
        }
        reg.remove(NodeId(2));
        let c = reg.changes_since(7, host.version(), me);
        match &c {
            Changes::Delta {
                upserts, removed, ..
            } => {
                assert_eq!(upserts.len(), 1);
                assert_eq!(removed, &vec![NodeId(2)]);
            }
            other => panic!("{other:?}"),
        }
        host.apply(to_update(7, c).unwrap()).unwrap();
        assert_eq!(host.len(), 2);
        assert_eq!(host.peer(NodeId(1)).unwrap().endpoints[0].port(), 4);
        assert_eq!(reg.changes_since(7, host.version(), me), Changes::None);
        // falling off the log or a new epoch gives a full snapshot
        for i in 10..30 {
            reg.insert(peer(i), 0);
        }
        assert!(matches!(
            reg.changes_since(7, host.version(), me),
            Changes::Full { .. }
        ));
        assert!(matches!(
            reg.changes_since(8, reg.version(), me),
            Changes::Full { .. }
        ));
    }

    #[test]
    fn a_seeded_registry_answers_versions_of_the_process_before_it() {
        use crate::live_hint::{Live, Loaded};
        let me = NodeId(100);
        let mut reg = Registry::new(7);
        for i in 1..=3 {
            reg.load(peer(i), 0);
        }
        let ep = SocketAddr::from(([192, 0, 2, 1], 7));
        let live = |version, online| Live {
            version,
            online,
            endpoints: vec![ep],
        };
        let hint = Loaded {
            floor: 100,
            last: 106,
            nodes: [(NodeId(1), live(105, true)), (NodeId(2), live(90, false))].into(),
            removed: [(NodeId(5), 104)].into(),
        };
        reg.start_at(1000);
        reg.seed(hint);
        let got = |from| match reg.changes_since(7, from, me) {
            Changes::Delta {
                upserts, removed, ..
            } => {
                let mut u: Vec<u64> = upserts.iter().map(|p| p.id.0).collect();
                u.sort();
                Some((u, removed))
            }
            Changes::None => Some((vec![], vec![])),
            Changes::Full { .. } => None,
        };
        // Node 3 was stored but not in the hint: a change now.
        assert_eq!(got(100), Some((vec![1, 3], vec![NodeId(5)])));
        assert_eq!(got(104), Some((vec![1, 3], vec![])));
        assert_eq!(got(106), Some((vec![3], vec![])));
        // Versions the hint never saw, or from before its floor: no delta.
        assert_eq!(got(107), None);
        assert_eq!(got(99), None);
        let one = reg.get(NodeId(1)).unwrap();
        assert!(one.online);
        assert_eq!(one.endpoints, vec![ep]);
        assert!(!reg.get(NodeId(2)).unwrap().online);
        // Announcing the ones that did not come back (3 did): 1 goes
        // offline, and 2 stays so.
        reg.set_online(NodeId(3), true, None);
        assert_eq!(reg.announce_offline(|id| id == NodeId(3)), 2);
        assert!(!reg.get(NodeId(1)).unwrap().online);
        // A hint that is not from before this process is ignored.
        let mut fresh = Registry::new(7);
        fresh.load(peer(1), 0);
        fresh.start_at(50);
        fresh.seed(Loaded {
            floor: 10,
            last: 60,
            ..Loaded::default()
        });
        assert!(matches!(
            fresh.changes_since(7, 20, me),
            Changes::Full { .. }
        ));
    }

    #[test]
    fn deltas_by_revision_hold_what_changed_after_it() {
        let me = NodeId(100);
        let mut reg = Registry::new(9);
        reg.track_revisions(9, 10);
        reg.at_revision(11, |r| r.insert(peer(1), 0));
        reg.at_revision(12, |r| r.insert(peer(2), 0));
        // A local change (not in etcd yet), then a removal at 14.
        reg.insert(peer(3), 0);
        reg.at_revision(14, |r| r.remove(NodeId(2)));
        let ids = |c: Option<(Vec<Arc<Peer>>, Vec<NodeId>)>| {
            let (u, r) = c.unwrap();
            let mut u: Vec<u64> = u.iter().map(|p| p.id.0).collect();
            u.sort();
            (u, r)
        };
        assert_eq!(
            ids(reg.changes_after_revision(9, 10, me)),
            (vec![1, 3], vec![NodeId(2)])
        );
        assert_eq!(
            ids(reg.changes_after_revision(9, 12, me)),
            (vec![3], vec![NodeId(2)])
        );
        // Etcd showed the local change at 15: a host at 15 needs nothing.
        reg.written(NodeId(3), 15, |_| true);
        assert_eq!(
            ids(reg.changes_after_revision(9, 14, me)),
            (vec![3], vec![])
        );
        assert_eq!(ids(reg.changes_after_revision(9, 15, me)), (vec![], vec![]));
        // Before the floor, or another epoch: no delta.
        assert!(reg.changes_after_revision(9, 9, me).is_none());
        assert!(reg.changes_after_revision(8, 15, me).is_none());
        // A lone coordinator's registry has none.
        assert!(Registry::new(9).changes_after_revision(9, 15, me).is_none());
    }
}
