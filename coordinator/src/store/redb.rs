//! The redb backend: one file in the state dir, written by the store's one
//! writer thread, each batch one write transaction committed with fsync.
//!
//! The schema is the one every earlier version wrote, byte for byte (the
//! same tables, keys and MessagePack encodings), so an existing state dir
//! opens unchanged; `tests/fixtures/main-format.redb` is such a file.
//!
//! Preconditions are checked inside the write transaction, which redb
//! makes exclusive. Those about the stored token, the node id counter and
//! the policy version read the tables; those about subnets, keys and names
//! (held by no node) use an index of the nodes table built at open and
//! kept with every commit, so a join costs no scan.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use redb::{
    Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle as _,
    WriteTransaction,
};
use serde::{Deserialize, Serialize};
use weft_proto::msg::AclVersion;
use weft_proto::{HostSubnet, NodeId, WgPublicKey};

use super::{
    Change, CommitError, ConfigChange, Loaded, NodeRecord, StoreBackend, StoreError, StoredConfig,
    TokenRecord,
};

/// Node id -> [`NodeRecord`].
const NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("nodes");
/// Token id -> [`TokenRecord`].
const TOKENS: TableDefinition<&str, &[u8]> = TableDefinition::new("tokens");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const NEXT_NODE_ID: &str = "next_node_id";
/// Policy version -> [`AclVersion`]. Versions start at 1 and only grow.
const POLICY: TableDefinition<u64, &[u8]> = TableDefinition::new("policy_history");
/// Service name -> `ServiceInfo`.
const SERVICES: TableDefinition<&str, &[u8]> = TableDefinition::new("services");
/// Node id -> `RouteRecord`.
const ROUTES: TableDefinition<u64, &[u8]> = TableDefinition::new("routes");
/// Named admin credentials by name: `AdminRecord`.
const ADMINS: TableDefinition<&str, &[u8]> = TableDefinition::new("admins");

/// What the nodes table holds, for the precondition checks.
#[derive(Debug, Default)]
struct Index {
    subnets: HashSet<HostSubnet>,
    keys: HashSet<WgPublicKey>,
    names: HashMap<String, NodeId>,
}

impl Index {
    fn add(&mut self, n: &NodeRecord) {
        self.subnets.insert(n.subnet);
        self.keys.insert(n.public_key);
        self.names.insert(n.name.clone(), n.id);
    }

    fn remove(&mut self, n: &NodeRecord) {
        self.subnets.remove(&n.subnet);
        self.keys.remove(&n.public_key);
        if self.names.get(&n.name) == Some(&n.id) {
            self.names.remove(&n.name);
        }
    }
}

pub struct RedbBackend {
    db: Database,
    path: String,
    index: Index,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

fn decode<T: for<'a> Deserialize<'a>>(what: &str, b: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(b).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

impl RedbBackend {
    /// Opens (or creates) the database and indexes its nodes.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let mut me = Self {
            db: create(path).map_err(|e| db_err(path, e))?,
            path: path.display().to_string(),
            index: Index::default(),
        };
        let w = me.db.begin_write().map_err(|e| me.err(e))?;
        for t in [NODES, POLICY, ROUTES] {
            w.open_table(t).map_err(|e| me.err(e))?;
        }
        for t in [TOKENS, SERVICES, ADMINS] {
            w.open_table(t).map_err(|e| me.err(e))?;
        }
        w.open_table(META).map_err(|e| me.err(e))?;
        w.commit().map_err(|e| me.err(e))?;
        for n in me.nodes()? {
            me.index.add(&n);
        }
        Ok(me)
    }

    /// Writes everything `data` holds into this (empty) database in one
    /// transaction: a restored backup ([`crate::backup`]).
    pub fn import(&mut self, data: &super::etcd::Export) -> Result<(), StoreError> {
        let w = self.db.begin_write().map_err(|e| self.err(e))?;
        {
            let mut nodes = w.open_table(NODES).map_err(|e| self.err(e))?;
            for n in &data.loaded.nodes {
                nodes
                    .insert(n.id.0, encode(n)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut tokens = w.open_table(TOKENS).map_err(|e| self.err(e))?;
            for t in &data.tokens {
                tokens
                    .insert(t.id.as_str(), encode(t)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut meta = w.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(NEXT_NODE_ID, data.loaded.next_node_id)
                .map_err(|e| self.err(e))?;
            let mut policy = w.open_table(POLICY).map_err(|e| self.err(e))?;
            let latest = data.loaded.config.policy.iter();
            for v in data.policy_history.iter().chain(latest) {
                policy
                    .insert(v.version, encode(v)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut services = w.open_table(SERVICES).map_err(|e| self.err(e))?;
            for s in data.loaded.config.services.values() {
                services
                    .insert(s.name.as_str(), encode(s)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut admins = w.open_table(ADMINS).map_err(|e| self.err(e))?;
            for a in data.loaded.config.admins.values() {
                admins
                    .insert(a.name.as_str(), encode(a)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            let mut routes = w.open_table(ROUTES).map_err(|e| self.err(e))?;
            for (id, r) in &data.loaded.config.routes {
                routes
                    .insert(id.0, encode(r)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        w.commit().map_err(|e| self.err(e))?;
        for n in &data.loaded.nodes {
            self.index.add(n);
        }
        Ok(())
    }

    fn err(&self, e: impl Into<redb::Error>) -> StoreError {
        db_err(Path::new(&self.path), e)
    }

    fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(NODES).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (k, v) = item.map_err(|e| self.err(e))?;
            out.push(decode(&format!("node {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// Every value of a table, decoded, in key order.
    fn all<K: redb::Key + 'static, T: for<'a> Deserialize<'a>>(
        &self,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<Vec<T>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(table).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for item in t.iter().map_err(|e| self.err(e))? {
            let (_, v) = item.map_err(|e| self.err(e))?;
            out.push(decode(table.name(), v.value())?);
        }
        Ok(out)
    }

    /// Applies the batch inside `w`; changes to the index are recorded in
    /// `undo` so a failed batch leaves the index as it was.
    fn apply(
        &mut self,
        w: &WriteTransaction,
        changes: &[Change],
        undo: &mut Vec<Undo>,
    ) -> Result<(), CommitError> {
        let path = self.path.clone();
        let e = |e: redb::Error| CommitError::Failed(db_err(Path::new(&path), e));
        let conflict = |index: usize, what: String| Err(CommitError::Conflict { index, what });
        let mut nodes = w.open_table(NODES).map_err(|x| e(x.into()))?;
        let mut tokens = w.open_table(TOKENS).map_err(|x| e(x.into()))?;
        let mut meta = w.open_table(META).map_err(|x| e(x.into()))?;
        let mut policy = w.open_table(POLICY).map_err(|x| e(x.into()))?;
        let mut services = w.open_table(SERVICES).map_err(|x| e(x.into()))?;
        let mut routes = w.open_table(ROUTES).map_err(|x| e(x.into()))?;
        for (i, change) in changes.iter().enumerate() {
            match change {
                Change::Register(r) => {
                    let n = &r.node;
                    let stored = stored_token(&tokens, &r.token_before.id, &path)?;
                    if stored.as_ref() != Some(&r.token_before) {
                        return conflict(i, format!("token {} changed", r.token_before.id));
                    }
                    let next = meta
                        .get(NEXT_NODE_ID)
                        .map_err(|x| e(x.into()))?
                        .map_or(1, |g| g.value());
                    if next != n.id.0 || nodes.get(n.id.0).map_err(|x| e(x.into()))?.is_some() {
                        return conflict(i, format!("node id {} is taken", n.id));
                    }
                    if self.index.subnets.contains(&n.subnet) {
                        return conflict(i, format!("subnet {} is taken", n.subnet));
                    }
                    if self.index.keys.contains(&n.public_key)
                        || self.index.names.contains_key(&n.name)
                    {
                        return conflict(i, format!("key or name of {} is taken", n.name));
                    }
                    nodes
                        .insert(n.id.0, encode(n)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                    tokens
                        .insert(
                            r.token_after.id.as_str(),
                            encode(&r.token_after)?.as_slice(),
                        )
                        .map_err(|x| e(x.into()))?;
                    meta.insert(NEXT_NODE_ID, n.id.0 + 1)
                        .map_err(|x| e(x.into()))?;
                    self.index.add(n);
                    undo.push(Undo::Added(n.clone()));
                }
                Change::CreateToken(t) => {
                    if tokens
                        .get(t.id.as_str())
                        .map_err(|x| e(x.into()))?
                        .is_some()
                    {
                        return conflict(i, format!("token {} exists", t.id));
                    }
                    tokens
                        .insert(t.id.as_str(), encode(t)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::UpdateToken { before, after } => {
                    let stored = stored_token(&tokens, &before.id, &path)?;
                    if stored.as_ref() != Some(before) {
                        return conflict(i, format!("token {} changed", before.id));
                    }
                    tokens
                        .insert(after.id.as_str(), encode(after)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::RemoveNode(id) => {
                    let removed = nodes
                        .remove(id.0)
                        .map_err(|x| e(x.into()))?
                        .map(|g| g.value().to_vec());
                    let Some(bytes) = removed else {
                        return conflict(i, format!("node {id} is gone"));
                    };
                    let n: NodeRecord = decode(&format!("node {id}"), &bytes)?;
                    self.index.remove(&n);
                    undo.push(Undo::Removed(n));
                }
                Change::UpdateNode { before, after } => {
                    let id = before.id;
                    let stored = nodes
                        .get(id.0)
                        .map_err(|x| e(x.into()))?
                        .map(|g| g.value().to_vec());
                    let same = match stored {
                        Some(bytes) => {
                            decode::<NodeRecord>(&format!("node {id}"), &bytes)? == **before
                        }
                        None => false,
                    };
                    if !same {
                        return conflict(i, format!("node {id} changed"));
                    }
                    nodes
                        .insert(id.0, encode(&**after)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::Config(ConfigChange::PutPolicy(v)) => {
                    if policy.get(v.version).map_err(|x| e(x.into()))?.is_some() {
                        return conflict(i, format!("policy version {} exists", v.version));
                    }
                    policy
                        .insert(v.version, encode(v)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::Config(ConfigChange::PutService(s)) => {
                    services
                        .insert(s.name.as_str(), encode(s)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::Config(ConfigChange::RemoveService(name)) => {
                    services.remove(name.as_str()).map_err(|x| e(x.into()))?;
                }
                Change::Config(ConfigChange::PutRoutes(id, r)) => {
                    routes
                        .insert(id.0, encode(r)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
                Change::Config(ConfigChange::RemoveRoutes(id)) => {
                    routes.remove(id.0).map_err(|x| e(x.into()))?;
                }
                Change::Config(ConfigChange::CreateAdmin(a) | ConfigChange::PutAdmin(a)) => {
                    let mut admins = w.open_table(ADMINS).map_err(|x| e(x.into()))?;
                    let create = matches!(change, Change::Config(ConfigChange::CreateAdmin(_)));
                    if create
                        && admins
                            .get(a.name.as_str())
                            .map_err(|x| e(x.into()))?
                            .is_some()
                    {
                        return conflict(i, format!("admin credential {} exists", a.name));
                    }
                    admins
                        .insert(a.name.as_str(), encode(a)?.as_slice())
                        .map_err(|x| e(x.into()))?;
                }
            }
        }
        Ok(())
    }
}

/// An index change of the current batch, undone if it is not committed.
enum Undo {
    Added(NodeRecord),
    Removed(NodeRecord),
}

impl StoreBackend for RedbBackend {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let mut config = StoredConfig::default();
        let next_node_id = {
            let r = self.db.begin_read().map_err(|e| self.err(e))?;
            let meta = r.open_table(META).map_err(|e| self.err(e))?;
            let next = meta
                .get(NEXT_NODE_ID)
                .map_err(|e| self.err(e))?
                .map_or(1, |g| g.value());
            let policy = r.open_table(POLICY).map_err(|e| self.err(e))?;
            if let Some((_, v)) = policy.last().map_err(|e| self.err(e))? {
                config.policy = Some(decode("policy", v.value())?);
            }
            let routes = r.open_table(ROUTES).map_err(|e| self.err(e))?;
            for item in routes.iter().map_err(|e| self.err(e))? {
                let (k, v) = item.map_err(|e| self.err(e))?;
                config
                    .routes
                    .insert(NodeId(k.value()), decode("routes", v.value())?);
            }
            next
        };
        for s in self.all::<&str, weft_proto::msg::ServiceInfo>(SERVICES)? {
            config.services.insert(s.name.clone(), s);
        }
        for a in self.all::<&str, super::AdminRecord>(ADMINS)? {
            config.admins.insert(a.name.clone(), a);
        }
        Ok(Loaded {
            nodes: self.nodes()?,
            next_node_id,
            config,
            revision: 0,
        })
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let r = self.db.begin_read().map_err(|e| self.err(e))?;
        let t = r.open_table(TOKENS).map_err(|e| self.err(e))?;
        let stored = t.get(id).map_err(|e| self.err(e))?;
        stored.map(|g| decode("token", g.value())).transpose()
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        self.all(TOKENS)
    }

    fn policy_history(&mut self) -> Result<Vec<AclVersion>, StoreError> {
        self.all(POLICY)
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), CommitError> {
        let w = self
            .db
            .begin_write()
            .map_err(|e| CommitError::Failed(self.err(e)))?;
        let mut undo = Vec::new();
        let applied = self.apply(&w, changes, &mut undo);
        let result =
            applied.and_then(|()| w.commit().map_err(|e| CommitError::Failed(self.err(e))));
        if result.is_err() {
            for u in undo.into_iter().rev() {
                match u {
                    Undo::Added(n) => self.index.remove(&n),
                    Undo::Removed(n) => self.index.add(&n),
                }
            }
        }
        result
    }
}

/// A token as stored in the table being written.
fn stored_token(
    tokens: &Table<&str, &[u8]>,
    id: &str,
    path: &str,
) -> Result<Option<TokenRecord>, CommitError> {
    let got = tokens.get(id).map_err(|e| db_err(Path::new(path), e))?;
    Ok(got
        .map(|g| decode(&format!("token {id}"), g.value()))
        .transpose()?)
}

fn db_err(path: &Path, e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db {
        path: path.display().to_string(),
        source: Box::new(e.into()),
    }
}

/// Creates the file owner-only before redb opens it (redb would use the
/// umask), makes it so if an older version left it readable, and opens it.
fn create(path: &Path) -> Result<Database, redb::Error> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|_| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)))?;
    Ok(Database::create(path)?)
}

#[cfg(test)]
#[path = "redb_tests.rs"]
mod tests;
