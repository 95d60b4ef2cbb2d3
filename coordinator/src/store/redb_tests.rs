//! The redb backend: a file written by the code before the store was split
//! opens with everything in it; what this backend writes reads back the
//! same after a reopen; preconditions hold; a corrupt record is an error
//! that says what to do, never a panic.

#![allow(clippy::unwrap_used, reason = "tests")]

use super::*;
use crate::store::{Registration, RouteRecord};
use weft_proto::msg::ServiceInfo;
use weft_proto::policy::Proto;

/// Written by `Coordinator` at commit f5b91b1 (before this module existed):
/// tokens a (2 uses, both used), b (reusable, tag `db`, used twice) and one
/// revoked; nodes a=1, b=2, c=3 (d=4 joined and was removed); two policy
/// versions; service `web` on b; routes approved on a and advertised by b.
const MAIN_FORMAT: &[u8] = include_bytes!("../../tests/fixtures/main-format.redb");

fn fixture() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.redb");
    std::fs::write(&path, MAIN_FORMAT).unwrap();
    (dir, path)
}

#[test]
fn opens_a_database_written_before_the_split() {
    let (_dir, path) = fixture();
    let mut b = RedbBackend::open(&path).unwrap();
    let loaded = b.load().unwrap();
    let nodes: Vec<(u64, &str, String)> = loaded
        .nodes
        .iter()
        .map(|n| (n.id.0, n.name.as_str(), n.subnet.to_string()))
        .collect();
    assert_eq!(
        nodes,
        [
            (1, "a", "100.64.0.0/24".to_string()),
            (2, "b", "100.64.1.0/24".to_string()),
            (3, "c", "100.64.2.0/24".to_string()),
        ]
    );
    assert_eq!(loaded.nodes[1].tags, ["db"]);
    assert_eq!(loaded.next_node_id, 5);
    let tokens = b.tokens().unwrap();
    assert_eq!(tokens.len(), 3);
    let mut states: Vec<(Option<u32>, u32, bool)> = tokens
        .iter()
        .map(|t| (t.uses_left, t.used, t.revoked))
        .collect();
    states.sort();
    assert_eq!(
        states,
        [(None, 2, false), (Some(0), 2, false), (Some(5), 0, true)]
    );
    let history = b.policy_history().unwrap();
    assert_eq!(
        history.iter().map(|v| v.version).collect::<Vec<_>>(),
        [1, 2]
    );
    assert_eq!(loaded.config.policy.as_ref(), history.last());
    assert!(history[1].text.contains("routes:"));
    let web = &loaded.config.services["web"];
    assert_eq!((web.node.as_str(), web.port), ("b", 8080));
    assert_eq!(web.node_id, Some(NodeId(2)));
    let approved: Vec<String> = loaded.config.routes[&NodeId(1)]
        .approved
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(approved, ["198.19.200.0/24"]);
    assert_eq!(loaded.config.routes[&NodeId(2)].advertised.len(), 1);
    // The index knows the stored nodes: their subnets are not free.
    let token = tokens.iter().find(|t| t.uses_left.is_none()).unwrap();
    let mut node = loaded.nodes[0].clone();
    node.id = NodeId(5);
    node.name = "e".into();
    node.public_key = WgPublicKey([42; 32]);
    let reg = Registration {
        node,
        replaces: None,
        token_before: token.clone(),
        token_after: crate::store::decide::use_token(token),
    };
    let e = b.commit(&[Change::Register(Box::new(reg))]).unwrap_err();
    assert!(matches!(e, CommitError::Conflict { index: 0, .. }), "{e}");
}

fn token(id: &str) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: [1; 32],
        uses_left: Some(1),
        used: 0,
        created_at: 5,
        expires_at: None,
        revoked: false,
        tags: vec!["x".into()],
        created_by: String::new(),
    }
}

fn node(id: u64, name: &str, third: u8) -> NodeRecord {
    NodeRecord {
        id: NodeId(id),
        name: name.into(),
        public_key: WgPublicKey([third; 32]),
        subnet: HostSubnet {
            addr: std::net::Ipv4Addr::new(100, 64, third, 0),
            prefix_len: 24,
        },
        tags: vec![],
        created_at: 7,
        token_id: "t".into(),
        last_seen: 0,
        expiry: weft_proto::msg::NodeExpiry::Cluster,
        expired_at: None,
    }
}

fn register(n: NodeRecord, before: &TokenRecord) -> Change {
    Change::Register(Box::new(Registration {
        node: n,
        replaces: None,
        token_before: before.clone(),
        token_after: crate::store::decide::use_token(before),
    }))
}

#[test]
fn round_trips_and_checks_preconditions() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.redb");
    let t = token("t");
    let used = crate::store::decide::use_token(&t);
    let svc = ServiceInfo {
        name: "db".into(),
        node: "a".into(),
        port: 5432,
        proto: Proto::Tcp,
        addr: None,
        allow: vec![],
        public: None,
        gateway: None,
        node_id: Some(NodeId(1)),
        gateway_id: None,
    };
    let policy = AclVersion {
        version: 1,
        set_at: 9,
        text: "default: allow\n".into(),
        hosts: Default::default(),
        set_by: None,
    };
    let routes = RouteRecord {
        advertised: vec!["198.18.0.0/24".parse().unwrap()],
        approved: vec![],
    };
    {
        let mut b = RedbBackend::open(&path).unwrap();
        b.commit(&[Change::CreateToken(t.clone())]).unwrap();
        // A second use expects the token as the first use left it: here it
        // still expects the original, so the whole batch is refused.
        let e = b
            .commit(&[register(node(1, "a", 1), &t), register(node(2, "b", 2), &t)])
            .unwrap_err();
        assert!(matches!(e, CommitError::Conflict { index: 1, .. }), "{e}");
        assert!(
            b.load().unwrap().nodes.is_empty(),
            "a refused batch wrote nothing"
        );
        b.commit(&[
            register(node(1, "a", 1), &t),
            Change::Config(ConfigChange::PutPolicy(policy.clone())),
            Change::Config(ConfigChange::PutService(svc.clone())),
            Change::Config(ConfigChange::PutRoutes(NodeId(1), routes.clone())),
        ])
        .unwrap();
        // Taken id, subnet, key, name; an existing policy version.
        for bad in [
            register(node(1, "z", 9), &used),
            register(node(2, "z", 1), &used),
            register(node(2, "a", 9), &used),
            Change::Config(ConfigChange::PutPolicy(policy.clone())),
            Change::RemoveNode(NodeId(7)),
            Change::UpdateToken {
                before: t.clone(),
                after: used.clone(),
            },
        ] {
            assert!(matches!(
                b.commit(&[bad]),
                Err(CommitError::Conflict { .. })
            ));
        }
    }
    let mut b = RedbBackend::open(&path).unwrap();
    let loaded = b.load().unwrap();
    assert_eq!(loaded.nodes, [node(1, "a", 1)]);
    assert_eq!(loaded.next_node_id, 2);
    assert_eq!(b.token("t").unwrap(), Some(used.clone()));
    assert_eq!(loaded.config.policy, Some(policy));
    assert_eq!(loaded.config.services["db"], svc);
    assert_eq!(loaded.config.routes[&NodeId(1)], routes);
    // A node update expects the record as stored.
    let expired = NodeRecord {
        expired_at: Some(99),
        last_seen: 50,
        ..node(1, "a", 1)
    };
    let update = |before: &NodeRecord| Change::UpdateNode {
        before: Box::new(before.clone()),
        after: Box::new(expired.clone()),
    };
    b.commit(&[update(&node(1, "a", 1))]).unwrap();
    assert!(matches!(
        b.commit(&[update(&node(1, "a", 1))]),
        Err(CommitError::Conflict { .. })
    ));
    assert_eq!(b.load().unwrap().nodes, [expired]);
    b.commit(&[
        Change::RemoveNode(NodeId(1)),
        Change::Config(ConfigChange::RemoveService("db".into())),
        Change::Config(ConfigChange::RemoveRoutes(NodeId(1))),
    ])
    .unwrap();
    // The removed node's subnet, key and name are free again.
    let mut again = node(2, "a", 1);
    again.token_id = "t2".into();
    let t2 = token("t2");
    b.commit(&[
        Change::CreateToken(t2.clone()),
        register(again.clone(), &t2),
    ])
    .unwrap();
    let loaded = b.load().unwrap();
    assert_eq!(loaded.nodes, [again]);
    assert!(loaded.config.services.is_empty() && loaded.config.routes.is_empty());
}

#[test]
fn a_corrupt_record_is_an_error_that_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weft.redb");
    {
        let db = Database::create(&path).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(NODES)
            .unwrap()
            .insert(1, &b"\xc1junk"[..])
            .unwrap();
        w.commit().unwrap();
    }
    let msg = match RedbBackend::open(&path) {
        Ok(_) => panic!("a corrupt node opened"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("node 1") && msg.contains("restore the state dir"),
        "{msg}"
    );
}
