//! The store's front over the in-memory backend: racing joins, refusals
//! that commit nothing, failed commits, and conflicts decided again.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use weft_proto::auth::secret_hash;
use weft_proto::msg::{AclVersion, ErrorCode};
use weft_proto::{NodeId, WgPublicKey};

use super::memory::MemoryBackend;
use super::*;
use crate::ipam::Ipam;

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

fn join(key: u8) -> JoinArgs {
    JoinArgs {
        token_id: "t".into(),
        token_secret: [3; 32],
        public_key: WgPublicKey([key; 32]),
        hostname: format!("h{key}"),
        now: 2,
    }
}

/// A front on `backend`; how many node changes it reported.
fn start(backend: impl StoreBackend) -> (Opened, Arc<AtomicUsize>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let on_commit = Box::new(move |ids: &[NodeId]| {
        s.fetch_add(ids.len(), Ordering::SeqCst);
    });
    let ipam = Ipam::new("10.9.0.0/16".parse().unwrap(), 24).unwrap();
    (open_with(backend, ipam, 1, on_commit).unwrap(), seen)
}

#[tokio::test]
async fn a_single_use_token_admits_one_of_many_racing_joins() {
    let mem = MemoryBackend::new();
    let (o, seen) = start(mem.clone());
    o.handle.create_token(token("t", Some(1))).await.unwrap();
    // Sent at once, so most land in one batch.
    let joins: Vec<_> = (1..=20)
        .map(|k| {
            let h = o.handle.clone();
            tokio::spawn(async move { h.join(join(k)).await })
        })
        .collect();
    let mut results = Vec::new();
    for j in joins {
        results.push(j.await.unwrap());
    }
    let ok: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(ok.len(), 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| e.code == ErrorCode::TokenUsedUp));
    assert_eq!(ok[0].id, NodeId(1));
    assert_eq!(mem.nodes().len(), 1);
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert_eq!(o.registry.read().unwrap().len(), 1);
    // Refusals alone commit nothing.
    let before = mem.commits();
    assert!(o.handle.join(join(30)).await.is_err());
    assert_eq!(mem.commits(), before);
    o.handle.shutdown().await;
}

#[tokio::test]
async fn a_failed_commit_answers_an_error_and_changes_nothing() {
    let mem = MemoryBackend::new();
    let (o, seen) = start(mem.clone());
    o.handle.create_token(token("t", None)).await.unwrap();
    mem.fail_commits(1);
    let e = o.handle.join(join(1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::Internal);
    assert!(mem.nodes().is_empty());
    assert_eq!(o.registry.read().unwrap().len(), 0);
    assert_eq!(seen.load(Ordering::SeqCst), 0);
    // The next join gets the first id: the failed one used up nothing.
    let rec = o.handle.join(join(1)).await.unwrap();
    assert_eq!(rec.id, NodeId(1));
    let tokens = o.handle.tokens().await.unwrap();
    assert_eq!(tokens[0].used, 1);
    o.handle.shutdown().await;
}

/// A backend another coordinator writes to between the front's read and
/// its commit, once.
struct Interfering {
    inner: MemoryBackend,
    meanwhile: Option<Change>,
}

impl StoreBackend for Interfering {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.inner.load()
    }
    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.inner.token(id)
    }
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.inner.tokens()
    }
    fn policy_history(&mut self) -> Result<Vec<AclVersion>, StoreError> {
        self.inner.policy_history()
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), CommitError> {
        if let Some(c) = self.meanwhile.take() {
            self.inner.clone().commit(&[c])?;
        }
        self.inner.commit(changes)
    }
}

#[tokio::test]
async fn a_join_whose_token_changed_meanwhile_is_decided_again() {
    let mut mem = MemoryBackend::new();
    let t = token("t", Some(5));
    mem.commit(&[Change::CreateToken(t.clone())]).unwrap();
    let revoked = TokenRecord {
        revoked: true,
        ..t.clone()
    };
    let backend = Interfering {
        inner: mem.clone(),
        meanwhile: Some(Change::UpdateToken {
            before: t,
            after: revoked,
        }),
    };
    let (o, _) = start(backend);
    // Decided against the token as read (valid), conflicts, is decided
    // again against the revoked token and refused as such.
    let e = o.handle.join(join(1)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenRevoked, "{}", e.message);
    assert!(mem.nodes().is_empty());
    o.handle.shutdown().await;
}

#[tokio::test]
async fn config_writes_removals_and_revocations() {
    let mem = MemoryBackend::new();
    let (o, seen) = start(mem.clone());
    let v1 = AclVersion {
        version: 1,
        set_at: 0,
        text: "default: allow\n".into(),
        hosts: Default::default(),
        set_by: None,
    };
    let put = || vec![ConfigChange::PutPolicy(v1.clone())];
    o.handle.write(put()).await.unwrap();
    let e = o.handle.write(put()).await.unwrap_err();
    assert!(
        e.message.contains("another policy change landed"),
        "{}",
        e.message
    );
    assert_eq!(o.handle.policy_history().await.unwrap(), [v1]);

    o.handle.create_token(token("t", None)).await.unwrap();
    let rec = o.handle.join(join(1)).await.unwrap();
    let e = o.handle.remove_node(NodeId(99)).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    let gone = o.handle.remove_node(rec.id).await.unwrap();
    assert_eq!(gone.name, rec.name);
    assert!(mem.nodes().is_empty());
    assert_eq!(o.registry.read().unwrap().len(), 0);
    assert_eq!(seen.load(Ordering::SeqCst), 2);

    o.handle.revoke_token("t".into()).await.unwrap();
    assert_eq!(
        o.handle.join(join(2)).await.unwrap_err().code,
        ErrorCode::TokenRevoked
    );
    let e = o.handle.revoke_token("nope".into()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::NotFound);
    o.handle.shutdown().await;

    // A second front on the same state starts from it.
    let (o, _) = start(mem.clone());
    assert_eq!(o.registry.read().unwrap().len(), 0);
    assert_eq!(o.handle.tokens().await.unwrap().len(), 1);
    o.handle.shutdown().await;
}

/// A memory backend other fronts also write to, as etcd is for replicas;
/// it takes at most 4 changes a commit.
#[derive(Clone)]
struct Replicated(MemoryBackend);

impl StoreBackend for Replicated {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        self.0.load()
    }
    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.0.token(id)
    }
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.0.tokens()
    }
    fn policy_history(&mut self) -> Result<Vec<AclVersion>, StoreError> {
        self.0.policy_history()
    }
    fn commit(&mut self, changes: &[Change]) -> Result<(), CommitError> {
        assert!(
            changes.len() <= 4,
            "{} changes in one commit",
            changes.len()
        );
        self.0.commit(changes)
    }
    fn shared(&self) -> bool {
        true
    }
    fn max_changes_per_commit(&self) -> usize {
        4
    }
}

#[tokio::test]
async fn three_fronts_on_one_shared_store_converge() {
    let mem = MemoryBackend::new();
    let fronts: Vec<_> = (0..3).map(|_| start(Replicated(mem.clone())).0).collect();
    fronts[0]
        .handle
        .create_token(token("t", None))
        .await
        .unwrap();
    let joins: Vec<_> = (1..=60)
        .map(|k| {
            let h = fronts[usize::from(k) % 3].handle.clone();
            tokio::spawn(async move { h.join(join(k)).await })
        })
        .collect();
    let mut nodes = Vec::new();
    for j in joins {
        nodes.push(j.await.unwrap().unwrap());
    }
    let ids: std::collections::HashSet<_> = nodes.iter().map(|n| n.id).collect();
    let subnets: std::collections::HashSet<_> = nodes.iter().map(|n| n.subnet).collect();
    assert_eq!((ids.len(), subnets.len()), (60, 60));
    assert_eq!(mem.nodes().len(), 60);
    assert!(
        mem.commits() >= 15,
        "batches of at most 4: {}",
        mem.commits()
    );
    // Each front learnt the others' nodes when it lost a race: its
    // registry holds at least its own.
    for f in &fronts {
        assert!(f.registry.read().unwrap().len() >= 20);
        f.handle.shutdown().await;
    }
}
