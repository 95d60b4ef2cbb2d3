//! The QUIC endpoint: one task per connection, one session per host.
//!
//! A host session sends the welcome, then loops: compute what changed since
//! the version it last sent ([`Registry::changes_since`]), send it (chunked),
//! and sleep until the coalescer publishes a new version. The coalescer wakes
//! on any change, waits `Config::coalesce`, then publishes once, so a burst of
//! changes costs each host one message.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
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
use weft_proto::{codec, HostSubnet, NodeId, Peer, WgPublicKey, PROTOCOL_VERSION};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::admin::AdminCredential;
use crate::ipam::Ipam;
use crate::registry::{Changes, Registry};
use crate::store::{self, refuse, JoinArgs, StoreHandle, TokenRecord};
use crate::{now_unix, state, Config, CoordinatorError};

pub use weft_proto::msg::{CLOSE_REMOVED, CLOSE_REPLACED};

/// Peers per netmap frame.
const PEERS_PER_CHUNK: usize = 256;
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest the coalescer waits, however many sessions there are.
const MAX_COALESCE: Duration = Duration::from_millis(50);

struct Shared {
    epoch: u64,
    registry: Arc<RwLock<Registry>>,
    store: StoreHandle,
    changed: Arc<Notify>,
    published: watch::Sender<u64>,
    sessions: Mutex<HashMap<NodeId, (u64, quinn::Connection)>>,
    next_session: AtomicU64,
    secret: StaticSecret,
    public: [u8; 32],
    pin: [u8; 32],
    admin_hash: [u8; 32],
    advertise: Vec<String>,
    pool: HostSubnet,
}

impl Shared {
    fn read(&self) -> RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (u64, quinn::Connection)>> {
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
        let epoch = rand::rngs::OsRng.next_u64() | 1;
        let changed = Arc::new(Notify::new());
        let on_commit = {
            let changed = changed.clone();
            Box::new(move |_: &[NodeId]| changed.notify_one())
        };
        let db_path = config.state_dir.join(state::DB_FILE);
        let opened =
            tokio::task::spawn_blocking(move || store::open(&db_path, ipam, epoch, on_commit))
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
        };
        cred.save(&admin_path)?;
        let admin_hash = secret_hash(&hex::decode(&admin_secret).unwrap_or_default());

        let server_config = server_config(&identity)?;
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| CoordinatorError::Listen {
            addr: config.listen,
            source,
        })?;

        let (published, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            epoch,
            registry: opened.registry,
            store: opened.handle,
            changed,
            published,
            sessions: Mutex::new(HashMap::new()),
            next_session: AtomicU64::new(1),
            secret: identity.secret,
            public: identity.public,
            pin: identity.pin,
            admin_hash,
            advertise,
            pool: opened.ipam_pool,
        });
        let nodes = shared.read().len();
        info!(listen = %local, nodes, pin = %hex::encode(shared.pin), "coordinator started");

        let coalescer = tokio::spawn(coalesce(shared.clone(), config.coalesce));
        let acceptor = tokio::spawn(accept(shared.clone(), endpoint.clone()));
        Ok(Self {
            shared,
            endpoint,
            state_dir: config.state_dir,
            tasks: vec![coalescer, acceptor],
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
        match create_token(&self.shared, uses, expires_in.map(|d| d.as_secs()), tags).await? {
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
        self.endpoint
            .close(0u32.into(), b"coordinator shutting down");
        for t in &self.tasks {
            t.abort();
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

fn server_config(identity: &state::Identity) -> Result<quinn::ServerConfig, CoordinatorError> {
    let tls_err = |e: &dyn std::fmt::Display| CoordinatorError::Tls(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_err(&e))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], identity.key.clone_key())
        .map_err(|e| tls_err(&e))?;
    tls.alpn_protocols = vec![weft_proto::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| tls_err(&e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(2u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            30_000,
        ))))
        .stream_receive_window(quinn::VarInt::from_u32(64 * 1024))
        .receive_window(quinn::VarInt::from_u32(128 * 1024))
        .send_window(96 * 1024)
        .datagram_receive_buffer_size(None);
    cfg.transport_config(Arc::new(transport));
    Ok(cfg)
}

/// Gathers changes for `window`, then publishes the version to every
/// session. With many sessions the window grows (to at most 50 ms) so a burst
/// of changes, such as a join storm, costs each host fewer messages.
async fn coalesce(shared: Arc<Shared>, window: Duration) {
    loop {
        shared.changed.notified().await;
        let sessions = shared.sessions().len() as u64;
        let scaled = window.max(Duration::from_micros(sessions * 10));
        tokio::time::sleep(scaled.min(MAX_COALESCE.max(window))).await;
        let v = shared.read().version();
        shared.published.send_replace(v);
    }
}

async fn accept(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = serve(shared, conn).await {
                        debug!(%remote, error = %e, "connection ended");
                    }
                }
                Err(e) => debug!(%remote, error = %e, "handshake failed"),
            }
        });
    }
}

/// Why a connection ended early (for debug logs only).
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0:?}")]
    Refused(ErrorCode),
}

async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, ConnError> {
    let mut header = [0u8; codec::HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = codec::frame_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(codec::decode(&body)?)
}

async fn write_msg<T: Serialize>(send: &mut quinn::SendStream, msg: &T) -> Result<(), ConnError> {
    let frame = codec::encode(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Sends a refusal, waits (briefly) until the client has it, and ends.
async fn refuse_and_close(mut send: quinn::SendStream, reply: ErrorReply) -> ConnError {
    let code = reply.code;
    if write_msg(&mut send, &ServerMsg::Error(reply)).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    ConnError::Refused(code)
}

async fn serve(shared: Arc<Shared>, conn: quinn::Connection) -> Result<(), ConnError> {
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::Timeout)??;
    let hello: Hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut recv))
        .await
        .map_err(|_| ConnError::Timeout)??;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::VersionMismatch,
                format!(
                    "this coordinator speaks weft protocol {PROTOCOL_VERSION}, the client speaks {}; install matching weft versions",
                    hello.protocol_version
                ),
            ),
        )
        .await);
    }
    match hello.request {
        HelloRequest::Join(req) => {
            if !proof_ok(&shared, &conn, &req.public_key, &req.proof) {
                return Err(refuse_and_close(send, proof_failed()).await);
            }
            let args = JoinArgs {
                token_id: req.token_id.clone(),
                token_secret: req.token_secret,
                public_key: req.public_key,
                hostname: req.hostname.clone(),
                now: now_unix(),
            };
            match shared.store.join(args).await {
                Ok(rec) => {
                    info!(node = %rec.id, name = %rec.name, subnet = %rec.subnet, token = %rec.token_id, "node joined");
                    session(shared, conn, send, recv, rec.id, req.endpoints, 0, 0).await
                }
                Err(e) => {
                    info!(token = %req.token_id, code = ?e.code, "join refused");
                    Err(refuse_and_close(send, e).await)
                }
            }
        }
        HelloRequest::Resume(req) => {
            if !proof_ok(&shared, &conn, &req.public_key, &req.proof) {
                return Err(refuse_and_close(send, proof_failed()).await);
            }
            let Some(id) = shared.read().by_key(&req.public_key) else {
                return Err(refuse_and_close(send, not_registered()).await);
            };
            session(
                shared,
                conn,
                send,
                recv,
                id,
                req.endpoints,
                req.have_epoch,
                req.have_version,
            )
            .await
        }
        HelloRequest::Admin(req) => admin(shared, send, req).await,
        _ => Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::BadRequest,
                "unsupported request; upgrade the coordinator",
            ),
        )
        .await),
    }
}

fn proof_failed() -> ErrorReply {
    refuse(
        ErrorCode::ProofFailed,
        "the host could not prove it holds the private key of the WireGuard public key it presented; use the key this host joined with, or join again with a new token",
    )
}

fn not_registered() -> ErrorReply {
    refuse(
        ErrorCode::NotRegistered,
        "this host's key is not registered with the coordinator (never joined, or the node was removed); join again with a token from `weft token create`",
    )
}

/// Checks the host's key proof against this TLS session.
fn proof_ok(
    shared: &Shared,
    conn: &quinn::Connection,
    key: &WgPublicKey,
    proof: &[u8; 32],
) -> bool {
    let mut exporter = [0u8; 32];
    if conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, &key.0)
        .is_err()
    {
        return false;
    }
    let shared_secret = shared.secret.diffie_hellman(&PublicKey::from(key.0));
    if !shared_secret.was_contributory() {
        return false;
    }
    verify_key_proof(shared_secret.as_bytes(), &exporter, &key.0, proof)
}

/// The wire form of a netmap update built from shared peer records, so a
/// snapshot is never copied per session. Field names match
/// [`weft_proto::NetmapUpdate`].
#[derive(Serialize)]
struct NetmapOut<'a> {
    epoch: u64,
    from_version: u64,
    version: u64,
    full: bool,
    upserts: Vec<&'a Peer>,
    removed: &'a [NodeId],
    more: bool,
}

#[derive(Serialize)]
enum ServerMsgOut<'a> {
    Netmap(NetmapOut<'a>),
}

/// Sends `changes` in chunks; returns the version the host now has.
async fn send_changes(
    send: &mut quinn::SendStream,
    epoch: u64,
    changes: Changes,
    have: u64,
) -> Result<u64, ConnError> {
    let (from, to, full, upserts, removed) = match changes {
        Changes::None => (have, have, false, Vec::new(), Vec::new()),
        Changes::Full { version, peers } => (0, version, true, peers, Vec::new()),
        Changes::Delta {
            from,
            to,
            upserts,
            removed,
        } => (from, to, false, upserts, removed),
    };
    let mut chunks = upserts.chunks(PEERS_PER_CHUNK).peekable();
    let mut first = true;
    loop {
        let chunk = chunks.next();
        if chunk.is_none() && !first {
            break;
        }
        let more = chunks.peek().is_some();
        let msg = ServerMsgOut::Netmap(NetmapOut {
            epoch,
            from_version: from,
            version: to,
            full,
            upserts: chunk.unwrap_or(&[]).iter().map(|p| p.as_ref()).collect(),
            removed: if more { &[] } else { &removed },
            more,
        });
        let frame = codec::encode(&msg)?;
        send.write_all(&frame).await?;
        first = false;
        if !more {
            break;
        }
    }
    Ok(to)
}

#[allow(clippy::too_many_arguments)]
#[instrument(skip_all, fields(node = %id))]
async fn session(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    id: NodeId,
    endpoints: Vec<SocketAddr>,
    have_epoch: u64,
    have_version: u64,
) -> Result<(), ConnError> {
    let Some(me) = shared.read().get(id).cloned() else {
        return Err(refuse_and_close(send, not_registered()).await);
    };
    let welcome = Welcome {
        node_id: id,
        name: me.name.clone(),
        subnet: me.subnet,
        tags: me.tags.clone(),
        pool: shared.pool,
    };
    write_msg(&mut send, &ServerMsg::Welcome(welcome)).await?;

    let sid = shared.next_session.fetch_add(1, Ordering::Relaxed);
    if let Some((_, old)) = shared.sessions().insert(id, (sid, conn.clone())) {
        old.close(
            CLOSE_REPLACED.into(),
            b"replaced by a newer session of this node",
        );
    }
    // The node may have been removed while this session was starting.
    if shared.read().get(id).is_none() {
        conn.close(CLOSE_REMOVED.into(), b"node removed by an admin");
        let mut sessions = shared.sessions();
        if sessions.get(&id).is_some_and(|(s, _)| *s == sid) {
            sessions.remove(&id);
        }
        return Ok(());
    }
    // Subscribe before going online so our own change is not missed.
    let mut published = shared.published.subscribe();
    if shared.write().set_online(id, true, Some(endpoints)) {
        shared.changed.notify_one();
    }
    debug!("session started");

    let reader = {
        let shared = shared.clone();
        async move {
            loop {
                let msg: ClientMsg = match read_frame(&mut recv).await {
                    Ok(m) => m,
                    Err(e) => return e,
                };
                if let ClientMsg::SetEndpoints { endpoints } = msg {
                    if shared.write().update(id, |p| p.endpoints = endpoints) {
                        shared.changed.notify_one();
                    }
                }
            }
        }
    };
    let writer = async {
        let mut epoch = have_epoch;
        let mut version = have_version;
        let mut first = true;
        loop {
            let changes = shared.read().changes_since(epoch, version, id);
            if first || changes != Changes::None {
                version = send_changes(&mut send, shared.epoch, changes, version).await?;
                epoch = shared.epoch;
                first = false;
            }
            if published.changed().await.is_err() {
                return Ok::<(), ConnError>(());
            }
        }
    };
    let result = tokio::select! {
        e = reader => Err(e),
        r = writer => r,
    };

    let current = {
        let mut sessions = shared.sessions();
        match sessions.get(&id) {
            Some((s, _)) if *s == sid => {
                sessions.remove(&id);
                true
            }
            _ => false,
        }
    };
    if current && shared.write().set_online(id, false, None) {
        shared.changed.notify_one();
    }
    debug!("session ended");
    result
}

async fn create_token(
    shared: &Shared,
    uses: Option<u32>,
    expires_in_secs: Option<u64>,
    tags: Vec<String>,
) -> Result<AdminReply, ErrorReply> {
    if uses == Some(0) {
        return Err(refuse(
            ErrorCode::BadRequest,
            "a token must allow at least one join; pass --uses 1 or more, or --reusable",
        ));
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let now = now_unix();
    let rec = TokenRecord {
        id: hex::encode(id),
        secret_hash: secret_hash(&secret),
        uses_left: uses,
        used: 0,
        created_at: now,
        expires_at: expires_in_secs.map(|s| now.saturating_add(s)),
        revoked: false,
        tags,
    };
    shared.store.create_token(rec.clone()).await?;
    info!(token = %rec.id, uses = ?rec.uses_left, expires_at = ?rec.expires_at, "token created");
    let token = JoinToken {
        addrs: shared.advertise.clone(),
        pin: shared.pin,
        coordinator_key: shared.public,
        id: rec.id.clone(),
        secret,
    };
    Ok(AdminReply::TokenCreated {
        token: token.encode(),
        info: rec.info(),
    })
}

async fn admin(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    req: AdminRequest,
) -> Result<(), ConnError> {
    if !ct_eq32(&secret_hash(&req.secret), &shared.admin_hash) {
        warn!("admin request with a wrong credential refused");
        return Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::AdminDenied,
                "the admin credential was refused; use the admin.json from this coordinator's state dir (--admin FILE or WEFT_ADMIN)",
            ),
        )
        .await);
    }
    let result = match req.command {
        AdminCommand::TokenCreate {
            uses,
            expires_in_secs,
            tags,
        } => create_token(&shared, uses, expires_in_secs, tags).await,
        AdminCommand::TokenList => shared
            .store
            .tokens()
            .await
            .map(|t| AdminReply::Tokens(t.iter().map(|r| r.info()).collect())),
        AdminCommand::TokenRevoke { id } => shared.store.revoke_token(id.clone()).await.map(|()| {
            info!(token = %id, "token revoked");
            AdminReply::TokenRevoked { id }
        }),
        AdminCommand::NodeList => {
            let reg = shared.read();
            let mut nodes: Vec<NodeInfo> = reg
                .peers()
                .map(|p| NodeInfo {
                    id: p.id,
                    name: p.name.clone(),
                    public_key: p.public_key,
                    subnet: p.subnet,
                    endpoints: p.endpoints.clone(),
                    tags: p.tags.clone(),
                    online: p.online,
                    created_at: reg.created_at(p.id).unwrap_or(0),
                })
                .collect();
            nodes.sort_by_key(|n| n.id);
            Ok(AdminReply::Nodes(nodes))
        }
        AdminCommand::NodeRemove { node } => remove_node(&shared, &node).await,
        _ => Err(refuse(
            ErrorCode::BadRequest,
            "unsupported admin command; upgrade the coordinator",
        )),
    };
    match result {
        Ok(reply) => {
            write_msg(&mut send, &ServerMsg::Admin(reply)).await?;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            Ok(())
        }
        Err(e) => Err(refuse_and_close(send, e).await),
    }
}

async fn remove_node(shared: &Shared, selector: &str) -> Result<AdminReply, ErrorReply> {
    let id = {
        let reg = shared.read();
        selector
            .parse::<u64>()
            .ok()
            .map(NodeId)
            .filter(|id| reg.get(*id).is_some())
            .or_else(|| reg.by_name(selector))
    };
    let Some(id) = id else {
        return Err(refuse(
            ErrorCode::NotFound,
            format!("no node with id or name `{selector}`; see the nodes with `weft node list`"),
        ));
    };
    let rec = shared.store.remove_node(id).await?;
    if let Some((_, conn)) = shared.sessions().remove(&id) {
        conn.close(CLOSE_REMOVED.into(), b"node removed by an admin");
    }
    info!(node = %id, name = %rec.name, subnet = %rec.subnet, "node removed");
    Ok(AdminReply::NodeRemoved { id, name: rec.name })
}
