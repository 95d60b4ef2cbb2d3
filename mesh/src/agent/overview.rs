//! The agent's read-only web page (`GET /` and `/api/cluster` on
//! `--metrics-listen`): the coordinator's page, drawn from this host's
//! status alone, so one host's view of its peers and paths can be seen
//! without the admin credential. It shows what `weft status` shows: bind
//! the listener to loopback or the overlay address.

use weft_proto::web::{NodeRow, Overview, PathCell, PolicyInfo, Scope, ServiceRow, Summary};
use weft_proto::NodeId;

use super::status::Status;

/// The page's JSON for `status`, at Unix time `now`.
pub fn overview(status: &Status, now: u64) -> Overview {
    let me = NodeId(status.host.node_id);
    let mut nodes = vec![NodeRow {
        id: me,
        name: status.host.name.clone(),
        subnet: status.host.subnet.clone(),
        online: status.coordinator.connected,
        endpoints: status.host.endpoints.clone(),
        protocol_version: Some(weft_proto::PROTOCOL_VERSION),
        tags: Vec::new(),
    }];
    let mut paths = Vec::new();
    let mut peers = Vec::new();
    for p in &status.peers {
        let id = NodeId(p.node_id);
        nodes.push(NodeRow {
            id,
            name: p.name.clone(),
            subnet: p.subnet.clone(),
            online: p.online,
            endpoints: p.endpoint.iter().cloned().collect(),
            protocol_version: None,
            tags: Vec::new(),
        });
        if let Some(path) = &p.path {
            paths.push(PathCell {
                from: me,
                to: id,
                path: path.clone(),
                reason: p.relay_reason.clone(),
                age_secs: Some(0),
            });
        }
        peers.push((me.min(id), me.max(id)));
    }
    let online = nodes.iter().filter(|n| n.online).count();
    Overview {
        cluster: Summary {
            scope: Scope::Host,
            domain: status.domain.clone(),
            pool: status.host.pool.clone(),
            netmap_version: status.coordinator.netmap_version,
            nodes: nodes.len(),
            online,
            now,
            matrix_truncated: false,
        },
        nodes,
        paths,
        peers,
        policy: PolicyInfo::default(),
        services: status
            .services
            .iter()
            .map(|s| ServiceRow {
                name: s.name.clone(),
                node: String::new(),
                port: s.port,
                proto: s.proto.to_string(),
                addr: Some(s.addr.to_string()),
                public: s.public,
                gateway: None,
            })
            .collect(),
        routes: Vec::new(),
    }
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
