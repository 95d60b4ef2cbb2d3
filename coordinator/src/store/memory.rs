//! The in-memory twin of the redb backend: the same preconditions, checked
//! the same way, over plain maps. For unit tests of the store's front and
//! of the server without a disk.
//!
//! Clones share one state, so two fronts on clones behave like two
//! coordinators on one replicated store: each sees the other's commits
//! only through preconditions that no longer hold (conflicts). Tests can
//! make the next commits fail, as a full disk would.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use weft_proto::msg::AclVersion;
use weft_proto::NodeId;

use super::{
    Change, CommitError, ConfigChange, Loaded, NodeRecord, StoreBackend, StoreError, StoredConfig,
    TokenRecord,
};

#[derive(Debug, Clone, Default)]
struct State {
    nodes: BTreeMap<NodeId, NodeRecord>,
    tokens: BTreeMap<String, TokenRecord>,
    /// `None`: never set (the first node gets 1), as in a new redb file.
    next_node_id: Option<u64>,
    policy: BTreeMap<u64, AclVersion>,
    config: StoredConfig,
    commits: u64,
    fail_commits: u32,
}

#[derive(Clone, Default)]
pub struct MemoryBackend {
    state: Arc<Mutex<State>>,
}

impl MemoryBackend {
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Batches committed so far.
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Makes the next `n` commits fail (nothing of them is applied).
    pub fn fail_commits(&self, n: u32) {
        self.state().fail_commits = n;
    }

    /// The stored nodes, by id.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.state().nodes.values().cloned().collect()
    }
}

/// Applies one change to `s`, checking its precondition first.
fn apply(s: &mut State, change: &Change) -> Result<(), String> {
    match change {
        Change::Register(r) => {
            let n = &r.node;
            if s.tokens.get(&r.token_before.id) != Some(&r.token_before) {
                return Err(format!("token {} changed", r.token_before.id));
            }
            if s.next_node_id.unwrap_or(1) != n.id.0 || s.nodes.contains_key(&n.id) {
                return Err(format!("node id {} is taken", n.id));
            }
            let clash = s
                .nodes
                .values()
                .any(|o| o.subnet == n.subnet || o.public_key == n.public_key || o.name == n.name);
            if clash {
                return Err(format!("subnet, key or name of {} is taken", n.name));
            }
            s.nodes.insert(n.id, n.clone());
            s.tokens
                .insert(r.token_after.id.clone(), r.token_after.clone());
            s.next_node_id = Some(n.id.0 + 1);
        }
        Change::CreateToken(t) => {
            if s.tokens.contains_key(&t.id) {
                return Err(format!("token {} exists", t.id));
            }
            s.tokens.insert(t.id.clone(), t.clone());
        }
        Change::UpdateToken { before, after } => {
            if s.tokens.get(&before.id) != Some(before) {
                return Err(format!("token {} changed", before.id));
            }
            s.tokens.insert(after.id.clone(), after.clone());
        }
        Change::RemoveNode(id) => {
            if s.nodes.remove(id).is_none() {
                return Err(format!("node {id} is gone"));
            }
        }
        Change::UpdateNode { before, after } => {
            if s.nodes.get(&before.id) != Some(&**before) {
                return Err(format!("node {} changed", before.id));
            }
            s.nodes.insert(after.id, (**after).clone());
        }
        Change::Config(ConfigChange::PutPolicy(v)) => {
            if s.policy.contains_key(&v.version) {
                return Err(format!("policy version {} exists", v.version));
            }
            s.policy.insert(v.version, v.clone());
            s.config.policy = s.policy.values().next_back().cloned();
        }
        Change::Config(ConfigChange::PutService(svc)) => {
            s.config.services.insert(svc.name.clone(), svc.clone());
        }
        Change::Config(ConfigChange::RemoveService(name)) => {
            s.config.services.remove(name);
        }
        Change::Config(ConfigChange::PutRoutes(id, r)) => {
            s.config.routes.insert(*id, r.clone());
        }
        Change::Config(ConfigChange::RemoveRoutes(id)) => {
            s.config.routes.remove(id);
        }
        Change::Config(ConfigChange::CreateAdmin(a)) => {
            if s.config.admins.contains_key(&a.name) {
                return Err(format!("admin credential {} exists", a.name));
            }
            s.config.admins.insert(a.name.clone(), a.clone());
        }
        Change::Config(ConfigChange::PutAdmin(a)) => {
            s.config.admins.insert(a.name.clone(), a.clone());
        }
    }
    Ok(())
}

impl StoreBackend for MemoryBackend {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        let s = self.state();
        Ok(Loaded {
            nodes: s.nodes.values().cloned().collect(),
            next_node_id: s.next_node_id.unwrap_or(1),
            config: s.config.clone(),
            revision: 0,
        })
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.state().tokens.get(id).cloned())
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.state().tokens.values().cloned().collect())
    }

    fn policy_history(&mut self) -> Result<Vec<AclVersion>, StoreError> {
        Ok(self.state().policy.values().cloned().collect())
    }

    fn commit(&mut self, changes: &[Change]) -> Result<(), CommitError> {
        let mut s = self.state();
        if s.fail_commits > 0 {
            s.fail_commits -= 1;
            return Err(CommitError::Failed(StoreError::Db {
                path: "(memory)".into(),
                source: "injected failure".into(),
            }));
        }
        // All or nothing: apply to a copy, keep it only if every change
        // applied.
        let mut next = s.clone();
        for (index, c) in changes.iter().enumerate() {
            apply(&mut next, c).map_err(|what| CommitError::Conflict { index, what })?;
        }
        next.commits += 1;
        *s = next;
        Ok(())
    }
}
