//! `weft coordinator backup` and `restore` on a real coordinator: a backup
//! taken while hosts join is consistent, and a coordinator restored from it
//! into a new state dir has the same identity, nodes, tokens and policy
//! history, so hosts resume with their keys as before.

#![allow(clippy::unwrap_used, reason = "tests")]

mod support;

use std::time::Duration;

use support::*;
use weft_coordinator::backup::BackupFile;
use weft_coordinator::{Config, Coordinator};
use weft_proto::msg::{AdminCommand, AdminReply};
use weft_proto::token::JoinToken;

async fn backup(h: &Harness) -> BackupFile {
    let reply = h.admin(AdminCommand::Backup).await.unwrap();
    let AdminReply::BackupPart(bytes) = reply else {
        panic!("{reply:?}")
    };
    BackupFile::decode("reply", &bytes.0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_during_joins_restores_the_same_cluster() {
    let mut h = Harness::start().await;
    let token = h.token(None).await;
    let (ka, a) = join(&token, "a").await;
    let (_kb, b) = join(&token, "b").await;
    for text in ["default: allow\n", "default: allow\nrules: []\n"] {
        h.admin(AdminCommand::AclSet { text: text.into() })
            .await
            .unwrap();
    }
    // Joins race the backup: whatever it holds, each join in it used the
    // token once, and no use is without its node.
    let joins: Vec<_> = (0..20)
        .map(|i| {
            let token = token.clone();
            tokio::spawn(async move { join(&token, &format!("j{i}")).await })
        })
        .collect();
    let taken = backup(&h).await;
    let mut racing = Vec::new();
    for j in joins {
        racing.push(j.await.unwrap());
    }
    let id = token.parse::<JoinToken>().unwrap().id;
    let used = taken.store.tokens.iter().find(|t| t.id == id).unwrap().used;
    let joined = taken
        .store
        .loaded
        .nodes
        .iter()
        .filter(|n| n.token_id == id)
        .count();
    assert_eq!(used as usize, joined, "a consistent snapshot");
    assert!(joined >= 2);
    assert_eq!(taken.store.policy_history.len(), 2);
    assert_eq!(taken.pin, hex::encode(h.coord().pin()));

    // The cluster as the backup has it, restored into a new state dir.
    let listed: Vec<_> = h
        .nodes()
        .await
        .into_iter()
        .filter(|n| taken.store.loaded.nodes.iter().any(|r| r.id == n.id))
        .map(|n| (n.id, n.name, n.public_key, n.subnet))
        .collect();
    let pin = h.coord().pin();
    h.coord.take().unwrap().shutdown().await;
    drop(racing);
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("restored");
    taken.restore_redb(&state, false).unwrap();
    let again = taken.restore_redb(&state, false).unwrap_err();
    assert!(again.to_string().contains("--force"), "{again}");
    let restored = Coordinator::start(Config::new(&state, "127.0.0.1:0".parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(restored.pin(), pin, "the same identity");
    h.coord = Some(restored);
    h.addr = h.coord().local_addr().unwrap();
    let now: Vec<_> = h
        .nodes()
        .await
        .into_iter()
        .map(|n| (n.id, n.name, n.public_key, n.subnet))
        .collect();
    assert_eq!(now, listed);
    let history = match h.admin(AdminCommand::AclHistory).await.unwrap() {
        AdminReply::AclHistory(v) => v,
        other => panic!("{other:?}"),
    };
    assert_eq!(history, taken.store.policy_history);

    // A host resumes with its key, pinning the same identity.
    let mut info = a.coordinator.clone();
    info.addrs = vec![h.addr.to_string()];
    let mut session = ControlClient::new()
        .unwrap()
        .connect(&info, &ka, vec![], None)
        .await
        .unwrap();
    wait_for(&mut session, Duration::from_secs(3), |s| {
        s.netmap().peer(b.node_id).is_some()
    })
    .await;
}
