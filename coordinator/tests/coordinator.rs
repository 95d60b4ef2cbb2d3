//! Loopback QUIC tests of the coordinator with the real control client.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::*;
use weft_proto::msg::{AdminCommand, AdminReply, Hello, HelloRequest, ResumeRequest, ServerMsg};
use weft_proto::token::JoinToken;
use weft_proto::{WgPublicKey, PROTOCOL_VERSION};
use x25519_dalek::PublicKey;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_gives_subnet_and_netmap_and_peers_see_each_other() {
    let h = Harness::start().await;
    let token = h.token(Some(2)).await;
    let (_ka, mut a) = join(&token, "host-a").await;
    assert!(a.session.netmap().is_empty());
    assert_eq!(a.subnet.to_string(), "100.64.0.0/24");
    assert_eq!(a.pool.to_string(), "100.64.0.0/10");
    let (_kb, b) = join(&token, "host-b").await;
    assert_ne!(a.subnet, b.subnet);
    assert_eq!(b.session.netmap().len(), 1);
    let seen_a = b.session.netmap().peer(a.node_id).unwrap();
    assert_eq!(seen_a.name, "host-a");
    assert_eq!(seen_a.subnet, a.subnet);
    assert!(seen_a.online);
    wait_for(&mut a.session, Duration::from_secs(2), |s| {
        s.netmap().peer(b.node_id).is_some_and(|p| p.online)
    })
    .await;
    let pb = a.session.netmap().peer(b.node_id).unwrap();
    assert_eq!(pb.endpoints, vec!["192.0.2.10:51820".parse().unwrap()]);
    // An endpoint change reaches the peer.
    b.session
        .set_endpoints(vec!["198.51.100.7:4000".parse().unwrap()])
        .await
        .unwrap();
    wait_for(&mut a.session, Duration::from_secs(2), |s| {
        s.netmap().peer(b.node_id).unwrap().endpoints == vec!["198.51.100.7:4000".parse().unwrap()]
    })
    .await;
    // Going offline reaches the peer too.
    b.session.close();
    wait_for(&mut a.session, Duration::from_secs(2), |s| {
        !s.netmap().peer(b.node_id).unwrap().online
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_with_key_proof_resumes_without_token() {
    let h = Harness::start().await;
    let token = h.token(Some(2)).await;
    let (ka, a) = join(&token, "a").await;
    let (_kb, _b) = join(&token, "b").await;
    let info = a.coordinator.clone();
    let (id, subnet) = (a.node_id, a.subnet);
    let mut session = a.session;
    wait_for(&mut session, Duration::from_secs(2), |s| {
        s.netmap().len() == 1
    })
    .await;
    let cached = session.into_netmap();
    let v = cached.version();
    let client = ControlClient::new().unwrap();
    let again = client
        .connect(&info, &ka, vec![], Some(cached))
        .await
        .unwrap();
    assert_eq!(again.welcome().node_id, id);
    assert_eq!(again.welcome().subnet, subnet);
    assert_eq!(again.netmap().len(), 1);
    assert!(again.netmap().version() >= v);
    assert!(
        again.resumed(),
        "a reconnect with a current cache must get a delta"
    );
    // Without a cache: a full snapshot.
    let fresh = client.connect(&info, &ka, vec![], None).await.unwrap();
    assert_eq!(fresh.netmap().len(), 1);
    assert!(!fresh.resumed());
    assert_eq!(h.nodes().await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_stops_the_join() {
    let h = Harness::start().await;
    let token = h.token(Some(1)).await;
    let mut t: JoinToken = token.parse().unwrap();
    t.pin[0] ^= 1;
    let err = ControlClient::new()
        .unwrap()
        .join(&t.encode(), &key(), "x", vec![])
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, ControlError::IdentityMismatch { .. }),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("coordinator identity does not match the token"),
        "{err}"
    );
    assert!(h.nodes().await.is_empty());
    // The real token still works: the failed attempt did not use it.
    join(&token, "x").await;
}

async fn join_err(token: &str) -> ControlError {
    ControlClient::new()
        .unwrap()
        .join(token, &key(), "h", vec![])
        .await
        .err()
        .expect("join should fail")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_fail_distinctly_and_create_no_node() {
    let h = Harness::start().await;
    let coord = h.coord();

    let expired = coord
        .create_token(Some(1), Some(Duration::ZERO), vec![])
        .await
        .unwrap();
    let e = join_err(&expired).await;
    assert_eq!(e.code(), Some(ErrorCode::TokenExpired), "{e}");
    assert!(
        e.to_string().contains("expired at") && e.to_string().contains("weft token create"),
        "{e}"
    );

    let revoked = h.token(Some(1)).await;
    let id = revoked.parse::<JoinToken>().unwrap().id;
    h.admin(AdminCommand::TokenRevoke { id }).await.unwrap();
    let e = join_err(&revoked).await;
    assert_eq!(e.code(), Some(ErrorCode::TokenRevoked), "{e}");
    assert!(e.to_string().contains("revoked"), "{e}");

    let forged = {
        let mut t: JoinToken = h.token(Some(1)).await.parse().unwrap();
        t.secret[5] ^= 0x40;
        t.encode()
    };
    let e = join_err(&forged).await;
    assert_eq!(e.code(), Some(ErrorCode::TokenInvalid), "{e}");
    let unknown = {
        let mut t: JoinToken = h.token(Some(1)).await.parse().unwrap();
        t.id = "00000000deadbeef".into();
        t.encode()
    };
    assert_eq!(
        join_err(&unknown).await.code(),
        Some(ErrorCode::TokenInvalid)
    );

    assert!(
        h.nodes().await.is_empty(),
        "no failed join may create a node"
    );

    let single = h.token(Some(1)).await;
    join(&single, "first").await;
    let e = join_err(&single).await;
    assert_eq!(e.code(), Some(ErrorCode::TokenUsedUp), "{e}");
    assert!(e.to_string().contains("used up"), "{e}");
    assert_eq!(h.nodes().await.len(), 1);

    // A damaged token string is caught before any network use.
    assert!(matches!(
        join_err("weft1.@@@").await,
        ControlError::Token(_)
    ));
    // The listing never shows a secret and reflects the states.
    let AdminReply::Tokens(tokens) = h.admin(AdminCommand::TokenList).await.unwrap() else {
        panic!()
    };
    assert_eq!(tokens.len(), 5);
    assert_eq!(tokens.iter().filter(|t| t.revoked).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_joins_on_a_single_use_token_make_one_node() {
    let h = Harness::start().await;
    let token = Arc::new(h.token(Some(1)).await);
    let client = ControlClient::new().unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let token = token.clone();
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            client
                .join(&token, &key(), &format!("racer-{i}"), vec![])
                .await
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), Some(ErrorCode::TokenUsedUp), "{e}"),
        }
    }
    assert_eq!(ok, 1);
    assert_eq!(h.nodes().await.len(), 1);
}

/// A hand-built client that claims `claimed` as its key but can only prove
/// possession of `actual`.
async fn resume_claiming(
    h: &Harness,
    claimed: WgPublicKey,
    actual: &x25519_dalek::StaticSecret,
) -> ServerMsg {
    let info = {
        let t: JoinToken = h.token(Some(1)).await.parse().unwrap();
        CoordinatorInfo::from(&t)
    };
    let conn = dial_by_hand(h.addr, info.pin, weft_proto::host_alpns(PROTOCOL_VERSION)).await;
    let dh = actual.diffie_hellman(&PublicKey::from(info.coordinator_key));
    first_answer(&conn, &claimed.0, |exporter| Hello {
        protocol_version: PROTOCOL_VERSION,
        request: HelloRequest::Resume(ResumeRequest {
            public_key: claimed,
            proof: weft_proto::auth::key_proof(dh.as_bytes(), &exporter, &claimed.0),
            endpoints: vec![],
            have_epoch: 0,
            have_version: 0,
            have_view: 0,
            have_digest: 0,
        }),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_public_key_does_not_authenticate() {
    let h = Harness::start().await;
    let token = h.token(Some(1)).await;
    let (victim_key, victim) = join(&token, "victim").await;
    let victim_pub = WgPublicKey(PublicKey::from(&victim_key).to_bytes());
    match resume_claiming(&h, victim_pub, &key()).await {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::ProofFailed, "{}", e.message),
        other => panic!("impersonation accepted: {other:?}"),
    }
    // The real holder of the key is accepted by the same hand-built client.
    match resume_claiming(&h, victim_pub, &victim_key).await {
        ServerMsg::Welcome(w) => assert_eq!(w.node_id, victim.node_id),
        other => panic!("{other:?}"),
    }
    // A key that never joined, proven correctly, is not registered.
    let stranger = key();
    let stranger_pub = WgPublicKey(PublicKey::from(&stranger).to_bytes());
    match resume_claiming(&h, stranger_pub, &stranger).await {
        ServerMsg::Error(e) => assert_eq!(e.code, ErrorCode::NotRegistered),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_removal_reaches_peers_and_locks_the_node_out() {
    let h = Harness::start().await;
    let token = h.token(None).await;
    let (_ka, mut a) = join(&token, "a").await;
    let (kb, mut b) = join(&token, "b").await;
    wait_for(&mut a.session, Duration::from_secs(2), |s| {
        s.netmap().len() == 1
    })
    .await;
    let started = Instant::now();
    let reply = h
        .admin(AdminCommand::NodeRemove { node: "b".into() })
        .await
        .unwrap();
    assert!(matches!(reply, AdminReply::NodeRemoved { id, .. } if id == b.node_id));
    wait_for(&mut a.session, Duration::from_secs(1), |s| {
        s.netmap().is_empty()
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(1));
    // The removed node's session ends with a clear reason...
    let err = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if let Err(e) = b.session.next_change().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert!(matches!(err, ControlError::Removed), "{err}");
    // ...and it cannot reconnect.
    let e = ControlClient::new()
        .unwrap()
        .connect(&b.coordinator, &kb, vec![], None)
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::NotRegistered), "{e}");
    assert!(e.to_string().contains("join again"), "{e}");
    // Its subnet is free again and no one else holds it; removing it twice fails clearly.
    assert_eq!(h.nodes().await.len(), 1);
    let again = h
        .admin(AdminCommand::NodeRemove { node: "b".into() })
        .await
        .err()
        .unwrap();
    assert!(again.to_string().contains("weft node list"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_nodes_subnets_and_tokens() {
    let mut h = Harness::start().await;
    let reusable = h.token(None).await;
    let unused = h.token(Some(1)).await;
    let (ka, a) = join(&reusable, "a").await;
    let (_kb, b) = join(&reusable, "b").await;
    let before = h.nodes().await;
    let pin = h.coord().pin();
    let mut a_session = a.session;
    wait_for(&mut a_session, Duration::from_secs(2), |s| {
        s.netmap().len() == 1
    })
    .await;
    let cached = a_session.into_netmap();
    let stale = cached.clone();
    drop(b.session);
    h.restart().await;
    assert_eq!(h.coord().pin(), pin, "identity must survive restarts");
    let after = h.nodes().await;
    let strip = |v: &[weft_proto::msg::NodeInfo]| {
        v.iter()
            .map(|n| (n.id, n.name.clone(), n.subnet, n.public_key))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&before), strip(&after));
    // Reconnect by key proof after the restart.
    let s = ControlClient::new()
        .unwrap()
        .connect(&a.coordinator, &ka, vec![], Some(cached))
        .await
        .unwrap();
    assert_eq!(s.welcome().subnet, a.subnet);
    // The same epoch after a restart, and the host's peers are the
    // coordinator's: it resumes with a delta, not a snapshot.
    assert!(s.resumed());
    assert_eq!(s.netmap().len(), 1);
    drop(s);
    // Both tokens still work, and new subnets do not collide.
    let (_kc, c) = join(&reusable, "c").await;
    let (_kd, d) = join(&unused, "d").await;
    let subnets: HashSet<_> = [a.subnet, b.subnet, c.subnet, d.subnet]
        .into_iter()
        .collect();
    assert_eq!(subnets.len(), 4);
    assert_eq!(join_err(&unused).await.code(), Some(ErrorCode::TokenUsedUp));
    // A netmap from before c and d joined: the live hint knows what
    // changed since its version, so after another restart it still
    // resumes, with c and d in its delta.
    h.restart().await;
    let s = ControlClient::new()
        .unwrap()
        .connect(&a.coordinator, &ka, vec![], Some(stale.clone()))
        .await
        .unwrap();
    assert!(s.resumed());
    assert_eq!(s.netmap().len(), 3);
    drop(s);
    // Without the hint (lost, say, in a machine crash) the log cannot
    // answer its version, and its peers no longer match: a snapshot.
    h.restart_with(|state| {
        std::fs::remove_file(state.join(weft_coordinator::live_hint::HINT_FILE)).unwrap()
    })
    .await;
    let s = ControlClient::new()
        .unwrap()
        .connect(&a.coordinator, &ka, vec![], Some(stale))
        .await
        .unwrap();
    assert!(!s.resumed());
    assert_eq!(s.netmap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_that_come_back_as_they_were_are_no_news_after_a_restart() {
    let mut h = Harness::start().await;
    let token = h.token(None).await;
    let (ka, a) = join(&token, "a").await;
    let (kb, b) = join(&token, "b").await;
    let mut a_session = a.session;
    wait_for(&mut a_session, Duration::from_secs(2), |s| {
        s.netmap().peer(b.node_id).is_some_and(|p| p.online)
    })
    .await;
    let a_cached = a_session.netmap().clone();
    let b_cached = b.session.netmap().clone();
    let b_endpoints = a_cached.peer(b.node_id).unwrap().endpoints.clone();
    assert!(!b_endpoints.is_empty());
    // The sessions are open when the coordinator stops, as in a crash:
    // closing them first would race the restart with b going offline,
    // which is news.
    h.restart().await;
    drop((a_session, b.session));
    let client = ControlClient::new().unwrap();
    let mut a_session = client
        .connect(&a.coordinator, &ka, vec![], Some(a_cached))
        .await
        .unwrap();
    assert!(a_session.resumed());
    // b as it was: online, with the endpoints a has for it.
    let b_again = client
        .connect(&b.coordinator, &kb, b_endpoints.clone(), Some(b_cached))
        .await
        .unwrap();
    assert!(b_again.resumed());
    let news = tokio::time::timeout(Duration::from_millis(800), a_session.next_change()).await;
    assert!(news.is_err(), "b's return was sent to a: {news:?}");
    let seen = a_session.netmap().peer(b.node_id).unwrap();
    assert!(seen.online);
    assert_eq!(seen.endpoints, b_endpoints);
    // b back somewhere else is news.
    let moved: std::net::SocketAddr = "192.0.2.77:4000".parse().unwrap();
    let b_cached = b_again.into_netmap();
    wait_for(&mut a_session, Duration::from_secs(3), |s| {
        s.netmap().peer(b.node_id).is_some_and(|p| !p.online)
    })
    .await;
    let _b = client
        .connect(&b.coordinator, &kb, vec![moved], Some(b_cached))
        .await
        .unwrap();
    wait_for(&mut a_session, Duration::from_secs(3), |s| {
        s.netmap()
            .peer(b.node_id)
            .is_some_and(|p| p.online && p.endpoints.contains(&moved))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_is_a_clear_join_error_and_removal_frees_a_subnet() {
    let h = Harness::start_with(|c| {
        c.pool = "10.9.0.0/29".parse().unwrap();
        c.subnet_prefix = 30;
    })
    .await;
    let token = h.token(None).await;
    let (_k1, n1) = join(&token, "one").await;
    let (_k2, _n2) = join(&token, "two").await;
    let e = join_err(&token).await;
    assert_eq!(e.code(), Some(ErrorCode::PoolExhausted), "{e}");
    assert!(e.to_string().contains("exhausted"), "{e}");
    assert_eq!(h.nodes().await.len(), 2);
    h.admin(AdminCommand::NodeRemove {
        node: n1.node_id.to_string(),
    })
    .await
    .unwrap();
    let (_k3, n3) = join(&token, "three").await;
    assert_eq!(n3.subnet, n1.subnet);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_needs_the_credential_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let h = Harness::start().await;
    let path = h.admin_path();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let mut cred = weft_coordinator::admin::AdminCredential::load(&path).unwrap();
    cred.secret = "00".repeat(32);
    let e = cred.request(AdminCommand::NodeList).await.err().unwrap();
    assert!(
        e.to_string().contains("admin credential was refused"),
        "{e}"
    );
    let mut cred = weft_coordinator::admin::AdminCredential::load(&path).unwrap();
    cred.pin = "11".repeat(32);
    let e = cred.request(AdminCommand::NodeList).await.err().unwrap();
    assert!(
        e.to_string()
            .contains("coordinator identity does not match"),
        "{e}"
    );
    // Nothing in the state dir or the admin file holds a token secret.
    let token: JoinToken = h.token(Some(1)).await.parse().unwrap();
    let needle = hex::encode(token.secret);
    for entry in std::fs::read_dir(&h.config.state_dir).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(!bytes.windows(32).any(|w| w == token.secret));
        assert!(!String::from_utf8_lossy(&bytes).contains(&needle));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_netmaps_arrive_in_chunks_and_stay_consistent() {
    let h = Harness::start().await;
    let token = Arc::new(h.token(None).await);
    let client = ControlClient::new().unwrap();
    let sem = Arc::new(tokio::sync::Semaphore::new(32));
    let mut tasks = Vec::new();
    // More peers than fit in one netmap frame (256).
    for i in 0..300 {
        let (token, client, sem) = (token.clone(), client.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let out = client
                .join(&token, &key(), &format!("bulk-{i}"), vec![])
                .await
                .unwrap();
            (out.node_id, out.subnet)
        }));
    }
    let mut ids = HashSet::new();
    let mut subnets = HashSet::new();
    for t in tasks {
        let (id, subnet) = t.await.unwrap();
        ids.insert(id);
        subnets.insert(subnet);
    }
    assert_eq!(subnets.len(), 300);
    let (_k, late) = join(&token, "late").await;
    let map = late.session.netmap();
    assert_eq!(map.len(), 300);
    assert!(map.peers().all(|p| ids.contains(&p.id)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_changes_are_coalesced_for_a_host_that_reads_late() {
    let h = Harness::start().await;
    let token = h.token(None).await;
    let (_ka, mut slow) = join(&token, "slow").await;
    let (_kb, busy) = join(&token, "busy").await;
    // 500 endpoint changes while `slow` reads nothing.
    for port in 1..=500u16 {
        busy.session
            .set_endpoints(vec![
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), port).into()
            ])
            .await
            .unwrap();
    }
    let last: std::net::SocketAddr = "192.0.2.9:500".parse().unwrap();
    let mut messages = 0;
    while slow
        .session
        .netmap()
        .peer(busy.node_id)
        .is_none_or(|p| p.endpoints != vec![last])
    {
        tokio::time::timeout(Duration::from_secs(5), slow.session.next_change())
            .await
            .unwrap()
            .unwrap();
        messages += 1;
    }
    assert!(
        messages < 50,
        "{messages} updates for 500 changes: not coalesced"
    );
}

/// Issue 12: "DB", "db." and "db!" all normalise to "db"; each host still
/// gets a name of its own, and no later join takes over an existing one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_unique_after_normalisation() {
    let h = Harness::start().await;
    let token = h.token(Some(4)).await;
    let mut names = Vec::new();
    for asked in ["DB", "db.", "db!", "db-2"] {
        let (_k, out) = join(&token, asked).await;
        names.push(out.name);
    }
    assert_eq!(names, ["db", "db-2", "db-3", "db-2-2"]);
    let listed: HashSet<String> = h.nodes().await.into_iter().map(|n| n.name).collect();
    assert_eq!(listed.len(), 4, "{listed:?}");
}

/// Issue 12: a host reporting 60,000 addresses (about what one 1 MiB frame
/// holds; 75,000 do not fit one), loopback and overlay ones
/// among them, cannot point its peers at them: they see at most 16
/// plausible unicast endpoints, and stay connected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_endpoints_are_checked_and_capped() {
    let h = Harness::start().await;
    let token = h.token(Some(2)).await;
    let (_ka, mut a) = join(&token, "watcher").await;
    let k = key();
    let b = ControlClient::new()
        .unwrap()
        .join(
            &token,
            &k,
            "flooder",
            vec![
                "127.0.0.1:51820".parse().unwrap(),
                "100.64.0.1:51820".parse().unwrap(),
                "224.0.0.5:51820".parse().unwrap(),
                "192.0.2.10:51820".parse().unwrap(),
            ],
        )
        .await
        .unwrap();
    wait_for(&mut a.session, Duration::from_secs(2), |s| {
        s.netmap().peer(b.node_id).is_some()
    })
    .await;
    assert_eq!(
        a.session.netmap().peer(b.node_id).unwrap().endpoints,
        vec!["192.0.2.10:51820".parse().unwrap()]
    );
    let many: Vec<std::net::SocketAddr> = (0..60_000u32)
        .map(|i| {
            std::net::SocketAddr::from((
                Ipv4Addr::from(0xCB00_7100 + (i % 200)),
                1024 + (i % 60_000) as u16,
            ))
        })
        .collect();
    b.session.set_endpoints(many).await.unwrap();
    wait_for(&mut a.session, Duration::from_secs(5), |s| {
        s.netmap().peer(b.node_id).unwrap().endpoints.len() == 16
    })
    .await;
    assert!(h
        .nodes()
        .await
        .iter()
        .all(|n| n.online && n.endpoints.len() <= 16));
}

/// Issue 12: the coordinator's state dir and everything secret in it are
/// its user's only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_dir_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = Harness::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = h.dir.path().join("state");
    assert_eq!(mode(&dir), 0o700);
    for f in ["weft.redb", "admin.json", "coordinator.key", "tls-key.der"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}

/// Issue 12: endpoint changes are paced per host (at most one every
/// 250 ms reaches the peers, the latest winning), however fast a host
/// sends them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_are_paced() {
    let h = Harness::start().await;
    let token = h.token(None).await;
    let (_ka, mut watcher) = join(&token, "watcher").await;
    let (_kb, busy) = join(&token, "busy").await;
    wait_for(&mut watcher.session, Duration::from_secs(2), |s| {
        s.netmap().peer(busy.node_id).is_some()
    })
    .await;
    let t = Instant::now();
    let mut port = 1u16;
    while t.elapsed() < Duration::from_secs(1) {
        busy.session
            .set_endpoints(vec![
                SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), port).into()
            ])
            .await
            .unwrap();
        port += 1;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let last: std::net::SocketAddr =
        SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 9), port - 1).into();
    let mut seen = HashSet::new();
    while watcher
        .session
        .netmap()
        .peer(busy.node_id)
        .is_none_or(|p| p.endpoints != vec![last])
    {
        tokio::time::timeout(Duration::from_secs(5), watcher.session.next_change())
            .await
            .unwrap()
            .unwrap();
        if let Some(p) = watcher.session.netmap().peer(busy.node_id) {
            seen.insert(p.endpoints.clone());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "{} changes sent, {} seen in {secs:.2}s",
        port - 1,
        seen.len()
    );
    assert!(port > 50, "the flood was too slow to test: {port}");
    assert!(
        (seen.len() as f64) <= secs * 4.0 + 2.0,
        "{} endpoint versions in {secs:.2}s",
        seen.len()
    );
}

/// Issue 12: a host punching 1,000 times a second gets about four punches
/// a second through to its peer; relaying keeps working meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punches_are_rate_limited_per_pair() {
    use weft_proto::relay::Datagram;
    let h = Harness::start().await;
    let token = h.token(Some(2)).await;
    let (_ka, a) = join(&token, "puncher").await;
    let (_kb, mut b) = join(&token, "target").await;
    let mut inbox = b.session.take_datagrams().unwrap();
    let link = a.session.datagram_link();
    let punch = Datagram::Punch { node: b.node_id }.encode();
    let sender = tokio::spawn(async move {
        let t = Instant::now();
        let mut sent = 0;
        while t.elapsed() < Duration::from_secs(1) {
            link.send(punch.clone());
            sent += 1;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let relayed = weft_proto::relay::fragment(b.node_id, 1, b"still relayed", 1200);
        for f in relayed {
            link.send(f);
        }
        sent
    });
    let mut punches = 0;
    let mut relayed = false;
    let deadline = Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(d)) = tokio::time::timeout_at(deadline.into(), inbox.next()).await {
        match Datagram::parse(&d) {
            Some(Datagram::Punch { .. }) => punches += 1,
            Some(Datagram::Relay { payload, .. }) => relayed |= payload == b"still relayed",
            None => {}
        }
    }
    let sent = sender.await.unwrap();
    eprintln!("{sent} punches sent in 1 s, {punches} delivered");
    assert!(sent > 300, "the flood was too slow to test: {sent}");
    assert!((1..=6).contains(&punches), "{punches} punches delivered");
    assert!(relayed, "relaying stopped");
}
