//! The JSON the web page polls (`/api/cluster`): nodes, the path each
//! connected host reports to each peer, the pairs the policy lets talk,
//! the policy in force and its history, services and routes.
//!
//! Bounded for a human reader: the matrix (paths and peer pairs) covers at
//! most [`MAX_MATRIX_NODES`] nodes, the first by name; `matrix_truncated`
//! says when it is cut. With replicas, paths are those reported to this
//! replica (a host's session is on one replica).

use std::collections::HashSet;

use weft_proto::msg::{AclVersion, AdminReply, RouteInfo, ServiceInfo};
use weft_proto::web::{
    NodeRow, Overview, PathCell, PolicyInfo, PolicyVersion, RouteRow, Scope, ServiceRow, Summary,
};

use super::*;

/// Most nodes drawn in the matrix.
pub const MAX_MATRIX_NODES: usize = 150;

/// The page's JSON, now.
pub(super) async fn cluster_json(shared: &Shared) -> Vec<u8> {
    let history = match shared.store.policy_history().await {
        Ok(h) => h,
        Err(e) => {
            debug!(error = %e.message, "policy history unavailable for the web page");
            Vec::new()
        }
    };
    let overview = build(shared, history);
    serde_json::to_vec(&overview).unwrap_or_else(|_| b"{}".to_vec())
}

fn build(shared: &Shared, history: Vec<AclVersion>) -> Overview {
    let reports = shared.paths.snapshot();
    let compiled = shared.compiled();
    let (policy, services, routes) = {
        let cfg = shared.cluster();
        let policy = cfg.policy.as_ref().map(|(v, _)| (v.version, v.set_at));
        let services = match super::config_ops::service_list(shared) {
            AdminReply::Services(s) => s,
            _ => Vec::new(),
        };
        drop(cfg);
        let routes = match super::config_ops::route_list(shared) {
            AdminReply::Routes(r) => r,
            _ => Vec::new(),
        };
        (policy, services, routes)
    };
    let reg = shared.read();
    let mut nodes: Vec<NodeRow> = reg
        .peers()
        .map(|p| NodeRow {
            id: p.id,
            name: p.name.clone(),
            subnet: p.subnet.to_string(),
            online: p.online,
            endpoints: p.endpoints.iter().map(ToString::to_string).collect(),
            protocol_version: reports.get(&p.id).map(|r| r.protocol_version),
            tags: p.tags.clone(),
        })
        .collect();
    let summary = Summary {
        scope: Scope::Cluster,
        domain: shared.domain.clone(),
        pool: shared.pool.to_string(),
        netmap_version: reg.version(),
        nodes: nodes.len(),
        online: nodes.iter().filter(|n| n.online).count(),
        now: now_unix(),
        matrix_truncated: nodes.len() > MAX_MATRIX_NODES,
    };
    drop(reg);
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let drawn: HashSet<NodeId> = nodes.iter().take(MAX_MATRIX_NODES).map(|n| n.id).collect();
    let mut paths = Vec::new();
    for (from, report) in &reports {
        if !drawn.contains(from) {
            continue;
        }
        let age = report.at.map(|t| t.elapsed().as_secs());
        for p in report.paths.iter().filter(|p| drawn.contains(&p.peer)) {
            paths.push(PathCell {
                from: *from,
                to: p.peer,
                path: p.path.name().to_string(),
                reason: p.reason.clone(),
                age_secs: age,
            });
        }
    }
    paths.sort_by_key(|c| (c.from, c.to));
    let mut peers = Vec::new();
    for id in &drawn {
        if let Some(view) = compiled.nodes.get(id) {
            for p in drawn.iter().filter(|p| *p > id && view.sees(**p)) {
                peers.push((*id, *p));
            }
        }
    }
    peers.sort();
    Overview {
        cluster: summary,
        nodes,
        paths,
        peers,
        policy: PolicyInfo {
            version: policy.map(|p| p.0),
            set_at: policy.map(|p| p.1),
            history: history
                .iter()
                .map(|v| PolicyVersion {
                    version: v.version,
                    set_at: v.set_at,
                    lines: v.text.lines().count(),
                })
                .collect(),
        },
        services: services.iter().map(service_row).collect(),
        routes: routes.iter().map(route_row).collect(),
    }
}

fn service_row(s: &ServiceInfo) -> ServiceRow {
    ServiceRow {
        name: s.name.clone(),
        node: s.node.clone(),
        port: s.port,
        proto: s.proto.to_string(),
        addr: s.addr.map(|a| a.to_string()),
        public: s.public,
        gateway: s.gateway.clone(),
    }
}

fn route_row(r: &RouteInfo) -> RouteRow {
    let strings = |v: &[weft_proto::policy::Cidr]| v.iter().map(ToString::to_string).collect();
    RouteRow {
        node: r.node.clone(),
        advertised: strings(&r.advertised),
        approved: strings(&r.approved),
        active: strings(&r.active),
    }
}
