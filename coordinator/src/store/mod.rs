//! Durable state: nodes, join tokens, the policy history, services and
//! routes.
//!
//! Three layers, so the rules of the cluster are written once and the
//! storage can be swapped (redb today, etcd for a replicated coordinator):
//!
//! - [`decide`]: what a request is allowed to do (join validation, token
//!   use, subnet and node id choice), as pure functions over in-memory
//!   state. It produces [`Change`]s.
//! - [`StoreBackend`]: persists a batch of decided [`Change`]s atomically,
//!   after checking the preconditions each change was decided under (the
//!   token as it was read, the subnet still free, ...). It holds no rules
//!   of its own. [`redb`] is the on-disk backend, [`memory`] its in-memory
//!   twin for tests, [`etcd`] the replicated one (several coordinators on
//!   one etcd cluster).
//! - [`StoreHandle`] (the front, [`handle`] and [`writer`]): one thread that drains
//!   queued requests, decides them, commits them as one batch (group
//!   commit: one fsync for many joins) and only then updates the in-memory
//!   registry and answers. So an acknowledged join survives `kill -9` at
//!   any instant, and a single-use token is consumed exactly once however
//!   many joins race for it. When a backend reports a conflict, the front
//!   decides the batch again from fresh reads.
//!
//! Endpoints and online state are not stored: hosts report them on every
//! connection, and writing each change durably would put an fsync in the
//! path of every roaming host. Replicas on etcd share them separately, on
//! a lease per replica, not in the transaction log (`server::replica`).

pub mod decide;
pub mod etcd;
mod handle;
pub mod memory;
pub mod redb;
mod writer;
mod writer_expiry;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weft_proto::msg::{AclVersion, ErrorCode, ErrorReply, NodeExpiry, ServiceInfo, TokenInfo};
use weft_proto::policy::Cidr;
use weft_proto::{HostSubnet, NodeId, Peer, WgPublicKey};

pub use handle::{open, open_with, OnCommit, Opened, Resynced, StoreHandle, Swept};

/// A registered node as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: NodeId,
    pub name: String,
    pub public_key: WgPublicKey,
    pub subnet: HostSubnet,
    #[serde(default)]
    pub tags: Vec<String>,
    pub created_at: u64,
    #[serde(default)]
    pub token_id: String,
    /// When a coordinator last saw it connected (Unix seconds; 0: never
    /// recorded). Refreshed by [`crate::expiry`] while it is online.
    #[serde(default)]
    pub last_seen: u64,
    /// How long it may stay offline before it expires.
    #[serde(default)]
    pub expiry: NodeExpiry,
    /// Set when it expired: it is in no netmap, but its subnet, key and name
    /// stay taken until the grace period ends and it is removed.
    #[serde(default)]
    pub expired_at: Option<u64>,
}

impl NodeRecord {
    pub fn to_peer(&self) -> Peer {
        Peer {
            id: self.id,
            name: self.name.clone(),
            public_key: self.public_key,
            subnet: self.subnet,
            endpoints: Vec::new(),
            tags: self.tags.clone(),
            online: false,
            routes: Vec::new(),
        }
    }
}

/// A join token as stored: the secret only as its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub secret_hash: [u8; 32],
    /// Joins left; `None` for unlimited.
    pub uses_left: Option<u32>,
    pub used: u32,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The admin credential that made it (empty in records from before
    /// admin credentials had names).
    #[serde(default)]
    pub created_by: String,
}

impl TokenRecord {
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id.clone(),
            uses_left: self.uses_left,
            used: self.used,
            created_at: self.created_at,
            expires_at: self.expires_at,
            revoked: self.revoked,
            tags: self.tags.clone(),
            created_by: self.created_by.clone(),
        }
    }
}

/// The routes one node advertised and those an admin approved. Which of
/// them are in force is decided in [`crate::cluster`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRecord {
    pub advertised: Vec<Cidr>,
    pub approved: Vec<Cidr>,
}

/// The policy, services and routes as stored: the policy unparsed (parsing
/// it is the cluster's business, [`crate::cluster::ClusterConfig`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredConfig {
    /// The latest policy version, if one was ever set.
    pub policy: Option<AclVersion>,
    pub services: BTreeMap<String, ServiceInfo>,
    pub routes: BTreeMap<NodeId, RouteRecord>,
    /// Named admin credentials (the state dir's `root` one is not stored).
    #[serde(default)]
    pub admins: BTreeMap<String, AdminRecord>,
}

/// A named admin credential as stored: the secret only as its SHA-256.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminRecord {
    pub name: String,
    pub secret_hash: [u8; 32],
    pub created_at: u64,
    pub created_by: String,
    #[serde(default)]
    pub revoked_at: Option<u64>,
}

impl AdminRecord {
    pub fn info(&self) -> weft_proto::msg::AdminInfo {
        weft_proto::msg::AdminInfo {
            name: self.name.clone(),
            created_at: self.created_at,
            created_by: self.created_by.clone(),
            revoked_at: self.revoked_at,
        }
    }
}

/// Everything a backend holds, read at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loaded {
    pub nodes: Vec<NodeRecord>,
    /// The id the next node gets (1 in a new database).
    pub next_node_id: u64,
    pub config: StoredConfig,
    /// The etcd revision everything was read at (0 for a local backend): a
    /// watch from `revision + 1` sees every later change.
    pub revision: i64,
}

/// A join as the store sees it, after the key proof was checked.
#[derive(Debug, Clone)]
pub struct JoinArgs {
    pub token_id: String,
    pub token_secret: [u8; 32],
    pub public_key: WgPublicKey,
    pub hostname: String,
    pub now: u64,
}

/// A decided join: the node to add and the token as it is after this use.
///
/// Preconditions (checked by the backend in the same atomic step): the
/// stored token is still `token_before`; the node id counter is still
/// `node.id` and no node has that id; no node holds `node.subnet`,
/// `node.public_key` or `node.name`. Effects: the node is stored, the
/// token becomes `token_after`, the counter becomes `node.id + 1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub node: NodeRecord,
    /// The expired node with the same key this join replaces: removed by
    /// the change before this one in the batch.
    pub replaces: Option<NodeId>,
    pub token_before: TokenRecord,
    pub token_after: TokenRecord,
}

/// A change to the cluster's configuration, decided by the server (which
/// also validated it). Applied without preconditions except where noted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// A new policy version. Precondition: that version is not stored yet
    /// (versions only grow, and two admins cannot both set version n).
    PutPolicy(AclVersion),
    PutService(ServiceInfo),
    RemoveService(String),
    PutRoutes(NodeId, RouteRecord),
    RemoveRoutes(NodeId),
    /// A new admin credential. Precondition: no credential has its name.
    CreateAdmin(AdminRecord),
    /// A revoked admin credential (replaces the stored one).
    PutAdmin(AdminRecord),
}

/// One decided change with the preconditions it was decided under.
///
/// In a batch, each change's preconditions are checked against the state
/// the changes before it in the same batch left (a second join on a token
/// expects the token as the first join left it). A backend whose
/// transactions compare only against the state before the transaction
/// (etcd) keeps, for each key, the first precondition of the batch and
/// drops the later ones: an earlier change of the same batch wrote exactly
/// the value they expect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Register a node, consume its token use and take its subnet.
    Register(Box<Registration>),
    /// A new token. Precondition: no token has its id.
    CreateToken(TokenRecord),
    /// Replace a token (a revocation). Precondition: the stored token is
    /// still `before`.
    UpdateToken {
        before: TokenRecord,
        after: TokenRecord,
    },
    /// Remove a node (its subnet, key and name become free). Precondition:
    /// the node exists.
    RemoveNode(NodeId),
    /// Replace a node's record with one of the same id, key, name and
    /// subnet (its last-seen time, expiry, expired mark). Precondition:
    /// the stored record is still `before`.
    UpdateNode {
        before: Box<NodeRecord>,
        after: Box<NodeRecord>,
    },
    Config(ConfigChange),
}

impl Change {
    /// What to tell the requester when this change's precondition no longer
    /// held and it cannot simply be decided again.
    pub fn conflict_message(&self) -> &'static str {
        match self {
            Change::Config(ConfigChange::PutPolicy(_)) => {
                "another policy change landed at the same time; run the command again"
            }
            Change::Config(ConfigChange::CreateAdmin(_)) => {
                "an admin credential with that name was created at the same time; pick another name"
            }
            _ => "the cluster changed while this request was handled; run the command again",
        }
    }
}

/// Why a batch was not committed. Either way nothing of it was applied.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The precondition of change `index` of the batch did not hold.
    #[error("change {index} of the batch conflicts: {what}")]
    Conflict { index: usize, what: String },
    #[error(transparent)]
    Failed(#[from] StoreError),
}

/// Persists decided changes. Implementations hold no rules of the cluster:
/// they store, read back, and check each change's preconditions atomically
/// with applying it.
pub trait StoreBackend: Send + 'static {
    /// Everything stored, at start.
    fn load(&mut self) -> Result<Loaded, StoreError>;
    /// One token, as stored now.
    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Every token, as stored now.
    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Every policy version, oldest first.
    fn policy_history(&mut self) -> Result<Vec<AclVersion>, StoreError>;
    /// Applies `changes` in order as one atomic, durable step: when this
    /// returns `Ok` every change is on disk (or replicated); otherwise none
    /// is.
    fn commit(&mut self, changes: &[Change]) -> Result<(), CommitError>;
    /// Whether other processes (coordinator replicas) write to the same
    /// store. Then a conflict may come from a node, subnet or name another
    /// replica took, and the writer loads the store again before deciding
    /// again; otherwise only the tokens are read again.
    fn shared(&self) -> bool {
        false
    }
    /// The most changes one [`StoreBackend::commit`] takes (etcd bounds the
    /// operations of a transaction); the writer commits bigger batches in
    /// several steps, each whole requests.
    fn max_changes_per_commit(&self) -> usize {
        usize::MAX
    }
    /// The revision of the last commit, on a backend that has revisions
    /// (etcd); 0 otherwise.
    fn last_revision(&self) -> i64 {
        0
    }
}

/// How a replica's registry versions follow etcd revisions: once every
/// watched event up to revision `r` is applied, the version moves to at
/// least `r << REVISION_SHIFT`. So any replica's version `v` tells up to
/// which revision (`v >> REVISION_SHIFT`) a host that has it holds every
/// change, and another replica can send it what changed after that
/// revision (`Registry::changes_after_revision`): a host failing over
/// resumes with a delta.
pub const REVISION_SHIFT: u32 = 20;

/// The registry version a change at etcd revision `r` is logged after.
pub fn revision_version(r: i64) -> u64 {
    u64::try_from(r.max(0)).unwrap_or(0) << REVISION_SHIFT
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}; check the disk and the state dir's permissions")]
    Db {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The etcd cluster: `reason` says what happened, `hint` what to do.
    #[error("etcd at {endpoints} {reason}; {hint}")]
    Etcd {
        endpoints: String,
        reason: String,
        hint: &'static str,
    },
    #[error("stored record is corrupt: {0}; restore the state dir from a backup, or move it away to start a new cluster")]
    Corrupt(String),
    #[error("node {node} has subnet {subnet}, which does not fit the configured pool: {reason}; start the coordinator with the --pool and --subnet-prefix it was first started with")]
    PoolMismatch {
        node: NodeId,
        subnet: HostSubnet,
        reason: String,
    },
}

/// A refusal with a message for the user.
pub fn refuse(code: ErrorCode, message: impl Into<String>) -> ErrorReply {
    ErrorReply {
        code,
        message: message.into(),
    }
}

pub(crate) fn internal(e: impl std::fmt::Display) -> ErrorReply {
    refuse(
        ErrorCode::Internal,
        format!("the coordinator could not save the change ({e}); try again, and check the coordinator's log and disk"),
    )
}
