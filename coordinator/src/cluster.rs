//! The cluster's configuration beyond its nodes: the access policy (every
//! version kept), the published services and the advertised routes; and
//! their compiled form, one [`NodeView`] per host.
//!
//! Stored in the same redb file as nodes and tokens, written through the
//! store's writer thread ([`crate::store::StoreHandle::write`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use redb::{ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use weft_proto::msg::{AclVersion, ServiceInfo};
use weft_proto::policy::{
    compile, Cidr, Cluster, ClusterNode, PacketFilter, Policy, Selector, Service,
};
use weft_proto::{NodeId, ServiceEntry};

use crate::registry::Registry;
use crate::store::{decode, StoreError};

/// Policy version -> [`AclVersion`]. Versions start at 1 and only grow.
pub const POLICY: TableDefinition<u64, &[u8]> = TableDefinition::new("policy_history");
/// Service name -> [`ServiceInfo`].
pub const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Node id -> [`RouteRecord`].
pub const ROUTES: TableDefinition<u64, &[u8]> = TableDefinition::new("routes");

/// The routes one node advertised and those an admin approved. A route is
/// in force when it is both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub advertised: Vec<Cidr>,
    pub approved: Vec<Cidr>,
}

impl RouteRecord {
    /// The routes in force: advertised, and approved by an admin or by the
    /// policy (`routes:`) for this node.
    pub fn active(&self, policy: Option<&Policy>, node: &ClusterNode) -> Vec<Cidr> {
        self.advertised
            .iter()
            .filter(|c| {
                self.approved.contains(c) || policy.is_some_and(|p| p.approves_route(c, node))
            })
            .copied()
            .collect()
    }
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
        let mut active = rec.active(policy, &node);
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
}

pub fn create_tables(w: &redb::WriteTransaction) -> Result<(), redb::Error> {
    w.open_table(POLICY)?;
    w.open_table(SERVICES)?;
    w.open_table(ROUTES)?;
    Ok(())
}

/// Loads what is in force from the database.
pub fn load(
    r: &redb::ReadTransaction,
    err: &impl Fn(redb::Error) -> StoreError,
) -> Result<ClusterConfig, StoreError> {
    let mut cfg = ClusterConfig::default();
    let policy = r.open_table(POLICY).map_err(|e| err(e.into()))?;
    if let Some(item) = policy.last().map_err(|e| err(e.into()))? {
        let v: AclVersion = decode(item.1.value())?;
        let parsed = Policy::parse(&v.text).map_err(|e| {
            StoreError::Corrupt(format!(
                "stored policy version {} no longer parses: {e}",
                v.version
            ))
        })?;
        cfg.policy = Some((v, parsed));
    }
    let services = r.open_table(SERVICES).map_err(|e| err(e.into()))?;
    for item in services.iter().map_err(|e| err(e.into()))? {
        let (k, v) = item.map_err(|e| err(e.into()))?;
        cfg.services
            .insert(k.value().to_string(), decode(v.value())?);
    }
    let routes = r.open_table(ROUTES).map_err(|e| err(e.into()))?;
    for item in routes.iter().map_err(|e| err(e.into()))? {
        let (k, v) = item.map_err(|e| err(e.into()))?;
        cfg.routes.insert(NodeId(k.value()), decode(v.value())?);
    }
    Ok(cfg)
}

/// What one host receives of the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// A digest of the rest, so a resuming host can say which view it has.
    pub id: u64,
    pub filter: PacketFilter,
    /// The peers it may reach or be reached by; it learns of no other.
    pub peers: BTreeSet<NodeId>,
    /// The services it may reach (and those it forwards a public port to).
    pub services: Vec<ServiceEntry>,
    /// Its own routes in force: what it accepts from peers besides its
    /// subnet.
    pub routes: Vec<Cidr>,
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
    let nodes: Vec<ClusterNode> = reg
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

/// A digest of a view: SHA-256 of its MessagePack form, first 8 bytes
/// (never 0, which means "no view").
fn view_id(
    filter: &PacketFilter,
    peers: &BTreeSet<NodeId>,
    services: &[ServiceEntry],
    routes: &[Cidr],
) -> u64 {
    use sha2::{Digest as _, Sha256};
    let bytes = rmp_serde::to_vec(&(filter, peers, services, routes)).unwrap_or_default();
    let d = Sha256::digest(&bytes);
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_le_bytes(first).max(1)
}

/// Compiles every host's view.
pub fn compile_views(reg: &Registry, cfg: &ClusterConfig) -> Compiled {
    let cluster = snapshot(reg, cfg);
    let compiled = compile(&policy_of(cfg), &cluster);
    let mut nodes = HashMap::with_capacity(compiled.nodes.len());
    for (id, share) in compiled.nodes {
        let services: Vec<ServiceEntry> = cfg
            .services
            .values()
            .filter_map(|s| {
                let node = live(reg, s.node_in(|n| reg.by_name(n)))?;
                let subnet = reg.get(node)?.subnet;
                let mine = live(reg, s.gateway_in(|n| reg.by_name(n))) == Some(id);
                if node != id && !share.peers.contains(&node) && !mine {
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
        let digest = view_id(&share.filter, &share.peers, &services, &routes);
        nodes.insert(
            id,
            Arc::new(NodeView {
                id: digest,
                filter: share.filter,
                peers: share.peers,
                services,
                routes,
            }),
        );
    }
    Compiled { nodes }
}
