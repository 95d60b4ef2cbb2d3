//! Compatibility across protocol versions: an agent one version behind
//! (the real control client, offering and speaking only the previous
//! version's ALPN, as that agent does) joins and resumes at the current
//! coordinator beside a current agent; agents outside the versions served
//! are told in one line which side to upgrade.

#![allow(
    clippy::unwrap_used,
    reason = "helpers in tests should panic on failure"
)]

mod support;

use std::time::Duration;

use support::*;
use weft_proto::msg::{Hello, HelloRequest, JoinRequest, ServerMsg};
use weft_proto::token::JoinToken;
use weft_proto::{WgPublicKey, OLDEST_PROTOCOL_VERSION, PROTOCOL_VERSION};
use x25519_dalek::PublicKey;

const PREVIOUS: u32 = PROTOCOL_VERSION - 1;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_one_version_behind_joins_resumes_and_meets_a_current_one() {
    const { assert!(PREVIOUS >= OLDEST_PROTOCOL_VERSION, "N-1 is served") };
    let h = Harness::start().await;
    let token = h.token(Some(2)).await;
    let old_key = key();
    let old_client = ControlClient::new().unwrap().speaking(PREVIOUS);
    let old = old_client
        .join(
            &token,
            &old_key,
            "old",
            vec!["192.0.2.10:51820".parse().unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(old.session.welcome().protocol_version, PREVIOUS);
    let (_new_key, mut new) = join(&token, "new").await;
    assert_eq!(new.session.welcome().protocol_version, PROTOCOL_VERSION);
    wait_for(&mut new.session, Duration::from_secs(3), |s| {
        s.netmap().peer(old.node_id).is_some_and(|p| p.online)
    })
    .await;
    let mut old_session = old.session;
    wait_for(&mut old_session, Duration::from_secs(3), |s| {
        s.netmap().peer(new.node_id).is_some_and(|p| p.online)
    })
    .await;
    // The old agent resumes with a delta, still speaking its version.
    let cached = old_session.into_netmap();
    let again = old_client
        .connect(&old.coordinator, &old_key, vec![], Some(cached))
        .await
        .unwrap();
    assert!(again.resumed());
    assert_eq!(again.welcome().protocol_version, PREVIOUS);
    // The coordinator lists both.
    let nodes = h.nodes().await;
    assert_eq!(nodes.len(), 2);
}

/// A hand-built join at protocol `version`, over a connection that offers
/// only `alpn`: what the coordinator answers.
async fn join_speaking(h: &Harness, alpn: &[u8], version: u32) -> ServerMsg {
    let token = h.token(Some(1)).await;
    let parsed: JoinToken = token.parse().unwrap();
    let info = CoordinatorInfo::from(&parsed);
    let conn = dial_by_hand(h.addr, info.pin, vec![alpn.to_vec()]).await;
    let k = key();
    let public = PublicKey::from(&k).to_bytes();
    let dh = k.diffie_hellman(&PublicKey::from(info.coordinator_key));
    first_answer(&conn, &public, |exporter| Hello {
        protocol_version: version,
        request: HelloRequest::Join(JoinRequest {
            token_id: parsed.id.clone(),
            token_secret: parsed.secret,
            public_key: WgPublicKey(public),
            proof: weft_proto::auth::key_proof(dh.as_bytes(), &exporter, &public),
            hostname: format!("v{version}"),
            endpoints: vec![],
        }),
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_the_coordinator_does_not_serve_are_told_which_side_to_upgrade() {
    let h = Harness::start().await;
    // Too old: its own ALPN is accepted, so it hears why in its protocol.
    let too_old = OLDEST_PROTOCOL_VERSION - 1;
    match join_speaking(&h, &weft_proto::alpn(too_old), too_old).await {
        ServerMsg::Error(e) => {
            assert_eq!(e.code, ErrorCode::VersionMismatch);
            assert!(e.message.contains("upgrade the agent"), "{}", e.message);
        }
        other => panic!("a version-{too_old} agent was served: {other:?}"),
    }
    // The real client limited to that version hears the same.
    let token = h.token(Some(1)).await;
    let refused = ControlClient::new()
        .unwrap()
        .speaking(too_old)
        .join(&token, &key(), "too-old", vec![])
        .await;
    match refused {
        Err(weft_control::ControlError::Refused { code, message }) => {
            assert_eq!(code, ErrorCode::VersionMismatch);
            assert!(message.contains("upgrade the agent"), "{message}");
        }
        other => panic!("expected a refusal, got {:?}", other.map(|o| o.node_id)),
    }
    // Too new (a future agent over the current ALPN).
    let too_new = PROTOCOL_VERSION + 1;
    match join_speaking(&h, weft_proto::ALPN, too_new).await {
        ServerMsg::Error(e) => {
            assert_eq!(e.code, ErrorCode::VersionMismatch);
            assert!(
                e.message.contains("upgrade the coordinator first"),
                "{}",
                e.message
            );
        }
        other => panic!("a version-{too_new} agent was served: {other:?}"),
    }
    // The versions served are served by hand too.
    for v in OLDEST_PROTOCOL_VERSION..=PROTOCOL_VERSION {
        match join_speaking(&h, &weft_proto::alpn(v), v).await {
            ServerMsg::Welcome(w) => assert_eq!(w.protocol_version, v),
            other => panic!("version {v} refused: {other:?}"),
        }
    }
    assert_eq!(h.nodes().await.len(), 2);
}
