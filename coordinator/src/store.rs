//! Durable state: nodes and tokens in one redb file, written by one thread.
//!
//! Every change goes through [`StoreHandle`] to the writer thread, which
//! drains whatever requests are waiting, applies them in one write
//! transaction (group commit), commits with fsync and only then updates the
//! in-memory registry and answers. So an acknowledged join or token use
//! survives `kill -9` at any instant, and a single-use token is consumed
//! exactly once however many joins race for it: they are serialized here.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use weft_proto::auth::{ct_eq32, secret_hash};
use weft_proto::msg::{ErrorCode, ErrorReply, TokenInfo};
use weft_proto::{HostSubnet, NodeId, Peer, WgPublicKey};

use crate::ipam::Ipam;
use crate::registry::Registry;

const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_NODE_ID: &str = "next_node_id";

/// Most requests applied in one transaction.
const MAX_BATCH: usize = 512;

/// A registered node as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
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
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Db {
        path: String,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("stored record is corrupt: {0}")]
    Corrupt(String),
    #[error("node {node} has subnet {subnet}, which does not fit the configured pool: {reason}; start the coordinator with the --pool and --subnet-prefix it was first started with")]
    PoolMismatch {
        node: NodeId,
        subnet: HostSubnet,
        reason: String,
    },
}

fn db_err(path: &Path) -> impl Fn(redb::Error) -> StoreError + '_ {
    move |e| StoreError::Db {
        path: path.display().to_string(),
        source: Box::new(e),
    }
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(v).unwrap_or_default()
}

pub(crate) fn decode<T: for<'a> Deserialize<'a>>(b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Corrupt(e.to_string()))
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

enum Op {
    Join(JoinArgs, oneshot::Sender<Result<NodeRecord, ErrorReply>>),
    CreateToken(TokenRecord, oneshot::Sender<Result<(), ErrorReply>>),
    RevokeToken(String, oneshot::Sender<Result<(), ErrorReply>>),
    RemoveNode(NodeId, oneshot::Sender<Result<NodeRecord, ErrorReply>>),
    ListTokens(oneshot::Sender<Result<Vec<TokenRecord>, ErrorReply>>),
    /// A write of the cluster's configuration (policy, services, routes),
    /// committed with the batch it lands in.
    Write(WriteFn, oneshot::Sender<Result<(), ErrorReply>>),
    /// A read on the writer thread (it owns the database).
    Read(Box<dyn FnOnce(&Database) + Send>),
    /// Close the database (releasing its file lock) and stop the thread.
    Shutdown(oneshot::Sender<()>),
}

impl Op {
    fn fail(self, e: ErrorReply) {
        match self {
            Op::Join(_, r) => drop(r.send(Err(e))),
            Op::CreateToken(_, r) => drop(r.send(Err(e))),
            Op::RevokeToken(_, r) => drop(r.send(Err(e))),
            Op::RemoveNode(_, r) => drop(r.send(Err(e))),
            Op::ListTokens(r) => drop(r.send(Err(e))),
            Op::Write(_, r) => drop(r.send(Err(e))),
            Op::Read(_) => {}
            Op::Shutdown(r) => drop(r.send(())),
        }
    }
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

/// A change to tables other than nodes and tokens. `Ok(Err(refusal))`
/// refuses the request without failing the batch.
pub type WriteFn =
    Box<dyn FnOnce(&redb::WriteTransaction) -> Result<Result<(), ErrorReply>, redb::Error> + Send>;

/// Sends changes to the writer thread. Cheap to clone.
#[derive(Clone)]
pub struct StoreHandle {
    tx: std::sync::mpsc::Sender<Op>,
}

/// Called by the writer thread after each committed batch, with the registry
/// already updated, so the server can wake sessions.
pub type OnCommit = Box<dyn Fn(&[NodeId]) + Send>;

pub struct Opened {
    pub handle: StoreHandle,
    pub registry: Arc<RwLock<Registry>>,
    pub ipam_pool: HostSubnet,
    /// The policy, services and routes, as stored.
    pub cluster: crate::cluster::ClusterConfig,
}

/// Opens (or creates) the database, loads every node into a fresh registry
/// and IPAM, and starts the writer thread.
pub fn open(
    path: &Path,
    mut ipam: Ipam,
    epoch: u64,
    on_commit: OnCommit,
) -> Result<Opened, StoreError> {
    let err = db_err(path);
    // The file is created owner-only before redb opens it (redb would use
    // the umask), and made so if an older version left it readable.
    {
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))
            .map_err(|e| err(e.into()))?;
    }
    let db = Database::create(path).map_err(|e| err(e.into()))?;
    let mut registry = Registry::new(epoch);
    {
        let w = db.begin_write().map_err(|e| err(e.into()))?;
        {
            w.open_table(NODES).map_err(|e| err(e.into()))?;
            w.open_table(TOKENS).map_err(|e| err(e.into()))?;
            w.open_table(META).map_err(|e| err(e.into()))?;
            crate::cluster::create_tables(&w).map_err(&err)?;
        }
        w.commit().map_err(|e| err(e.into()))?;
        let r = db.begin_read().map_err(|e| err(e.into()))?;
        let nodes = r.open_table(NODES).map_err(|e| err(e.into()))?;
        for item in nodes.iter().map_err(|e| err(e.into()))? {
            let (_, v) = item.map_err(|e| err(e.into()))?;
            let rec: NodeRecord = decode(v.value())?;
            ipam.reserve(rec.subnet)
                .map_err(|e| StoreError::PoolMismatch {
                    node: rec.id,
                    subnet: rec.subnet,
                    reason: e.to_string(),
                })?;
            registry.load(rec.to_peer(), rec.created_at);
        }
        ipam.settle();
    }
    let cluster = {
        let r = db.begin_read().map_err(|e| err(e.into()))?;
        crate::cluster::load(&r, &err)?
    };
    let registry = Arc::new(RwLock::new(registry));
    let (tx, rx) = std::sync::mpsc::channel();
    let pool = ipam.pool_subnet();
    let writer = Writer {
        db,
        registry: registry.clone(),
        ipam,
        on_commit,
        path: path.display().to_string(),
    };
    std::thread::Builder::new()
        .name("weft-store".into())
        .spawn(move || writer.run(rx))
        .map_err(|e| StoreError::Corrupt(format!("cannot start writer thread: {e}")))?;
    Ok(Opened {
        handle: StoreHandle { tx },
        registry,
        ipam_pool: pool,
        cluster,
    })
}

impl StoreHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, ErrorReply>>) -> Op,
    ) -> Result<T, ErrorReply> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .map_err(|_| internal("the store is shut down"))?;
        rx.await.map_err(|_| internal("the store stopped"))?
    }

    pub async fn join(&self, args: JoinArgs) -> Result<NodeRecord, ErrorReply> {
        self.call(|r| Op::Join(args, r)).await
    }

    pub async fn create_token(&self, rec: TokenRecord) -> Result<(), ErrorReply> {
        self.call(|r| Op::CreateToken(rec, r)).await
    }

    pub async fn revoke_token(&self, id: String) -> Result<(), ErrorReply> {
        self.call(|r| Op::RevokeToken(id, r)).await
    }

    pub async fn remove_node(&self, id: NodeId) -> Result<NodeRecord, ErrorReply> {
        self.call(|r| Op::RemoveNode(id, r)).await
    }

    /// Runs `f` in the next write transaction.
    pub async fn write(&self, f: WriteFn) -> Result<(), ErrorReply> {
        self.call(|r| Op::Write(f, r)).await
    }

    /// Runs `f` against the database on the writer thread.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, ErrorReply> + Send + 'static,
    ) -> Result<T, ErrorReply> {
        let (tx, rx) = oneshot::channel();
        let op = Op::Read(Box::new(move |db| drop(tx.send(f(db)))));
        self.tx
            .send(op)
            .map_err(|_| internal("the store is shut down"))?;
        rx.await.map_err(|_| internal("the store stopped"))?
    }

    /// Every token, read from the database.
    pub async fn tokens(&self) -> Result<Vec<TokenRecord>, ErrorReply> {
        self.call(Op::ListTokens).await
    }

    /// Closes the database once every queued change is written.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Op::Shutdown(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn list_tokens(db: &Database) -> Result<Vec<TokenRecord>, ErrorReply> {
    let r = db.begin_read().map_err(internal)?;
    let t = r.open_table(TOKENS).map_err(internal)?;
    let mut out = Vec::new();
    for item in t.iter().map_err(internal)? {
        let (_, v) = item.map_err(internal)?;
        out.push(decode(v.value()).map_err(internal)?);
    }
    Ok(out)
}

struct Writer {
    db: Database,
    registry: Arc<RwLock<Registry>>,
    ipam: Ipam,
    on_commit: OnCommit,
    path: String,
}

/// The effect of one applied request, kept until the commit is durable.
enum Effect {
    Joined(NodeRecord, oneshot::Sender<Result<NodeRecord, ErrorReply>>),
    Done(oneshot::Sender<Result<(), ErrorReply>>),
    Removed(NodeRecord, oneshot::Sender<Result<NodeRecord, ErrorReply>>),
    Refused(Op, ErrorReply),
}

impl Writer {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Op>) {
        let mut stop = None;
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(op) = next.take() {
                match op {
                    Op::ListTokens(r) => drop(r.send(list_tokens(&self.db))),
                    Op::Read(f) => f(&self.db),
                    Op::Shutdown(r) => stop = Some(r),
                    op => batch.push(op),
                }
                if stop.is_some() || batch.len() >= MAX_BATCH {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !batch.is_empty() {
                self.apply_batch(batch);
            }
            if stop.is_some() {
                break;
            }
        }
        drop(self);
        if let Some(r) = stop {
            let _ = r.send(());
        }
    }

    fn apply_batch(&mut self, batch: Vec<Op>) {
        let txn = match self.db.begin_write() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(db = %self.path, error = %e, "cannot begin write transaction");
                // Back off so a broken disk does not spin.
                std::thread::sleep(Duration::from_millis(50));
                for op in batch {
                    op.fail(internal(&e));
                }
                return;
            }
        };
        let mut effects = Vec::with_capacity(batch.len());
        let mut allocated = Vec::new();
        let mut batch_keys = HashSet::new();
        let mut batch_names = HashSet::new();
        let mut failure: Option<String> = None;
        for op in batch {
            if failure.is_some() {
                effects.push(Effect::Refused(
                    op,
                    internal("an earlier change in its batch failed"),
                ));
                continue;
            }
            let res = self.apply_one(&txn, op, &mut allocated, &mut batch_keys, &mut batch_names);
            match res {
                Ok(effect) => effects.push(effect),
                Err((op, e)) => {
                    failure = Some(e.clone());
                    effects.push(Effect::Refused(op, internal(e)));
                }
            }
        }
        // A batch of nothing but refusals (bogus joins, say) writes nothing:
        // no commit, no fsync.
        if failure.is_none() && effects.iter().all(|e| matches!(e, Effect::Refused(..))) {
            let _ = txn.abort();
            for eff in effects {
                if let Effect::Refused(op, e) = eff {
                    op.fail(e);
                }
            }
            return;
        }
        let committed = match failure {
            Some(_) => {
                drop(txn);
                false
            }
            None => match txn.commit() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!(db = %self.path, error = %e, "commit failed");
                    false
                }
            },
        };
        if !committed {
            for s in allocated {
                self.ipam.release(s);
            }
            for eff in effects {
                match eff {
                    Effect::Joined(_, r) => drop(r.send(Err(internal("commit failed")))),
                    Effect::Done(r) => drop(r.send(Err(internal("commit failed")))),
                    Effect::Removed(_, r) => drop(r.send(Err(internal("commit failed")))),
                    Effect::Refused(op, e) => op.fail(e),
                }
            }
            return;
        }
        let mut changed = Vec::new();
        {
            let mut reg = match self.registry.write() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            for eff in &effects {
                match eff {
                    Effect::Joined(rec, _) => {
                        reg.insert(rec.to_peer(), rec.created_at);
                        changed.push(rec.id);
                    }
                    Effect::Removed(rec, _) => {
                        reg.remove(rec.id);
                        self.ipam.release(rec.subnet);
                        changed.push(rec.id);
                    }
                    _ => {}
                }
            }
        }
        if !changed.is_empty() {
            (self.on_commit)(&changed);
        }
        for eff in effects {
            match eff {
                Effect::Joined(rec, r) => drop(r.send(Ok(rec))),
                Effect::Done(r) => drop(r.send(Ok(()))),
                Effect::Removed(rec, r) => drop(r.send(Ok(rec))),
                Effect::Refused(op, e) => op.fail(e),
            }
        }
    }

    /// Applies one request inside the batch's transaction. `Err` means the
    /// database failed and the whole batch must be abandoned.
    #[expect(clippy::result_large_err, reason = "moved once per request, not hot")]
    fn apply_one(
        &mut self,
        txn: &redb::WriteTransaction,
        op: Op,
        allocated: &mut Vec<HostSubnet>,
        batch_keys: &mut HashSet<WgPublicKey>,
        batch_names: &mut HashSet<String>,
    ) -> Result<Effect, (Op, String)> {
        match op {
            Op::Join(args, reply) => {
                match self.join(txn, &args, allocated, batch_keys, batch_names) {
                    Ok(Ok(rec)) => Ok(Effect::Joined(rec, reply)),
                    Ok(Err(refusal)) => Ok(Effect::Refused(Op::Join(args, reply), refusal)),
                    Err(e) => Err((Op::Join(args, reply), e)),
                }
            }
            Op::CreateToken(rec, reply) => {
                let r = (|| -> Result<(), redb::Error> {
                    let mut t = txn.open_table(TOKENS)?;
                    t.insert(rec.id.as_str(), encode(&rec).as_slice())?;
                    Ok(())
                })();
                match r {
                    Ok(()) => Ok(Effect::Done(reply)),
                    Err(e) => Err((Op::CreateToken(rec, reply), e.to_string())),
                }
            }
            Op::RevokeToken(id, reply) => {
                let r = (|| -> Result<Option<()>, redb::Error> {
                    let mut t = txn.open_table(TOKENS)?;
                    let Some(bytes) = t.get(id.as_str())?.map(|g| g.value().to_vec()) else {
                        return Ok(None);
                    };
                    let mut rec: TokenRecord = rmp_serde::from_slice(&bytes)
                        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                    rec.revoked = true;
                    t.insert(id.as_str(), encode(&rec).as_slice())?;
                    Ok(Some(()))
                })();
                match r {
                    Ok(Some(())) => Ok(Effect::Done(reply)),
                    Ok(None) => Ok(Effect::Refused(
                        Op::RevokeToken(id.clone(), reply),
                        refuse(
                            ErrorCode::NotFound,
                            format!("no token with id {id}; see the ids with `weft token list`"),
                        ),
                    )),
                    Err(e) => Err((Op::RevokeToken(id, reply), e.to_string())),
                }
            }
            Op::Write(f, reply) => match f(txn) {
                Ok(Ok(())) => Ok(Effect::Done(reply)),
                Ok(Err(refusal)) => Ok(Effect::Refused(
                    Op::Write(Box::new(|_| Ok(Ok(()))), reply),
                    refusal,
                )),
                Err(e) => Err((Op::Write(Box::new(|_| Ok(Ok(()))), reply), e.to_string())),
            },
            op @ (Op::ListTokens(_) | Op::Read(_) | Op::Shutdown(_)) => {
                Ok(Effect::Refused(op, internal("not a write request")))
            }
            Op::RemoveNode(id, reply) => {
                let r = (|| -> Result<Option<NodeRecord>, redb::Error> {
                    let mut t = txn.open_table(NODES)?;
                    let Some(bytes) = t.remove(id.0)?.map(|g| g.value().to_vec()) else {
                        return Ok(None);
                    };
                    let rec: NodeRecord = rmp_serde::from_slice(&bytes)
                        .map_err(|e| redb::Error::Corrupted(e.to_string()))?;
                    Ok(Some(rec))
                })();
                match r {
                    Ok(Some(rec)) => Ok(Effect::Removed(rec, reply)),
                    Ok(None) => Ok(Effect::Refused(
                        Op::RemoveNode(id, reply),
                        refuse(
                            ErrorCode::NotFound,
                            format!("no node with id {id}; see the nodes with `weft node list`"),
                        ),
                    )),
                    Err(e) => Err((Op::RemoveNode(id, reply), e.to_string())),
                }
            }
        }
    }

    /// Validates and records one join. The outer `Err` is a database failure;
    /// the inner one a refusal to send to the host.
    fn join(
        &mut self,
        txn: &redb::WriteTransaction,
        args: &JoinArgs,
        allocated: &mut Vec<HostSubnet>,
        batch_keys: &mut HashSet<WgPublicKey>,
        batch_names: &mut HashSet<String>,
    ) -> Result<Result<NodeRecord, ErrorReply>, String> {
        let mut tokens = txn.open_table(TOKENS).map_err(|e| e.to_string())?;
        let stored = tokens
            .get(args.token_id.as_str())
            .map_err(|e| e.to_string())?
            .map(|g| g.value().to_vec());
        let forged = || {
            refuse(
                ErrorCode::TokenInvalid,
                "this coordinator does not recognise the join token (unknown id or wrong secret); check that the whole token was copied, or create a new one with `weft token create`",
            )
        };
        let Some(bytes) = stored else {
            return Ok(Err(forged()));
        };
        let mut token: TokenRecord = decode(&bytes).map_err(|e| e.to_string())?;
        if !ct_eq32(&token.secret_hash, &secret_hash(&args.token_secret)) {
            return Ok(Err(forged()));
        }
        if token.revoked {
            return Ok(Err(refuse(
                ErrorCode::TokenRevoked,
                format!(
                    "join token {} was revoked; create a new one with `weft token create`",
                    token.id
                ),
            )));
        }
        if let Some(exp) = token.expires_at {
            if args.now >= exp {
                return Ok(Err(refuse(
                    ErrorCode::TokenExpired,
                    format!(
                        "join token {} expired at {}; create a new one with `weft token create`",
                        token.id,
                        crate::fmt_time(exp)
                    ),
                )));
            }
        }
        if token.uses_left == Some(0) {
            return Ok(Err(refuse(
                ErrorCode::TokenUsedUp,
                format!(
                    "join token {} is used up (it allowed {} join{}); create a new one with `weft token create`",
                    token.id,
                    token.used,
                    if token.used == 1 { "" } else { "s" }
                ),
            )));
        }
        let (key_owner, name) = {
            let reg = match self.registry.read() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            // Names are compared after normalisation, against every node
            // and every join of this batch.
            let name =
                crate::names::unique_name(&crate::names::sanitize_hostname(&args.hostname), |n| {
                    reg.name_taken(n) || batch_names.contains(n)
                });
            (reg.by_key(&args.public_key), name)
        };
        if let Some(owner) = key_owner {
            return Ok(Err(refuse(
                ErrorCode::KeyInUse,
                format!("this WireGuard key is already registered as node {owner}; reconnect instead of joining, or remove the node with `weft node remove {owner}` first"),
            )));
        }
        if !batch_keys.insert(args.public_key) {
            return Ok(Err(refuse(
                ErrorCode::KeyInUse,
                "this WireGuard key is joining twice at once; wait for the first join to finish",
            )));
        }
        let Some(subnet) = self.ipam.allocate() else {
            batch_keys.remove(&args.public_key);
            return Ok(Err(refuse(
                ErrorCode::PoolExhausted,
                format!(
                    "the address pool {} is exhausted (all {} host subnets are taken); remove unused nodes with `weft node remove`, or restart the coordinator with a larger --pool",
                    self.ipam.pool(),
                    self.ipam.capacity()
                ),
            )));
        };
        allocated.push(subnet);
        let mut meta = txn.open_table(META).map_err(|e| e.to_string())?;
        let id = meta
            .get(NEXT_NODE_ID)
            .map_err(|e| e.to_string())?
            .map_or(1, |g| g.value());
        meta.insert(NEXT_NODE_ID, id + 1)
            .map_err(|e| e.to_string())?;
        batch_names.insert(name.clone());
        if let Some(n) = token.uses_left.as_mut() {
            *n -= 1;
        }
        token.used += 1;
        tokens
            .insert(token.id.as_str(), encode(&token).as_slice())
            .map_err(|e| e.to_string())?;
        let rec = NodeRecord {
            id: NodeId(id),
            name,
            public_key: args.public_key,
            subnet,
            tags: token.tags.clone(),
            created_at: args.now,
            token_id: token.id.clone(),
        };
        let mut nodes = txn.open_table(NODES).map_err(|e| e.to_string())?;
        nodes
            .insert(id, encode(&rec).as_slice())
            .map_err(|e| e.to_string())?;
        Ok(Ok(rec))
    }
}
