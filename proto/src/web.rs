//! The web page of a cluster and the JSON it polls (`GET /api/cluster`).
//!
//! The coordinator serves the whole cluster (`--web-listen`, behind the
//! admin credential); an agent serves a read-only page of its own host
//! and peers on its `--metrics-listen` address. Both fill the same
//! [`Overview`], so the page reads one shape. The page is one static file,
//! inline script and style, no outside requests.

use serde::{Deserialize, Serialize};

use crate::types::NodeId;

/// The page, embedded.
pub const PAGE: &str = include_str!("web/index.html");

/// What the page shows.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub cluster: Summary,
    pub nodes: Vec<NodeRow>,
    /// Each host's report of its path to each peer.
    pub paths: Vec<PathCell>,
    /// Pairs that may talk (smaller id first).
    pub peers: Vec<(NodeId, NodeId)>,
    pub policy: PolicyInfo,
    pub services: Vec<ServiceRow>,
    pub routes: Vec<RouteRow>,
}

/// Whose view it is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The coordinator's: every node.
    #[default]
    Cluster,
    /// One agent's: itself and its peers.
    Host,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub scope: Scope,
    pub domain: String,
    pub pool: String,
    pub netmap_version: u64,
    pub nodes: usize,
    pub online: usize,
    /// Unix seconds at the server.
    pub now: u64,
    /// The matrix covers only the first nodes by name.
    pub matrix_truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeRow {
    pub id: NodeId,
    pub name: String,
    pub subnet: String,
    pub online: bool,
    pub endpoints: Vec<String>,
    pub protocol_version: Option<u32>,
    pub tags: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathCell {
    pub from: NodeId,
    pub to: NodeId,
    /// `lan`, `direct`, `relay` (or `unknown`).
    pub path: String,
    pub reason: Option<String>,
    /// Seconds since the host reported it.
    pub age_secs: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyInfo {
    /// `None`: no policy was ever set (allow-all), or unknown to an agent.
    pub version: Option<u64>,
    pub set_at: Option<u64>,
    pub history: Vec<PolicyVersion>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyVersion {
    pub version: u64,
    pub set_at: u64,
    pub lines: usize,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceRow {
    pub name: String,
    pub node: String,
    pub port: u16,
    pub proto: String,
    pub addr: Option<String>,
    pub public: Option<u16>,
    pub gateway: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RouteRow {
    pub node: String,
    pub advertised: Vec<String>,
    pub approved: Vec<String>,
    pub active: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        for outside in ["http://", "https://", "//cdn", "@import", "src=\"http"] {
            let found = PAGE
                .lines()
                .filter(|l| l.contains(outside))
                .filter(|l| !l.trim_start().starts_with("//"))
                .count();
            assert_eq!(found, 0, "the page refers to something outside: {outside}");
        }
        assert!(PAGE.contains("/api/cluster"));
    }

    #[test]
    fn the_json_has_the_field_names_the_page_reads() {
        let o = Overview {
            paths: vec![PathCell {
                from: NodeId(1),
                to: NodeId(2),
                path: "relay".into(),
                reason: None,
                age_secs: None,
            }],
            ..Overview::default()
        };
        let v: serde_json::Value =
            serde_json::from_slice(&serde_json::to_vec(&o).unwrap_or_default()).unwrap_or_default();
        assert_eq!(v["cluster"]["scope"], "cluster");
        assert_eq!(v["paths"][0]["from"], 1);
        for field in ["nodes", "paths", "peers", "policy", "services", "routes"] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }
}
