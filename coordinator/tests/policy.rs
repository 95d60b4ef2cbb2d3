//! The coordinator's policy over loopback QUIC with the real control client:
//! per-host netmaps, refused documents, services and routes, and all of it
//! surviving a restart.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::time::Duration;

use support::*;
use weft_proto::msg::{AdminCommand, AdminReply, ServiceInfo};
use weft_proto::policy::{Action, Proto};

const POLICY: &str = "default: deny
rules:
  - allow: { from: [host:a], to: [host:b], ports: [tcp/80] }
tests:
  - { from: host:a, to: \"host:b:80/tcp\", expect: allow }
  - { from: host:c, to: \"host:b:80/tcp\", expect: deny }
";

fn names(s: &Session) -> Vec<String> {
    let mut v: Vec<String> = s.netmap().peers().map(|p| p.name.clone()).collect();
    v.sort();
    v
}

async fn admin_err(h: &Harness, cmd: AdminCommand) -> String {
    match h.admin(cmd).await {
        Ok(r) => panic!("expected a refusal, got {r:?}"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_cuts_netmaps_refuses_bad_documents_and_survives_restarts() {
    let mut h = Harness::start().await;
    let token = h.token(Some(3)).await;
    let (ka, mut a) = join(&token, "a").await;
    let (_kb, mut b) = join(&token, "b").await;
    let (_kc, mut c) = join(&token, "c").await;
    for s in [&mut a.session, &mut b.session, &mut c.session] {
        wait_for(s, Duration::from_secs(2), |s| s.netmap().len() == 2).await;
        // No policy: allow-all, and the filter says so.
        assert_eq!(s.netmap().filter().map(|f| f.default), Some(Action::Allow));
    }
    assert!(matches!(
        h.admin(AdminCommand::AclGet).await.unwrap(),
        AdminReply::Acl(None)
    ));

    // Refused: a bad selector (with its line), and failing tests.
    let e = admin_err(
        &h,
        AdminCommand::AclSet {
            text: "rules:\n  - allow: { from: [hots:a], to: ['*'] }\n".into(),
        },
    )
    .await;
    assert!(
        e.contains("line 2") && e.contains("unknown selector kind `hots`"),
        "{e}"
    );
    let e = admin_err(
        &h,
        AdminCommand::AclSet {
            text: POLICY.replace("expect: deny", "expect: allow"),
        },
    )
    .await;
    assert!(
        e.contains("1 of the policy's 2 tests failed") && e.contains("line 6"),
        "{e}"
    );
    assert!(matches!(
        h.admin(AdminCommand::AclGet).await.unwrap(),
        AdminReply::Acl(None)
    ));

    // In force: a sees b, b sees a, c sees nobody and nobody sees c.
    match h
        .admin(AdminCommand::AclSet {
            text: POLICY.into(),
        })
        .await
        .unwrap()
    {
        AdminReply::AclAccepted { version, tests } => assert_eq!((version, tests), (1, 2)),
        other => panic!("{other:?}"),
    }
    let wait = Duration::from_secs(2);
    wait_for(&mut a.session, wait, |s| names(s) == ["b"]).await;
    wait_for(&mut b.session, wait, |s| names(s) == ["a"]).await;
    wait_for(&mut c.session, wait, |s| s.netmap().is_empty()).await;
    // The relay carries punches between peers only: b's reaches a, c's
    // does not.
    let mut a_in = a.session.take_datagrams().unwrap();
    let punch = |to: u64| {
        weft_proto::relay::Datagram::Punch {
            node: weft_proto::NodeId(to),
        }
        .encode()
    };
    c.session.datagram_link().send(punch(a.node_id.0));
    b.session.datagram_link().send(punch(a.node_id.0));
    let got = tokio::time::timeout(Duration::from_secs(2), a_in.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        weft_proto::relay::Datagram::node(&got),
        Some(b.node_id),
        "the first datagram through the relay must be b's"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a_in.next())
            .await
            .is_err(),
        "c's punch must not reach a"
    );
    let filter = b.session.netmap().filter().unwrap().clone();
    assert_eq!(filter.default, Action::Deny);
    assert_eq!(filter.rules.len(), 1);
    assert!(c.session.netmap().filter().unwrap().rules.is_empty());

    // A service b publishes, allowed for c: c now sees b and its name.
    let svc = ServiceInfo {
        name: "Web".into(),
        node: "b".into(),
        port: 8080,
        proto: Proto::Tcp,
        addr: None,
        allow: vec!["host:c".into()],
        public: None,
        gateway: None,
        node_id: None,
        gateway_id: None,
    };
    match h
        .admin(AdminCommand::ServiceExpose(svc.clone()))
        .await
        .unwrap()
    {
        AdminReply::ServiceExposed(s) => assert_eq!(s.name, "web"),
        other => panic!("{other:?}"),
    }
    wait_for(&mut c.session, wait, |s| {
        names(s) == ["b"] && s.netmap().services().iter().any(|e| e.name == "web")
    })
    .await;
    let bad = ServiceInfo {
        addr: Some("100.64.99.9".parse().unwrap()),
        ..svc.clone()
    };
    let e = admin_err(&h, AdminCommand::ServiceExpose(bad)).await;
    assert!(e.contains("is not in node b's subnet"), "{e}");
    let e = admin_err(
        &h,
        AdminCommand::ServiceExpose(ServiceInfo {
            name: "no_underscores".into(),
            ..svc
        }),
    )
    .await;
    assert!(e.contains("cannot be a service name"), "{e}");

    // A route into the pool is refused; one outside it is approved.
    let e = admin_err(
        &h,
        AdminCommand::RouteApprove {
            node: "a".into(),
            cidr: "100.64.0.0/16".parse().unwrap(),
            approve: true,
        },
    )
    .await;
    assert!(e.contains("overlaps the mesh's own address pool"), "{e}");
    h.admin(AdminCommand::RouteApprove {
        node: "a".into(),
        cidr: "198.18.200.0/24".parse().unwrap(),
        approve: true,
    })
    .await
    .unwrap();
    // A network goes through one host; every host's own ranges stay local.
    for (node, cidr, why) in [
        ("b", "198.18.200.128/25", "overlaps a route through a"),
        ("b", "169.254.0.0/16", "link-local"),
        ("b", "127.0.0.0/8", "loopback"),
    ] {
        let e = admin_err(
            &h,
            AdminCommand::RouteApprove {
                node: node.into(),
                cidr: cidr.parse().unwrap(),
                approve: true,
            },
        )
        .await;
        assert!(e.contains(why), "{cidr}: {e}");
    }

    // The policy's `routes:` approves what b advertises inside its prefix;
    // a sees the route on b.
    b.session
        .updater()
        .advertise_routes(vec![
            "198.18.201.0/24".parse().unwrap(),
            "198.19.5.0/24".parse().unwrap(),
        ])
        .await
        .unwrap();
    let with_routes = format!("{POLICY}routes:\n  \"198.18.0.0/16\": [host:b]\n");
    h.admin(AdminCommand::AclSet {
        text: with_routes.clone(),
    })
    .await
    .unwrap();
    wait_for(&mut a.session, wait, |s| {
        s.netmap()
            .peer(b.node_id)
            .is_some_and(|p| p.routes == vec!["198.18.201.0/24".parse().unwrap()])
    })
    .await;

    // Everything survives a restart; a host with the view in force resumes
    // with a delta, one without it gets a full update.
    let cached = a.session.netmap().clone();
    let info = a.coordinator.clone();
    drop((a, b, c));
    h.restart().await;
    match h.admin(AdminCommand::AclHistory).await.unwrap() {
        AdminReply::AclHistory(v) => {
            assert_eq!(v.len(), 2);
            assert_eq!(v[0].text, POLICY);
            assert_eq!(v[1].text, with_routes);
        }
        other => panic!("{other:?}"),
    }
    match h.admin(AdminCommand::ServiceList).await.unwrap() {
        AdminReply::Services(s) => assert_eq!(s.len(), 1),
        other => panic!("{other:?}"),
    }
    match h.admin(AdminCommand::RouteList).await.unwrap() {
        AdminReply::Routes(mut r) => {
            r.sort_by(|x, y| x.node.cmp(&y.node));
            assert_eq!(r.len(), 2);
            assert_eq!(r[0].approved.len(), 1, "a: approved by the admin");
            assert_eq!(r[1].advertised.len(), 2, "b: both advertised");
            assert_eq!(
                r[1].active,
                vec!["198.18.201.0/24".parse().unwrap()],
                "b: only the one the policy approves"
            );
        }
        other => panic!("{other:?}"),
    }
    let client = ControlClient::new().unwrap();
    let again = client
        .connect(&info, &ka, vec![], Some(cached))
        .await
        .unwrap();
    // The restarted coordinator keeps its epoch; the host's peers match its
    // view, so it resumes with a delta (no snapshot), cut as before.
    assert!(again.resumed());
    assert_eq!(names(&again), ["b"]);
    let cached = again.netmap().clone();
    drop(again);
    let resumed = client
        .connect(&info, &ka, vec![], Some(cached))
        .await
        .unwrap();
    assert!(
        resumed.resumed(),
        "the view in force must resume with a delta"
    );
    assert_eq!(names(&resumed), ["b"]);

    // A removed node takes its services and routes with it: a new host
    // joining under the same name inherits nothing.
    h.admin(AdminCommand::NodeRemove { node: "b".into() })
        .await
        .unwrap();
    match h.admin(AdminCommand::ServiceList).await.unwrap() {
        AdminReply::Services(s) => assert!(s.is_empty(), "{s:?}"),
        other => panic!("{other:?}"),
    }
    match h.admin(AdminCommand::RouteList).await.unwrap() {
        AdminReply::Routes(r) => assert!(r.iter().all(|r| r.node != "b"), "{r:?}"),
        other => panic!("{other:?}"),
    }
}

/// Puts `text` in force; it must be accepted.
async fn set_policy(h: &Harness, text: &str) {
    let reply = h
        .admin(AdminCommand::AclSet { text: text.into() })
        .await
        .unwrap();
    assert!(matches!(reply, AdminReply::AclAccepted { .. }), "{reply:?}");
}

/// Issue 12: a `host:` rule means the node that had the name when the
/// policy was set. After that node is removed, a new host that joins with
/// the same name gets nothing the rule granted, until the policy is set
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_rules_keep_to_the_node_they_were_set_for() {
    let h = Harness::start().await;
    let token = h.token(Some(4)).await;
    let (_ka, mut a) = join(&token, "a").await;
    let (_kb, b) = join(&token, "b").await;
    let (_kc, _c) = join(&token, "c").await;
    let policy =
        "default: deny\nrules:\n  - allow: { from: [host:a], to: [host:b], ports: [tcp/80] }\n";
    set_policy(&h, policy).await;
    let wait = Duration::from_secs(2);
    wait_for(&mut a.session, wait, |s| names(s) == ["b"]).await;
    h.admin(AdminCommand::NodeRemove { node: "b".into() })
        .await
        .unwrap();
    drop(b);
    wait_for(&mut a.session, wait, |s| s.netmap().is_empty()).await;

    // An impostor takes the name: the rule is not for it.
    let (_kd, mut impostor) = join(&token, "b").await;
    assert_eq!(impostor.name, "b");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        impostor.session.netmap().is_empty(),
        "the new b inherited the old b's rules: {:?}",
        names(&impostor.session)
    );
    assert!(a.session.netmap().peer(impostor.node_id).is_none());

    // Setting the policy again pins the name to the node that has it now.
    set_policy(&h, policy).await;
    wait_for(&mut impostor.session, wait, |s| names(s) == ["a"]).await;
}
