//! The store's writer thread: it owns the backend, the IPAM and the node
//! id counter.
//!
//! It drains whatever requests are waiting (at most [`MAX_BATCH`]),
//! decides each ([`super::decide`]), hands the backend the decided changes
//! as one batch, and only after the commit is durable updates the
//! registry, wakes the server and answers. A batch of nothing but refusals
//! (bogus joins, say) commits nothing: no fsync. A batch the backend finds
//! in conflict is decided again from fresh reads, up to [`MAX_ATTEMPTS`]
//! times: the tokens read again, and on a store other replicas write to
//! ([`StoreBackend::shared`]) the whole store loaded again, since the
//! node, subnet or name this process chose may be another's now. A batch
//! with more changes than the backend takes in one commit is committed in
//! several, each of whole requests.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rand::Rng as _;

use weft_proto::msg::ErrorReply;
use weft_proto::{NodeId, Peer};

use super::decide::Batch;
use super::handle::{OnCommit, Request, Resynced};
use super::{internal, refuse, Change, CommitError, StoreBackend, StoreError, TokenRecord};
use crate::ipam::Ipam;
use crate::registry::Registry;

/// Most requests applied in one batch.
const MAX_BATCH: usize = 512;
/// How often a batch whose preconditions no longer held is decided again
/// before its requests fail.
const MAX_ATTEMPTS: usize = 3;
/// The same on a store other replicas write to, where a batch can lose
/// the race for the node id counter many times in a row while another
/// replica drains its queue: bounded by time as well.
const SHARED_MAX_ATTEMPTS: usize = 200;
const SHARED_CONFLICT_BUDGET: Duration = Duration::from_secs(15);

pub(super) struct Writer<B> {
    pub(super) backend: B,
    pub(super) registry: Arc<RwLock<Registry>>,
    ipam: Ipam,
    next_node_id: u64,
    on_commit: OnCommit,
    /// When this process started (Unix seconds): offline time counts from
    /// here at the earliest (see [`crate::expiry`]).
    pub(super) started: u64,
    /// Seconds per successful commit.
    commit_seconds: Option<prometheus_client::metrics::histogram::Histogram>,
}

/// A write request's decision in the current attempt.
enum Decided {
    /// Refused; answered whatever happens to the batch.
    Refused(ErrorReply),
    /// Change `changes[first..end]` of the batch are this request's.
    Changes { first: usize, end: usize },
}

impl<B: StoreBackend> Writer<B> {
    pub(super) fn new(
        backend: B,
        registry: Arc<RwLock<Registry>>,
        ipam: Ipam,
        next_node_id: u64,
        on_commit: OnCommit,
    ) -> Self {
        Self {
            backend,
            registry,
            ipam,
            next_node_id,
            on_commit,
            started: crate::now_unix(),
            commit_seconds: None,
        }
    }

    /// Observes each successful commit's duration into `h`.
    pub(super) fn observing(mut self, h: prometheus_client::metrics::histogram::Histogram) -> Self {
        self.commit_seconds = Some(h);
        self
    }

    pub(super) fn run(mut self, rx: std::sync::mpsc::Receiver<Request>) {
        let mut stop = None;
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::new();
            let mut next = Some(first);
            while let Some(req) = next.take() {
                match req {
                    Request::Tokens(r) => drop(r.send(self.backend.tokens().map_err(internal))),
                    Request::PolicyHistory(r) => {
                        drop(r.send(self.backend.policy_history().map_err(internal)))
                    }
                    Request::Resync(r) => {
                        let out = self.resync();
                        if let Err(e) = &out {
                            tracing::warn!(error = %e, "cannot read the store again");
                        }
                        drop(r.send(out.map_err(|e| {
                            refuse(
                                weft_proto::msg::ErrorCode::Internal,
                                format!("cannot read the store ({e})"),
                            )
                        })))
                    }
                    Request::Nodes(r) => {
                        drop(r.send(self.backend.load().map(|l| l.nodes).map_err(internal)))
                    }
                    Request::Export(r) => {
                        drop(r.send(super::etcd::Export::read(&mut self.backend).map_err(internal)))
                    }
                    Request::Sweep(rules, now, r) => drop(r.send(self.sweep(&rules, now))),
                    Request::SetExpiry(id, expiry, now, r) => {
                        drop(r.send(self.set_expiry(id, expiry, now)))
                    }
                    Request::Shutdown(r) => stop = Some(r),
                    req => batch.push(req),
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

    /// The tokens the batch's requests name, as stored now.
    fn read_tokens(
        &mut self,
        batch: &[Request],
    ) -> Result<HashMap<String, Option<TokenRecord>>, StoreError> {
        let mut tokens = HashMap::new();
        for req in batch {
            let id = match req {
                Request::Join(a, _) => &a.token_id,
                Request::RevokeToken(id, _) => id,
                _ => continue,
            };
            if !tokens.contains_key(id) {
                tokens.insert(id.clone(), self.backend.token(id)?);
            }
        }
        Ok(tokens)
    }

    /// Decides every request of the batch against the current state.
    fn decide(
        &mut self,
        batch: &[Request],
        tokens: HashMap<String, Option<TokenRecord>>,
    ) -> (Batch, Vec<Change>, Vec<Decided>) {
        let mut b = Batch::new(tokens, self.next_node_id);
        let mut changes = Vec::with_capacity(batch.len());
        let mut decided = Vec::with_capacity(batch.len());
        let reg = self.registry.read().unwrap_or_else(|p| p.into_inner());
        for req in batch {
            let first = changes.len();
            let outcome: Result<(), ErrorReply> = match req {
                Request::Join(args, _) => b.join(args, &reg, &mut self.ipam).map(|r| {
                    if let Some(old) = r.replaces {
                        changes.push(Change::RemoveNode(old));
                    }
                    changes.push(Change::Register(Box::new(r)));
                }),
                Request::CreateToken(rec, _) => {
                    b.create_token(rec);
                    changes.push(Change::CreateToken(rec.clone()));
                    Ok(())
                }
                Request::RevokeToken(id, _) => b
                    .revoke(id)
                    .map(|(before, after)| changes.push(Change::UpdateToken { before, after })),
                Request::RemoveNode(id, expired_only, _) => b
                    .remove_node(&reg, *id, *expired_only)
                    .map(|()| changes.push(Change::RemoveNode(*id))),
                Request::Config(c, _) => {
                    changes.extend(c.iter().cloned().map(Change::Config));
                    Ok(())
                }
                Request::Tokens(_)
                | Request::Nodes(_)
                | Request::Export(_)
                | Request::Sweep(..)
                | Request::SetExpiry(..)
                | Request::PolicyHistory(_)
                | Request::Resync(_)
                | Request::Shutdown(_) => Err(internal("not a write request")),
            };
            decided.push(match outcome {
                Ok(()) => Decided::Changes {
                    first,
                    end: changes.len(),
                },
                Err(e) => Decided::Refused(e),
            });
        }
        (b, changes, decided)
    }

    fn apply_batch(&mut self, batch: Vec<Request>) {
        let mut pending = batch;
        while !pending.is_empty() {
            pending = self.apply_some(pending);
        }
    }

    /// Commits the leading requests of `batch` whose changes one commit
    /// takes ([`StoreBackend::max_changes_per_commit`]; all of them for a
    /// local backend) and answers them; the requests left over.
    fn apply_some(&mut self, mut batch: Vec<Request>) -> Vec<Request> {
        let shared = self.backend.shared();
        let cap = self.backend.max_changes_per_commit().max(1);
        let started = Instant::now();
        let mut rest = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let tokens = match self.read_tokens(&batch) {
                Ok(t) => t,
                Err(e) => {
                    self.fail_all(batch, &e);
                    return rest;
                }
            };
            let (b, changes, decided) = self.decide(&batch, tokens);
            if changes.len() > cap && batch.len() > 1 {
                // Keep the requests whose changes fit (at least one), and
                // decide them again alone.
                let fits = decided
                    .iter()
                    .position(|d| matches!(d, Decided::Changes { end, .. } if *end > cap))
                    .unwrap_or(batch.len())
                    .max(1);
                if fits < batch.len() {
                    for s in b.allocated() {
                        self.ipam.release(*s);
                    }
                    let mut tail = batch.split_off(fits);
                    tail.append(&mut rest);
                    rest = tail;
                    attempt -= 1;
                    continue;
                }
            }
            if changes.is_empty() {
                answer(batch, decided, None);
                return rest;
            }
            let commit_began = Instant::now();
            let result = self.backend.commit(&changes);
            match result {
                Ok(()) => {
                    if let Some(h) = &self.commit_seconds {
                        h.observe(commit_began.elapsed().as_secs_f64());
                    }
                    self.next_node_id = b.next_node_id();
                    let at = self.commit_revision();
                    let peers = self.apply_effects(&changes, at);
                    answer(
                        batch,
                        decided,
                        Some(Committed {
                            changes: &changes,
                            removed: &peers,
                        }),
                    );
                    return rest;
                }
                Err(e) => {
                    for s in b.allocated() {
                        self.ipam.release(*s);
                    }
                    let again = if shared {
                        attempt < SHARED_MAX_ATTEMPTS && started.elapsed() < SHARED_CONFLICT_BUDGET
                    } else {
                        attempt < MAX_ATTEMPTS
                    };
                    match e {
                        CommitError::Conflict { index, what } if again => {
                            tracing::debug!(%what, attempt, "store conflict; deciding the batch again");
                            // A change the server decided cannot be decided
                            // again here: its requester is told to retry.
                            batch = reject_config_owner(batch, &decided, &changes, index);
                            if shared {
                                // Another replica took what this batch
                                // chose: wait a little (so racing replicas
                                // spread out), then read what it wrote.
                                let ms = rand::thread_rng().gen_range(1..=(1u64 << attempt.min(5)));
                                std::thread::sleep(Duration::from_millis(ms));
                                if let Err(e) = self.resync() {
                                    self.fail_all(batch, &e);
                                    return rest;
                                }
                            }
                        }
                        CommitError::Conflict { what, .. } => {
                            tracing::error!(%what, attempt, "store conflict persists; batch failed");
                            answer_failed(batch, decided, &what);
                            return rest;
                        }
                        CommitError::Failed(e) => {
                            tracing::error!(error = %e, "commit failed");
                            // Back off so a broken disk does not spin.
                            std::thread::sleep(Duration::from_millis(50));
                            answer_failed(batch, decided, &e.to_string());
                            return rest;
                        }
                    }
                }
            }
        }
    }

    /// Reads the whole store again and brings the registry, the IPAM and
    /// the node id counter up to it: the nodes other replicas added or
    /// removed. Sessions are woken for them.
    fn resync(&mut self) -> Result<Resynced, StoreError> {
        let loaded = self.backend.load()?;
        self.next_node_id = loaded.next_node_id;
        let mut changed = Vec::new();
        let mut removed = Vec::new();
        let mut added = Vec::new();
        {
            let mut reg = self.registry.write().unwrap_or_else(|p| p.into_inner());
            // What this load finds carries its revision (at least that of
            // each change).
            let before = reg.tag_with(u64::try_from(loaded.revision).unwrap_or(0));
            let stored: HashMap<NodeId, &super::NodeRecord> =
                loaded.nodes.iter().map(|n| (n.id, n)).collect();
            // Nodes gone from the store, or expired there (on another
            // replica): out of the registry.
            let active: Vec<NodeId> = reg.peers().map(|p| p.id).collect();
            for id in active {
                match stored.get(&id).map(|n| n.expired_at) {
                    Some(None) => continue,
                    Some(Some(at)) => {
                        reg.retire(id, at);
                    }
                    None => {
                        if let Some(peer) = reg.remove(id) {
                            self.ipam.release(peer.subnet);
                        }
                    }
                }
                changed.push(id);
                removed.push(id);
            }
            let retired: Vec<NodeId> = reg.retired_nodes().map(|r| r.peer.id).collect();
            for id in retired {
                if !stored.contains_key(&id) {
                    if let Some(r) = reg.forget_retired(id) {
                        self.ipam.release(r.peer.subnet);
                    }
                }
            }
            for n in &loaded.nodes {
                let known = reg.get(n.id).is_some() || reg.retired(n.id).is_some();
                if !known {
                    if let Err(e) = self.ipam.reserve(n.subnet) {
                        tracing::warn!(node = %n.id, error = %e, "a node another replica added does not fit this coordinator's pool");
                    }
                }
                match n.expired_at {
                    Some(at) if !known => reg.load_retired(n.to_peer(), n.created_at, at),
                    Some(_) => {}
                    None if reg.get(n.id).is_some() => {}
                    None => {
                        if !reg.revive(n.id) {
                            reg.insert(n.to_peer(), n.created_at);
                        }
                        changed.push(n.id);
                        added.push(n.id);
                    }
                }
            }
            reg.tag_with(before);
        }
        if !changed.is_empty() {
            (self.on_commit)(&changed);
        }
        Ok(Resynced {
            revision: loaded.revision,
            config: loaded.config,
            removed,
            added,
        })
    }

    fn fail_all(&mut self, batch: Vec<Request>, e: &StoreError) {
        tracing::error!(error = %e, "cannot read the store");
        std::thread::sleep(Duration::from_millis(50));
        let decided = batch
            .iter()
            .map(|_| Decided::Refused(internal(e)))
            .collect();
        answer(batch, decided, None);
    }

    /// The revision the registry logs the last commit's changes at: etcd's,
    /// or [`crate::registry::LOCAL`] on a store no other replica writes.
    pub(super) fn commit_revision(&self) -> u64 {
        if self.backend.shared() {
            u64::try_from(self.backend.last_revision()).unwrap_or(0)
        } else {
            crate::registry::LOCAL
        }
    }

    /// Puts committed node changes into the registry and IPAM; the removed
    /// nodes as they were, by id.
    pub(super) fn apply_effects(
        &mut self,
        changes: &[Change],
        at: u64,
    ) -> HashMap<NodeId, Arc<Peer>> {
        let mut changed = Vec::new();
        let mut removed = HashMap::new();
        {
            let mut guard = self.registry.write().unwrap_or_else(|p| p.into_inner());
            let reg = &mut *guard;
            let before = reg.tag_with(at);
            for c in changes {
                match c {
                    Change::Register(r) => {
                        if r.replaces.is_some() {
                            // The subnet of the expired node it replaces,
                            // released by that removal just before.
                            if let Err(e) = self.ipam.reserve(r.node.subnet) {
                                tracing::warn!(node = %r.node.id, error = %e, "cannot keep the subnet of the node it replaces");
                            }
                        }
                        reg.insert(r.node.to_peer(), r.node.created_at);
                        changed.push(r.node.id);
                    }
                    Change::RemoveNode(id) => {
                        let peer = reg
                            .remove(*id)
                            .or_else(|| reg.forget_retired(*id).map(|r| r.peer));
                        if let Some(peer) = peer {
                            self.ipam.release(peer.subnet);
                            removed.insert(*id, peer);
                        }
                        changed.push(*id);
                    }
                    Change::UpdateNode { before, after } => {
                        let moved = match (before.expired_at, after.expired_at) {
                            (None, Some(at)) => reg.retire(after.id, at),
                            (Some(_), None) => reg.revive(after.id),
                            _ => false,
                        };
                        if moved {
                            changed.push(after.id);
                        }
                    }
                    _ => {}
                }
            }
            reg.tag_with(before);
        }
        if !changed.is_empty() {
            (self.on_commit)(&changed);
        }
        removed
    }
}

/// The batch without the request that owns `changes[index]` if that is a
/// configuration write, which is answered with the conflict.
fn reject_config_owner(
    batch: Vec<Request>,
    decided: &[Decided],
    changes: &[Change],
    index: usize,
) -> Vec<Request> {
    let mut keep = Vec::with_capacity(batch.len());
    for (req, d) in batch.into_iter().zip(decided) {
        let owns = matches!(d, Decided::Changes { first, end } if (*first..*end).contains(&index));
        match req {
            Request::Config(_, reply) if owns => {
                let msg = changes.get(index).map_or("", Change::conflict_message);
                let _ = reply.send(Err(refuse(weft_proto::msg::ErrorCode::BadRequest, msg)));
            }
            req => keep.push(req),
        }
    }
    keep
}

/// A committed batch: its changes, and the nodes it removed as they were.
#[derive(Clone, Copy)]
struct Committed<'a> {
    changes: &'a [Change],
    removed: &'a HashMap<NodeId, Arc<Peer>>,
}

/// Answers every request: refusals as decided, the rest with their
/// committed result (`committed`), or as failed when it is `None`.
fn answer(batch: Vec<Request>, decided: Vec<Decided>, committed: Option<Committed<'_>>) {
    for (req, d) in batch.into_iter().zip(decided) {
        let (first, refusal) = match d {
            Decided::Refused(e) => (0, Some(e)),
            Decided::Changes { first, .. } => (first, None),
        };
        let err = || refusal.clone().unwrap_or_else(|| internal("commit failed"));
        let ok = committed.is_some() && refusal.is_none();
        match req {
            Request::Join(_, r) => {
                // Its Register is the last of its changes (after the
                // removal of an expired node it replaces).
                let rec = committed.and_then(|c| {
                    c.changes.iter().skip(first).find_map(|ch| match ch {
                        Change::Register(reg) if ok => Some(reg.node.clone()),
                        _ => None,
                    })
                });
                let _ = r.send(rec.ok_or_else(err));
            }
            Request::RemoveNode(id, _, r) => {
                let peer = committed.and_then(|c| c.removed.get(&id).filter(|_| ok).cloned());
                let _ = r.send(peer.ok_or_else(err));
            }
            Request::CreateToken(_, r) | Request::RevokeToken(_, r) | Request::Config(_, r) => {
                let _ = r.send(if ok { Ok(()) } else { Err(err()) });
            }
            Request::Tokens(r) => drop(r.send(Err(err()))),
            Request::Nodes(r) => drop(r.send(Err(err()))),
            Request::Export(r) => drop(r.send(Err(err()))),
            Request::Sweep(_, _, r) => drop(r.send(Err(err()))),
            Request::SetExpiry(_, _, _, r) => drop(r.send(Err(err()))),
            Request::PolicyHistory(r) => drop(r.send(Err(err()))),
            Request::Resync(r) => drop(r.send(Err(err()))),
            Request::Shutdown(r) => drop(r.send(())),
        }
    }
}

/// Answers a batch that was not committed: refusals as decided, the rest
/// with an internal error saying why.
fn answer_failed(batch: Vec<Request>, decided: Vec<Decided>, why: &str) {
    let decided = decided
        .into_iter()
        .map(|d| match d {
            Decided::Refused(e) => Decided::Refused(e),
            Decided::Changes { .. } => Decided::Refused(internal(why)),
        })
        .collect();
    answer(batch, decided, None);
}
