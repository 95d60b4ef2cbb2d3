//! The netmap: every other host a host should know about, and the pure
//! reducer that folds the coordinator's updates into it.
//!
//! The coordinator sends one full snapshot when a session starts (or when it
//! cannot resume from the host's version), then deltas. A large update is
//! split into chunks that share `epoch`, `from_version` and `version`; all but
//! the last have `more = true`. [`Netmap::apply`] buffers chunks and changes
//! the map only when the last one arrives, so a reader never sees half an
//! update.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}

/// What one complete update changed, for the data plane to act on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetmapChange {
    /// The whole map was replaced: reconcile everything.
    pub full: bool,
    pub upserted: Vec<NodeId>,
    pub removed: Vec<NodeId>,
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

/// A host's view of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Netmap {
    epoch: u64,
    version: u64,
    peers: BTreeMap<NodeId, Peer>,
    pending: Option<NetmapUpdate>,
}

impl Netmap {
    /// An empty map that has seen no update (version 0).
    pub fn new() -> Self {
        Self::default()
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
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
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
        }
        for id in whole.removed {
            if self.peers.remove(&id).is_some() {
                change.removed.push(id);
            }
        }
        for peer in whole.upserts {
            change.upserted.push(peer.id);
            self.peers.insert(peer.id, peer);
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
            epoch: 9,
            from_version: from,
            version: to,
            full,
            upserts: up,
            removed: rm.into_iter().map(NodeId).collect(),
            more,
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
