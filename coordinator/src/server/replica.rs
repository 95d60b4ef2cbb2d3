//! Several coordinator replicas on one etcd cluster.
//!
//! Each replica serves its own hosts; etcd joins them up:
//!
//! - **Watch.** Every replica watches the whole prefix from the revision it
//!   last read everything at. A batch of events touching the transaction log
//!   (nodes, tokens, policy, services, routes) makes the store writer load
//!   the store again ([`crate::store::StoreHandle::resync`], the refresh its
//!   conflict path uses); the registry, IPAM and configuration are brought up
//!   to it and sessions are woken exactly as after a local commit (the same
//!   coalescer, the same per-host views). One load is in flight at a time,
//!   so a burst of remote changes costs a few loads, not one each; events of
//!   this replica's own commits (their revisions are noted) cost none. A watch
//!   that is cancelled (compaction, a member that lost its leader) or fails
//!   is started again after a fresh load; while etcd is out the replica
//!   retries with backoff and its hosts keep their sessions and data plane.
//! - **Live state.** Endpoints and online state are not in the log: each
//!   replica holds one etcd lease (TTL [`LEASE_TTL`], kept alive every
//!   second) and puts `P/live/<node>` ([`LiveRecord`]: the replica, its
//!   relay address, the endpoints) for each host with a session on it,
//!   attached to that lease. Puts follow the session's endpoint coalescing
//!   (at most one every 250 ms per host, latest wins; one pending write per
//!   host, whatever it sends). The key is deleted (only while it is still
//!   this replica's) when the session ends, and by etcd when the replica
//!   dies and its lease expires. Other replicas apply these keys to their
//!   registry as `online` and endpoints.
//! - **Relay.** A host's relay datagram for a host whose session is on
//!   another replica is forwarded there over a QUIC connection between the
//!   replicas (ALPN [`REPLICA_ALPN`], on the same port as hosts): the
//!   dialling replica checks the other's TLS pin (the shared identity), and
//!   proves it holds the shared identity too with an HMAC of the TLS
//!   exporter under a key derived from the coordinator's secret. It carries
//!   what the host sent (WireGuard ciphertext or a punch, end-to-end
//!   encrypted between the hosts) and the sender's node id; the receiving
//!   replica checks again that the two hosts are peers and applies a relay
//!   budget per link, so a broken replica cannot make it forward unbounded.
//!   The sender's budget was applied on its own replica.
//! - **Resume.** The replicas share one netmap epoch (`P/meta/epoch`),
//!   their registries log the etcd revision of each node's latest change
//!   (local changes until etcd shows them back), and a version says up to
//!   which revision everything was applied (`crate::store::REVISION_SHIFT`).
//!   A host that fails over with the view in force resumes with what
//!   changed after its version's revision; with another view (a node
//!   joined meanwhile, say) it gets a snapshot, as on one coordinator.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tracing::{debug, info, warn};
use weft_proto::NodeId;

use super::relay_budget::RelayBudget;
use super::Shared;
use crate::cluster::{refresh_routes, ClusterConfig};
use crate::endpoints::checked_endpoints;
use crate::store::etcd::EtcdConfig;
use crate::store::StoreError;

/// The ALPN of links between replicas.
pub const REPLICA_ALPN: &[u8] = b"weft-replica/1";
/// A replica's lease: how long its hosts stay `online` to the other
/// replicas after it died.
pub const LEASE_TTL: i64 = 5;
/// Live puts per transaction (etcd's default --max-txn-ops is 128).
const PUTS_PER_TXN: usize = 64;
const KEEPALIVE_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The largest answer read from etcd.
const MAX_MESSAGE: usize = 64 << 20;
/// The largest live record read (a few endpoints and two addresses).
const MAX_LIVE_RECORD: usize = 4096;
/// Live records kept for nodes beyond those in the registry (hosts that
/// came online on another replica before this one loaded their join).
const MAX_UNKNOWN_REMOTE: usize = 4096;
/// Links to other replicas kept at most (their addresses come from etcd).
const MAX_LINKS: usize = 64;
/// How long after a failed dial a link is not tried again.
const REDIAL_AFTER: Duration = Duration::from_secs(1);
/// The least time between two loads for unknown hosts ([`catch_up`]).
const CATCH_UP_EVERY: Duration = Duration::from_millis(250);
const EXPORTER_LABEL: &[u8] = b"EXPORTER-weft-replica-link-v1";

/// `P/live/<node>`: a host with a session on `replica`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LiveRecord {
    pub replica: String,
    /// Where other replicas forward this host's relayed datagrams.
    pub relay: String,
    pub endpoints: Vec<SocketAddr>,
}

/// A host with a session on another replica.
#[derive(Debug, Clone)]
struct Remote {
    relay: String,
    endpoints: Vec<SocketAddr>,
    /// The revision of its live key.
    rev: u64,
}

struct LinkSlot {
    conn: Option<quinn::Connection>,
    tried: Instant,
}

/// This replica's part of the shared state.
pub(super) struct Replica {
    /// Random, per process: names this replica in live records.
    pub id: String,
    /// The netmap epoch shared by the replicas.
    pub epoch: u64,
    client: Client,
    /// The prefix with one trailing `/`.
    prefix: String,
    endpoints: String,
    timeout: Duration,
    /// This replica's lease (0: none yet, or lost).
    lease: AtomicI64,
    lease_lock: tokio::sync::Mutex<()>,
    relay_addr: String,
    /// Live writes not yet made: whether the host is online (its endpoints
    /// are read from the registry when written). One entry per host.
    pending: Mutex<HashMap<NodeId, bool>>,
    pending_ready: Notify,
    remote: Mutex<HashMap<NodeId, Remote>>,
    links: Mutex<HashMap<String, LinkSlot>>,
    link_key: ring::hmac::Key,
    pin: [u8; 32],
    endpoint: Mutex<Option<quinn::Endpoint>>,
    /// When [`catch_up`] last loaded the store.
    caught_up: tokio::sync::Mutex<Option<Instant>>,
    /// The revisions this replica's store writer committed: their events
    /// are in its memory already and need no load.
    commits: crate::store::etcd::CommitLog,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Replica {
    /// Connects to etcd and checks (or, for the first replica, records)
    /// the coordinator identity's pin and the admin credential's hash
    /// under `P/meta/`: every replica must present the same identity, or a
    /// token's pin would be wrong for some of them.
    pub(super) async fn connect(
        cfg: &EtcdConfig,
        pin: [u8; 32],
        admin_hash: [u8; 32],
        link_key: ring::hmac::Key,
        commits: crate::store::etcd::CommitLog,
        relay_addr: String,
    ) -> Result<Self, StoreError> {
        let client = crate::store::etcd::connect_async(cfg).await?;
        let mut id = [0u8; 8];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut id);
        let mut me = Self {
            id: hex::encode(id),
            epoch: 0,
            client,
            prefix: format!("{}/", cfg.prefix.trim_end_matches('/')),
            endpoints: cfg.describe(),
            timeout: cfg.timeout,
            lease: AtomicI64::new(0),
            lease_lock: tokio::sync::Mutex::new(()),
            relay_addr,
            pending: Mutex::default(),
            pending_ready: Notify::new(),
            remote: Mutex::default(),
            links: Mutex::default(),
            link_key,
            pin,
            endpoint: Mutex::new(None),
            caught_up: tokio::sync::Mutex::new(None),
            commits,
        };
        me.check_meta(
            "identity_pin",
            &hex::encode(pin),
            IDENTITY_HINT,
            "coordinator identity (TLS key pin)",
        )
        .await?;
        me.check_meta(
            "admin_hash",
            &hex::encode(admin_hash),
            ADMIN_HINT,
            "admin credential",
        )
        .await?;
        me.epoch = me.shared_epoch().await?;
        me.ensure_lease().await?;
        Ok(me)
    }

    pub(super) fn set_endpoint(&self, endpoint: quinn::Endpoint) {
        *lock(&self.endpoint) = Some(endpoint);
    }

    /// A KV client that reads answers as large as the store's (every live
    /// key of a big cluster at once).
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn live_key(&self, id: NodeId) -> Vec<u8> {
        self.key(&format!("live/{:020}", id.0))
    }

    fn err(&self, e: &etcd_client::Error) -> StoreError {
        crate::store::etcd::classify(&self.endpoints, e)
    }

    fn timed_out(&self) -> StoreError {
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            reason: format!(
                "has no quorum or cannot be reached (no answer within {:?})",
                self.timeout
            ),
            hint: "the replica keeps serving its hosts and retries; check the members with etcdctl endpoint health",
        }
    }

    /// Runs one etcd call within the deadline.
    async fn call<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r.map_err(|e| self.err(&e)),
            Err(_) => Err(self.timed_out()),
        }
    }

    /// `P/meta/<name>`, written as `value` by the first replica to ask.
    async fn shared_meta(&self, name: &str, value: &str) -> Result<(bool, Vec<u8>), StoreError> {
        let key = self.key(&format!("meta/{name}"));
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, None)])
            .or_else([TxnOp::get(key.clone(), None)]);
        let mut kv = self.kv();
        let resp = self.call(kv.txn(txn)).await?;
        if resp.succeeded() {
            return Ok((true, value.as_bytes().to_vec()));
        }
        let stored = resp
            .op_responses()
            .into_iter()
            .find_map(|r| match r {
                etcd_client::TxnOpResponse::Get(g) => g.kvs().first().map(|kv| kv.value().to_vec()),
                _ => None,
            })
            .unwrap_or_default();
        Ok((false, stored))
    }

    /// `P/meta/<name>` must be `value`; the first replica writes it.
    async fn check_meta(
        &self,
        name: &str,
        value: &str,
        hint: &'static str,
        what: &str,
    ) -> Result<(), StoreError> {
        let (first, stored) = self.shared_meta(name, value).await?;
        if first {
            info!(%name, "recorded this coordinator's {what} in etcd for the other replicas");
            return Ok(());
        }
        if stored == value.as_bytes() {
            return Ok(());
        }
        Err(StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            reason: format!(
                "records another {what} for this cluster ({}meta/{name}: {}, this replica: {value})",
                self.prefix,
                String::from_utf8_lossy(&stored),
            ),
            hint,
        })
    }

    /// The netmap epoch every replica uses (so a host failing over to
    /// another replica resumes with a delta), recorded by the first.
    async fn shared_epoch(&self) -> Result<u64, StoreError> {
        let mine = rand::RngCore::next_u64(&mut rand::rngs::OsRng) | 1;
        let (_, stored) = self.shared_meta("epoch", &mine.to_string()).await?;
        std::str::from_utf8(&stored)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| StoreError::Etcd {
                endpoints: self.endpoints.clone(),
                reason: format!("holds a corrupt record at {}meta/epoch", self.prefix),
                hint: "remove that key with etcdctl del (hosts then get full netmaps once)",
            })
    }

    /// A lease, granted if there is none. Whether a new one was granted
    /// (then every live key must be written again).
    async fn ensure_lease(&self) -> Result<bool, StoreError> {
        let _one = self.lease_lock.lock().await;
        if self.lease.load(Ordering::Acquire) != 0 {
            return Ok(false);
        }
        let mut lc = self.client.lease_client();
        let resp = self.call(lc.grant(LEASE_TTL, None)).await?;
        self.lease.store(resp.id(), Ordering::Release);
        debug!(lease = resp.id(), "etcd lease granted");
        Ok(true)
    }

    /// Queues a write of host `id`'s live key: its current endpoints when
    /// `online`, a delete otherwise. Latest wins.
    pub(super) fn live(&self, id: NodeId, online: bool) {
        lock(&self.pending).insert(id, online);
        self.pending_ready.notify_one();
    }

    /// The replica link to forward a datagram for `dst` over, if another
    /// replica holds its session.
    fn holder(&self, dst: NodeId) -> Option<String> {
        lock(&self.remote).get(&dst).map(|r| r.relay.clone())
    }

    /// Revokes the lease: the other replicas see this replica's hosts
    /// offline at once rather than after [`LEASE_TTL`].
    pub(super) async fn shutdown(&self) {
        let lease = self.lease.swap(0, Ordering::AcqRel);
        if lease != 0 {
            let mut lc = self.client.lease_client();
            let _ = self.call(lc.revoke(lease)).await;
        }
    }
}

const IDENTITY_HINT: &str = "every replica must present the same identity: stop this replica, copy tls-key.der, tls-cert.der and coordinator.key from the first replica's state dir into this one's, and start it again (or point --store at another prefix for a separate cluster)";
const ADMIN_HINT: &str = "every replica must share one admin credential: copy admin.json from the first replica's state dir into this one's";

fn backoff_next(b: Duration) -> Duration {
    (b * 2).min(MAX_BACKOFF)
}

/// Spawns the watch, live-writer and lease tasks.
pub(super) fn spawn(shared: &Arc<Shared>) -> Vec<tokio::task::JoinHandle<()>> {
    vec![
        tokio::spawn(watch_loop(shared.clone())),
        tokio::spawn(live_writer(shared.clone())),
        tokio::spawn(keep_lease(shared.clone())),
    ]
}

fn replica(shared: &Shared) -> Option<&Replica> {
    shared.replica.as_deref()
}

// ---------------------------------------------------------------- watch

async fn watch_loop(shared: Arc<Shared>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match watch_once(&shared, &mut backoff).await {
            Ok(why) => info!(%why, "etcd watch ended; loading the store again and watching anew"),
            Err(e) => {
                warn!(error = %e, retry_in = ?backoff, "etcd watch failed; hosts keep their sessions, and this replica catches up when etcd answers again");
                tokio::time::sleep(backoff).await;
                backoff = backoff_next(backoff);
            }
        }
    }
}

/// Loads everything, then watches from the revision it was read at, until
/// the watch ends (`Ok`, with why) or fails.
async fn watch_once(shared: &Arc<Shared>, backoff: &mut Duration) -> Result<String, String> {
    let Some(r) = replica(shared) else {
        return Ok("no replica".into());
    };
    let rev = resync(shared).await?;
    load_live(shared, r, rev).await.map_err(|e| e.to_string())?;
    let opts = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1)
        .with_prev_key();
    let mut wc = r.client.watch_client();
    let mut stream = r
        .call(wc.watch(r.prefix.clone().into_bytes(), Some(opts)))
        .await
        .map_err(|e| e.to_string())?;
    debug!(from = rev + 1, "watching etcd");
    let live_prefix = r.key("live/");
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => return Err("the watch stream ended".into()),
            Err(e) => return Err(r.err(&e).to_string()),
        };
        *backoff = Duration::from_millis(100);
        if msg.compact_revision() > 0 {
            return Ok(format!(
                "revision {} was compacted (now {})",
                rev + 1,
                msg.compact_revision()
            ));
        }
        if msg.canceled() {
            return Ok(format!("cancelled: {}", msg.cancel_reason()));
        }
        let mut log_changed = false;
        let mut live = Vec::new();
        for ev in msg.events() {
            let Some(kv) = ev.kv() else { continue };
            match kv.key().strip_prefix(live_prefix.as_slice()) {
                Some(rest) => {
                    let Some(id) = std::str::from_utf8(rest)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .map(NodeId)
                    else {
                        continue;
                    };
                    let rec = match ev.event_type() {
                        EventType::Put => decode_live(kv.value()),
                        EventType::Delete => None,
                    };
                    let prev = ev.prev_kv().and_then(|p| decode_live(p.value()));
                    live.push((id, rec, prev, kv.mod_revision()));
                }
                None => {
                    let own = lock(&r.commits).contains(&kv.mod_revision());
                    log_changed |= !own;
                }
            }
        }
        let last = msg
            .events()
            .iter()
            .filter_map(|e| e.kv().map(|kv| kv.mod_revision()))
            .max();
        if log_changed {
            resync(shared).await?;
        }
        for (id, rec, prev, rev) in live {
            apply_live(shared, r, id, rec, prev, rev);
        }
        // Every event up to `last` is applied: versions from now on say so
        // (see `crate::store::REVISION_SHIFT`).
        if let Some(last) = last {
            shared
                .write()
                .advance_to(crate::store::revision_version(last));
        }
    }
}

fn decode_live(v: &[u8]) -> Option<LiveRecord> {
    if v.len() > MAX_LIVE_RECORD {
        return None;
    }
    rmp_serde::from_slice(v).ok()
}

/// Loads the store again now, unless that was done less than
/// [`CATCH_UP_EVERY`] ago: for a host this replica does not know, which
/// may have joined on another replica a moment ago. Bounded, since any
/// stranger can ask for it with a fresh key.
pub(super) async fn catch_up(shared: &Arc<Shared>) {
    let Some(r) = replica(shared) else { return };
    let mut last = r.caught_up.lock().await;
    if last.is_some_and(|t| t.elapsed() < CATCH_UP_EVERY) {
        return;
    }
    if let Err(e) = resync(shared).await {
        debug!(error = %e, "cannot catch up with the store");
    }
    *last = Some(Instant::now());
}

/// Loads the store again and brings this replica's registry and
/// configuration up to it; the revision it was read at.
async fn resync(shared: &Arc<Shared>) -> Result<i64, String> {
    // Admin commands change the configuration under this lock, store first:
    // a load either sees their change or comes after it.
    let _change = shared.config_change.lock().await;
    let rs = shared.store.resync().await.map_err(|e| e.message.clone())?;
    for id in &rs.removed {
        if let Some((_, link)) = shared.sessions().remove(id) {
            link.close(super::CLOSE_REMOVED, b"node removed (on another replica)");
        }
    }
    if let Some(r) = replica(shared) {
        let mut remote = lock(&r.remote);
        for id in &rs.removed {
            remote.remove(id);
        }
        // Hosts that came online on another replica before this one saw
        // them join.
        let mut woke = false;
        let mut reg = shared.write();
        for id in &rs.added {
            if let Some(rem) = remote.get(id) {
                let eps = rem.endpoints.clone();
                woke |= reg.at_revision(rem.rev, |reg| reg.set_online(*id, true, Some(eps)));
            }
        }
        drop(reg);
        if woke {
            shared.changed.notify_one();
        }
    }
    let differs = {
        let cfg = shared.cluster();
        cfg.policy.as_ref().map(|(v, _)| v) != rs.config.policy.as_ref()
            || cfg.services != rs.config.services
            || cfg.routes != rs.config.routes
    };
    if differs {
        match ClusterConfig::from_stored(rs.config) {
            Ok(fresh) => {
                {
                    let mut cfg = shared.cluster_mut();
                    *cfg = fresh;
                }
                {
                    let cfg = shared.cluster();
                    refresh_routes(&mut shared.write(), &cfg);
                }
                debug!("configuration changed on another replica");
                shared.reconfigure();
            }
            Err(e) => {
                warn!(error = %e, "the configuration another replica stored does not parse; keeping the one in force")
            }
        }
    }
    Ok(rs.revision)
}

/// Every live key at `rev`: hosts on other replicas online, the rest (but
/// this replica's own sessions) offline.
async fn load_live(shared: &Shared, r: &Replica, rev: i64) -> Result<(), StoreError> {
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

fn remote_of(shared: &Shared, rec: LiveRecord, rev: i64) -> Remote {
    Remote {
        rev: u64::try_from(rev).unwrap_or(0),
        relay: rec.relay,
        endpoints: checked_endpoints(&rec.endpoints, shared.pool, shared.allow_loopback_endpoints),
    }
}

/// One live key changed at revision `rev`: `rec` as it is now (`None`:
/// deleted), `prev` as it was.
fn apply_live(
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

// ---------------------------------------------------------------- live

/// Writes queued live keys: puts with this replica's lease, deletes only
/// while the key is still on this lease (a host that moved on to another
/// replica keeps its new key).
async fn live_writer(shared: Arc<Shared>) {
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
async fn put_live(shared: &Shared, r: &Replica, ids: &[NodeId]) -> Result<(), StoreError> {
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
async fn delete_live(shared: &Shared, r: &Replica, id: NodeId) -> Result<(), StoreError> {
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
fn requeue_all(shared: &Shared, r: &Replica) {
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
async fn keep_lease(shared: Arc<Shared>) {
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
async fn keep_once(shared: &Shared, r: &Replica) -> Result<(), StoreError> {
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

// ---------------------------------------------------------------- relay

/// Forwards a datagram host `from` sent for `dst` (already checked: peers,
/// within `from`'s budget) to the replica holding `dst`'s session. Dropped
/// when there is none or its link is not up yet, like a packet to an
/// unreachable address.
pub(super) fn forward(shared: &Arc<Shared>, from: NodeId, dst: NodeId, bytes: &[u8]) {
    let Some(r) = replica(shared) else { return };
    let Some(addr) = r.holder(dst) else { return };
    if addr == r.relay_addr {
        return;
    }
    let conn = {
        let mut links = lock(&r.links);
        match links.get(&addr) {
            Some(LinkSlot { conn: Some(c), .. }) if c.close_reason().is_none() => Some(c.clone()),
            Some(slot) if slot.tried.elapsed() < REDIAL_AFTER => None,
            _ => {
                if links.len() >= MAX_LINKS && !links.contains_key(&addr) {
                    links
                        .retain(|_, s| s.conn.as_ref().is_some_and(|c| c.close_reason().is_none()));
                    if links.len() >= MAX_LINKS {
                        return;
                    }
                }
                links.insert(
                    addr.clone(),
                    LinkSlot {
                        conn: None,
                        tried: Instant::now(),
                    },
                );
                tokio::spawn(dial(shared.clone(), addr.clone()));
                None
            }
        }
    };
    let Some(conn) = conn else { return };
    let mut out = Vec::with_capacity(8 + bytes.len());
    out.extend_from_slice(&from.0.to_be_bytes());
    out.extend_from_slice(bytes);
    let _ = conn.send_datagram(out.into());
}

async fn dial(shared: Arc<Shared>, addr: String) {
    let Some(r) = replica(&shared) else { return };
    match tokio::time::timeout(Duration::from_secs(5), dial_link(r, &addr)).await {
        Ok(Ok(conn)) => {
            debug!(%addr, "replica link up");
            if let Some(slot) = lock(&r.links).get_mut(&addr) {
                slot.conn = Some(conn);
            }
        }
        Ok(Err(e)) => debug!(%addr, error = %e, "cannot open a replica link"),
        Err(_) => debug!(%addr, "replica link: no answer"),
    }
}

fn link_proof(key: &ring::hmac::Key, conn: &quinn::Connection) -> Option<ring::hmac::Tag> {
    let mut exported = [0u8; 32];
    conn.export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .ok()?;
    Some(ring::hmac::sign(key, &exported))
}

async fn dial_link(r: &Replica, addr: &str) -> Result<quinn::Connection, String> {
    let endpoint = lock(&r.endpoint).clone().ok_or("no endpoint yet")?;
    let sa = tokio::net::lookup_host(addr)
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let (mut tls, _) = weft_proto::tls::pinned_client_config(r.pin).map_err(|e| e.to_string())?;
    tls.alpn_protocols = vec![REPLICA_ALPN.to_vec()];
    let crypto =
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            5_000,
        ))))
        // Room for a host's largest relayed datagram plus the sender's id.
        .initial_mtu(1452)
        .datagram_send_buffer_size(1 << 20);
    cfg.transport_config(Arc::new(transport));
    let conn = endpoint
        .connect_with(cfg, sa, weft_proto::SERVER_NAME)
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    let proof = link_proof(&r.link_key, &conn).ok_or("no TLS exporter")?;
    let (mut send, _recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    send.write_all(proof.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    let _ = send.finish();
    Ok(conn)
}

/// Serves a link another replica opened: checks its proof, then delivers
/// the datagrams it forwards to this replica's hosts.
pub(super) async fn serve_link(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    pass: super::admission::Pass,
) -> Result<(), super::conn::ConnError> {
    use super::conn::ConnError;
    let Some(r) = replica(&shared) else {
        conn.close(1u32.into(), b"not a replica");
        return Ok(());
    };
    let (_send, mut recv) = tokio::time::timeout(super::HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::Timeout)??;
    let mut proof = [0u8; 32];
    tokio::time::timeout(super::HELLO_TIMEOUT, recv.read_exact(&mut proof))
        .await
        .map_err(|_| ConnError::Timeout)??;
    drop(pass);
    let mut exported = [0u8; 32];
    let ok = conn
        .export_keying_material(&mut exported, EXPORTER_LABEL, b"")
        .is_ok()
        && ring::hmac::verify(&r.link_key, &exported, &proof).is_ok();
    if !ok {
        warn!(remote = %conn.remote_address(), "replica link refused: it does not hold this coordinator's identity");
        conn.close(1u32.into(), b"not a replica of this coordinator");
        return Ok(());
    }
    debug!(remote = %conn.remote_address(), "replica link accepted");
    // The senders' budgets as their own replica applies them, again here:
    // one per sending host (only hosts that are peers of the destination,
    // so at most one per node).
    let mut budgets: HashMap<NodeId, RelayBudget> = HashMap::new();
    loop {
        let d = conn.read_datagram().await?;
        let Some((from, bytes)) = d.split_first_chunk::<8>() else {
            continue;
        };
        let from = NodeId(u64::from_be_bytes(*from));
        deliver(&shared, &mut budgets, from, bytes.to_vec());
    }
}

/// A datagram from host `from` on another replica, for a host here.
fn deliver(
    shared: &Shared,
    budgets: &mut HashMap<NodeId, RelayBudget>,
    from: NodeId,
    mut bytes: Vec<u8>,
) {
    use weft_proto::relay::Datagram;
    let Some(dst) = Datagram::node(&bytes) else {
        return;
    };
    let peers = shared
        .compiled()
        .nodes
        .get(&from)
        .is_some_and(|v| v.peers.contains(&dst));
    if !peers {
        return;
    }
    let now = Instant::now();
    let budget = budgets.entry(from).or_insert_with(|| RelayBudget::new(now));
    let allowed = match Datagram::parse(&bytes) {
        Some(Datagram::Punch { .. }) => budget.punch(dst, now),
        Some(Datagram::Relay { .. }) => budget.relay(bytes.len(), now),
        None => false,
    };
    if !allowed {
        return;
    }
    let Some(link) = shared.sessions().get(&dst).map(|(_, l)| l.clone()) else {
        return;
    };
    if Datagram::set_node(&mut bytes, from) {
        link.send_datagram(bytes);
    }
}
