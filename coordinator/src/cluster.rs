//! The cluster's configuration beyond its nodes: the access policy, the
//! published services and the advertised routes; which routes are in
//! force; and their compiled form, one [`NodeView`] per host.
//!
//! Stored through [`crate::store`] ([`crate::store::ConfigChange`]); this
//! module only decides, it never touches the database.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use weft_proto::msg::{AclVersion, ServiceInfo};
use weft_proto::policy::{
    compile, Cidr, Cluster, ClusterNode, PacketFilter, Policy, Selector, Service,
};
use weft_proto::{NodeId, ServiceEntry};

use crate::registry::Registry;
pub use crate::store::RouteRecord;
use crate::store::{StoreError, StoredConfig};

/// The routes in force: advertised, and approved by an admin or by the
/// policy (`routes:`) for this node.
pub fn active_routes(rec: &RouteRecord, policy: Option<&Policy>, node: &ClusterNode) -> Vec<Cidr> {
    rec.advertised
        .iter()
        .filter(|c| rec.approved.contains(c) || policy.is_some_and(|p| p.approves_route(c, node)))
        .copied()
        .collect()
}

/// Puts every node's routes in force into its registry record (after a
/// change of routes, approvals or policy). Returns whether any changed.
pub fn refresh_routes(reg: &mut Registry, cfg: &ClusterConfig) -> bool {
    let policy = cfg.policy.as_ref().map(|(_, p)| p);
    let mut changed = false;
    // A network is routed through one host only: where approvals overlap,
    // the node with the lowest id keeps it (deterministic on every host).
    let mut taken: Vec<(Cidr, NodeId)> = Vec::new();
    for (id, rec) in &cfg.routes {
        let Some(node) = reg.get(*id).map(|p| cluster_node(p)) else {
            continue;
        };
        let mut active = active_routes(rec, policy, &node);
        active.retain(|c| match taken.iter().find(|(t, _)| t.overlaps(c)) {
            Some((t, owner)) => {
                tracing::warn!(node = %id, route = %c, %owner, taken = %t, "route not in force: it overlaps a route through another node");
                false
            }
            None => true,
        });
        taken.extend(active.iter().map(|c| (*c, *id)));
        changed |= reg.update(*id, |p| p.routes = active);
    }
    changed
}

fn cluster_node(p: &weft_proto::Peer) -> ClusterNode {
    ClusterNode {
        id: p.id,
        name: p.name.clone(),
        tags: p.tags.clone(),
        subnet: p.subnet,
        routes: p.routes.clone(),
    }
}

/// The policy, services and routes in force.
#[derive(Clone, Debug, Default)]
pub struct ClusterConfig {
    /// The latest policy version and its parsed form; `None` if no policy
    /// was ever set (then every host may reach every other).
    pub policy: Option<(AclVersion, Policy)>,
    pub services: BTreeMap<String, ServiceInfo>,
    pub routes: BTreeMap<NodeId, RouteRecord>,
    /// Named admin credentials, revoked ones included.
    pub admins: BTreeMap<String, crate::store::AdminRecord>,
}

impl ClusterConfig {
    /// The configuration as stored, with its policy parsed.
    pub fn from_stored(stored: StoredConfig) -> Result<Self, StoreError> {
        let policy = match stored.policy {
            None => None,
            Some(v) => {
                let parsed = Policy::parse(&v.text).map_err(|e| {
                    StoreError::Corrupt(format!(
                        "stored policy version {} no longer parses: {e}",
                        v.version
                    ))
                })?;
                Some((v, parsed))
            }
        };
        Ok(Self {
            policy,
            services: stored.services,
            routes: stored.routes,
            admins: stored.admins,
        })
    }

    /// The services that go with a removed node: those it ran or forwarded
    /// a public port for (bound by id, or by its name when unbound). A new
    /// host that takes the same name must not inherit them.
    pub fn services_of(&self, id: NodeId, name: &str) -> Vec<String> {
        let by_name = |n: &str| (n == name).then_some(id);
        self.services
            .values()
            .filter(|s| s.node_in(by_name) == Some(id) || s.gateway_in(by_name) == Some(id))
            .map(|s| s.name.clone())
            .collect()
    }
}

/// The peers a view lets its host know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerSet {
    /// Every other node: a cluster whose policy allows everything, where
    /// every view is the same and holds no list at all.
    All,
    /// These, less the host itself; one set is shared by every host with
    /// the same peers (`weft_proto::policy::compile`).
    Only(Arc<BTreeSet<NodeId>>),
}

impl PeerSet {
    /// Whether host `me` may know `peer`.
    pub fn sees(&self, me: NodeId, peer: NodeId) -> bool {
        peer != me
            && match self {
                PeerSet::All => true,
                PeerSet::Only(s) => s.contains(&peer),
            }
    }

    /// Whether both are the very same set (no comparison of contents).
    pub fn same(&self, other: &PeerSet) -> bool {
        match (self, other) {
            (PeerSet::All, PeerSet::All) => true,
            (PeerSet::Only(a), PeerSet::Only(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => false,
        }
    }
}

/// What one host receives of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// A digest of the rest, so a resuming host can say which view it has.
    pub id: u64,
    /// The host this view is for.
    pub node: NodeId,
    pub filter: PacketFilter,
    /// The peers it may reach or be reached by; it learns of no other.
    pub peers: PeerSet,
    /// The services it may reach (and those it forwards a public port to).
    pub services: Vec<ServiceEntry>,
    /// Its own routes in force: what it accepts from peers besides its
    /// subnet.
    pub routes: Vec<Cidr>,
}

impl NodeView {
    /// Whether the host may know `peer`.
    pub fn sees(&self, peer: NodeId) -> bool {
        self.peers.sees(self.node, peer)
    }
}

/// Every host's view, compiled from one snapshot.
#[derive(Debug, Default)]
pub struct Compiled {
    pub nodes: HashMap<NodeId, Arc<NodeView>>,
}

/// The compiler's picture of the cluster: nodes with their approved routes,
/// and the services whose node exists.
pub fn snapshot(reg: &Registry, cfg: &ClusterConfig) -> Cluster {
    let pins = cfg.policy.as_ref().map(|(v, _)| &v.hosts);
    let mut nodes: Vec<ClusterNode> = reg
        .peers()
        .map(|p| {
            let mut n = cluster_node(p);
            // A node whose name the policy pinned to another node is not
            // that name to the compiler: `host:` rules are not for it.
            if pins
                .and_then(|h| h.get(&n.name))
                .is_some_and(|id| *id != n.id)
            {
                n.name = format!("{}#{}", n.name, n.id.0);
            }
            n
        })
        .collect();
    // In id order, whatever the registry's: every replica compiles the
    // same views (with the same ids) from the same cluster.
    nodes.sort_by_key(|n| n.id);
    let services = cfg
        .services
        .values()
        .filter_map(|s| {
            let node = live(reg, s.node_in(|n| reg.by_name(n)))?;
            Some(Service {
                name: s.name.clone(),
                node,
                port: s.port,
                proto: s.proto,
                addr: s.addr,
                allow: s
                    .allow
                    .iter()
                    .filter_map(|a| Selector::parse(a).ok())
                    .collect(),
                gateway: live(reg, s.gateway_in(|n| reg.by_name(n)))
                    .and_then(|gw| Some(std::net::IpAddr::V4(reg.get(gw)?.subnet.host_addr()))),
            })
        })
        .collect();
    Cluster { nodes, services }
}

/// `id`, if that node still exists.
fn live(reg: &Registry, id: Option<NodeId>) -> Option<NodeId> {
    id.filter(|id| reg.get(*id).is_some())
}

/// The policy in force (allow-all when none was ever set).
pub fn policy_of(cfg: &ClusterConfig) -> Policy {
    cfg.policy
        .as_ref()
        .map_or_else(Policy::allow_all, |(_, p)| p.clone())
}

/// Digests of what many views share, each computed once per compilation:
/// a peer set, and the source list of a filter rule (thousands of prefixes
/// each at 10,000 hosts). Keyed by the shared allocation, valued by its
/// contents' digest, so every replica computes the same view ids.
#[derive(Default)]
struct DigestCache {
    sets: HashMap<*const BTreeSet<NodeId>, [u8; 32]>,
    srcs: HashMap<*const Cidr, [u8; 32]>,
}

fn sha(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest as _, Sha256};
    Sha256::digest(bytes).into()
}

impl DigestCache {
    fn peers(&mut self, peers: &PeerSet) -> [u8; 32] {
        match peers {
            PeerSet::All => [0xa1; 32],
            PeerSet::Only(s) => *self
                .sets
                .entry(Arc::as_ptr(s))
                .or_insert_with(|| sha(&rmp_serde::to_vec(&**s).unwrap_or_default())),
        }
    }

    /// The filter with each rule's sources replaced by their digest.
    fn filter(&mut self, filter: &PacketFilter) -> Vec<u8> {
        let rules: Vec<_> = filter
            .rules
            .iter()
            .map(|r| {
                let src = *self
                    .srcs
                    .entry(r.src.as_ptr())
                    .or_insert_with(|| sha(&rmp_serde::to_vec(&*r.src).unwrap_or_default()));
                (r.action, src, &r.dst, r.proto, r.ports, r.rule)
            })
            .collect();
        rmp_serde::to_vec(&(rules, filter.default)).unwrap_or_default()
    }
}

/// A digest of a view, first 8 bytes of a SHA-256 (never 0, which means
/// "no view").
fn view_id(
    cache: &mut DigestCache,
    filter: &PacketFilter,
    peers: &PeerSet,
    services: &[ServiceEntry],
    routes: &[Cidr],
) -> u64 {
    let bytes = rmp_serde::to_vec(&(cache.filter(filter), cache.peers(peers), services, routes))
        .unwrap_or_default();
    let d = sha(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first).max(1)
}

/// Compiles every host's view. A policy that allows everything (and no
/// service that narrows it) compiles in O(hosts): every view sees
/// [`PeerSet::All`]; any other compiles through `weft_proto::policy`,
/// whose peer sets are shared among hosts with the same peers.
pub fn compile_views(reg: &Registry, cfg: &ClusterConfig) -> Compiled {
    let cluster = snapshot(reg, cfg);
    let policy = policy_of(cfg);
    let effective = weft_proto::policy::with_service_rules(&policy, &cluster);
    let everyone =
        effective.rules.is_empty() && effective.default == weft_proto::policy::Action::Allow;
    let shares: Vec<(NodeId, PacketFilter, PeerSet)> = if everyone {
        cluster
            .nodes
            .iter()
            .map(|n| (n.id, PacketFilter::allow_all(), PeerSet::All))
            .collect()
    } else {
        compile(&policy, &cluster)
            .nodes
            .into_iter()
            .map(|(id, share)| (id, share.filter, PeerSet::Only(share.peers)))
            .collect()
    };
    let mut cache = DigestCache::default();
    let mut nodes = HashMap::with_capacity(shares.len());
    for (id, filter, peers) in shares {
        let services: Vec<ServiceEntry> = cfg
            .services
            .values()
            .filter_map(|s| {
                let node = live(reg, s.node_in(|n| reg.by_name(n)))?;
                let subnet = reg.get(node)?.subnet;
                let mine = live(reg, s.gateway_in(|n| reg.by_name(n))) == Some(id);
                if node != id && !peers.sees(id, node) && !mine {
                    return None;
                }
                Some(ServiceEntry {
                    name: s.name.clone(),
                    addr: s.addr.unwrap_or(std::net::IpAddr::V4(subnet.host_addr())),
                    port: s.port,
                    proto: s.proto,
                    public: if mine { s.public } else { None },
                })
            })
            .collect();
        let routes = reg.get(id).map(|p| p.routes.clone()).unwrap_or_default();
        let digest = view_id(&mut cache, &filter, &peers, &services, &routes);
        nodes.insert(
            id,
            Arc::new(NodeView {
                id: digest,
                node: id,
                filter,
                peers,
                services,
                routes,
            }),
        );
    }
    Compiled { nodes }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;
    use weft_proto::policy::Proto;

    fn svc(name: &str, node: &str, node_id: Option<u64>) -> ServiceInfo {
        ServiceInfo {
            name: name.into(),
            node: node.into(),
            port: 80,
            proto: Proto::Tcp,
            addr: None,
            allow: vec![],
            public: None,
            gateway: None,
            node_id: node_id.map(NodeId),
            gateway_id: None,
        }
    }

    #[test]
    fn a_removed_node_takes_its_services_not_those_of_its_name_sake() {
        let mut cfg = ClusterConfig::default();
        let forwarded = ServiceInfo {
            public: Some(8443),
            gateway: Some("a".into()),
            gateway_id: Some(NodeId(1)),
            ..svc("fwd", "b", Some(2))
        };
        for s in [
            svc("bound", "a", Some(1)),
            svc("unbound", "a", None),
            svc("older-a", "a", Some(7)),
            svc("other", "b", Some(2)),
            forwarded,
        ] {
            cfg.services.insert(s.name.clone(), s);
        }
        let mut gone = cfg.services_of(NodeId(1), "a");
        gone.sort();
        assert_eq!(gone, ["bound", "fwd", "unbound"]);
    }
}
