//! `weft coordinator migrate`: a cluster on redb moved into a real
//! three-member etcd cluster ([`etcd_cluster`]); its hosts reconnect to
//! the coordinator on etcd with the node ids, names and policy they had,
//! without joining again.

#![allow(clippy::unwrap_used, reason = "test helpers should panic on failure")]

mod etcd_cluster;
mod support;

use std::time::Duration;

use support::*;
use weft_coordinator::store::etcd::{migrate, EtcdConfig};
use weft_coordinator::{state, Coordinator, StoreConfig};
use weft_proto::msg::{AdminCommand, AdminReply};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redb_cluster_moves_to_etcd_without_rejoining() {
    let Some(etcd) = etcd_cluster::start() else {
        return;
    };
    let mut cfg = EtcdConfig::from_url(&format!("etcd://{}", etcd.endpoints().join(","))).unwrap();
    cfg.prefix = "/moved".into();
    cfg.timeout = Duration::from_secs(3);

    let mut h = Harness::start().await;
    let token = h.token(None).await;
    let (ka, a) = join(&token, "a").await;
    let (kb, b) = join(&token, "b").await;
    let policy = "default: deny\nrules:\n  - allow: { from: [host:a], to: [host:b] }\n";
    h.admin(AdminCommand::AclSet {
        text: policy.into(),
    })
    .await
    .unwrap();
    let (info, a_id, b_id) = (a.coordinator.clone(), a.node_id, b.node_id);
    let (a_map, b_map) = (a.session.netmap().clone(), b.session.netmap().clone());
    drop((a, b));
    h.coord.take().unwrap().shutdown().await;

    let cfg2 = cfg.clone();
    let db = h.config.state_dir.join(state::DB_FILE);
    let moved = tokio::task::spawn_blocking(move || {
        let m = migrate(&db, &cfg2, false).unwrap();
        // Not into a prefix that holds keys, unless forced.
        let again = migrate(&db, &cfg2, false).unwrap_err().to_string();
        assert!(
            again.contains("already holds") && again.contains("--force"),
            "{again}"
        );
        assert_eq!(migrate(&db, &cfg2, true).unwrap(), m);
        let missing = migrate(&db.with_file_name("nothing.redb"), &cfg2, false).unwrap_err();
        assert!(missing.to_string().contains("no such file"), "{missing}");
        m
    })
    .await
    .unwrap();
    assert_eq!(
        (moved.nodes, moved.tokens, moved.policy_versions),
        (2, 1, 1)
    );

    // The same state dir (identity) and address, on etcd now.
    let mut config = h.config.clone();
    config.store = StoreConfig::Etcd(cfg);
    let coord = Coordinator::start(config).await.unwrap();
    let client = ControlClient::new().unwrap();
    let eps = vec!["192.0.2.10:51820".parse().unwrap()];
    let mut a = client
        .connect(&info, &ka, eps.clone(), Some(a_map))
        .await
        .unwrap();
    let mut b = client.connect(&info, &kb, eps, Some(b_map)).await.unwrap();
    assert_eq!(a.welcome().node_id, a_id);
    assert_eq!(b.welcome().node_id, b_id);
    assert_eq!(a.welcome().name, "a");
    wait_for(&mut a, Duration::from_secs(3), |s| {
        s.netmap().peer(b_id).is_some_and(|p| p.online)
    })
    .await;
    wait_for(&mut b, Duration::from_secs(3), |s| {
        s.netmap()
            .filter()
            .is_some_and(|f| f.default == weft_proto::policy::Action::Deny)
    })
    .await;
    let cred =
        weft_coordinator::admin::AdminCredential::load(&state::admin_path(&h.config.state_dir))
            .unwrap();
    match cred.request(AdminCommand::AclGet).await.unwrap() {
        AdminReply::Acl(Some(v)) => assert_eq!(v.version, 1),
        other => panic!("{other:?}"),
    }
    // The token still works, and the next node id follows the old ones.
    let (_kc, c) = join(&token, "c").await;
    assert!(c.node_id.0 > b_id.0.max(a_id.0));
    coord.shutdown().await;
}

/// A backup of a coordinator on redb restored into etcd (the other way to
/// move): a coordinator on the prefix serves the same nodes and identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_restores_into_an_empty_etcd_prefix() {
    let Some(etcd) = etcd_cluster::start() else {
        return;
    };
    let mut cfg = EtcdConfig::from_url(&format!("etcd://{}", etcd.endpoints().join(","))).unwrap();
    cfg.prefix = "/restored".into();
    cfg.timeout = Duration::from_secs(3);
    let mut h = Harness::start().await;
    let token = h.token(None).await;
    let (ka, a) = join(&token, "a").await;
    let (_kb, b) = join(&token, "b").await;
    let AdminReply::BackupPart(bytes) = h.admin(AdminCommand::Backup).await.unwrap() else {
        panic!("not a backup")
    };
    let pin = h.coord().pin();
    h.coord.take().unwrap().shutdown().await;
    let file = weft_coordinator::backup::BackupFile::decode("reply", &bytes.0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state_dir = dir.path().join("replica");
    let (cfg2, sd) = (cfg.clone(), state_dir.clone());
    tokio::task::spawn_blocking(move || {
        file.restore_etcd(&sd, &cfg2, false).unwrap();
        let e = file.restore_etcd(&sd, &cfg2, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
    })
    .await
    .unwrap();
    let mut config = weft_coordinator::Config::new(&state_dir, "127.0.0.1:0".parse().unwrap());
    config.store = StoreConfig::Etcd(cfg);
    let coord = Coordinator::start(config).await.unwrap();
    assert_eq!(coord.pin(), pin);
    let mut info = a.coordinator.clone();
    info.addrs = vec![coord.local_addr().unwrap().to_string()];
    let mut session = ControlClient::new()
        .unwrap()
        .connect(&info, &ka, vec![], None)
        .await
        .unwrap();
    wait_for(&mut session, Duration::from_secs(5), |s| {
        s.netmap().peer(b.node_id).is_some()
    })
    .await;
    drop(session);
    coord.shutdown().await;
}
