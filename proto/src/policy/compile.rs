//! Compiling a [`Policy`] against a snapshot of the cluster: each host's
//! inbound packet filter and the peers it may talk to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::cidr::Cidr;
use super::document::{Policy, Rule};
use super::filter::{FilterRule, PacketFilter};
use super::ports::{PortRange, PortSpec, Proto};
use super::selector::Selector;
use super::Action;
use crate::types::{HostSubnet, NodeId};

/// What the compiler needs to know of the cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    pub nodes: Vec<ClusterNode>,
    pub services: Vec<Service>,
}

/// One host: its name, the tags of its join token, its subnet, and the
/// approved routes it advertised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterNode {
    pub id: NodeId,
    pub name: String,
    pub tags: Vec<String>,
    pub subnet: HostSubnet,
    /// Networks outside the mesh reached through this host.
    pub routes: Vec<Cidr>,
}

impl Policy {
    /// Whether `routes:` approves route `route` advertised by `node`: a
    /// prefix holding it lists a selector matching the node (`*`, its tag,
    /// its name, or a `cidr:` holding its subnet).
    pub fn approves_route(&self, route: &Cidr, node: &ClusterNode) -> bool {
        self.routes.iter().any(|(prefix, sels)| {
            prefix.contains_cidr(route)
                && sels.iter().any(|s| match s {
                    Selector::Any => true,
                    Selector::Tag(t) => node.tags.contains(t),
                    Selector::Host(h) => &node.name == h,
                    Selector::Cidr(c) => c.contains_cidr(&Cidr::from(node.subnet)),
                    _ => false,
                })
        })
    }
}

impl ClusterNode {
    /// Whether `ip` is this host's: in its subnet or one of its routes.
    pub fn owns(&self, ip: IpAddr) -> bool {
        Cidr::from(self.subnet).contains(ip) || self.routes.iter().any(|r| r.contains(ip))
    }
}

/// A published service: a port on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub node: NodeId,
    pub port: u16,
    /// [`Proto::Tcp`] or [`Proto::Udp`].
    pub proto: Proto,
    /// The address serving it (a container's, in the node's subnet); `None`
    /// means the node's own address.
    pub addr: Option<IpAddr>,
    /// When not empty, only these clients (and `gateway`) may reach it.
    pub allow: Vec<Selector>,
    /// The host address of the host forwarding a public port to it, which
    /// must reach it (only that address: not the containers of that host).
    pub gateway: Option<IpAddr>,
}

impl Service {
    /// The address clients connect to, given the node's subnet.
    pub fn address(&self, subnet: &HostSubnet) -> IpAddr {
        self.addr.unwrap_or(IpAddr::V4(subnet.host_addr()))
    }

    /// The traffic that reaches the service.
    pub fn spec(&self) -> PortSpec {
        PortSpec {
            proto: self.proto,
            ports: if self.proto.has_ports() {
                PortRange::single(self.port)
            } else {
                PortRange::ALL
            },
        }
    }
}

/// What one host receives of the policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePolicy {
    /// Enforced on packets arriving from the mesh.
    #[serde(rename = "f")]
    pub filter: PacketFilter,
    /// The nodes that may send to this one or that it may send to, less
    /// the node itself when the set holds it; the host learns of no other
    /// peer. Shared by every node with the same peers (see [`compile`]).
    #[serde(rename = "p", default)]
    pub peers: Arc<BTreeSet<NodeId>>,
}

impl NodePolicy {
    /// Whether `node` (`me`) may know `peer`.
    pub fn sees(&self, me: NodeId, peer: NodeId) -> bool {
        peer != me && self.peers.contains(&peer)
    }

    /// The peers of node `me`, in order.
    pub fn peers_of(&self, me: NodeId) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.iter().copied().filter(move |p| *p != me)
    }
}

/// The compiled policy of every node of the snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    pub nodes: BTreeMap<NodeId, NodePolicy>,
}

impl CompiledPolicy {
    /// The share of node `id`, if it was in the snapshot.
    pub fn node(&self, id: NodeId) -> Option<&NodePolicy> {
        self.nodes.get(&id)
    }
}

/// Addresses and the nodes they touch.
#[derive(Default)]
struct Resolved {
    cidrs: Vec<Cidr>,
    /// Indices into `Cluster::nodes` whose subnet overlaps `cidrs`.
    nodes: Vec<usize>,
    /// For a service: the traffic that reaches it.
    only: Option<PortSpec>,
}

struct Resolver<'a> {
    policy: &'a Policy,
    cluster: &'a Cluster,
    subnets: Vec<Cidr>,
    /// Each node's subnet followed by its approved routes.
    owned: Vec<Vec<Cidr>>,
}

impl<'a> Resolver<'a> {
    fn new(policy: &'a Policy, cluster: &'a Cluster) -> Self {
        let subnets: Vec<Cidr> = cluster.nodes.iter().map(|n| Cidr::from(n.subnet)).collect();
        let owned = cluster
            .nodes
            .iter()
            .zip(&subnets)
            .map(|(n, s)| {
                std::iter::once(*s)
                    .chain(n.routes.iter().copied())
                    .collect()
            })
            .collect();
        Resolver {
            policy,
            cluster,
            subnets,
            owned,
        }
    }

    fn nodes_where(&self, f: impl Fn(&ClusterNode) -> bool) -> Resolved {
        let nodes: Vec<usize> = (0..self.cluster.nodes.len())
            .filter(|&i| f(&self.cluster.nodes[i]))
            .collect();
        Resolved {
            cidrs: nodes.iter().map(|&i| self.subnets[i]).collect(),
            nodes,
            only: None,
        }
    }

    /// Resolves one selector into each of its parts (a group gives several;
    /// a parsed policy has its groups already expanded).
    fn resolve(&self, sel: &Selector, depth: u8, out: &mut Vec<Resolved>) {
        match sel {
            Selector::Any => out.push(Resolved {
                cidrs: vec![Cidr::ANY_V4, Cidr::ANY_V6],
                nodes: (0..self.cluster.nodes.len()).collect(),
                only: None,
            }),
            Selector::Tag(t) => out.push(self.nodes_where(|n| n.tags.iter().any(|x| x == t))),
            Selector::Host(h) => out.push(self.nodes_where(|n| &n.name == h)),
            Selector::Cidr(c) => out.push(Resolved {
                cidrs: vec![*c],
                nodes: (0..self.cluster.nodes.len())
                    .filter(|&i| self.owned[i].iter().any(|o| o.overlaps(c)))
                    .collect(),
                only: None,
            }),
            Selector::Service(name) => {
                for s in self.cluster.services.iter().filter(|s| &s.name == name) {
                    // The service's one address, not its node's whole subnet:
                    // two services on one port of one node stay apart.
                    let mut r = self.nodes_where(|n| n.id == s.node);
                    if let Some(n) = self.cluster.nodes.iter().find(|n| n.id == s.node) {
                        r.cidrs = vec![Cidr::host(s.address(&n.subnet))];
                    }
                    r.only = Some(s.spec());
                    out.push(r);
                }
            }
            Selector::Group(g) => {
                if depth < 8 {
                    for m in self.policy.groups.get(g).into_iter().flatten() {
                        self.resolve(m, depth + 1, out);
                    }
                }
            }
        }
    }

    /// The sources of a rule: `from` minus `except`.
    fn sources(&self, rule: &Rule) -> Resolved {
        let mut src = self.union(&rule.from);
        if rule.except.is_empty() {
            return src;
        }
        let except = self.union(&rule.except);
        src.cidrs = Cidr::subtract(&src.cidrs, &except.cidrs);
        let owned = &self.owned;
        let cidrs = &src.cidrs;
        src.nodes
            .retain(|&i| owned[i].iter().any(|o| cidrs.iter().any(|c| c.overlaps(o))));
        src
    }

    /// The union of a list of selectors, ignoring service ports (for `from`).
    fn union(&self, sels: &[Selector]) -> Resolved {
        let mut parts = Vec::new();
        for s in sels {
            self.resolve(s, 0, &mut parts);
        }
        let mut out = Resolved::default();
        for p in parts {
            out.cidrs.extend(p.cidrs);
            out.nodes.extend(p.nodes);
        }
        out.cidrs.sort();
        out.cidrs.dedup();
        out.nodes.sort_unstable();
        out.nodes.dedup();
        out
    }

    fn targets(&self, sels: &[Selector]) -> Vec<Resolved> {
        let mut parts = Vec::new();
        for s in sels {
            self.resolve(s, 0, &mut parts);
        }
        parts
    }
}

/// Whether a deny rule stops every packet `allow` lets through from the
/// addresses of `from` (a node's subnet).
fn denied_by(deny: &FilterRule, allow: &FilterRule, from: &Cidr) -> bool {
    deny.spec().covers(&allow.spec())
        && allow
            .dst
            .iter()
            .all(|d| deny.dst.iter().any(|x| x.contains_cidr(d)))
        && allow
            .src
            .iter()
            .filter_map(|s| s.intersect(from))
            .all(|s| deny.src.iter().any(|x| x.contains_cidr(&s)))
}

/// Whether one deny rule stops everything from `from` to `to`.
fn denied_entirely(filter: &PacketFilter, from: &Cidr, to: &Cidr) -> bool {
    filter.rules.iter().any(|r| {
        r.action == Action::Deny
            && r.spec().covers(&PortSpec::ANY)
            && r.src.iter().any(|x| x.contains_cidr(from))
            && r.dst.iter().any(|x| x.contains_cidr(to))
    })
}

/// Compiles `policy` for every node of `cluster`.
///
/// The peer sets are exact except where several deny rules together (but
/// no single one) shut a pair out: such a pair stays peers, and the filter
/// still drops its packets.
pub fn compile(policy: &Policy, cluster: &Cluster) -> CompiledPolicy {
    let effective = with_service_rules(policy, cluster);
    let policy = &effective;
    let resolver = Resolver::new(policy, cluster);
    let n = cluster.nodes.len();
    let mut filters: Vec<PacketFilter> = (0..n)
        .map(|_| PacketFilter {
            rules: Vec::new(),
            default: policy.default,
        })
        .collect();
    // For each policy rule, the nodes its `from` touches.
    let mut sources: Vec<Vec<usize>> = Vec::with_capacity(policy.rules.len());

    for (i, rule) in policy.rules.iter().enumerate() {
        let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
        let src = resolver.sources(rule);
        // (receiving node, traffic) -> destination prefixes in that node.
        let mut dst: BTreeMap<(usize, PortSpec), Vec<Cidr>> = BTreeMap::new();
        for target in resolver.targets(&rule.to) {
            for spec in &rule.ports {
                let spec = match &target.only {
                    Some(only) => match spec.intersect(only) {
                        Some(s) => s,
                        None => continue,
                    },
                    None => *spec,
                };
                for &node in &target.nodes {
                    let entry = dst.entry((node, spec)).or_default();
                    for owned in &resolver.owned[node] {
                        entry.extend(target.cidrs.iter().filter_map(|c| c.intersect(owned)));
                    }
                }
            }
        }
        if !src.cidrs.is_empty() {
            let shared_src: Arc<[Cidr]> = src.cidrs.clone().into();
            for ((node, spec), mut cidrs) in dst {
                cidrs.sort();
                cidrs.dedup();
                if cidrs.is_empty() {
                    continue;
                }
                filters[node].rules.push(FilterRule {
                    action: rule.action,
                    src: shared_src.clone(),
                    dst: cidrs,
                    proto: spec.proto,
                    ports: spec.ports,
                    rule: number,
                });
            }
        }
        sources.push(src.nodes);
    }

    // Who may talk to whom, either way: an n x n bit matrix.
    let words = n.div_ceil(64);
    let mut peers = vec![0u64; n * words];
    for (to, filter) in filters.iter().enumerate() {
        let to_owned = &resolver.owned[to];
        let mut reach = |from: usize| {
            peers[from * words + to / 64] |= 1 << (to % 64);
            peers[to * words + from / 64] |= 1 << (from % 64);
        };
        if filter.default == Action::Allow {
            for from in (0..n).filter(|&f| f != to) {
                // Shut out only if everything `from` owns (its subnet and
                // routes) is denied to everything `to` owns.
                let shut = resolver.owned[from]
                    .iter()
                    .all(|f| to_owned.iter().all(|t| denied_entirely(filter, f, t)));
                if !shut {
                    reach(from);
                }
            }
            continue;
        }
        for allow in filter.rules.iter().filter(|r| r.action == Action::Allow) {
            let Some(from_nodes) = (allow.rule as usize)
                .checked_sub(1)
                .and_then(|i| sources.get(i))
            else {
                continue;
            };
            for &from in from_nodes.iter().filter(|&&f| f != to) {
                // A source may be in the rule through its subnet or through
                // a route it owns: shut out only if one deny stops all of it.
                let owned = &resolver.owned[from];
                let shut = filter.rules.iter().any(|d| {
                    d.action == Action::Deny && owned.iter().all(|o| denied_by(d, allow, o))
                });
                if !shut {
                    reach(from);
                }
            }
        }
    }

    let sets = shared_peer_sets(&peers, words, n, |j| cluster.nodes[j].id);
    let nodes = filters
        .into_iter()
        .zip(sets)
        .enumerate()
        .map(|(i, (filter, peers))| (cluster.nodes[i].id, NodePolicy { filter, peers }))
        .collect();
    CompiledPolicy { nodes }
}

/// Each node's peer set from the `n` x `n` bit matrix (`words` per row),
/// shared among nodes with the same peers, so memory grows with the number
/// of distinct sets (about the policy's classes of nodes), not n².
///
/// A set stands for "these, less the node itself". Nodes of a class that
/// may reach each other have rows that differ only in their own bits (each
/// lacks itself), so they share row-plus-self; nodes of a class that may
/// not have equal rows, and share the row itself. Row-plus-self is used
/// where some other node has the same one, the row otherwise.
fn shared_peer_sets(
    matrix: &[u64],
    words: usize,
    n: usize,
    id: impl Fn(usize) -> NodeId,
) -> Vec<Arc<BTreeSet<NodeId>>> {
    let row = |i: usize| &matrix[i * words..(i + 1) * words];
    let with_self = |i: usize| {
        let mut r = row(i).to_vec();
        r[i / 64] |= 1 << (i % 64);
        r
    };
    let mut counts: HashMap<Vec<u64>, usize> = HashMap::new();
    for i in 0..n {
        *counts.entry(with_self(i)).or_default() += 1;
    }
    let mut sets: HashMap<Vec<u64>, Arc<BTreeSet<NodeId>>> = HashMap::new();
    (0..n)
        .map(|i| {
            let plus = with_self(i);
            let key = if counts.get(&plus).copied().unwrap_or(0) > 1 {
                plus
            } else {
                row(i).to_vec()
            };
            sets.entry(key)
                .or_insert_with_key(|bits| {
                    Arc::new(
                        (0..n)
                            .filter(|&j| bits[j / 64] & (1 << (j % 64)) != 0)
                            .map(&id)
                            .collect(),
                    )
                })
                .clone()
        })
        .collect()
}

/// `policy` with the rules the published services add, after its own: for a
/// service with an allow list, an allow from those clients (and its public
/// gateway) and a deny for everyone else; for a service with only a gateway,
/// an allow from the gateway. Their rule numbers follow the document's.
pub fn with_service_rules(policy: &Policy, cluster: &Cluster) -> Policy {
    let mut out = policy.clone();
    for s in &cluster.services {
        let mut clients = s.allow.clone();
        if let Some(g) = s.gateway {
            clients.push(Selector::Cidr(Cidr::host(g)));
        }
        if clients.is_empty() {
            continue;
        }
        let to = vec![Selector::Service(s.name.clone())];
        out.rules.push(Rule {
            action: Action::Allow,
            from: clients.clone(),
            except: Vec::new(),
            to: to.clone(),
            ports: vec![PortSpec::ANY],
            line: 0,
        });
        if !s.allow.is_empty() {
            out.rules.push(Rule {
                action: Action::Deny,
                from: vec![Selector::Any],
                except: clients,
                to,
                ports: vec![PortSpec::ANY],
                line: 0,
            });
        }
    }
    out
}
