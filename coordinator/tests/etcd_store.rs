//! The etcd store against a real three-member etcd cluster
//! ([`etcd_cluster`]): several store handles on one cluster behave as
//! coordinator replicas, each with its own connection and writer thread.
//! A single-use token admits exactly one of many racing joins across the
//! replicas, hundreds of joins get distinct subnets and ids, a lost member
//! changes nothing, a lost quorum is a clear refusal in bounded time, and
//! every change round-trips with its preconditions checked.

#![allow(clippy::unwrap_used, reason = "test helpers should panic on failure")]

mod etcd_cluster;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use weft_coordinator::ipam::Ipam;
use weft_coordinator::store::etcd::{EtcdBackend, EtcdConfig};
use weft_coordinator::store::{
    decide::use_token, open_with, Change, CommitError, ConfigChange, JoinArgs, NodeRecord, Opened,
    Registration, RouteRecord, StoreBackend, TokenRecord,
};
use weft_proto::auth::secret_hash;
use weft_proto::msg::{AclVersion, ErrorCode, ServiceInfo};
use weft_proto::policy::Proto;
use weft_proto::{HostSubnet, NodeId, WgPublicKey};

use etcd_cluster::Cluster;

fn config(c: &Cluster, prefix: &str) -> EtcdConfig {
    let mut cfg = EtcdConfig::from_url(&format!("etcd://{}", c.endpoints().join(","))).unwrap();
    cfg.prefix = prefix.into();
    cfg.timeout = Duration::from_secs(3);
    cfg
}

/// A replica: its own connection and writer thread.
async fn replica(cfg: &EtcdConfig) -> Opened {
    let cfg = cfg.clone();
    tokio::task::spawn_blocking(move || {
        let ipam = Ipam::new("10.9.0.0/16".parse().unwrap(), 28).unwrap();
        open_with(
            EtcdBackend::connect(&cfg).unwrap(),
            ipam,
            1,
            Box::new(|_| {}),
        )
        .unwrap()
    })
    .await
    .unwrap()
}

fn token(id: &str, uses: Option<u32>) -> TokenRecord {
    TokenRecord {
        id: id.into(),
        secret_hash: secret_hash(&[3; 32]),
        uses_left: uses,
        used: 0,
        created_at: 1,
        expires_at: None,
        revoked: false,
        tags: vec![],
        created_by: String::new(),
    }
}

fn join(token: &str, n: u32) -> JoinArgs {
    let mut key = [0u8; 32];
    key[..4].copy_from_slice(&n.to_be_bytes());
    key[31] = 1;
    JoinArgs {
        token_id: token.into(),
        token_secret: [3; 32],
        public_key: WgPublicKey(key),
        hostname: format!("h{n}"),
        now: 2,
    }
}

/// Starts `n` joins at once, spread round-robin over `replicas`.
async fn race(
    replicas: &[Opened],
    tok: &str,
    n: u32,
) -> Vec<Result<NodeRecord, weft_proto::msg::ErrorReply>> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let h = replicas[i as usize % replicas.len()].handle.clone();
            let args = join(tok, i);
            tokio::spawn(async move { h.join(args).await })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_use_token_admits_one_join_across_three_replicas() {
    let Some(cluster) = etcd_cluster::start() else {
        return;
    };
    let cfg = config(&cluster, "/race");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&cfg).await);
    }
    replicas[0]
        .handle
        .create_token(token("once", Some(1)))
        .await
        .unwrap();
    let started = Instant::now();
    let results = race(&replicas, "once", 50).await;
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let refused: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert_eq!(refused.len(), 49);
    for e in &refused {
        assert_eq!(e.code, ErrorCode::TokenUsedUp, "{}", e.message);
        assert!(e.message.contains("is used up"), "{}", e.message);
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    let mut fresh = tokio::task::spawn_blocking(move || EtcdBackend::connect(&cfg).unwrap())
        .await
        .unwrap();
    let (loaded, t) = tokio::task::spawn_blocking(move || {
        let l = fresh.load().unwrap();
        let t = fresh.token("once").unwrap();
        (l, t)
    })
    .await
    .unwrap();
    assert_eq!(loaded.nodes.len(), 1);
    assert_eq!(loaded.nodes[0], *ok[0]);
    let t = t.unwrap();
    assert_eq!((t.uses_left, t.used), (Some(0), 1));
    for r in &replicas {
        r.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_joins_over_three_replicas_get_distinct_subnets_and_ids() {
    let Some(cluster) = etcd_cluster::start() else {
        return;
    };
    let cfg = config(&cluster, "/many");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&cfg).await);
    }
    replicas[1]
        .handle
        .create_token(token("many", None))
        .await
        .unwrap();
    let started = Instant::now();
    let results = race(&replicas, "many", 300).await;
    let took = started.elapsed();
    let nodes: Vec<NodeRecord> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("a join failed: {}", e.message)))
        .collect();
    let subnets: HashSet<HostSubnet> = nodes.iter().map(|n| n.subnet).collect();
    let ids: HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
    let names: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!((subnets.len(), ids.len(), names.len()), (300, 300, 300));
    assert!(took < Duration::from_secs(120), "{took:?}");
    eprintln!("300 joins over 3 replicas: {took:?}");
    let mut fresh = tokio::task::spawn_blocking(move || EtcdBackend::connect(&cfg).unwrap())
        .await
        .unwrap();
    let loaded = tokio::task::spawn_blocking(move || fresh.load().unwrap())
        .await
        .unwrap();
    assert_eq!(loaded.nodes.len(), 300);
    let mut stored = loaded.nodes.clone();
    stored.sort_by_key(|n| n.id);
    let mut acked = nodes.clone();
    acked.sort_by_key(|n| n.id);
    assert_eq!(stored, acked, "what was acknowledged is what is stored");
    assert_eq!(loaded.next_node_id, 301);
    for r in &replicas {
        r.handle.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_survive_a_lost_member_and_are_refused_without_quorum() {
    let Some(mut cluster) = etcd_cluster::start() else {
        return;
    };
    let cfg = config(&cluster, "/quorum");
    let r = replica(&cfg).await;
    r.handle.create_token(token("q", None)).await.unwrap();
    r.handle.join(join("q", 0)).await.unwrap();

    // One member of three gone: the other two are a quorum.
    cluster.kill(2);
    let t = Instant::now();
    let mut first = None;
    while first.is_none() {
        match r.handle.join(join("q", 1)).await {
            Ok(n) => first = Some(n),
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(20), "{}", e.message);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for i in 2..7 {
        let n = r.handle.join(join("q", i)).await;
        assert!(n.is_ok(), "join {i} with one member down: {:?}", n.err());
    }

    // Two gone: no quorum. Refused, clearly, in bounded time.
    cluster.kill(1);
    let t = Instant::now();
    let e = r.handle.join(join("q", 100)).await.unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(e.message.contains("has no quorum"), "{}", e.message);
    assert!(e.message.contains("writes are refused"), "{}", e.message);
    assert!(took < Duration::from_secs(15), "refused after {took:?}");
    eprintln!("refused without quorum after {took:?}: {}", e.message);

    // Back: joins succeed again.
    cluster.start_member(1);
    cluster.start_member(2);
    cluster.wait_healthy(&[0, 1, 2], Duration::from_secs(30));
    let t = Instant::now();
    loop {
        match r.handle.join(join("q", 200)).await {
            Ok(n) => {
                assert_eq!(n.name, "h200");
                break;
            }
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(30), "{}", e.message);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    r.handle.shutdown().await;
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
        token_after: use_token(before),
    }))
}

/// As the redb backend's round trip: every kind of change, read back by a
/// new connection, and each precondition refusing.
#[test]
fn every_change_round_trips_and_preconditions_hold() {
    let Some(cluster) = etcd_cluster::start() else {
        return;
    };
    let cfg = config(&cluster, "/weft");
    let mut t = token("t", Some(1));
    t.secret_hash = [1; 32];
    let used = use_token(&t);
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
        let mut b = EtcdBackend::connect(&cfg).unwrap();
        let empty = b.load().unwrap();
        assert!(empty.nodes.is_empty() && empty.config.policy.is_none());
        assert_eq!(empty.next_node_id, 1);
        b.commit(&[Change::CreateToken(t.clone())]).unwrap();
        assert!(matches!(
            b.commit(&[Change::CreateToken(t.clone())]),
            Err(CommitError::Conflict { index: 0, .. })
        ));
        // The second use expects the original token, not the first use's.
        let e = b
            .commit(&[register(node(1, "a", 1), &t), register(node(2, "b", 2), &t)])
            .unwrap_err();
        assert!(matches!(e, CommitError::Conflict { index: 1, .. }), "{e}");
        assert!(
            b.load().unwrap().nodes.is_empty(),
            "a refused batch wrote nothing"
        );
        b.token("t").unwrap();
        b.commit(&[
            register(node(1, "a", 1), &t),
            Change::Config(ConfigChange::PutPolicy(policy.clone())),
            Change::Config(ConfigChange::PutService(svc.clone())),
            Change::Config(ConfigChange::PutRoutes(NodeId(1), routes.clone())),
        ])
        .unwrap();
        // Taken id, subnet, key, name; an existing policy version; a
        // missing node; a token changed since.
        for (what, bad) in [
            ("id", register(node(1, "z", 9), &used)),
            ("subnet", {
                let mut n = node(2, "z", 9);
                n.subnet = node(1, "a", 1).subnet;
                register(n, &used)
            }),
            ("key", {
                let mut n = node(2, "z", 9);
                n.public_key = WgPublicKey([1; 32]);
                register(n, &used)
            }),
            ("name", register(node(2, "a", 9), &used)),
            (
                "policy",
                Change::Config(ConfigChange::PutPolicy(policy.clone())),
            ),
            ("removal", Change::RemoveNode(NodeId(7))),
            (
                "update",
                Change::UpdateNode {
                    before: Box::new(NodeRecord {
                        last_seen: 1,
                        ..node(1, "a", 1)
                    }),
                    after: Box::new(node(1, "a", 1)),
                },
            ),
            (
                "token",
                Change::UpdateToken {
                    before: t.clone(),
                    after: used.clone(),
                },
            ),
        ] {
            match b.commit(&[
                Change::Config(ConfigChange::RemoveService("none".into())),
                bad,
            ]) {
                Err(CommitError::Conflict { index: 1, .. }) => {}
                other => panic!("{what}: {other:?}"),
            }
        }
    }
    let mut b = EtcdBackend::connect(&cfg).unwrap();
    let loaded = b.load().unwrap();
    assert_eq!(loaded.nodes, [node(1, "a", 1)]);
    assert_eq!(loaded.next_node_id, 2);
    assert_eq!(b.token("t").unwrap(), Some(used.clone()));
    assert_eq!(b.tokens().unwrap(), std::slice::from_ref(&used));
    // A node update expects the record as stored, and is read back.
    let expired = NodeRecord {
        expired_at: Some(99),
        ..node(1, "a", 1)
    };
    b.commit(&[Change::UpdateNode {
        before: Box::new(node(1, "a", 1)),
        after: Box::new(expired.clone()),
    }])
    .unwrap();
    assert_eq!(b.load().unwrap().nodes, std::slice::from_ref(&expired));
    b.commit(&[Change::UpdateNode {
        before: Box::new(expired),
        after: Box::new(node(1, "a", 1)),
    }])
    .unwrap();
    assert_eq!(loaded.config.policy, Some(policy.clone()));
    assert_eq!(b.policy_history().unwrap(), [policy]);
    assert_eq!(loaded.config.services["db"], svc);
    assert_eq!(loaded.config.routes[&NodeId(1)], routes);
    // A removal and a join taking the removed node's subnet, key and name
    // in one batch; a revocation.
    let mut again = node(2, "a", 1);
    again.token_id = "t2".into();
    let t2 = token("t2", None);
    let revoked = TokenRecord {
        revoked: true,
        ..used.clone()
    };
    b.commit(&[
        Change::RemoveNode(NodeId(1)),
        Change::Config(ConfigChange::RemoveService("db".into())),
        Change::Config(ConfigChange::RemoveRoutes(NodeId(1))),
        Change::CreateToken(t2.clone()),
        register(again.clone(), &t2),
        Change::UpdateToken {
            before: used.clone(),
            after: revoked.clone(),
        },
    ])
    .unwrap();
    let loaded = EtcdBackend::connect(&cfg).unwrap().load().unwrap();
    assert_eq!(loaded.nodes, [again]);
    assert_eq!(loaded.next_node_id, 3);
    assert!(loaded.config.services.is_empty() && loaded.config.routes.is_empty());
    assert_eq!(b.token("t").unwrap(), Some(revoked));
    // A removed node is gone for a second removal.
    assert!(matches!(
        b.commit(&[Change::RemoveNode(NodeId(1))]),
        Err(CommitError::Conflict { index: 0, .. })
    ));
}

/// A value that is not a record is an error naming the key and what to do.
#[test]
fn a_corrupt_record_is_a_clear_error() {
    let Some(cluster) = etcd_cluster::start() else {
        return;
    };
    let cfg = config(&cluster, "/bad");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = etcd_client::Client::connect(cluster.endpoints(), None)
            .await
            .unwrap();
        c.put("/bad/nodes/00000000000000000001", &b"\xc1junk"[..], None)
            .await
            .unwrap();
    });
    let msg = match EtcdBackend::connect(&cfg).and_then(|mut b| b.load()) {
        Ok(_) => panic!("a corrupt node loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        msg.contains("/bad/nodes/00000000000000000001") && msg.contains("snapshot"),
        "{msg}"
    );
}
