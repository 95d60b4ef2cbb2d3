//! The store's front as the server sees it: [`StoreHandle`] queues
//! requests for the writer thread ([`super::writer`]) and awaits their
//! answers; [`open_with`] loads a backend and starts that thread.

use std::path::Path;
use std::sync::{Arc, RwLock};

use tokio::sync::oneshot;
use weft_proto::msg::{AclVersion, ErrorReply, NodeExpiry};
use weft_proto::{HostSubnet, NodeId, Peer};

use super::writer::Writer;
use super::{
    internal, ConfigChange, JoinArgs, NodeRecord, StoreBackend, StoreError, StoredConfig,
    TokenRecord,
};
use crate::expiry::ExpiryRules;
use crate::ipam::Ipam;
use crate::registry::Registry;

pub(super) type Reply<T> = oneshot::Sender<Result<T, ErrorReply>>;

pub(super) enum Request {
    Join(JoinArgs, Reply<NodeRecord>),
    CreateToken(TokenRecord, Reply<()>),
    RevokeToken(String, Reply<()>),
    /// Remove a node; with `true`, only while it is expired (the grace
    /// period's end must not undo an admin's `weft node set` meanwhile).
    RemoveNode(NodeId, bool, Reply<Arc<Peer>>),
    /// Configuration changes the server decided, committed with the batch
    /// they land in.
    Config(Vec<ConfigChange>, Reply<()>),
    Tokens(Reply<Vec<TokenRecord>>),
    /// Every node as stored, expired ones included.
    Nodes(Reply<Vec<NodeRecord>>),
    /// Refresh connected nodes' last-seen times, expire offline ones
    /// (see [`crate::expiry`]); at Unix time `now`.
    Sweep(ExpiryRules, u64, Reply<Swept>),
    /// Everything stored, read between two batches (so consistent on a
    /// lone coordinator).
    Export(Reply<super::etcd::Export>),
    /// Set a node's expiry (`None`: keep it); an expired node comes back.
    SetExpiry(NodeId, Option<NodeExpiry>, u64, Reply<NodeRecord>),
    PolicyHistory(Reply<Vec<AclVersion>>),
    /// Load the whole store again and bring the registry, IPAM and node id
    /// counter up to it (what other replicas wrote).
    Resync(Reply<Resynced>),
    /// Close the backend (releasing its file lock) and stop the thread.
    Shutdown(oneshot::Sender<()>),
}

/// Called by the writer thread after each committed batch that changed
/// nodes, with the registry already updated, so the server can wake
/// sessions.
pub type OnCommit = Box<dyn Fn(&[NodeId]) + Send>;

/// What [`StoreHandle::resync`] found.
#[derive(Debug, Clone, Default)]
pub struct Resynced {
    /// The revision the store was read at (see [`super::Loaded::revision`]).
    pub revision: i64,
    /// The policy, services and routes as stored now.
    pub config: StoredConfig,
    /// Nodes another replica removed (gone from the registry now).
    pub removed: Vec<NodeId>,
    /// Nodes another replica added (in the registry now).
    pub added: Vec<NodeId>,
}

/// What one expiry sweep did.
#[derive(Debug, Clone, Default)]
pub struct Swept {
    /// Nodes that expired now (out of every netmap).
    pub expired: Vec<NodeId>,
    /// Nodes that came back (the cluster's expiry became `never`).
    pub revived: Vec<NodeId>,
    /// Connected nodes whose last-seen time was written.
    pub refreshed: usize,
    /// Expired nodes past their grace period, to be removed (by the
    /// server, which also drops their services and routes).
    pub due: Vec<NodeId>,
}

/// Sends requests to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    tx: std::sync::mpsc::Sender<Request>,
}

pub struct Opened {
    pub handle: StoreHandle,
    pub registry: Arc<RwLock<Registry>>,
    pub ipam_pool: HostSubnet,
    /// The policy, services and routes, as stored.
    pub config: StoredConfig,
    /// The revision everything was read at ([`super::Loaded::revision`]).
    pub revision: i64,
    /// Seconds per commit, observed by the writer thread (for the
    /// coordinator's metrics).
    pub commit_seconds: prometheus_client::metrics::histogram::Histogram,
}

/// Opens (or creates) the redb database at `path` and starts the writer.
pub fn open(
    path: &Path,
    ipam: Ipam,
    epoch: u64,
    on_commit: OnCommit,
) -> Result<Opened, StoreError> {
    open_with(
        super::redb::RedbBackend::open(path)?,
        ipam,
        epoch,
        on_commit,
    )
}

/// Loads every node of `backend` into a fresh registry and IPAM, and starts
/// the writer thread on it.
pub fn open_with<B: StoreBackend>(
    mut backend: B,
    mut ipam: Ipam,
    epoch: u64,
    on_commit: OnCommit,
) -> Result<Opened, StoreError> {
    let loaded = backend.load()?;
    let mut registry = Registry::new(epoch);
    for rec in &loaded.nodes {
        ipam.reserve(rec.subnet)
            .map_err(|e| StoreError::PoolMismatch {
                node: rec.id,
                subnet: rec.subnet,
                reason: e.to_string(),
            })?;
        match rec.expired_at {
            Some(at) => registry.load_retired(rec.to_peer(), rec.created_at, at),
            None => registry.load(rec.to_peer(), rec.created_at),
        }
    }
    ipam.settle();
    let registry = Arc::new(RwLock::new(registry));
    let (tx, rx) = std::sync::mpsc::channel();
    let pool = ipam.pool_subnet();
    let commit_seconds = crate::metrics::commit_histogram();
    let writer = Writer::new(
        backend,
        registry.clone(),
        ipam,
        loaded.next_node_id,
        on_commit,
    )
    .observing(commit_seconds.clone());
    std::thread::Builder::new()
        .name("weft-store".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::Db {
            path: "(writer thread)".into(),
            source: Box::new(e),
        })?;
    Ok(Opened {
        handle: StoreHandle { tx },
        registry,
        ipam_pool: pool,
        config: loaded.config,
        revision: loaded.revision,
        commit_seconds,
    })
}

impl StoreHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, ErrorReply> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| internal("the store is shut down"))?;
        rx.await.map_err(|_| internal("the store stopped"))?
    }

    pub async fn join(&self, args: JoinArgs) -> Result<NodeRecord, ErrorReply> {
        self.call(|r| Request::Join(args, r)).await
    }

    pub async fn create_token(&self, rec: TokenRecord) -> Result<(), ErrorReply> {
        self.call(|r| Request::CreateToken(rec, r)).await
    }

    pub async fn revoke_token(&self, id: String) -> Result<(), ErrorReply> {
        self.call(|r| Request::RevokeToken(id, r)).await
    }

    /// Removes a node; the node as it was.
    pub async fn remove_node(&self, id: NodeId) -> Result<Arc<Peer>, ErrorReply> {
        self.call(|r| Request::RemoveNode(id, false, r)).await
    }

    /// Removes node `id` if it is still expired.
    pub async fn remove_expired_node(&self, id: NodeId) -> Result<Arc<Peer>, ErrorReply> {
        self.call(|r| Request::RemoveNode(id, true, r)).await
    }

    /// Commits configuration changes (all or none) with the next batch.
    pub async fn write(&self, changes: Vec<ConfigChange>) -> Result<(), ErrorReply> {
        self.call(|r| Request::Config(changes, r)).await
    }

    /// Every token, read from the backend.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, ErrorReply> {
        self.call(Request::Tokens).await
    }

    /// Every policy version, oldest first, read from the backend.
    /// Every node as stored, expired ones included.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ErrorReply> {
        self.call(Request::Nodes).await
    }

    /// Everything stored, as one snapshot (see [`crate::backup`]).
    pub async fn export(&self) -> Result<super::etcd::Export, ErrorReply> {
        self.call(Request::Export).await
    }

    pub async fn sweep(&self, rules: ExpiryRules, now: u64) -> Result<Swept, ErrorReply> {
        self.call(|r| Request::Sweep(rules, now, r)).await
    }

    pub async fn set_expiry(
        &self,
        id: NodeId,
        expiry: Option<NodeExpiry>,
        now: u64,
    ) -> Result<NodeRecord, ErrorReply> {
        self.call(|r| Request::SetExpiry(id, expiry, now, r)).await
    }

    pub async fn policy_history(&self) -> Result<Vec<AclVersion>, ErrorReply> {
        self.call(Request::PolicyHistory).await
    }

    /// Loads the store again (on a shared backend: what other replicas
    /// wrote) and updates the registry; the configuration as stored.
    pub async fn resync(&self) -> Result<Resynced, ErrorReply> {
        self.call(Request::Resync).await
    }

    /// Closes the backend once every queued change is written.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}
