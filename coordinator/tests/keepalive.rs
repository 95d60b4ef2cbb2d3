//! Keep-alives that scale with the cluster: the coordinator keeps each QUIC
//! session alive at the interval it asks for when the session opens, longer
//! the more hosts there are; a host whose session is kept alive far more or
//! less often than the coordinator asks for now moves to a new session
//! without any peer seeing it go offline. A large per-host step stands in
//! for thousands of hosts.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::time::Duration;

use support::*;

/// Idle seconds over which the coordinator's keep-alives are counted.
const IDLE: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_cluster_asks_for_longer_keepalives_and_sessions_renew_without_a_flap() {
    let h = Harness::start_with(|c| c.keepalive_per_host = Duration::from_secs(1)).await;
    let token = h.token(None).await;
    let (ka, a) = join(&token, "a").await;
    let (_kb, b) = join(&token, "b").await;
    let mut a_session = a.session;
    let mut b_session = b.session;
    assert!(a_session.welcome().keepalive_ms <= 1_000);
    // Two hosts connected: "2 s" is asked of the third, and its connection
    // is kept alive at that from the start (one handshake).
    let (_kc, c) = join(&token, "c").await;
    let welcome = c.session.welcome();
    assert!(welcome.keeps_quic_alive);
    assert!(welcome.keepalive_ms >= 2_000, "{}", welcome.keepalive_ms);
    assert!(c.session.renew_at().is_none());
    // a hears of c with the interval asked for now, three times its own:
    // a renewal is due (within a minute, at random).
    wait_for(&mut a_session, Duration::from_secs(3), |s| {
        s.netmap().peer(c.node_id).is_some()
    })
    .await;
    assert!(a_session.keepalive() >= Duration::from_secs(2));
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
    let mut renewed = ControlClient::new()
        .unwrap()
        .renew(&a_session, &a.coordinator, &ka, a_endpoints.clone())
        .await
        .unwrap();
    assert!(renewed.resumed(), "a renewal resumes with a delta");
    assert!(renewed.renew_at().is_none());
    assert_eq!(renewed.netmap().len(), 2);
    let asked = Duration::from_millis(u64::from(renewed.welcome().keepalive_ms));
    assert!(asked >= Duration::from_secs(3), "{asked:?}");
    drop(a_session);

    // Idle: b never sees a offline, or moved, and the coordinator keeps
    // a's new session alive at the longer interval (at the old 1 s, ten
    // or more keep-alives would arrive; at 3 s, three or four, plus the
    // odd acknowledgement and the renewal's last packets).
    let wire = renewed.wire_stats();
    let (_, got0) = wire.packets().unwrap();
    let watch = async {
        loop {
            b_session.next_change().await.unwrap();
            let seen = b_session.netmap().peer(a.node_id).unwrap();
            assert!(seen.online, "b saw a go offline during the renewal");
            assert_eq!(seen.endpoints, a_endpoints);
        }
    };
    let idle = async {
        loop {
            renewed.next_change().await.unwrap();
        }
    };
    let _ = tokio::time::timeout(IDLE, async { tokio::join!(watch, idle) }).await;
    let (_, got1) = wire.packets().unwrap();
    let got = got1 - got0;
    assert!(
        (1..=8).contains(&got),
        "{got} packets reached a in {IDLE:?}, kept alive every {asked:?}"
    );
    assert!(
        renewed.heard().ago() < weft_proto::liveness_deadline(asked),
        "the coordinator went unheard for {:?}",
        renewed.heard().ago()
    );
    assert!(b_session.netmap().peer(a.node_id).unwrap().online);
    // Whereas a session that just ends is news.
    drop(renewed);
    wait_for(&mut b_session, Duration::from_secs(5), |s| {
        s.netmap().peer(a.node_id).is_some_and(|p| !p.online)
    })
    .await;
}
