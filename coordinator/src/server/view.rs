//! One host's share of the netmap: the registry's changes cut down to the
//! peers the policy lets it reach, plus its packet filter and services when
//! they change.
//!
//! The registry's change log is global; what a host may see is not. So a
//! session remembers the view it last sent (shared with every session of
//! the same view: no per-session peer list): the host has exactly the
//! registry's nodes that view lets it see. A policy change turns into
//! upserts of peers that became visible and removals of peers that stopped
//! being visible, on top of the ordinary delta.

use std::sync::Arc;

use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use weft_proto::policy::PacketFilter;
use weft_proto::{codec, NodeId, Peer, ServiceEntry};

use super::conn::ConnError;
use super::{Ordering, Serialize, Shared, PEERS_PER_CHUNK};
use crate::cluster::{NodeView, PeerSet};
use crate::registry::Changes;

/// The wire form of a netmap update built from shared peer records, so a
/// snapshot is never copied per session. Field names match
/// [`weft_proto::NetmapUpdate`].
#[derive(Serialize)]
struct NetmapOut<'a> {
    epoch: u64,
    from_version: u64,
    version: u64,
    full: bool,
    upserts: Vec<&'a Peer>,
    removed: &'a [NodeId],
    more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    filter: Option<&'a PacketFilter>,
    #[serde(skip_serializing_if = "Option::is_none")]
    services: Option<&'a [ServiceEntry]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    routes: Option<&'a [weft_proto::policy::Cidr]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keepalive_ms: Option<u32>,
}

#[derive(Serialize)]
enum ServerMsgOut<'a> {
    Netmap(NetmapOut<'a>),
}

/// One update for the host, ready to send.
pub(super) struct Update {
    from: u64,
    to: u64,
    full: bool,
    upserts: Vec<Arc<Peer>>,
    removed: Vec<NodeId>,
    view: Option<Arc<NodeView>>,
}

/// What a resuming host says it has.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Have {
    pub epoch: u64,
    pub version: u64,
    pub view: u64,
    /// Its netmap's content digest (0: none sent).
    pub digest: u64,
}

/// What a session has sent its host.
pub(super) struct HostView {
    id: NodeId,
    epoch: u64,
    version: u64,
    /// A replica's resume: the version the host has, to be answered from
    /// the revision it stands for.
    claim: Option<u64>,
    /// The view (filter, services, peer set) the host has: it has the
    /// registry's nodes this view sees.
    sent: Option<Arc<NodeView>>,
    /// A host whose version this coordinator cannot answer (it restarted
    /// since) but whose peers match the view: the registry version its
    /// netmap is as good as, to give it a delta from there.
    matched: Option<u64>,
}

impl HostView {
    /// A session's start. A host whose cached netmap holds the view in
    /// force (same epoch, same view id) resumes with a delta from its
    /// version; any other gets a full update, since what it may see changed.
    pub(super) fn new(shared: &Shared, id: NodeId, have: Have) -> HostView {
        let Have {
            epoch,
            version,
            view,
            digest,
        } = have;
        let current = shared.compiled().nodes.get(&id).cloned();
        // On replicas the version may be another replica's: it says up to
        // which etcd revision the host has every change (see
        // `crate::store::REVISION_SHIFT`), and the first update is what
        // changed after that revision.
        let claim = shared.replica.is_some().then_some(version);
        match current {
            Some(v) if epoch == shared.epoch && view == v.id => {
                let matched = (digest != 0 && claim.is_none())
                    .then(|| {
                        let reg = shared.read();
                        (view_digest(&reg, &v) == digest).then(|| reg.version())
                    })
                    .flatten();
                HostView {
                    id,
                    epoch,
                    version,
                    claim,
                    sent: Some(v),
                    matched,
                }
            }
            _ => HostView {
                id,
                epoch: 0,
                version: 0,
                claim: None,
                sent: None,
                matched: None,
            },
        }
    }

    /// An update that changes nothing, to answer a resume that is current.
    pub(super) fn nothing(&self) -> Update {
        Update {
            from: self.version,
            to: self.version,
            full: false,
            upserts: Vec::new(),
            removed: Vec::new(),
            view: None,
        }
    }

    /// Whether the host's view is compiled (a host that just joined waits
    /// for the coalescer's next compilation).
    pub(super) fn ready(&self, shared: &Shared) -> bool {
        shared.compiled().nodes.contains_key(&self.id)
    }

    /// What the host needs now, or `None` if it is up to date (or its view
    /// is not compiled yet).
    pub(super) fn next(&mut self, shared: &Shared) -> Option<Update> {
        let Some(view) = shared.compiled().nodes.get(&self.id).cloned() else {
            // Joined since the last compilation: ask for one.
            shared.membership_changed.store(true, Ordering::Release);
            shared.changed.notify_one();
            return None;
        };
        let reg = shared.read();
        let changes = match self.claim.take() {
            Some(v) => {
                let rev = v >> crate::store::REVISION_SHIFT;
                match reg.changes_after_revision(self.epoch, rev, self.id) {
                    Some((upserts, removed)) if reg.version() >= v => {
                        if upserts.is_empty() && removed.is_empty() && reg.version() == v {
                            Changes::None
                        } else {
                            Changes::Delta {
                                from: v,
                                to: reg.version(),
                                upserts,
                                removed,
                            }
                        }
                    }
                    // Another epoch or log, or a host ahead of this
                    // replica: a snapshot.
                    _ => reg.changes_since(0, 0, self.id),
                }
            }
            None => match (
                reg.changes_since(self.epoch, self.version, self.id),
                self.matched.take(),
            ) {
                // The log cannot answer the host's version, but its peers
                // are the view's as of `base`: what changed since then,
                // as a delta from the version it has.
                (Changes::Full { .. }, Some(base)) => {
                    match reg.changes_since(self.epoch, base, self.id) {
                        Changes::None => Changes::Delta {
                            from: self.version,
                            to: base,
                            upserts: Vec::new(),
                            removed: Vec::new(),
                        },
                        Changes::Delta {
                            to,
                            upserts,
                            removed,
                            ..
                        } => Changes::Delta {
                            from: self.version,
                            to,
                            upserts,
                            removed,
                        },
                        full => full,
                    }
                }
                (changes, _) => changes,
            },
        };
        let view_changed = !self
            .sent
            .as_ref()
            .is_some_and(|s| Arc::ptr_eq(s, &view) || **s == *view);
        let mut update = match changes {
            Changes::None if !view_changed => return None,
            Changes::None => self.nothing(),
            Changes::Full { version, peers } => Update {
                from: 0,
                to: version,
                full: true,
                upserts: peers,
                removed: Vec::new(),
                view: None,
            },
            Changes::Delta {
                from,
                to,
                upserts,
                removed,
            } => Update {
                from,
                to,
                full: false,
                upserts,
                removed,
                view: None,
            },
        };
        // What the host had: nothing before a full update.
        let had = |id: NodeId| !update.full && self.sent.as_ref().is_some_and(|s| s.sees(id));
        // Changed peers the host may not see: drop them, and take them away
        // if the host has them.
        let mut removed: Vec<NodeId> = update
            .removed
            .iter()
            .copied()
            .filter(|id| had(*id))
            .collect();
        update.upserts.retain(|p| {
            let keep = view.sees(p.id);
            if !keep && had(p.id) {
                removed.push(p.id);
            }
            keep
        });
        if view_changed && !update.full {
            if let Some(old) = &self.sent {
                let changed: std::collections::HashSet<NodeId> = update
                    .upserts
                    .iter()
                    .map(|p| p.id)
                    .chain(removed.iter().copied())
                    .collect();
                let (gained, lost) = view_difference(old, &view, &reg);
                for id in gained.into_iter().filter(|id| !changed.contains(id)) {
                    if let Some(p) = reg.get(id) {
                        update.upserts.push(p.clone());
                    }
                }
                removed.extend(lost.into_iter().filter(|id| !changed.contains(id)));
            }
        }
        drop(reg);
        update.removed = removed;
        if view_changed || update.full {
            update.view = Some(view.clone());
        }
        self.sent = Some(view);
        self.epoch = shared.epoch;
        self.version = update.to;
        Some(update)
    }
}

/// The content digest of what `view` lets its host have now: the XOR of
/// the durable digests of the registry's nodes it sees (what the host's
/// `Netmap::content_digest` is when it has them). O(1) for
/// [`PeerSet::All`], O(the set) otherwise.
fn view_digest(reg: &crate::registry::Registry, view: &NodeView) -> u64 {
    let me = view.node;
    match &view.peers {
        PeerSet::All => reg.digest_all() ^ reg.digest_of(me).unwrap_or(0),
        PeerSet::Only(s) => s
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| reg.digest_of(*id))
            .fold(0, |x, d| x ^ d),
    }
}

/// The registry's nodes `new` sees and `old` did not, and those `old` saw
/// and `new` does not (the host's own node in neither). O(hosts) when one
/// side is [`PeerSet::All`], O(the two sets) otherwise.
fn view_difference(
    old: &NodeView,
    new: &NodeView,
    reg: &crate::registry::Registry,
) -> (Vec<NodeId>, Vec<NodeId>) {
    if old.peers.same(&new.peers) {
        return (Vec::new(), Vec::new());
    }
    let me = new.node;
    let exists = |id: &NodeId| *id != me && reg.get(*id).is_some();
    match (&old.peers, &new.peers) {
        (PeerSet::Only(a), PeerSet::Only(b)) => (
            b.difference(a).copied().filter(exists).collect(),
            a.difference(b).copied().filter(exists).collect(),
        ),
        (PeerSet::Only(a), PeerSet::All) => (
            reg.peers()
                .map(|p| p.id)
                .filter(|id| *id != me && !a.contains(id))
                .collect(),
            Vec::new(),
        ),
        (PeerSet::All, PeerSet::Only(b)) => (
            Vec::new(),
            reg.peers()
                .map(|p| p.id)
                .filter(|id| *id != me && !b.contains(id))
                .collect(),
        ),
        (PeerSet::All, PeerSet::All) => (Vec::new(), Vec::new()),
    }
}

/// Sends an update in chunks of at most [`PEERS_PER_CHUNK`] peers; a small
/// one comes from the shared frame cache (encoded once for every session
/// that sends it alike).
pub(super) async fn send_update<W: AsyncWrite + Unpin>(
    send: &mut W,
    shared: &Shared,
    update: &Update,
) -> Result<(), ConnError> {
    let epoch = shared.epoch;
    // The same for every host (a shared frame may carry a value a few
    // sessions old).
    let keepalive_ms = Some(shared.keepalive_ms.load(Ordering::Relaxed)).filter(|ms| *ms > 0);
    if update.upserts.len() <= super::frames::MAX_CACHED_PEERS {
        let key = super::frames::FrameKey {
            epoch,
            from: update.from,
            to: update.to,
            full: update.full,
            upserts: update.upserts.iter().map(|p| p.id).collect(),
            removed: update.removed.clone(),
            view: update.view.as_ref().map(|v| v.id),
        };
        let (frame, source) = shared.frames.get_or_encode(key, || {
            let view = update.view.as_deref();
            codec::encode(&ServerMsgOut::Netmap(NetmapOut {
                epoch,
                from_version: update.from,
                version: update.to,
                full: update.full,
                upserts: update.upserts.iter().map(|p| p.as_ref()).collect(),
                removed: &update.removed,
                more: false,
                filter: view.map(|v| &v.filter),
                services: view.map(|v| v.services.as_slice()),
                view: view.map(|v| v.id),
                routes: view.map(|v| v.routes.as_slice()),
                keepalive_ms,
            }))
        })?;
        shared
            .metrics
            .netmap_frames
            .get_or_create(&[("result", source.label())])
            .inc();
        send.write_all(&frame).await?;
        return Ok(());
    }
    let mut chunks = update.upserts.chunks(PEERS_PER_CHUNK).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next();
        if chunk.is_none() && !first {
            break;
        }
        let more = chunks.peek().is_some();
        let view = if first { update.view.as_deref() } else { None };
        let msg = ServerMsgOut::Netmap(NetmapOut {
            epoch,
            from_version: update.from,
            version: update.to,
            full: update.full,
            upserts: chunk.unwrap_or(&[]).iter().map(|p| p.as_ref()).collect(),
            removed: if more { &[] } else { &update.removed },
            more,
            filter: view.map(|v| &v.filter),
            services: view.map(|v| v.services.as_slice()),
            view: view.map(|v| v.id),
            routes: view.map(|v| v.routes.as_slice()),
            keepalive_ms,
        });
        let frame = codec::encode(&msg)?;
        send.write_all(&frame).await?;
        first = false;
        if !more {
            break;
        }
    }
    Ok(())
}
