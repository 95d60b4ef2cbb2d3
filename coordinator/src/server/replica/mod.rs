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

mod link;
mod live;
mod watch;

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

pub(super) use link::{forward, serve_link};
use live::*;
pub(super) use watch::catch_up;
use watch::*;

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
