//! One batch of changes as one etcd transaction.
//!
//! Each precondition becomes a compare:
//!
//! - the token as read (a join, a revocation): `mod_revision` equal to the
//!   one this backend read it at (or, for a token it did not read, its
//!   value equal to the expected record's encoding);
//! - the node id counter still `node.id`: its value equal to that id, or
//!   the key absent (`create_revision == 0`) for the first node;
//! - node id, subnet, key and name held by no node: `create_revision == 0`
//!   of the node's key and of the three index keys;
//! - a node to remove exists: its key's `mod_revision` equal to the one
//!   just read (the record, whose index keys are deleted with it);
//! - a new token, a new policy version: `create_revision == 0`.
//!
//! etcd compares against the state before the transaction, so a
//! precondition on a key an earlier change of the same batch wrote is
//! checked here, against that write, and not sent. Each key is written at
//! most once per transaction (etcd refuses duplicates): the last write of
//! the batch wins, which is what applying the changes in order leaves.
//!
//! When a compare fails, the transaction's failure branch has read every
//! compared key, so the first failing change is found from the same
//! revision the compares saw.

use std::collections::{BTreeMap, HashMap};

use etcd_client::proto::PbTxnOpResponse;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use super::{
    admin_key, encode, index_keys, node_key, policy_key, routes_key, service_key, token_key,
    EtcdBackend, COUNTER,
};
use crate::store::{Change, CommitError, ConfigChange, NodeRecord, StoreError, TokenRecord};

#[derive(Debug)]
enum Expect {
    Absent,
    ModRevision(i64),
    Value(Vec<u8>),
}

struct Check {
    index: usize,
    key: String,
    expect: Expect,
    what: String,
}

struct Plan<'a> {
    be: &'a EtcdBackend,
    /// Each key the batch writes, with its final value (`None`: deleted).
    writes: BTreeMap<String, Option<Vec<u8>>>,
    checks: Vec<Check>,
}

fn conflict(index: usize, what: String) -> CommitError {
    CommitError::Conflict { index, what }
}

impl Plan<'_> {
    /// A precondition on `key`: checked now if an earlier change of the
    /// batch wrote `key`, otherwise sent as a compare.
    fn expect(
        &mut self,
        index: usize,
        key: String,
        expect: Expect,
        what: String,
    ) -> Result<(), CommitError> {
        if let Some(written) = self.writes.get(&key) {
            let holds = match (&expect, written) {
                (Expect::Absent, None) => true,
                (Expect::ModRevision(_), Some(_)) => true,
                (Expect::Value(v), Some(w)) => v == w,
                _ => false,
            };
            return if holds {
                Ok(())
            } else {
                Err(conflict(index, what))
            };
        }
        self.checks.push(Check {
            index,
            key,
            expect,
            what,
        });
        Ok(())
    }

    fn put(&mut self, key: String, value: Vec<u8>) {
        self.writes.insert(key, Some(value));
    }

    fn delete(&mut self, key: String) {
        self.writes.insert(key, None);
    }

    /// "The stored token is still `before`".
    fn token_as_read(&mut self, index: usize, before: &TokenRecord) -> Result<(), CommitError> {
        let key = token_key(&before.id);
        let read = self
            .be
            .token_revs
            .get(&before.id)
            .filter(|(_, t)| t == before);
        let expect = match read {
            Some((rev, _)) if !self.writes.contains_key(&key) => Expect::ModRevision(*rev),
            _ => Expect::Value(encode(before)?),
        };
        self.expect(index, key, expect, format!("token {} changed", before.id))
    }

    /// The node `id` as stored (or as this batch left it), and a check
    /// that it is still so at commit.
    fn node_to_remove(
        &mut self,
        index: usize,
        id: weft_proto::NodeId,
    ) -> Result<NodeRecord, CommitError> {
        let key = node_key(id);
        let gone = || conflict(index, format!("node {id} is gone"));
        if let Some(written) = self.writes.get(&key) {
            let bytes = written.as_ref().ok_or_else(gone)?;
            return Ok(self.be.decode(key.as_bytes(), bytes)?);
        }
        let resp = self.be.get(&key, None)?;
        let kv = resp.kvs().first().ok_or_else(gone)?;
        let rec: NodeRecord = self.be.decode(kv.key(), kv.value())?;
        let rev = kv.mod_revision();
        self.expect(
            index,
            key,
            Expect::ModRevision(rev),
            format!("node {id} changed"),
        )?;
        Ok(rec)
    }

    fn add(&mut self, index: usize, change: &Change) -> Result<(), CommitError> {
        match change {
            Change::Register(r) => {
                let n = &r.node;
                self.token_as_read(index, &r.token_before)?;
                let counter = COUNTER.to_string();
                let expect = if n.id.0 == 1 && !self.writes.contains_key(&counter) {
                    Expect::Absent
                } else {
                    Expect::Value(n.id.0.to_string().into_bytes())
                };
                self.expect(
                    index,
                    counter.clone(),
                    expect,
                    format!("node id {} is taken", n.id),
                )?;
                self.expect(
                    index,
                    node_key(n.id),
                    Expect::Absent,
                    format!("node id {} is taken", n.id),
                )?;
                let [subnet, key, name] = index_keys(n);
                self.expect(
                    index,
                    subnet.clone(),
                    Expect::Absent,
                    format!("subnet {} is taken", n.subnet),
                )?;
                self.expect(
                    index,
                    key.clone(),
                    Expect::Absent,
                    format!("the key of {} is registered", n.name),
                )?;
                self.expect(
                    index,
                    name.clone(),
                    Expect::Absent,
                    format!("name {} is taken", n.name),
                )?;
                let id = n.id.0.to_string().into_bytes();
                self.put(node_key(n.id), encode(n)?);
                self.put(token_key(&r.token_after.id), encode(&r.token_after)?);
                self.put(counter, (n.id.0 + 1).to_string().into_bytes());
                for k in [subnet, key, name] {
                    self.put(k, id.clone());
                }
            }
            Change::CreateToken(t) => {
                let key = token_key(&t.id);
                self.expect(
                    index,
                    key.clone(),
                    Expect::Absent,
                    format!("token {} exists", t.id),
                )?;
                self.put(key, encode(t)?);
            }
            Change::UpdateToken { before, after } => {
                self.token_as_read(index, before)?;
                self.put(token_key(&after.id), encode(after)?);
            }
            Change::RemoveNode(id) => {
                let rec = self.node_to_remove(index, *id)?;
                self.delete(node_key(*id));
                for k in index_keys(&rec) {
                    self.delete(k);
                }
            }
            Change::UpdateNode { before, after } => {
                let rec = self.node_to_remove(index, before.id)?;
                if rec != **before {
                    return Err(conflict(index, format!("node {} changed", before.id)));
                }
                self.put(node_key(after.id), encode(&**after)?);
            }
            Change::Config(ConfigChange::PutPolicy(v)) => {
                let key = policy_key(v.version);
                self.expect(
                    index,
                    key.clone(),
                    Expect::Absent,
                    format!("policy version {} exists", v.version),
                )?;
                self.put(key, encode(v)?);
            }
            Change::Config(ConfigChange::PutService(s)) => {
                self.put(service_key(&s.name), encode(s)?)
            }
            Change::Config(ConfigChange::RemoveService(name)) => self.delete(service_key(name)),
            Change::Config(ConfigChange::PutRoutes(id, r)) => self.put(routes_key(*id), encode(r)?),
            Change::Config(ConfigChange::RemoveRoutes(id)) => self.delete(routes_key(*id)),
            Change::Config(ConfigChange::CreateAdmin(a)) => {
                let key = admin_key(&a.name);
                self.expect(
                    index,
                    key.clone(),
                    Expect::Absent,
                    format!("admin credential {} exists", a.name),
                )?;
                self.put(key, encode(a)?);
            }
            Change::Config(ConfigChange::PutAdmin(a)) => self.put(admin_key(&a.name), encode(a)?),
        }
        Ok(())
    }
}

fn holds(expect: &Expect, kv: Option<&etcd_client::proto::PbKeyValue>) -> bool {
    match (expect, kv) {
        (Expect::Absent, None) => true,
        (Expect::Absent, Some(kv)) => kv.create_revision == 0,
        (Expect::ModRevision(r), Some(kv)) => kv.mod_revision == *r,
        (Expect::Value(v), Some(kv)) => kv.value == *v,
        (_, None) => false,
    }
}

pub(super) fn commit(be: &EtcdBackend, changes: &[Change]) -> Result<(), CommitError> {
    let mut plan = Plan {
        be,
        writes: BTreeMap::new(),
        checks: Vec::new(),
    };
    for (i, c) in changes.iter().enumerate() {
        plan.add(i, c)?;
    }
    let Plan { writes, checks, .. } = plan;
    let ops = checks.len().max(writes.len());
    if ops > be.max_txn_ops {
        return Err(CommitError::Failed(StoreError::Etcd {
            endpoints: be.endpoints.clone(),
            reason: format!(
                "cannot take this batch in one transaction ({ops} operations, more than its --max-txn-ops of {})",
                be.max_txn_ops
            ),
            hint: "start the etcd members with a larger --max-txn-ops, or split the change",
        }));
    }
    if writes.is_empty() {
        return Ok(());
    }
    let compares: Vec<Compare> = checks
        .iter()
        .map(|c| {
            let k = be.key(&c.key);
            match &c.expect {
                Expect::Absent => Compare::create_revision(k, CompareOp::Equal, 0),
                Expect::ModRevision(r) => Compare::mod_revision(k, CompareOp::Equal, *r),
                Expect::Value(v) => Compare::value(k, CompareOp::Equal, v.clone()),
            }
        })
        .collect();
    let success: Vec<TxnOp> = writes
        .iter()
        .map(|(k, v)| match v {
            Some(v) => TxnOp::put(be.key(k), v.clone(), None),
            None => TxnOp::delete(be.key(k), None),
        })
        .collect();
    // Distinct compared keys, in order, read if a compare fails.
    let mut read: Vec<&str> = Vec::new();
    for c in &checks {
        if !read.contains(&c.key.as_str()) {
            read.push(&c.key);
        }
    }
    let failure: Vec<TxnOp> = read.iter().map(|k| TxnOp::get(be.key(k), None)).collect();
    let txn = Txn::new().when(compares).and_then(success).or_else(failure);
    let resp = be.call(|| {
        let (mut kv, txn) = (be.kv.clone(), txn.clone());
        async move { kv.txn(txn).await }
    })?;
    if resp.succeeded() {
        if let Some(h) = resp.header() {
            be.note_commit(h.revision());
        }
        return Ok(());
    }
    let mut seen: HashMap<&str, Option<etcd_client::proto::PbKeyValue>> = HashMap::new();
    for (k, op) in read.iter().zip(&resp.0.responses) {
        if let Some(PbTxnOpResponse::ResponseRange(r)) = &op.response {
            seen.insert(k, r.kvs.first().cloned());
        }
    }
    let failed = checks.iter().find(|c| match seen.get(c.key.as_str()) {
        Some(kv) => !holds(&c.expect, kv.as_ref()),
        None => false,
    });
    let c = failed.or(checks.first());
    Err(match c {
        Some(c) => conflict(c.index, c.what.clone()),
        None => conflict(0, "the cluster changed".into()),
    })
}
