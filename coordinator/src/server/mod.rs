//! The QUIC endpoint: one task per connection, one session per host.
//!
//! A host session sends the welcome, then loops: compute what changed since
//! the version it last sent ([`Registry::changes_since`]), send it (chunked),
//! and sleep until the coalescer publishes a new version. The coalescer wakes
//! on any change, waits `Config::coalesce`, then publishes once, so a burst of
//! changes costs each host one message.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use rand::RngCore;
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, instrument, warn};
use weft_proto::auth::{ct_eq32, secret_hash, verify_key_proof, EXPORTER_LABEL};
use weft_proto::msg::{
    AdminCommand, AdminReply, AdminRequest, ClientMsg, ErrorCode, ErrorReply, Hello, HelloRequest,
    NodeInfo, ServerMsg, Welcome,
};
use weft_proto::token::JoinToken;
use weft_proto::{codec, HostSubnet, NodeId, WgPublicKey};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::admin::AdminCredential;
use crate::cluster::{compile_views, refresh_routes, ClusterConfig, Compiled};
use crate::ipam::Ipam;
use crate::metrics::{CoordinatorMetrics, Refusal};
use crate::registry::Registry;
use crate::store::{self, refuse, JoinArgs, StoreHandle, TokenRecord};
use crate::{now_unix, state, Config, CoordinatorError};

pub use weft_proto::msg::{CLOSE_REMOVED, CLOSE_REPLACED};

mod admin_creds;
mod admin_ops;
mod admission;
mod config_ops;
mod conn;
mod expiry_sweep;
mod fanout;
mod frames;
mod link;
mod overview;
mod path_reports;
mod reflector;
mod relay_budget;
pub mod replica;
mod session;
mod view;

use admin_ops::create_token;
use conn::serve;

/// Peers per netmap frame.
const PEERS_PER_CHUNK: usize = 256;
/// How long a connection has to finish its TLS handshake and send its
/// hello before it is dropped.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest hello accepted: a buffer sized from a length a stranger
/// declares is never bigger than this.
const MAX_HELLO: usize = 64 * 1024;
/// The longest the coalescer waits, however many sessions there are.
const MAX_COALESCE: Duration = Duration::from_millis(50);
/// [`weft_proto::keepalive_scaled`] in milliseconds.
pub(super) fn keepalive_ms(hosts: usize, per_host: Duration) -> u32 {
    u32::try_from(weft_proto::keepalive_scaled(hosts, per_host).as_millis()).unwrap_or(u32::MAX)
}

impl Shared {
    /// The keep-alive interval asked of hosts now. It scales with the hosts
    /// registered, not those connected: after a restart, the first hosts to
    /// reconnect are asked for what they will be asked once all are back,
    /// and none has to renew its session for it.
    fn keepalive_now(&self) -> Duration {
        weft_proto::keepalive_scaled(self.read().len(), self.keepalive_per_host)
    }
}

struct Shared {
    epoch: u64,
    /// Where the identity files are (read by backups).
    state_dir: PathBuf,
    registry: Arc<RwLock<Registry>>,
    store: StoreHandle,
    changed: Arc<Notify>,
    published: watch::Sender<u64>,
    sessions: Mutex<HashMap<NodeId, (u64, link::Link)>>,
    next_session: AtomicU64,
    /// The keep-alive interval updates ask hosts for (see
    /// `weft_proto::keepalive_for`), set by the coalescer.
    keepalive_ms: std::sync::atomic::AtomicU32,
    keepalive_per_host: Duration,
    secret: StaticSecret,
    public: [u8; 32],
    pin: [u8; 32],
    admin_hash: [u8; 32],
    advertise: Vec<String>,
    pool: HostSubnet,
    /// TCP port of the TLS fallback, put into tokens.
    tcp_port: Option<u16>,
    domain: String,
    /// Whether hosts may report loopback endpoints (benchmarks on one
    /// machine).
    allow_loopback_endpoints: bool,
    /// Policy, services and routes in force. Lock order: `cluster` before
    /// `registry`, never the other way round.
    cluster: RwLock<ClusterConfig>,
    /// Every host's compiled view of `cluster`.
    compiled: RwLock<Arc<Compiled>>,
    /// Set when nodes joined or left, so the views must be compiled again.
    membership_changed: Arc<AtomicBool>,
    /// Held for a whole compilation (see [`Shared::recompile`]).
    compiling: Mutex<()>,
    /// Serializes read-modify-write changes of `cluster` (admin commands and
    /// route advertisements), which await the store in between.
    config_change: tokio::sync::Mutex<()>,
    /// Connections still in their hello.
    gate: Arc<admission::Gate>,
    /// Join attempts per source and per token id.
    joins: admission::JoinLimiter,
    /// With an etcd store: this replica's share of the state the replicas
    /// keep together (watch, live keys, relay links).
    replica: Option<Arc<replica::Replica>>,
    metrics: CoordinatorMetrics,
    fanout: fanout::Fanout,
    /// Update frames many sessions send alike, encoded once.
    frames: frames::FrameCache,
    /// Each connected host's report of its paths (for the web page).
    paths: path_reports::PathReports,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }
    fn cluster(&self) -> RwLockReadGuard<'_, ClusterConfig> {
        self.cluster.read().unwrap_or_else(|p| p.into_inner())
    }
    fn cluster_mut(&self) -> RwLockWriteGuard<'_, ClusterConfig> {
        self.cluster.write().unwrap_or_else(|p| p.into_inner())
    }
    fn compiled(&self) -> Arc<Compiled> {
        self.compiled
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Compiles every host's view again from the registry and the
    /// configuration, then wakes the sessions. Cheap enough to do on every
    /// policy, service, route or membership change (milliseconds at 1,000
    /// hosts). Sessions see the new views when next woken.
    fn recompile(&self) {
        // One compilation at a time, each reading the configuration when it
        // starts: an older one can never replace a newer one.
        let _one = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        let cfg = self.cluster();
        self.write().bump();
        let compiled = Arc::new(compile_views(&self.read(), &cfg));
        drop(cfg);
        *self.compiled.write().unwrap_or_else(|p| p.into_inner()) = compiled;
    }

    /// [`Shared::recompile`], then wakes the sessions to send the changes.
    fn reconfigure(&self) {
        self.recompile();
        self.changed.notify_one();
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (u64, link::Link)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running coordinator. Dropping it does not stop it; call
/// [`Coordinator::shutdown`].
pub struct Coordinator {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    state_dir: PathBuf,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Coordinator {
    /// Opens the state dir (creating keys, database and admin credential at
    /// first start) and starts serving.
    pub async fn start(config: Config) -> Result<Self, CoordinatorError> {
        let identity = state::load_or_create(&config.state_dir)?;
        let ipam = Ipam::new(config.pool, config.subnet_prefix)?;
        // A lone coordinator keeps its epoch across restarts (replicas take
        // theirs from etcd, below).
        let epoch = match &config.store {
            crate::StoreConfig::Redb => state::load_or_create_epoch(&config.state_dir)?,
            _ => rand::rngs::OsRng.next_u64() | 1,
        };
        let changed = Arc::new(Notify::new());
        let membership_changed = Arc::new(AtomicBool::new(false));
        let on_commit = {
            let changed = changed.clone();
            let membership = membership_changed.clone();
            Box::new(move |_: &[NodeId]| {
                membership.store(true, Ordering::Release);
                changed.notify_one();
            })
        };
        let db_path = config.state_dir.join(state::DB_FILE);
        let store_config = config.store.clone();
        let commit_log = store::etcd::CommitLog::default();
        let log = commit_log.clone();
        let opened = tokio::task::spawn_blocking(move || match store_config {
            crate::StoreConfig::Redb => store::open(&db_path, ipam, epoch, on_commit),
            crate::StoreConfig::Etcd(cfg) => store::open_with(
                store::etcd::EtcdBackend::connect(&cfg)?.with_commit_log(log),
                ipam,
                epoch,
                on_commit,
            ),
        })
        .await
        .map_err(|e| CoordinatorError::Tls(format!("store open task failed: {e}")))??;

        let socket = bind_udp(config.listen)?;
        let local = socket
            .local_addr()
            .map_err(|source| CoordinatorError::Listen {
                addr: config.listen,
                source,
            })?;
        let advertise = if config.advertise.is_empty() {
            vec![default_advertise(local).to_string()]
        } else {
            config.advertise.clone()
        };

        // Admin credential: keep the secret across starts, refresh addresses.
        let admin_path = state::admin_path(&config.state_dir);
        let admin_secret = match AdminCredential::load(&admin_path) {
            Ok(c)
                if hex::decode(&c.secret)
                    .map(|s| s.len() == 32)
                    .unwrap_or(false) =>
            {
                c.secret
            }
            _ => {
                let mut s = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut s);
                hex::encode(s)
            }
        };
        let mut admin_addrs = vec![admin_local_addr(local).to_string()];
        for a in &advertise {
            if !admin_addrs.contains(a) {
                admin_addrs.push(a.clone());
            }
        }
        let cred = AdminCredential {
            coordinator: admin_addrs,
            pin: hex::encode(identity.pin),
            secret: admin_secret.clone(),
            web: config.web_listen.map(|w| web_addr(w, &advertise)),
        };
        cred.save(&admin_path)?;
        let admin_hash = secret_hash(&hex::decode(&admin_secret).unwrap_or_default());
        let replica = match &config.store {
            crate::StoreConfig::Etcd(cfg) => Some(Arc::new(
                replica::Replica::connect(
                    cfg,
                    identity.pin,
                    admin_hash,
                    state::replica_link_key(&identity.secret),
                    commit_log,
                    config
                        .replica_addr
                        .clone()
                        .unwrap_or_else(|| advertise.first().cloned().unwrap_or_default()),
                )
                .await?,
            )),
            crate::StoreConfig::Redb => None,
        };

        let server_config = server_config(&identity)?;
        let tcp_tls = Arc::new(tls_config(&identity)?);
        let mut endpoint_config =
            quinn::EndpointConfig::new(Arc::new(state::reset_key(&identity.secret)));
        // quinn sends at most one stateless reset per interval, for all
        // connections together; after a restart every host needs one, so
        // allow 10,000 a second (a reset is always smaller than the packet
        // that caused it: no amplification).
        endpoint_config.min_reset_interval(Duration::from_micros(100));
        let cid_key = state::connection_id_key(&identity.secret);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        let endpoint = quinn::Endpoint::new(
            endpoint_config,
            Some(server_config.clone()),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| CoordinatorError::Listen {
            addr: config.listen,
            source,
        })?;

        let (published, _) = watch::channel(0u64);
        let metrics = CoordinatorMetrics::new(opened.commit_seconds.clone());
        let epoch = match &replica {
            Some(r) => {
                // Replicas share the epoch and log the etcd revision of
                // each change: a host failing over resumes with a delta
                // (see `replica`).
                let mut reg = opened.registry.write().unwrap_or_else(|p| p.into_inner());
                reg.track_revisions(r.epoch, u64::try_from(opened.revision).unwrap_or(0));
                r.epoch
            }
            None => {
                // Above every version the previous process handed out
                // (fewer than 1,024 changes a millisecond), so hosts'
                // cached versions are never taken for this one's.
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0));
                let mut reg = opened.registry.write().unwrap_or_else(|p| p.into_inner());
                reg.start_at(now_ms << 10);
                // What hosts' cached netmaps hold, so the ones that come
                // back unchanged are no news to the others.
                if let Some(hint) = crate::live_hint::load(&config.state_dir, epoch) {
                    debug!(
                        nodes = hint.nodes.len(),
                        floor = hint.floor,
                        last = hint.last,
                        "resuming from the live hint"
                    );
                    reg.seed(hint);
                }
                reg.attach_hint(crate::live_hint::LiveHint::new(&config.state_dir));
                epoch
            }
        };
        let shared = Arc::new(Shared {
            epoch,
            state_dir: config.state_dir.clone(),
            registry: opened.registry,
            store: opened.handle,
            changed,
            published,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            keepalive_ms: std::sync::atomic::AtomicU32::new(keepalive_ms(
                0,
                config.keepalive_per_host,
            )),
            keepalive_per_host: config.keepalive_per_host,
            secret: identity.secret,
            public: identity.public,
            pin: identity.pin,
            admin_hash,
            advertise,
            pool: opened.ipam_pool,
            tcp_port: config.tcp_port,
            fanout: fanout::Fanout::new(metrics.fanout.clone()),
            frames: frames::FrameCache::default(),
            metrics,
            paths: path_reports::PathReports::default(),
            domain: config.domain.clone(),
            allow_loopback_endpoints: config.allow_loopback_endpoints,
            cluster: RwLock::new(ClusterConfig::from_stored(opened.config)?),
            compiled: RwLock::new(Arc::new(Compiled::default())),
            membership_changed,
            compiling: Mutex::new(()),
            config_change: tokio::sync::Mutex::new(()),
            gate: Arc::default(),
            joins: admission::JoinLimiter::default(),
            replica,
        });
        // Routes in force are part of each node's netmap record.
        {
            // Lock order: configuration, then registry.
            let cfg = shared.cluster();
            refresh_routes(&mut shared.write(), &cfg);
        }
        shared.recompile();
        let nodes = shared.read().len();
        info!(listen = %local, nodes, pin = %hex::encode(shared.pin), "coordinator started");

        let coalescer = tokio::spawn(coalesce(shared.clone(), config.coalesce));
        let acceptor = tokio::spawn(accept(shared.clone(), endpoint.clone(), server_config));
        let mut tasks = vec![coalescer, acceptor];
        if shared.replica.is_none() {
            tasks.push(tokio::spawn(announce_offline_after_start(shared.clone())));
        }
        tasks.push(tokio::spawn(expiry_sweep::run(
            shared.clone(),
            config.expiry,
        )));
        if let Some(r) = &shared.replica {
            r.set_endpoint(endpoint.clone());
            tasks.extend(replica::spawn(&shared));
        }
        tasks.extend(reflector::spawn(local, shared.metrics.reflector.clone()));
        tasks.extend(start_http(&shared, &config).await?);
        // Hosts whose UDP is blocked reach the coordinator over TLS on TCP
        // (by default on the QUIC port number).
        let tcp_addr = SocketAddr::new(local.ip(), config.tcp_port.unwrap_or(local.port()));
        match tokio::net::TcpListener::bind(tcp_addr).await {
            Ok(listener) => {
                let acceptor = tokio_rustls::TlsAcceptor::from(tcp_tls);
                tasks.push(tokio::spawn(accept_tcp(shared.clone(), listener, acceptor)));
            }
            Err(e) => {
                warn!(addr = %tcp_addr, error = %e, "TCP fallback unavailable; hosts without UDP cannot join")
            }
        }
        Ok(Self {
            shared,
            endpoint,
            state_dir: config.state_dir,
            tasks,
        })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> Result<SocketAddr, std::io::Error> {
        self.endpoint.local_addr()
    }

    /// The admin credential file written at start.
    pub fn admin_credential_path(&self) -> PathBuf {
        state::admin_path(&self.state_dir)
    }

    /// SHA-256 pin of the TLS public key.
    pub fn pin(&self) -> [u8; 32] {
        self.shared.pin
    }

    /// The coordinator's x25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.shared.public
    }

    /// Number of registered nodes.
    pub fn node_count(&self) -> usize {
        self.shared.read().len()
    }

    /// Creates a join token directly (the admin command does the same).
    pub async fn create_token(
        &self,
        uses: Option<u32>,
        expires_in: Option<Duration>,
        tags: Vec<String>,
    ) -> Result<String, ErrorReply> {
        match create_token(
            &self.shared,
            uses,
            expires_in.map(|d| d.as_secs()),
            tags,
            admin_creds::ROOT,
        )
        .await?
        {
            AdminReply::TokenCreated { token, .. } => Ok(token),
            _ => Err(refuse(ErrorCode::Internal, "unexpected reply")),
        }
    }

    /// Serves until `signal` completes, then shuts down.
    pub async fn run_until(self, signal: impl std::future::Future<Output = ()>) {
        signal.await;
        self.shutdown().await;
    }

    /// Closes every connection and stops serving.
    pub async fn shutdown(self) {
        // Hosts keep their peers as they are now; so does the hint (the
        // sessions closing below are no news to a restarted coordinator).
        self.shared.write().detach_hint();
        self.endpoint
            .close(0u32.into(), b"coordinator shutting down");
        for t in &self.tasks {
            t.abort();
        }
        if let Some(r) = &self.shared.replica {
            r.shutdown().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        self.shared.store.shutdown().await;
    }
}

fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, CoordinatorError> {
    let err = |source| CoordinatorError::Listen { addr, source };
    let domain = if addr.is_ipv4() {
        socket2::Domain::IPV4
    } else {
        socket2::Domain::IPV6
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))
        .map_err(err)?;
    // Many hosts reconnecting at once arrive as one burst.
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    sock.bind(&addr.into()).map_err(err)?;
    Ok(sock.into())
}

/// The address put in join tokens when none is given: the listen address,
/// or for a wildcard listen the address of the interface with the default
/// route (found without sending anything), or loopback.
fn default_advertise(local: SocketAddr) -> SocketAddr {
    if !local.ip().is_unspecified() {
        return local;
    }
    let probe = std::net::UdpSocket::bind(("0.0.0.0", 0))
        .and_then(|s| s.connect(("192.0.2.1", 9)).map(|_| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => SocketAddr::new(a.ip(), local.port()),
        _ => admin_local_addr(local),
    }
}

fn admin_local_addr(local: SocketAddr) -> SocketAddr {
    if local.ip().is_unspecified() {
        let ip: std::net::IpAddr = if local.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        };
        SocketAddr::new(ip, local.port())
    } else {
        local
    }
}

/// The TLS settings of both listeners (QUIC, and TLS over TCP).
fn tls_config(identity: &state::Identity) -> Result<rustls::ServerConfig, CoordinatorError> {
    let tls_err = |e: &dyn std::fmt::Display| CoordinatorError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| tls_err(&e))?;
    // Every weft version's id, newest first (older ones only to refuse
    // them in their own protocol), then the replicas'.
    tls.alpn_protocols = weft_proto::coordinator_alpns();
    tls.alpn_protocols.push(replica::REPLICA_ALPN.to_vec());
    Ok(tls)
}

fn server_config(identity: &state::Identity) -> Result<quinn::ServerConfig, CoordinatorError> {
    let tls_err = |e: &dyn std::fmt::Display| CoordinatorError::Tls(e.to_string());
    let tls = tls_config(identity)?;
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(quic_transport(weft_proto::KEEPALIVE)));
    Ok(cfg)
}

/// The QUIC transport of a connection the coordinator keeps alive every
/// `keepalive` (QUIC keep-alives, answered by the host's QUIC stack: no
/// application on either side wakes for them), given up after
/// [`weft_proto::liveness_deadline`] of it with nothing heard. The
/// interval is fixed for the connection's life; [`accept`] picks it for
/// the number of hosts connected then.
fn quic_transport(keepalive: Duration) -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    let idle = weft_proto::liveness_deadline(keepalive).min(weft_proto::SESSION_IDLE_TIMEOUT);
    transport
        .max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(keepalive))
        .max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok())
        .stream_receive_window(quinn::VarInt::from_u32(64 * 1024))
        .receive_window(quinn::VarInt::from_u32(128 * 1024))
        .send_window(96 * 1024)
        // Relayed WireGuard datagrams and punch requests (see session.rs).
        .datagram_receive_buffer_size(Some(1 << 20))
        .datagram_send_buffer_size(link::DATAGRAM_SEND_BUFFER);
    transport
}

/// Gathers changes for `window`, then publishes the version to every
/// session. With many sessions the window grows (to at most 50 ms) so a burst
/// of changes, such as a join storm, costs each host fewer messages.
///
/// When nodes joined or left, the views are compiled again first (in a
/// blocking thread: it is O(hosts²) bits). During a join storm that is at
/// most once per window, and never more than a fifth of the time: after a
/// compilation that took `t`, the next waits until `4 t` has passed.
async fn coalesce(shared: Arc<Shared>, window: Duration) {
    let mut compiled_at = std::time::Instant::now();
    let mut compile_took = Duration::ZERO;
    loop {
        shared.changed.notified().await;
        let changed_at = std::time::Instant::now();
        let sessions = shared.sessions().len() as u64;
        let hosts = shared.read().len();
        shared.keepalive_ms.store(
            keepalive_ms(hosts, shared.keepalive_per_host),
            Ordering::Relaxed,
        );
        let scaled = window.max(Duration::from_micros(sessions * 10));
        tokio::time::sleep(scaled.min(MAX_COALESCE.max(window))).await;
        if shared.membership_changed.load(Ordering::Acquire) {
            let rest = (compile_took * 4).saturating_sub(compiled_at.elapsed());
            tokio::time::sleep(rest).await;
            shared.membership_changed.store(false, Ordering::Release);
            let t = std::time::Instant::now();
            let s = shared.clone();
            let _ = tokio::task::spawn_blocking(move || s.recompile()).await;
            compile_took = t.elapsed();
            compiled_at = std::time::Instant::now();
        }
        let v = shared.read().version();
        if *shared.published.borrow() != v {
            shared.metrics.netmap_publishes.inc();
            let open = shared.sessions().len();
            shared.fanout.start(v, changed_at, open);
        }
        shared.published.send_replace(v);
    }
}

/// How long after a start hosts have to come back before the nodes that
/// did not are announced offline.
const RESUME_GRACE: Duration = Duration::from_secs(60);

/// Hosts that resumed after a restart without a snapshot kept their peers'
/// endpoints and online flags from before it, as did the live hint; once
/// the others had [`RESUME_GRACE`] to reconnect, those still away are
/// announced offline.
async fn announce_offline_after_start(shared: Arc<Shared>) {
    tokio::time::sleep(RESUME_GRACE).await;
    let connected: HashSet<NodeId> = shared.sessions().keys().copied().collect();
    let n = shared
        .write()
        .announce_offline(|id| connected.contains(&id));
    if n > 0 {
        debug!(
            nodes = n,
            "announced the nodes that did not come back as offline"
        );
        shared.changed.notify_one();
    }
}

/// Accepts TLS-over-TCP sessions (hosts whose UDP is blocked).
async fn accept_tcp(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
) {
    loop {
        let (tcp, remote) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(pass) = shared.gate.enter(remote.ip()) else {
            shared.metrics.refused(Refusal::HelloGate);
            debug!(%remote, "TCP connection refused: too many connections in their hello");
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let shared = shared.clone();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    if let Err(e) = conn::serve_tcp(shared, tls, pass, remote).await {
                        debug!(%remote, error = %e, "TCP connection ended");
                    }
                }
                Ok(Err(e)) => {
                    shared.metrics.refused(Refusal::Handshake);
                    debug!(%remote, error = %e, "TLS handshake over TCP failed")
                }
                Err(_) => {
                    shared.metrics.refused(Refusal::Handshake);
                    debug!(%remote, "TLS handshake over TCP timed out")
                }
            }
        });
    }
}

async fn accept(shared: Arc<Shared>, endpoint: quinn::Endpoint, base: quinn::ServerConfig) {
    while let Some(incoming) = endpoint.accept().await {
        let remote = incoming.remote_address();
        // Under load, a client must show it owns its address (a Retry
        // round trip) before it costs any state.
        if shared.gate.waiting() >= admission::RETRY_ABOVE && !incoming.remote_address_validated() {
            let _ = incoming.retry();
            continue;
        }
        let Some(pass) = shared.gate.enter(remote.ip()) else {
            shared.metrics.refused(Refusal::HelloGate);
            debug!(%remote, "QUIC connection refused: too many connections in their hello");
            incoming.refuse();
            continue;
        };
        // Kept alive at the interval asked of a host joining now (see
        // `quic_transport`); its welcome says which.
        let keepalive = shared.keepalive_now();
        let mut cfg = base.clone();
        cfg.transport_config(Arc::new(quic_transport(keepalive)));
        let incoming = match incoming.accept_with(Arc::new(cfg)) {
            Ok(c) => c,
            Err(e) => {
                shared.metrics.refused(Refusal::Handshake);
                debug!(%remote, error = %e, "QUIC connection refused");
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let connecting = tokio::time::timeout(HELLO_TIMEOUT, incoming);
            match connecting
                .await
                .unwrap_or(Err(quinn::ConnectionError::TimedOut))
            {
                Ok(conn) if is_replica_link(&conn) => {
                    if let Err(e) = replica::serve_link(shared, conn, pass).await {
                        debug!(%remote, error = %e, "replica link ended");
                    }
                }
                Ok(conn) => {
                    if let Err(e) = serve(shared, conn, pass, keepalive).await {
                        debug!(%remote, error = %e, "connection ended");
                    }
                }
                Err(e) => {
                    shared.metrics.refused(Refusal::Handshake);
                    debug!(%remote, error = %e, "handshake failed")
                }
            }
        });
    }
}

/// Whether a connection is another replica's link (by its ALPN).
fn is_replica_link(conn: &quinn::Connection) -> bool {
    conn.handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol)
        .is_some_and(|p| p == replica::REPLICA_ALPN)
}

/// The address `weft web-url` puts in its link: the web listen address, or
/// for a wildcard listen the host of the first advertised address.
fn web_addr(listen: SocketAddr, advertise: &[String]) -> String {
    if !listen.ip().is_unspecified() {
        return listen.to_string();
    }
    let host = advertise
        .first()
        .and_then(|a| a.parse::<SocketAddr>().ok())
        .map_or_else(|| admin_local_addr(listen).ip(), |a| a.ip());
    SocketAddr::new(host, listen.port()).to_string()
}

/// Starts `--metrics-listen` and `--web-listen`, where set.
async fn start_http(
    shared: &Arc<Shared>,
    config: &Config,
) -> Result<Vec<tokio::task::JoinHandle<()>>, CoordinatorError> {
    use crate::web::{serve, JsonFuture, PageSite, Site};
    let mut tasks = Vec::new();
    if let Some(addr) = config.metrics_listen {
        let s = shared.clone();
        let site = Site::Metrics(Arc::new(move || s.scrape()));
        let (local, task) = serve(addr, site)
            .await
            .map_err(|source| CoordinatorError::Http {
                what: "metrics",
                addr,
                source,
            })?;
        info!(addr = %local, "metrics on http://{local}/metrics");
        tasks.push(task);
    }
    if let Some(addr) = config.web_listen {
        let s = shared.clone();
        let cluster = Arc::new(move || -> JsonFuture {
            let s = s.clone();
            Box::pin(async move { overview::cluster_json(&s).await })
        });
        let site = Site::Page(Arc::new(PageSite {
            key: shared.admin_hash,
            cluster,
        }));
        let (local, task) = serve(addr, site)
            .await
            .map_err(|source| CoordinatorError::Http {
                what: "the web page",
                addr,
                source,
            })?;
        info!(addr = %local, "web page on http://{local}/ (open the link `weft web-url` prints)");
        tasks.push(task);
    }
    Ok(tasks)
}

impl Shared {
    /// The metrics text, with the gauges of the current state set first.
    fn scrape(&self) -> String {
        let m = &self.metrics;
        let (mut quic, mut tcp, mut deepest) = (0i64, 0i64, 0usize);
        for (_, link) in self.sessions().values() {
            match link {
                link::Link::Quic(..) => quic += 1,
                link::Link::Tcp(_) => tcp += 1,
            }
            deepest = deepest.max(link.queued_bytes());
        }
        m.sessions.get_or_create(&[("transport", "quic")]).set(quic);
        m.sessions.get_or_create(&[("transport", "tcp")]).set(tcp);
        m.queue_max.set(i64::try_from(deepest).unwrap_or(i64::MAX));
        let (nodes, online) = {
            let reg = self.read();
            (reg.len(), reg.peers().filter(|p| p.online).count())
        };
        m.nodes.set(i64::try_from(nodes).unwrap_or(i64::MAX));
        m.nodes_online
            .set(i64::try_from(online).unwrap_or(i64::MAX));
        m.render()
    }
}
