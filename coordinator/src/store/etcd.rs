//! The etcd v3 backend: the store of several coordinator replicas.
//!
//! Every record is one key under the prefix (default `/weft`), its value
//! in the MessagePack encoding the redb backend uses:
//!
//! | key                               | value                          |
//! |-----------------------------------|--------------------------------|
//! | `P/nodes/<id, 20 digits>`         | [`NodeRecord`]                 |
//! | `P/tokens/<token id>`             | [`TokenRecord`]                |
//! | `P/meta/next_node_id`             | the counter, decimal ASCII     |
//! | `P/policy/<version, 20 digits>`   | `AclVersion`                   |
//! | `P/services/<name>`               | `ServiceInfo`                  |
//! | `P/routes/<node id, 20 digits>`   | [`super::RouteRecord`]         |
//! | `P/admins/<name>`                 | [`super::AdminRecord`]         |
//! | `P/index/subnet/<subnet>`         | the holder's node id (decimal) |
//! | `P/index/key/<public key, hex>`   | the holder's node id           |
//! | `P/index/name/<name>`             | the holder's node id           |
//!
//! The three index keys exist so that "no node holds this subnet, key or
//! name" is a compare on one key (`create_revision == 0`), not a scan. A
//! committed batch is one etcd transaction: a compare for each
//! precondition, then its puts and deletes ([`txn`]). A compare that fails
//! is a [`CommitError::Conflict`]; the writer reads the store again and
//! decides again.
//!
//! Every call has a deadline ([`EtcdConfig::timeout`]), and the client asks
//! for a leader on every request, so a cluster without quorum answers
//! "no leader" (or nothing, within the deadline) rather than hanging the
//! writer: [`StoreError::Etcd`] then says so.
//!
//! The client is async; this backend owns a one-thread tokio runtime and
//! blocks the writer thread on each call. Create it outside an async task
//! (the coordinator does, in `spawn_blocking`).

#[path = "etcd_txn.rs"]
mod txn;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, ConnectOptions, GetOptions, Identity, KvClient, SortOrder, SortTarget,
    TlsOptions,
};
use serde::{Deserialize, Serialize};
use weft_proto::msg::{AclVersion, ServiceInfo};
use weft_proto::NodeId;

use super::{
    CommitError, Loaded, NodeRecord, RouteRecord, StoreBackend, StoreError, StoredConfig,
    TokenRecord,
};

/// etcd's default `--max-txn-ops`.
pub const DEFAULT_MAX_TXN_OPS: usize = 128;
/// The most operations one change of a batch needs on either side of a
/// transaction (a join: node, token, counter and three index keys).
pub(crate) const OPS_PER_CHANGE: usize = 6;
/// The largest answer read from etcd (a load of many nodes).
const MAX_MESSAGE: usize = 64 << 20;

/// How to reach the etcd cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    /// Client addresses, `host:port` (or full `http(s)://` URLs).
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix.
    pub prefix: String,
    /// TLS: the CA that signed the members' certificates, and this
    /// client's certificate and key (all PEM). With a CA the client speaks
    /// TLS.
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Deadline of each call (connect, read, transaction).
    pub timeout: Duration,
    /// The members' `--max-txn-ops`: bounds how many changes one commit
    /// carries.
    pub max_txn_ops: usize,
}

impl EtcdConfig {
    /// From `etcd://HOST:PORT,HOST:PORT,...`.
    pub fn from_url(url: &str) -> Result<Self, String> {
        let Some(rest) = url.strip_prefix("etcd://") else {
            return Err(format!(
                "{url} is not an etcd store; write etcd://HOST:PORT[,HOST:PORT...]"
            ));
        };
        let endpoints: Vec<String> = rest
            .split(',')
            .map(|e| e.trim().trim_end_matches('/').to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "{url} names no etcd member; write etcd://HOST:PORT[,HOST:PORT...]"
            ));
        }
        for e in &endpoints {
            let hostport = e.rsplit_once("://").map_or(e.as_str(), |(_, r)| r);
            let port = hostport.rsplit_once(':').map(|(_, p)| p);
            if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
                return Err(format!(
                    "etcd member {e} in {url} has no port; write HOST:PORT (etcd's client port is usually 2379)"
                ));
            }
        }
        Ok(Self {
            endpoints,
            prefix: "/weft".into(),
            ca: None,
            cert: None,
            key: None,
            timeout: Duration::from_secs(5),
            max_txn_ops: DEFAULT_MAX_TXN_OPS,
        })
    }

    /// The endpoints as given, for messages.
    pub fn describe(&self) -> String {
        self.endpoints.join(",")
    }
}

pub struct EtcdBackend {
    /// `None` only while dropping.
    rt: Option<tokio::runtime::Runtime>,
    /// Kept for its connection; requests go through `kv`.
    _client: Client,
    kv: KvClient,
    /// The prefix with one trailing `/`.
    prefix: String,
    endpoints: String,
    timeout: Duration,
    max_txn_ops: usize,
    /// Each token as last read or written, with its `mod_revision`: a
    /// join's "the token is still as read" is a compare on that revision.
    token_revs: HashMap<String, (i64, TokenRecord)>,
    /// The revisions of this backend's latest commits, shared with the
    /// coordinator's watch: events at these revisions are this replica's
    /// own writes, already in its memory.
    commits: Option<CommitLog>,
    last_commit: std::sync::atomic::AtomicI64,
}

/// The revisions of a backend's latest commits (at most
/// [`COMMIT_LOG_LEN`]).
pub type CommitLog = std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<i64>>>;
pub const COMMIT_LOG_LEN: usize = 1024;

impl Drop for EtcdBackend {
    fn drop(&mut self) {
        // Safe in any context, async or not: nothing waits here.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn read_pem(what: &str, path: &Option<PathBuf>) -> Result<Option<Vec<u8>>, StoreError> {
    let Some(p) = path else { return Ok(None) };
    std::fs::read(p).map(Some).map_err(|e| StoreError::Etcd {
        endpoints: String::new(),
        reason: format!("cannot read the {what} {} ({e})", p.display()),
        hint: "check the path and its permissions",
    })
}

impl EtcdBackend {
    /// Connects to the cluster and checks that it answers. Blocks; call it
    /// outside an async task.
    pub fn connect(cfg: &EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = cfg.describe();
        let fail = |reason: String, hint: &'static str| StoreError::Etcd {
            endpoints: endpoints.clone(),
            reason,
            hint,
        };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("weft-etcd")
            .enable_all()
            .build()
            .map_err(|e| {
                fail(
                    format!("cannot start its client runtime ({e})"),
                    "check the coordinator's limits",
                )
            })?;
        let (urls, opts) = connect_options(cfg)?;
        let connect = Client::connect(urls, Some(opts));
        let client = rt
            .block_on(async { tokio::time::timeout(cfg.timeout, connect).await })
            .map_err(|_| {
                fail(
                    format!("did not answer within {:?}", cfg.timeout),
                    UNREACHABLE_HINT,
                )
            })?
            .map_err(|e| classify(&endpoints, &e))?;
        let kv = client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let prefix = format!("{}/", cfg.prefix.trim_end_matches('/'));
        let me = Self {
            rt: Some(rt),
            _client: client,
            kv,
            prefix,
            endpoints,
            timeout: cfg.timeout,
            max_txn_ops: cfg.max_txn_ops.max(OPS_PER_CHANGE),
            token_revs: HashMap::new(),
            commits: None,
            last_commit: std::sync::atomic::AtomicI64::new(0),
        };
        // The client connects lazily: ask once, so a wrong address fails
        // here rather than at the first join.
        me.get("meta/next_node_id", None)?;
        Ok(me)
    }

    /// Records the revision of each commit in `log`.
    pub fn with_commit_log(mut self, log: CommitLog) -> Self {
        self.commits = Some(log);
        self
    }

    pub(crate) fn note_commit(&self, revision: i64) {
        self.last_commit
            .fetch_max(revision, std::sync::atomic::Ordering::AcqRel);
        if let Some(log) = &self.commits {
            let mut l = log.lock().unwrap_or_else(|p| p.into_inner());
            if l.len() >= COMMIT_LOG_LEN {
                l.pop_front();
            }
            l.push_back(revision);
        }
    }

    pub(crate) fn key(&self, rest: &str) -> Vec<u8> {
        format!("{}{rest}", self.prefix).into_bytes()
    }

    fn key_str(&self, key: &[u8]) -> String {
        String::from_utf8_lossy(key).into_owned()
    }

    /// Runs one call on the runtime, within the deadline. A call the
    /// client could not even send (a member's port refused the connection:
    /// the balancer picked a member that is down) is sent again, to another
    /// member, until the deadline; one that reached a member is not, as a
    /// transaction may have been applied.
    fn call<T, Fut>(&self, mut make: impl FnMut() -> Fut) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let Some(rt) = self.rt.as_ref() else {
            return Err(classify(
                &self.endpoints,
                &etcd_client::Error::Internal("the client is closed".into()),
            ));
        };
        let attempts = async {
            loop {
                match make().await {
                    Err(e) if not_sent(&e) => {
                        tracing::debug!(error = %e, "etcd member unreachable; trying another");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    r => return r,
                }
            }
        };
        match rt.block_on(async { tokio::time::timeout(self.timeout, attempts).await }) {
            Ok(r) => r.map_err(|e| classify(&self.endpoints, &e)),
            Err(_) => Err(StoreError::Etcd {
                endpoints: self.endpoints.clone(),
                reason: format!(
                    "has no quorum or cannot be reached (no answer within {:?})",
                    self.timeout
                ),
                hint: NO_QUORUM_HINT,
            }),
        }
    }

    /// Reads `rest` (a key, or a prefix with `opts`).
    pub(crate) fn get(
        &self,
        rest: &str,
        opts: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        let key = self.key(rest);
        self.call(|| {
            let mut kv = self.kv.clone();
            let (key, opts) = (key.clone(), opts.clone());
            async move { kv.get(key, opts).await }
        })
    }

    /// Every value under `rest`, decoded, in key order; at `revision` if
    /// given.
    fn all<T: for<'a> Deserialize<'a>>(
        &self,
        rest: &str,
        revision: Option<i64>,
    ) -> Result<(Vec<T>, i64), StoreError> {
        let mut opts = GetOptions::new().with_prefix();
        if let Some(r) = revision {
            opts = opts.with_revision(r);
        }
        let resp = self.get(rest, Some(opts))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let mut out = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            out.push(self.decode(kv.key(), kv.value())?);
        }
        Ok((out, rev))
    }

    pub(crate) fn decode<T: for<'a> Deserialize<'a>>(
        &self,
        key: &[u8],
        value: &[u8],
    ) -> Result<T, StoreError> {
        rmp_serde::from_slice(value).map_err(|e| self.corrupt(key, &e.to_string()))
    }

    pub(crate) fn corrupt(&self, key: &[u8], why: &str) -> StoreError {
        let key = self.key_str(key);
        StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            reason: format!("holds a corrupt record at {key} ({why})"),
            hint: "restore etcd from a snapshot (etcdctl snapshot restore), or remove that key with etcdctl del if the record is expendable",
        }
    }

    fn counter(&self, revision: Option<i64>) -> Result<u64, StoreError> {
        let opts = revision.map(|r| GetOptions::new().with_revision(r));
        let resp = self.get(COUNTER, opts)?;
        match resp.kvs().first() {
            None => Ok(1),
            Some(kv) => std::str::from_utf8(kv.value())
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.corrupt(kv.key(), "not a decimal node id")),
        }
    }
}

/// The client addresses and options for `cfg` (deadlines, keep-alive, a
/// leader on every request, TLS).
pub(crate) fn connect_options(
    cfg: &EtcdConfig,
) -> Result<(Vec<String>, ConnectOptions), StoreError> {
    let endpoints = cfg.describe();
    let fail = |reason: String, hint: &'static str| StoreError::Etcd {
        endpoints: endpoints.clone(),
        reason,
        hint,
    };
    let mut opts = ConnectOptions::new()
        .with_timeout(cfg.timeout)
        .with_connect_timeout(cfg.timeout.min(Duration::from_secs(3)))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_require_leader(true);
    let ca = read_pem("etcd CA", &cfg.ca)?;
    let cert = read_pem("etcd client certificate", &cfg.cert)?;
    let key = read_pem("etcd client key", &cfg.key)?;
    let mut urls = cfg.endpoints.clone();
    if ca.is_some() || cert.is_some() {
        let mut tls = TlsOptions::new();
        if let Some(ca) = ca {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(c, k)),
            (None, None) => {}
            _ => {
                return Err(fail(
                    "was given only one of --etcd-cert and --etcd-key".into(),
                    "pass both (the client certificate and its key), or neither",
                ))
            }
        }
        opts = opts.with_tls(tls);
        for u in &mut urls {
            if !u.contains("://") {
                *u = format!("https://{u}");
            }
        }
    }
    Ok((urls, opts))
}

/// An async client on the caller's runtime (the coordinator's watch and
/// live-state tasks), connected within the deadline.
pub(crate) async fn connect_async(cfg: &EtcdConfig) -> Result<Client, StoreError> {
    let (urls, opts) = connect_options(cfg)?;
    let endpoints = cfg.describe();
    match tokio::time::timeout(cfg.timeout, Client::connect(urls, Some(opts))).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(classify(&endpoints, &e)),
        Err(_) => Err(StoreError::Etcd {
            endpoints,
            reason: format!("did not answer within {:?}", cfg.timeout),
            hint: UNREACHABLE_HINT,
        }),
    }
}

pub(crate) const COUNTER: &str = "meta/next_node_id";
const NO_QUORUM_HINT: &str =
    "writes are refused until a majority of its members is back; check the members with etcdctl endpoint health";
const UNREACHABLE_HINT: &str =
    "check that its members run and that --store lists their client addresses (HOST:PORT)";

pub(crate) fn node_key(id: NodeId) -> String {
    format!("nodes/{:020}", id.0)
}
pub(crate) fn token_key(id: &str) -> String {
    format!("tokens/{id}")
}
pub(crate) fn policy_key(version: u64) -> String {
    format!("policy/{version:020}")
}
pub(crate) fn routes_key(id: NodeId) -> String {
    format!("routes/{:020}", id.0)
}
pub(crate) fn admin_key(name: &str) -> String {
    format!("admins/{name}")
}

pub(crate) fn service_key(name: &str) -> String {
    format!("services/{name}")
}
pub(crate) fn index_keys(n: &NodeRecord) -> [String; 3] {
    [
        format!("index/subnet/{}", n.subnet),
        format!("index/key/{}", hex::encode(n.public_key.0)),
        format!("index/name/{}", n.name),
    ]
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(|e| StoreError::Corrupt(format!("cannot encode: {e}")))
}

/// Whether the request never left this process (no member took the
/// connection).
fn not_sent(e: &etcd_client::Error) -> bool {
    let text = e.to_string().to_ascii_lowercase();
    text.contains("tcp connect error") || text.contains("connection refused")
}

/// What an etcd error means for the user.
pub(crate) fn classify(endpoints: &str, e: &etcd_client::Error) -> StoreError {
    let text = e.to_string();
    let lower = text.to_ascii_lowercase();
    let any = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let (reason, hint) = if any(&[
        "no leader",
        "request timed out",
        "leader changed",
        "not enough started members",
    ]) {
        (format!("has no quorum ({text})"), NO_QUORUM_HINT)
    } else if any(&["timeout expired", "timed out", "deadline", "cancelled"]) {
        (
            format!("has no quorum or cannot be reached ({text})"),
            NO_QUORUM_HINT,
        )
    } else if lower.contains("too many operations") {
        (
            format!("refused the batch ({text})"),
            "start the etcd members with a larger --max-txn-ops (128 at least)",
        )
    } else if lower.contains("permission denied")
        || lower.contains("unauthenticated")
        || lower.contains("certificate")
        || lower.contains("tls")
    {
        (
            format!("refused this client ({text})"),
            "check --etcd-ca, --etcd-cert and --etcd-key against the members' TLS setup",
        )
    } else if matches!(e, etcd_client::Error::TransportError(_))
        || lower.contains("unavailable")
        || lower.contains("connect")
        || lower.contains("transport")
    {
        (format!("cannot be reached ({text})"), UNREACHABLE_HINT)
    } else {
        (
            format!("failed ({text})"),
            "check the members' logs; the coordinator retries with the next request",
        )
    };
    StoreError::Etcd {
        endpoints: endpoints.to_string(),
        reason,
        hint,
    }
}

/// Everything a store holds, for [`migrate`] and backups
/// ([`crate::backup`]): what [`StoreBackend::load`] reads, with every token
/// and the whole policy history.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Export {
    pub loaded: Loaded,
    pub tokens: Vec<TokenRecord>,
    pub policy_history: Vec<AclVersion>,
}

impl Export {
    /// Reads everything `backend` holds.
    pub fn read(backend: &mut impl StoreBackend) -> Result<Self, StoreError> {
        Ok(Self {
            loaded: backend.load()?,
            tokens: backend.tokens()?,
            policy_history: backend.policy_history()?,
        })
    }
}

/// What [`migrate`] moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migrated {
    pub nodes: usize,
    pub tokens: usize,
    pub policy_versions: usize,
    pub services: usize,
    pub routes: usize,
}

/// Copies the redb store at `db` into etcd under `to`'s prefix: the same
/// nodes (ids, keys, subnets, names), tokens, node id counter, policy
/// history, services and routes, so hosts reconnect to the coordinator on
/// etcd without joining again. Refuses a prefix that holds keys unless
/// `force` (which deletes them first). Blocks; the coordinator must be
/// stopped (redb's lock on the file says so otherwise).
pub fn migrate(db: &std::path::Path, to: &EtcdConfig, force: bool) -> Result<Migrated, StoreError> {
    if !db.exists() {
        return Err(StoreError::Db {
            path: db.display().to_string(),
            source: "no such file: is --from the coordinator's state dir?".into(),
        });
    }
    let mut from = super::redb::RedbBackend::open(db)?;
    let data = Export::read(&mut from)?;
    drop(from);
    let mut be = EtcdBackend::connect(to)?;
    be.clear_prefix(force)?;
    be.import(&data)?;
    Ok(Migrated {
        nodes: data.loaded.nodes.len(),
        tokens: data.tokens.len(),
        policy_versions: data.policy_history.len(),
        services: data.loaded.config.services.len(),
        routes: data.loaded.config.routes.len(),
    })
}

impl EtcdBackend {
    /// Makes sure the prefix is empty: refuses one that holds keys unless
    /// `force`, which deletes them.
    pub fn clear_prefix(&mut self, force: bool) -> Result<(), StoreError> {
        let held = self.get("", Some(GetOptions::new().with_prefix().with_count_only()))?;
        if held.count() > 0 {
            if !force {
                return Err(StoreError::Etcd {
                    endpoints: self.endpoints.clone(),
                    reason: format!(
                        "already holds {} keys under {}",
                        held.count(),
                        self.prefix
                    ),
                    hint: "migrate or restore into an empty prefix (--etcd-prefix), or pass --force to replace what it holds",
                });
            }
            let key = self.key("");
            self.call(|| {
                let mut kv = self.kv.clone();
                let key = key.clone();
                async move {
                    kv.delete(key, Some(etcd_client::DeleteOptions::new().with_prefix()))
                        .await
                }
            })?;
        }
        Ok(())
    }

    /// Writes `data` as this backend lays it out, in transactions of at
    /// most `max_txn_ops` puts.
    pub fn import(&mut self, data: &Export) -> Result<(), StoreError> {
        let mut puts: Vec<(String, Vec<u8>)> = Vec::new();
        for n in &data.loaded.nodes {
            puts.push((node_key(n.id), encode(n)?));
            for k in index_keys(n) {
                puts.push((k, n.id.0.to_string().into_bytes()));
            }
        }
        for t in &data.tokens {
            puts.push((token_key(&t.id), encode(t)?));
        }
        puts.push((
            COUNTER.to_string(),
            data.loaded.next_node_id.to_string().into_bytes(),
        ));
        let mut history = data.policy_history.clone();
        if let Some(p) = &data.loaded.config.policy {
            if !history.iter().any(|h| h.version == p.version) {
                history.push(p.clone());
            }
        }
        for v in &history {
            puts.push((policy_key(v.version), encode(v)?));
        }
        for s in data.loaded.config.services.values() {
            puts.push((service_key(&s.name), encode(s)?));
        }
        for a in data.loaded.config.admins.values() {
            puts.push((admin_key(&a.name), encode(a)?));
        }
        for (id, r) in &data.loaded.config.routes {
            puts.push((routes_key(*id), encode(r)?));
        }
        for chunk in puts.chunks(self.max_txn_ops.max(1)) {
            let ops: Vec<etcd_client::TxnOp> = chunk
                .iter()
                .map(|(k, v)| etcd_client::TxnOp::put(self.key(k), v.clone(), None))
                .collect();
            self.call(|| {
                let mut kv = self.kv.clone();
                let txn = etcd_client::Txn::new().and_then(ops.clone());
                async move { kv.txn(txn).await }
            })?;
        }
        self.token_revs.clear();
        Ok(())
    }
}

impl StoreBackend for EtcdBackend {
    fn load(&mut self) -> Result<Loaded, StoreError> {
        // Everything at one revision: the nodes' read fixes it.
        let (nodes, rev) = self.all::<NodeRecord>("nodes/", None)?;
        let at = Some(rev).filter(|r| *r > 0);
        let next_node_id = self.counter(at)?;
        let mut config = StoredConfig::default();
        let mut last = GetOptions::new()
            .with_prefix()
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1);
        if let Some(r) = at {
            last = last.with_revision(r);
        }
        let resp = self.get("policy/", Some(last))?;
        if let Some(kv) = resp.kvs().first() {
            config.policy = Some(self.decode::<AclVersion>(kv.key(), kv.value())?);
        }
        for s in self.all::<ServiceInfo>("services/", at)?.0 {
            config.services.insert(s.name.clone(), s);
        }
        for a in self.all::<super::AdminRecord>("admins/", at)?.0 {
            config.admins.insert(a.name.clone(), a);
        }
        let mut opts = GetOptions::new().with_prefix();
        if let Some(r) = at {
            opts = opts.with_revision(r);
        }
        let resp = self.get("routes/", Some(opts))?;
        let base = self.key("routes/").len();
        for kv in resp.kvs() {
            let id = kv
                .key()
                .get(base..)
                .and_then(|k| std::str::from_utf8(k).ok())
                .and_then(|k| k.parse().ok())
                .ok_or_else(|| self.corrupt(kv.key(), "not a node id"))?;
            let r: RouteRecord = self.decode(kv.key(), kv.value())?;
            config.routes.insert(NodeId(id), r);
        }
        Ok(Loaded {
            nodes,
            next_node_id,
            config,
            revision: rev,
        })
    }

    fn token(&mut self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let resp = self.get(&token_key(id), None)?;
        let Some(kv) = resp.kvs().first() else {
            self.token_revs.remove(id);
            return Ok(None);
        };
        let t: TokenRecord = self.decode(kv.key(), kv.value())?;
        self.token_revs
            .insert(id.to_string(), (kv.mod_revision(), t.clone()));
        Ok(Some(t))
    }

    fn tokens(&mut self) -> Result<Vec<TokenRecord>, StoreError> {
        Ok(self.all("tokens/", None)?.0)
    }

    fn policy_history(&mut self) -> Result<Vec<AclVersion>, StoreError> {
        Ok(self.all("policy/", None)?.0)
    }

    fn commit(&mut self, changes: &[super::Change]) -> Result<(), CommitError> {
        txn::commit(self, changes)
    }

    fn shared(&self) -> bool {
        true
    }

    fn max_changes_per_commit(&self) -> usize {
        self.max_txn_ops / OPS_PER_CHANGE
    }

    fn last_revision(&self) -> i64 {
        self.last_commit.load(std::sync::atomic::Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    #[test]
    fn store_urls() {
        let c = EtcdConfig::from_url("etcd://127.0.0.1:2379,10.0.0.2:22379/").unwrap();
        assert_eq!(c.endpoints, ["127.0.0.1:2379", "10.0.0.2:22379"]);
        assert_eq!(c.prefix, "/weft");
        for bad in ["etcd://", "etcd://host", "redb://x", "etcd://h:99999"] {
            assert!(EtcdConfig::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_what_happened() {
        let e = classify(
            "a:1",
            &etcd_client::Error::InvalidArgs("etcdserver: no leader".into()),
        );
        let m = e.to_string();
        assert!(
            m.contains("etcd at a:1 has no quorum") && m.contains("writes are refused"),
            "{m}"
        );
        let e = classify("a:1", &etcd_client::Error::InvalidArgs("bad".into()));
        assert!(!e.to_string().contains("quorum"), "{e}");
    }
}
