//! Keep-alives that scale with the cluster: a coordinator with many hosts
//! asks for a longer interval, and a host's session moves to it while it
//! lasts, with no new session and no peer seeing it go offline. A large
//! per-host step stands in for thousands of hosts.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::time::Duration;

use support::*;

/// Idle seconds over which a session's keep-alives are counted.
const IDLE: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_cluster_asks_for_longer_keepalives_and_sessions_follow_without_a_flap() {
    let h = Harness::start_with(|c| c.keepalive_per_host = Duration::from_secs(1)).await;
    let token = h.token(None).await;
    let (_ka, a) = join(&token, "a").await;
    let (_kb, b) = join(&token, "b").await;
    let mut a_session = a.session;
    let mut b_session = b.session;
    assert!(a_session.keepalive() <= Duration::from_secs(1));
    // Two hosts connected: "2 s" is asked of the third in its welcome.
    let (_kc, c) = join(&token, "c").await;
    assert!(
        c.session.welcome().keepalive_ms >= 2_000,
        "{}",
        c.session.welcome().keepalive_ms
    );
    // a hears of c with the interval asked for now.
    wait_for(&mut a_session, Duration::from_secs(3), |s| {
        s.netmap().peer(c.node_id).is_some()
    })
    .await;
    let asked = a_session.keepalive();
    assert!(asked >= Duration::from_secs(2), "a was asked for {asked:?}");
    wait_for(&mut b_session, Duration::from_secs(3), |s| {
        s.netmap().peer(c.node_id).is_some()
    })
    .await;

    // Idle: a keeps its session alive at the new interval, on the same
    // connection (at the old 1 s it would send eight or more).
    let wire = a_session.wire_stats();
    let (sent0, _) = wire.packets().unwrap();
    let watch = async {
        loop {
            b_session.next_change().await.unwrap();
            let seen = b_session.netmap().peer(a.node_id).unwrap();
            assert!(seen.online, "b saw a go offline");
        }
    };
    let idle = async {
        loop {
            a_session.next_change().await.unwrap();
        }
    };
    let _ = tokio::time::timeout(IDLE, async { tokio::join!(watch, idle) }).await;
    let (sent1, _) = wire.packets().unwrap();
    let sent = sent1 - sent0;
    assert!(
        (1..=5).contains(&sent),
        "a sent {sent} packets in {IDLE:?} when asked for one every {asked:?}"
    );
    assert!(
        a_session.heard().ago() < weft_proto::liveness_deadline(asked),
        "the coordinator went unheard: {:?}",
        a_session.heard().ago()
    );
    assert!(b_session.netmap().peer(a.node_id).unwrap().online);
    // Whereas a session that just ends is news.
    drop(a_session);
    wait_for(&mut b_session, Duration::from_secs(5), |s| {
        s.netmap().peer(a.node_id).is_some_and(|p| !p.online)
    })
    .await;
}
