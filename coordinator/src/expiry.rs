//! Node expiry: a node offline longer than its expiry leaves every netmap,
//! and after a further grace period it is removed and its subnet returns to
//! the pool.
//!
//! Offline time is counted from the later of the node's last-seen time
//! (refreshed in the store while it is connected) and this coordinator's
//! start: time the coordinator itself was down never counts against hosts,
//! so a coordinator restored after a month does not expire the cluster.
//!
//! [`sweep`] is the pure decision, run by the store's writer thread
//! against the stored records and the registry's online flags.

use std::time::Duration;

use weft_proto::msg::NodeExpiry;
use weft_proto::NodeId;

use crate::store::NodeRecord;

/// The cluster's default: 30 days offline.
pub const DEFAULT_NODE_EXPIRY: Duration = Duration::from_secs(30 * 86_400);
/// The default grace period after expiry before the node is removed.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 86_400);
/// Longest time between two refreshes of a connected node's last-seen time.
const MAX_REFRESH: u64 = 3_600;

/// The cluster's expiry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryRules {
    /// How long a node may stay offline (`--node-expiry`); `None`: never.
    pub node_expiry: Option<Duration>,
    /// How long an expired node keeps its subnet, key and name before it is
    /// removed (`--expiry-grace`).
    pub grace: Duration,
}

impl Default for ExpiryRules {
    fn default() -> Self {
        Self {
            node_expiry: Some(DEFAULT_NODE_EXPIRY),
            grace: DEFAULT_GRACE,
        }
    }
}

impl ExpiryRules {
    /// How long `node` may stay offline, in seconds; `None`: for ever.
    pub fn expiry_of(&self, node: &NodeRecord) -> Option<u64> {
        match node.expiry {
            NodeExpiry::Never => None,
            NodeExpiry::After(s) => Some(s),
            NodeExpiry::Cluster => self.node_expiry.map(|d| d.as_secs()),
        }
    }

    /// How often the sweep runs: a tenth of the shortest period it
    /// enforces, between 200 ms and a minute.
    pub fn tick(&self) -> Duration {
        let shortest = self
            .node_expiry
            .map_or(self.grace, |e| e.min(self.grace))
            .max(Duration::from_secs(1));
        (shortest / 10).clamp(Duration::from_millis(200), Duration::from_secs(60))
    }

    /// How stale a connected node's last-seen time may get before it is
    /// written again: a tenth of its expiry, between 1 s and an hour (so
    /// 10,000 connected hosts cost about 3 writes a second).
    fn refresh_of(&self, node: &NodeRecord) -> u64 {
        self.expiry_of(node)
            .map_or(MAX_REFRESH, |e| e / 10)
            .clamp(1, MAX_REFRESH)
    }
}

/// What one sweep decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Records to write, as `(stored, new)`: last-seen refreshes and new
    /// expiries.
    pub updates: Vec<(NodeRecord, NodeRecord)>,
    /// Expired nodes whose grace period is over: to be removed.
    pub due: Vec<NodeId>,
}

/// Decides, at `now` (Unix seconds), which connected nodes get a fresh
/// last-seen time, which offline nodes expire, and which expired nodes are
/// past their grace period. `started`: when this coordinator started.
pub fn sweep(
    nodes: &[NodeRecord],
    online: impl Fn(NodeId) -> bool,
    rules: &ExpiryRules,
    started: u64,
    now: u64,
) -> Sweep {
    let mut out = Sweep::default();
    for n in nodes {
        if let Some(at) = n.expired_at {
            if rules.expiry_of(n).is_none() {
                // The cluster's expiry became `never`: it comes back.
                out.updates.push((n.clone(), set_expiry(n, n.expiry, now)));
            } else if now >= at.saturating_add(rules.grace.as_secs()) {
                out.due.push(n.id);
            }
            continue;
        }
        if online(n.id) {
            if now.saturating_sub(n.last_seen) >= rules.refresh_of(n) {
                let after = NodeRecord {
                    last_seen: now,
                    ..n.clone()
                };
                out.updates.push((n.clone(), after));
            }
            continue;
        }
        let Some(expiry) = rules.expiry_of(n) else {
            continue;
        };
        let seen = n.last_seen.max(n.created_at).max(started);
        if now >= seen.saturating_add(expiry) {
            let after = NodeRecord {
                expired_at: Some(now),
                ..n.clone()
            };
            out.updates.push((n.clone(), after));
        }
    }
    out
}

/// `node` with its expiry set to `expiry` at `now`: an expired node comes
/// back, with its offline time counted from now.
pub fn set_expiry(node: &NodeRecord, expiry: NodeExpiry, now: u64) -> NodeRecord {
    let mut after = NodeRecord {
        expiry,
        ..node.clone()
    };
    if after.expired_at.take().is_some() {
        after.last_seen = now;
    }
    after
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use weft_proto::{HostSubnet, WgPublicKey};

    fn node(id: u64, last_seen: u64) -> NodeRecord {
        NodeRecord {
            id: NodeId(id),
            name: format!("h{id}"),
            public_key: WgPublicKey([id as u8; 32]),
            subnet: HostSubnet {
                addr: std::net::Ipv4Addr::new(100, 64, id as u8, 0),
                prefix_len: 24,
            },
            tags: vec![],
            created_at: 0,
            token_id: String::new(),
            last_seen,
            expiry: NodeExpiry::Cluster,
            expired_at: None,
        }
    }

    fn rules(expiry: u64, grace: u64) -> ExpiryRules {
        ExpiryRules {
            node_expiry: Some(Duration::from_secs(expiry)),
            grace: Duration::from_secs(grace),
        }
    }

    #[test]
    fn an_offline_node_expires_after_its_expiry_and_goes_after_the_grace() {
        let r = rules(100, 50);
        let n = node(1, 1_000);
        assert_eq!(
            sweep(std::slice::from_ref(&n), |_| false, &r, 0, 1_099),
            Sweep::default()
        );
        let s = sweep(std::slice::from_ref(&n), |_| false, &r, 0, 1_100);
        assert_eq!(s.updates.len(), 1);
        let expired = s.updates[0].1.clone();
        assert_eq!(expired.expired_at, Some(1_100));
        assert!(s.due.is_empty());
        // Expired: not again, and removed only once the grace is over.
        assert_eq!(
            sweep(std::slice::from_ref(&expired), |_| false, &r, 0, 1_149),
            Sweep::default()
        );
        let s = sweep(&[expired], |_| false, &r, 0, 1_150);
        assert_eq!((s.updates.len(), s.due), (0, vec![NodeId(1)]));
    }

    #[test]
    fn coordinator_downtime_and_online_nodes_do_not_count() {
        let r = rules(100, 50);
        let n = node(1, 1_000);
        // Started long after the node was last seen: counted from the start.
        assert!(sweep(std::slice::from_ref(&n), |_| false, &r, 5_000, 5_099)
            .updates
            .is_empty());
        assert_eq!(
            sweep(std::slice::from_ref(&n), |_| false, &r, 5_000, 5_100).updates[0]
                .1
                .expired_at,
            Some(5_100)
        );
        // Online: its last-seen time is refreshed (a tenth of the expiry
        // stale), never expired.
        assert!(sweep(&[node(1, 1_000)], |_| true, &r, 0, 1_009)
            .updates
            .is_empty());
        let s = sweep(&[n], |_| true, &r, 0, 1_010);
        assert_eq!(s.updates[0].1.last_seen, 1_010);
        assert_eq!(s.updates[0].1.expired_at, None);
    }

    #[test]
    fn per_node_overrides_win_over_the_cluster() {
        let never = NodeRecord {
            expiry: NodeExpiry::Never,
            ..node(1, 0)
        };
        let short = NodeRecord {
            expiry: NodeExpiry::After(10),
            ..node(2, 0)
        };
        let s = sweep(&[never, short], |_| false, &rules(1_000, 5), 0, 10);
        assert_eq!(s.updates.len(), 1);
        assert_eq!(s.updates[0].1.id, NodeId(2));
        let cluster_never = ExpiryRules {
            node_expiry: None,
            ..rules(0, 5)
        };
        assert!(
            sweep(&[node(3, 0)], |_| false, &cluster_never, 0, u64::MAX / 2)
                .updates
                .is_empty()
        );
        // An expired node whose expiry became `never` comes back.
        let kept = NodeRecord {
            expired_at: Some(1),
            ..node(4, 0)
        };
        let s = sweep(&[kept], |_| false, &cluster_never, 0, 1_000);
        assert!(s.due.is_empty());
        assert_eq!(
            (s.updates[0].1.expired_at, s.updates[0].1.last_seen),
            (None, 1_000)
        );
    }

    #[test]
    fn setting_the_expiry_brings_an_expired_node_back() {
        let expired = NodeRecord {
            expired_at: Some(500),
            ..node(1, 100)
        };
        let back = set_expiry(&expired, NodeExpiry::Never, 900);
        assert_eq!(
            (back.expired_at, back.last_seen, back.expiry),
            (None, 900, NodeExpiry::Never)
        );
        let live = set_expiry(&node(2, 100), NodeExpiry::After(60), 900);
        assert_eq!((live.last_seen, live.expiry), (100, NodeExpiry::After(60)));
    }

    #[test]
    fn the_sweep_runs_often_enough_for_short_and_long_expiries() {
        assert_eq!(rules(3, 3).tick(), Duration::from_millis(300));
        assert_eq!(ExpiryRules::default().tick(), Duration::from_secs(60));
        let n = node(1, 0);
        assert_eq!(ExpiryRules::default().refresh_of(&n), 3_600);
        assert_eq!(rules(3, 3).refresh_of(&n), 1);
    }
}
