//! Live state: the per-replica lease and the `P/live/<node>` keys (see the
//! parent module).

use super::*;

pub(super) fn decode_live(v: &[u8]) -> Option<LiveRecord> {
    if v.len() > MAX_LIVE_RECORD {
        return None;
    }
    rmp_serde::from_slice(v).ok()
}

/// Every live key at `rev`: hosts on other replicas online, the rest (but
/// this replica's own sessions) offline.
pub(super) async fn load_live(shared: &Shared, r: &Replica, rev: i64) -> Result<(), StoreError> {
    let mut kv = r.kv();
    let mut opts = GetOptions::new().with_prefix();
    if rev > 0 {
        opts = opts.with_revision(rev);
    }
    let prefix = r.key("live/");
    let resp = r.call(kv.get(prefix.clone(), Some(opts))).await?;
    let mut fresh = HashMap::new();
    let room = shared.read().len() + MAX_UNKNOWN_REMOTE;
    for kv in resp.kvs() {
        let Some(id) = kv
            .key()
            .strip_prefix(prefix.as_slice())
            .and_then(|k| std::str::from_utf8(k).ok())
            .and_then(|k| k.parse::<u64>().ok())
            .map(NodeId)
        else {
            continue;
        };
        let Some(rec) = decode_live(kv.value()) else {
            warn!(node = %id, "unreadable live record in etcd; ignored");
            continue;
        };
        if rec.replica != r.id && fresh.len() < room {
            fresh.insert(id, remote_of(shared, rec, kv.mod_revision()));
        }
    }
    let local: std::collections::HashSet<NodeId> = shared.sessions().keys().copied().collect();
    let ids: Vec<NodeId> = shared.read().peers().map(|p| p.id).collect();
    let mut woke = false;
    {
        let mut reg = shared.write();
        let at = u64::try_from(rev).unwrap_or(0);
        reg.at_revision(at, |reg| {
            for id in ids {
                if local.contains(&id) {
                    continue;
                }
                woke |= match fresh.get(&id) {
                    Some(rem) => reg.set_online(id, true, Some(rem.endpoints.clone())),
                    None => reg.set_online(id, false, None),
                };
            }
        });
        // Everything up to `rev` is applied now (the store was loaded at
        // it just before).
        reg.advance_to(crate::store::revision_version(rev));
    }
    *lock(&r.remote) = fresh;
    if woke {
        shared.changed.notify_one();
    }
    Ok(())
}

pub(super) fn remote_of(shared: &Shared, rec: LiveRecord, rev: i64) -> Remote {
    Remote {
        rev: u64::try_from(rev).unwrap_or(0),
        relay: rec.relay,
        endpoints: checked_endpoints(&rec.endpoints, shared.pool, shared.allow_loopback_endpoints),
    }
}

/// One live key changed at revision `rev`: `rec` as it is now (`None`:
/// deleted), `prev` as it was.
pub(super) fn apply_live(
    shared: &Shared,
    r: &Replica,
    id: NodeId,
    rec: Option<LiveRecord>,
    prev: Option<LiveRecord>,
    rev: i64,
) {
    let at = u64::try_from(rev).unwrap_or(0);
    let own = match &rec {
        Some(rec) => rec.replica == r.id,
        None => prev.is_some_and(|p| p.replica == r.id),
    };
    // This replica's own writes: its change now has a revision (if the
    // registry still holds what was written). Hosts with a session here
    // (a host that moved here before its old replica noticed): the local
    // session wins.
    if own {
        let online = rec.is_some();
        let eps = rec.map(|r| r.endpoints);
        shared.write().written(id, at, |p| {
            p.online == online && eps.as_ref().is_none_or(|e| *e == p.endpoints)
        });
        return;
    }
    if shared.sessions().contains_key(&id) {
        return;
    }
    let changed = match rec {
        Some(rec) => {
            let rem = remote_of(shared, rec, rev);
            let eps = rem.endpoints.clone();
            // Bounded whatever etcd holds: a record for a node this replica
            // does not know (yet) is kept only while there is room.
            let room = shared.read().len() + MAX_UNKNOWN_REMOTE;
            {
                let mut remote = lock(&r.remote);
                if remote.len() >= room && !remote.contains_key(&id) {
                    return;
                }
                remote.insert(id, rem);
            }
            shared
                .write()
                .at_revision(at, |reg| reg.set_online(id, true, Some(eps)))
        }
        None => {
            lock(&r.remote).remove(&id);
            shared
                .write()
                .at_revision(at, |reg| reg.set_online(id, false, None))
        }
    };
    if changed {
        shared.changed.notify_one();
    }
}

/// Writes queued live keys: puts with this replica's lease, deletes only
/// while the key is still on this lease (a host that moved on to another
/// replica keeps its new key).
pub(super) async fn live_writer(shared: Arc<Shared>) {
    let Some(r) = replica(&shared) else { return };
    let mut backoff = Duration::from_millis(100);
    loop {
        r.pending_ready.notified().await;
        loop {
            let batch: Vec<(NodeId, bool)> = lock(&r.pending).drain().collect();
            if batch.is_empty() {
                break;
            }
            let mut failed = None;
            // Puts go PUTS_PER_TXN to a transaction (many hosts come
            // online at once when a replica fails over to this one);
            // deletes one by one, each compared with this lease.
            let (puts, dels): (Vec<_>, Vec<_>) = batch
                .into_iter()
                .partition(|(_, online): &(NodeId, bool)| *online);
            let mut done = 0;
            for chunk in puts.chunks(PUTS_PER_TXN) {
                let ids: Vec<NodeId> = chunk.iter().map(|(id, _)| *id).collect();
                if let Err(e) = put_live(&shared, r, &ids).await {
                    failed = Some((done, e));
                    break;
                }
                done += chunk.len();
            }
            if failed.is_none() {
                for (id, _) in &dels {
                    if let Err(e) = delete_live(&shared, r, *id).await {
                        failed = Some((done, e));
                        break;
                    }
                    done += 1;
                }
            }
            let batch: Vec<(NodeId, bool)> = puts.into_iter().chain(dels).collect();
            if let Some((i, e)) = failed {
                warn!(error = %e, retry_in = ?backoff, "cannot write hosts' live state to etcd; other replicas see it late");
                // Keep what was not written, unless newer news arrived.
                {
                    let mut pending = lock(&r.pending);
                    for (id, online) in batch.into_iter().skip(i) {
                        pending.entry(id).or_insert(online);
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff_next(backoff);
            } else {
                backoff = Duration::from_millis(100);
            }
        }
    }
}

/// Puts the live keys of `ids` (those with a session here) in one
/// transaction, on this replica's lease.
pub(super) async fn put_live(
    shared: &Shared,
    r: &Replica,
    ids: &[NodeId],
) -> Result<(), StoreError> {
    let mut ops = Vec::with_capacity(ids.len());
    if r.ensure_lease().await? {
        requeue_all(shared, r);
    }
    let lease = r.lease.load(Ordering::Acquire);
    for id in ids {
        if !shared.sessions().contains_key(id) {
            continue;
        }
        let Some(endpoints) = shared.read().get(*id).map(|p| p.endpoints.clone()) else {
            continue;
        };
        let rec = LiveRecord {
            replica: r.id.clone(),
            relay: r.relay_addr.clone(),
            endpoints,
        };
        let value = crate::store::etcd::encode(&rec)?;
        ops.push(TxnOp::put(
            r.live_key(*id),
            value,
            Some(PutOptions::new().with_lease(lease)),
        ));
    }
    if ops.is_empty() {
        return Ok(());
    }
    let mut kv = r.kv();
    match r.call(kv.txn(Txn::new().and_then(ops))).await {
        Ok(_) => Ok(()),
        Err(e) => {
            if e.to_string().contains("lease not found") {
                r.lease.store(0, Ordering::Release);
            }
            Err(e)
        }
    }
}

/// Deletes host `id`'s live key if it has no session here and the key is
/// still on this replica's lease.
pub(super) async fn delete_live(
    shared: &Shared,
    r: &Replica,
    id: NodeId,
) -> Result<(), StoreError> {
    let lease = r.lease.load(Ordering::Acquire);
    if lease == 0 || shared.sessions().contains_key(&id) {
        return Ok(());
    }
    let key = r.live_key(id);
    let txn = Txn::new()
        .when([Compare::lease(key.clone(), CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(key, None)]);
    let mut kv = r.kv();
    r.call(kv.txn(txn)).await.map(|_| ())
}

/// Every host with a session here is written again (a new lease).
pub(super) fn requeue_all(shared: &Shared, r: &Replica) {
    let ids: Vec<NodeId> = shared.sessions().keys().copied().collect();
    let mut pending = lock(&r.pending);
    for id in ids {
        pending.entry(id).or_insert(true);
    }
    drop(pending);
    r.pending_ready.notify_one();
}

/// Keeps the lease alive; grants a new one (and writes every live key
/// again) when etcd lost it, say after an outage longer than its TTL.
pub(super) async fn keep_lease(shared: Arc<Shared>) {
    let Some(r) = replica(&shared) else { return };
    let mut backoff = Duration::from_millis(100);
    loop {
        match keep_once(&shared, r).await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "cannot keep this replica's etcd lease alive; its hosts may look offline to the other replicas until etcd answers");
                tokio::time::sleep(backoff).await;
                backoff = backoff_next(backoff);
            }
        }
    }
}

/// Keeps the current lease alive until it is lost (`Ok`) or a call fails.
pub(super) async fn keep_once(shared: &Shared, r: &Replica) -> Result<(), StoreError> {
    if r.ensure_lease().await? {
        requeue_all(shared, r);
    }
    let lease = r.lease.load(Ordering::Acquire);
    let mut lc = r.client.lease_client();
    let (mut keeper, mut stream) = r.call(lc.keep_alive(lease)).await?;
    loop {
        r.call(keeper.keep_alive()).await?;
        let resp = r.call(stream.message()).await?;
        match resp {
            Some(m) if m.ttl() > 0 => {}
            _ => {
                warn!(lease, "etcd lost this replica's lease; granting a new one and writing its hosts' live state again");
                let _ = r
                    .lease
                    .compare_exchange(lease, 0, Ordering::AcqRel, Ordering::Acquire);
                return Ok(());
            }
        }
        tokio::time::sleep(KEEPALIVE_EVERY).await;
    }
}
