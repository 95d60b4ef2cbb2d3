//! Keep-alives that scale with the cluster: a coordinator with many hosts
//! asks for a longer interval, and hosts move to it without any peer
//! seeing them go offline. A large per-host step stands in for thousands
//! of hosts.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::time::Duration;

use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_cluster_asks_for_longer_keepalives_and_sessions_renew_without_a_flap() {
    let h = Harness::start_with(|c| c.keepalive_per_host = Duration::from_secs(1)).await;
    let token = h.token(None).await;
    let (ka, a) = join(&token, "a").await;
    let (_kb, b) = join(&token, "b").await;
    let mut a_session = a.session;
    let mut b_session = b.session;
    // Two hosts connected: "2 s" is asked of the third, twice what it
    // joined with, so its join ends on a session at that interval.
    let (_kc, c) = join(&token, "c").await;
    assert!(
        c.session.welcome().keepalive_ms >= 2_000,
        "{}",
        c.session.welcome().keepalive_ms
    );
    assert!(c.session.renew_at().is_none());
    // a hears of c with the interval asked for now, three times its own:
    // a renewal is due (within a minute, at random).
    wait_for(&mut a_session, Duration::from_secs(3), |s| {
        s.netmap().peer(c.node_id).is_some()
    })
    .await;
    assert!(a_session.renew_at().is_some(), "no renewal asked of a");
    wait_for(&mut b_session, Duration::from_secs(3), |s| {
        s.netmap().peer(c.node_id).is_some()
    })
    .await;
    let a_endpoints = b_session
        .netmap()
        .peer(a.node_id)
        .unwrap()
        .endpoints
        .clone();

    // The renewal: a new session first, then the old one goes.
    let renewed = ControlClient::new()
        .unwrap()
        .renew(&a_session, &a.coordinator, &ka, a_endpoints.clone())
        .await
        .unwrap();
    assert!(renewed.resumed(), "a renewal resumes with a delta");
    assert!(renewed.renew_at().is_none());
    assert_eq!(renewed.netmap().len(), 2);
    drop(a_session);
    // b never sees a offline, or moved.
    let watch = async {
        loop {
            b_session.next_change().await.unwrap();
            let seen = b_session.netmap().peer(a.node_id).unwrap();
            assert!(seen.online, "b saw a go offline during the renewal");
            assert_eq!(seen.endpoints, a_endpoints);
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1500), watch).await;
    assert!(b_session.netmap().peer(a.node_id).unwrap().online);
    drop(renewed);
    // Whereas a session that just ends is news.
    wait_for(&mut b_session, Duration::from_secs(5), |s| {
        s.netmap().peer(a.node_id).is_some_and(|p| !p.online)
    })
    .await;
}
