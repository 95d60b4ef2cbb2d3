//! Node expiry on a real coordinator with a very short expiry: an offline
//! node leaves every netmap, is refused with a clear line when it comes
//! back, can be brought back by an admin or rejoin with its key, and after
//! the grace period is removed with its subnet back in the pool.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::time::Duration;

use support::*;
use weft_coordinator::expiry::ExpiryRules;
use weft_proto::msg::{AdminCommand, AdminReply, NodeExpiry, NodeInfo, ServiceInfo};
use weft_proto::policy::Proto;

const EXPIRY: Duration = Duration::from_secs(2);
const GRACE: Duration = Duration::from_secs(3);

async fn short_expiry() -> Harness {
    Harness::start_with(|c| {
        c.expiry = ExpiryRules {
            node_expiry: Some(EXPIRY),
            grace: GRACE,
        };
        // Four /24s: a full pool shows when a subnet comes back.
        c.pool = "100.64.0.0/22".parse().unwrap();
    })
    .await
}

async fn node(h: &Harness, name: &str) -> Option<NodeInfo> {
    h.nodes().await.into_iter().find(|n| n.name == name)
}

async fn set(h: &Harness, name: &str, expiry: NodeExpiry) -> NodeInfo {
    let reply = h
        .admin(AdminCommand::NodeSet {
            node: name.into(),
            expiry,
        })
        .await
        .unwrap();
    let AdminReply::NodeSet(n) = reply else {
        panic!("{reply:?}")
    };
    n
}

/// Polls the node list until `pred` holds for `name`'s entry (`None`: no
/// such node), or panics after `within`.
async fn until(
    h: &Harness,
    name: &str,
    within: Duration,
    pred: impl Fn(Option<&NodeInfo>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let n = node(h, name).await;
        if pred(n.as_ref()) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {name} did not reach the expected state: {n:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_expires_comes_back_and_is_removed_after_the_grace() {
    let h = short_expiry().await;
    let token = h.token(None).await;
    let (_ka, mut a) = join(&token, "a").await;
    let (kb, b) = join(&token, "b").await;
    let (_kc, c) = join(&token, "c").await;
    assert_eq!(
        set(&h, "c", NodeExpiry::Never).await.expiry,
        NodeExpiry::Never
    );
    wait_for(&mut a.session, Duration::from_secs(3), |s| {
        s.netmap().len() == 2
    })
    .await;
    b.session.close();
    c.session.close();

    // b leaves a's netmap; c (never expires) stays, offline.
    wait_for(&mut a.session, Duration::from_secs(10), |s| {
        s.netmap().peer(b.node_id).is_none()
    })
    .await;
    let map = a.session.netmap();
    assert!(map.peer(c.node_id).is_some_and(|p| !p.online));
    let listed = node(&h, "b").await.unwrap();
    assert!(listed.expired_at.is_some(), "{listed:?}");
    assert!(listed.last_seen > 0, "{listed:?}");
    assert!(node(&h, "c").await.unwrap().expired_at.is_none());

    // b coming back is refused, and told why and what to do.
    let e = ControlClient::new()
        .unwrap()
        .connect(&b.coordinator, &kb, vec![], None)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotRegistered), "{e}");
    let text = e.to_string();
    assert!(
        text.contains("expired") && text.contains("weft node set b"),
        "{text}"
    );

    // An admin brings it back: into a's netmap, and it connects again.
    let back = set(&h, "b", NodeExpiry::Cluster).await;
    assert!(back.expired_at.is_none());
    wait_for(&mut a.session, Duration::from_secs(3), |s| {
        s.netmap().peer(b.node_id).is_some()
    })
    .await;
    let again = ControlClient::new()
        .unwrap()
        .connect(&b.coordinator, &kb, vec![], None)
        .await
        .unwrap();
    // Connected, it is refreshed rather than expired.
    tokio::time::sleep(EXPIRY * 2).await;
    assert!(node(&h, "b").await.unwrap().expired_at.is_none());

    // Offline again: it expires, and after the grace period it is gone,
    // its subnet back in the pool.
    again.close();
    until(&h, "b", EXPIRY * 5, |n| {
        n.is_some_and(|n| n.expired_at.is_some())
    })
    .await;
    let (_kd, d) = join(&token, "d").await;
    let full = ControlClient::new()
        .unwrap()
        .join(&token, &key(), "e", vec![])
        .await
        .err()
        .unwrap();
    assert_eq!(full.code(), Some(ErrorCode::PoolExhausted), "{full}");
    until(&h, "b", GRACE * 4, |n| n.is_none()).await;
    let (_ke, e) = join(&token, "e").await;
    assert_eq!(
        e.subnet, b.subnet,
        "the removed node's subnet is handed out again"
    );
    wait_for(&mut a.session, Duration::from_secs(3), |s| {
        s.netmap().peer(d.node_id).is_some() && s.netmap().peer(e.node_id).is_some()
    })
    .await;
    assert!(a.session.netmap().peer(b.node_id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_host_rejoins_with_its_key_and_keeps_its_subnet() {
    let h = short_expiry().await;
    let token = h.token(None).await;
    let (_ka, mut a) = join(&token, "a").await;
    let (kb, b) = join(&token, "b").await;
    wait_for(&mut a.session, Duration::from_secs(3), |s| {
        s.netmap().len() == 1
    })
    .await;
    // A service on b goes with the expired node the rejoin replaces.
    h.admin(AdminCommand::ServiceExpose(ServiceInfo {
        name: "web".into(),
        node: "b".into(),
        port: 8080,
        proto: Proto::Tcp,
        addr: None,
        allow: vec![],
        public: None,
        gateway: None,
        node_id: None,
        gateway_id: None,
    }))
    .await
    .unwrap();
    b.session.close();
    wait_for(&mut a.session, Duration::from_secs(10), |s| {
        s.netmap().peer(b.node_id).is_none()
    })
    .await;
    assert!(node(&h, "b").await.unwrap().expired_at.is_some());
    let rejoined = ControlClient::new()
        .unwrap()
        .join(&token, &kb, "b", vec![])
        .await
        .unwrap();
    assert_ne!(rejoined.node_id, b.node_id);
    assert_eq!(
        rejoined.name, "b",
        "the expired node's name is its own again"
    );
    assert_eq!(rejoined.subnet, b.subnet);
    let nodes = h.nodes().await;
    assert_eq!(nodes.len(), 2, "{nodes:?}");
    let AdminReply::Services(services) = h.admin(AdminCommand::ServiceList).await.unwrap() else {
        panic!("no services")
    };
    assert!(services.is_empty(), "{services:?}");
    wait_for(&mut a.session, Duration::from_secs(3), |s| {
        s.netmap().peer(rejoined.node_id).is_some_and(|p| p.online)
    })
    .await;
}
