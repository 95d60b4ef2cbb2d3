//! The I/O shell of the control client: QUIC connection, handshake, frames.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use weft_proto::auth::{key_proof, EXPORTER_LABEL};
use weft_proto::msg::{
    ClientMsg, Hello, HelloRequest, JoinRequest, ResumeRequest, ServerMsg, Welcome, CLOSE_REMOVED,
};
use weft_proto::token::JoinToken;
use weft_proto::{codec, HostSubnet, Netmap, NetmapChange, NodeId, WgPublicKey, PROTOCOL_VERSION};
use x25519_dalek::{PublicKey, StaticSecret};

use super::liveness::{keep_quic, ping, AbortOnDrop, Heard, Interval, KeptBy};
use super::transport::{DatagramLink, DatagramSource, FrameReader, FrameWriter};
use super::ControlError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The same for an address with others after it in the list.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(2);

/// What a host keeps to reconnect to its coordinator without a token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorInfo {
    /// `host:port`, tried in order.
    pub addrs: Vec<String>,
    /// SHA-256 of the coordinator's TLS SubjectPublicKeyInfo.
    pub pin: [u8; 32],
    /// The coordinator's x25519 public key.
    pub coordinator_key: [u8; 32],
    /// TCP port of the TLS fallback; `None`: the QUIC port.
    #[serde(default)]
    pub tcp_port: Option<u16>,
}

impl From<&JoinToken> for CoordinatorInfo {
    fn from(t: &JoinToken) -> Self {
        Self {
            addrs: t.addrs.clone(),
            pin: t.pin,
            coordinator_key: t.coordinator_key,
            tcp_port: t.tcp_port,
        }
    }
}

/// The result of a successful join.
pub struct JoinOutcome {
    pub node_id: NodeId,
    pub name: String,
    pub subnet: HostSubnet,
    /// The cluster pool (route it into the mesh).
    pub pool: HostSubnet,
    pub tags: Vec<String>,
    /// Store this (and the private key) to reconnect.
    pub coordinator: CoordinatorInfo,
    /// The live session, holding the first netmap.
    pub session: Session,
}

/// A QUIC endpoint for talking to coordinators. One can carry many sessions
/// (the benchmark runs thousands of hosts over a few).
#[derive(Clone)]
pub struct ControlClient {
    endpoint: quinn::Endpoint,
    /// TLS over TCP worked last time (UDP to the coordinator is blocked).
    prefer_tcp: Arc<AtomicBool>,
    /// The newest protocol version offered ([`PROTOCOL_VERSION`] but in
    /// tests: see [`ControlClient::speaking`]).
    newest: u32,
}

impl ControlClient {
    /// A client on an ephemeral IPv4 UDP port.
    pub fn new() -> Result<Self, ControlError> {
        let endpoint = quinn::Endpoint::client(SocketAddr::from(([0, 0, 0, 0], 0)))
            .map_err(|e| ControlError::Connection(format!("cannot open a UDP socket: {e}")))?;
        Ok(Self {
            endpoint,
            prefer_tcp: Arc::default(),
            newest: PROTOCOL_VERSION,
        })
    }

    /// A client over an existing quinn endpoint.
    pub fn with_endpoint(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            prefer_tcp: Arc::default(),
            newest: PROTOCOL_VERSION,
        }
    }

    /// A client on this one's UDP socket with its own transport preference
    /// (the benchmark's simulated hosts share a few sockets).
    pub fn sharing_socket(&self) -> Self {
        Self {
            newest: self.newest,
            ..Self::with_endpoint(self.endpoint.clone())
        }
    }

    /// This client, offering protocol versions up to `version` only, as an
    /// agent of that version does: for compatibility tests of an older
    /// agent against this coordinator (`version` at least
    /// [`weft_proto::OLDEST_PROTOCOL_VERSION`]).
    pub fn speaking(mut self, version: u32) -> Self {
        self.newest = version;
        self
    }

    fn tls(
        &self,
        pin: [u8; 32],
    ) -> Result<(rustls::ClientConfig, weft_proto::tls::PinOutcome), ControlError> {
        let (mut tls, outcome) = weft_proto::tls::pinned_client_config(pin)
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        tls.alpn_protocols = weft_proto::host_alpns(self.newest);
        Ok((tls, outcome))
    }

    /// Joins the coordinator named in `token` as a new node.
    pub async fn join(
        &self,
        token: &str,
        key: &StaticSecret,
        hostname: &str,
        endpoints: Vec<SocketAddr>,
    ) -> Result<JoinOutcome, ControlError> {
        self.join_into(token, key, hostname, endpoints, Netmap::new())
            .await
    }

    /// [`ControlClient::join`], folding the netmap into `netmap` (empty; a
    /// [`Netmap::digest`] for simulated hosts).
    pub async fn join_into(
        &self,
        token: &str,
        key: &StaticSecret,
        hostname: &str,
        endpoints: Vec<SocketAddr>,
        netmap: Netmap,
    ) -> Result<JoinOutcome, ControlError> {
        let token: JoinToken = token.parse()?;
        let info = CoordinatorInfo::from(&token);
        let public = WgPublicKey(PublicKey::from(key).to_bytes());
        let session = self
            .open(&info, key, netmap, |proof| {
                HelloRequest::Join(JoinRequest {
                    token_id: token.id.clone(),
                    token_secret: token.secret,
                    public_key: public,
                    proof,
                    hostname: hostname.to_string(),
                    endpoints: endpoints.clone(),
                })
            })
            .await?;
        let w = session.welcome().clone();
        Ok(JoinOutcome {
            node_id: w.node_id,
            name: w.name,
            subnet: w.subnet,
            pool: w.pool,
            tags: w.tags,
            coordinator: info,
            session,
        })
    }

    /// Reconnects a registered node. With a cached netmap the coordinator
    /// sends only what changed since it, when it still can.
    pub async fn connect(
        &self,
        info: &CoordinatorInfo,
        key: &StaticSecret,
        endpoints: Vec<SocketAddr>,
        cached: Option<Netmap>,
    ) -> Result<Session, ControlError> {
        let public = WgPublicKey(PublicKey::from(key).to_bytes());
        let netmap = cached.unwrap_or_default();
        let (have_epoch, have_version, have_view) =
            (netmap.epoch(), netmap.version(), netmap.view());
        let have_digest = if have_version == 0 {
            0
        } else {
            netmap.content_digest()
        };
        self.open(info, key, netmap, |proof| {
            HelloRequest::Resume(ResumeRequest {
                public_key: public,
                proof,
                endpoints,
                have_epoch,
                have_version,
                have_view,
                have_digest,
            })
        })
        .await
    }

    async fn dial(&self, info: &CoordinatorInfo) -> Result<quinn::Connection, ControlError> {
        let (tls, outcome) = self.tls(info.pin)?;
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
        let mut transport = quinn::TransportConfig::default();
        transport
            // Liveness is the session's (see `liveness`): its keep-alives
            // are datagrams at the interval the coordinator asks for, which
            // may change while the connection lasts, and its deadline
            // follows. A restarted coordinator is noticed at the first
            // keep-alive it answers with a stateless reset. QUIC's own idle
            // timeout only backs that up, past the longest deadline.
            .keep_alive_interval(None)
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(weft_proto::liveness_deadline(
                    weft_proto::MAX_KEEPALIVE,
                ))
                .map_err(|e| ControlError::Protocol(e.to_string()))?,
            ))
            .stream_receive_window(quinn::VarInt::from_u32(256 * 1024))
            .receive_window(quinn::VarInt::from_u32(512 * 1024))
            .send_window(64 * 1024)
            .max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .datagram_receive_buffer_size(Some(1 << 20))
            .datagram_send_buffer_size(1 << 20);
        cfg.transport_config(Arc::new(transport));
        let endpoint = &self.endpoint;
        first_reachable(info, &outcome, "", |sa| {
            let cfg = cfg.clone();
            async move {
                endpoint
                    .connect_with(cfg, sa, weft_proto::SERVER_NAME)
                    .map_err(|e| e.to_string())?
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await
    }

    /// TLS over TCP to the same address and port: the fallback where UDP is
    /// blocked.
    async fn dial_tcp(
        &self,
        info: &CoordinatorInfo,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ControlError> {
        let (tls, outcome) = self.tls(info.pin)?;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
        let name = rustls::pki_types::ServerName::try_from(weft_proto::SERVER_NAME)
            .map_err(|e| ControlError::Protocol(e.to_string()))?;
        let tcp_port = info.tcp_port;
        first_reachable(info, &outcome, " (TCP)", |mut sa| {
            if let Some(port) = tcp_port {
                sa.set_port(port);
            }
            let (connector, name) = (connector.clone(), name.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(sa)
                    .await
                    .map_err(|e| e.to_string())?;
                let _ = tcp.set_nodelay(true);
                connector
                    .connect(name, tcp)
                    .await
                    .map_err(|e| e.to_string())
            }
        })
        .await
    }

    /// A frame stream and its TLS exporter (keyed with `public`), over
    /// QUIC, or over TCP when QUIC gets no answer. The transport that
    /// worked last is tried first.
    async fn connect_any(
        &self,
        info: &CoordinatorInfo,
        public: &[u8; 32],
    ) -> Result<Wire, ControlError> {
        let tcp_first = self.prefer_tcp.load(Ordering::Relaxed);
        let first = if tcp_first {
            self.wire_tcp(info, public).await
        } else {
            self.wire_quic(info, public).await
        };
        match first {
            Ok(w) => Ok(w),
            Err(e @ ControlError::IdentityMismatch { .. }) => Err(e),
            Err(first_err) => {
                let second = if tcp_first {
                    self.wire_quic(info, public).await
                } else {
                    self.wire_tcp(info, public).await
                };
                match second {
                    Ok(w) => {
                        self.prefer_tcp.store(!tcp_first, Ordering::Relaxed);
                        if !tcp_first {
                            tracing::info!(
                                "QUIC to the coordinator gets no answer; using TLS over TCP"
                            );
                        }
                        Ok(w)
                    }
                    Err(e @ ControlError::IdentityMismatch { .. }) => Err(e),
                    Err(_) => Err(first_err),
                }
            }
        }
    }

    async fn wire_quic(
        &self,
        info: &CoordinatorInfo,
        public: &[u8; 32],
    ) -> Result<Wire, ControlError> {
        let conn = self.dial(info).await?;
        let lost = |e: &dyn std::fmt::Display| ControlError::Connection(e.to_string());
        let (send, recv) = conn.open_bi().await.map_err(|e| lost(&e))?;
        let mut exporter = [0u8; 32];
        conn.export_keying_material(&mut exporter, EXPORTER_LABEL, public)
            .map_err(|_| ControlError::Protocol("TLS exporter unavailable".into()))?;
        let alpn = conn
            .handshake_data()
            .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|d| d.protocol);
        Ok(Wire {
            send: Box::new(send),
            recv: Box::new(recv),
            exporter,
            version: weft_proto::negotiated_version(alpn.as_deref(), self.newest),
            quic: Some(conn),
        })
    }

    async fn wire_tcp(
        &self,
        info: &CoordinatorInfo,
        public: &[u8; 32],
    ) -> Result<Wire, ControlError> {
        let tls = self.dial_tcp(info).await?;
        let exporter = tls
            .get_ref()
            .1
            .export_keying_material([0u8; 32], EXPORTER_LABEL, Some(public))
            .map_err(|_| ControlError::Protocol("TLS exporter unavailable".into()))?;
        let version = weft_proto::negotiated_version(tls.get_ref().1.alpn_protocol(), self.newest);
        let (r, w) = tokio::io::split(tls);
        Ok(Wire {
            send: Box::new(w),
            recv: Box::new(r),
            exporter,
            quic: None,
            version,
        })
    }

    async fn open(
        &self,
        info: &CoordinatorInfo,
        key: &StaticSecret,
        netmap: Netmap,
        request: impl FnOnce([u8; 32]) -> HelloRequest,
    ) -> Result<Session, ControlError> {
        let public = PublicKey::from(key).to_bytes();
        let wire = self.connect_any(info, &public).await?;
        let Wire {
            mut send,
            mut recv,
            exporter,
            quic,
            version,
        } = wire;
        let lost = |e: &dyn std::fmt::Display| ControlError::Connection(e.to_string());
        let shared = key.diffie_hellman(&PublicKey::from(info.coordinator_key));
        let proof = key_proof(shared.as_bytes(), &exporter, &public);
        let hello = Hello {
            protocol_version: version,
            request: request(proof),
        };
        let frame = codec::encode(&hello).map_err(|e| ControlError::Protocol(e.to_string()))?;
        send.write_all(&frame).await.map_err(|e| lost(&e))?;
        let welcome = match read_msg(quic.as_ref(), &mut recv, &mut PartialFrame::default()).await?
        {
            ServerMsg::Welcome(w) => w,
            ServerMsg::Error(e) => {
                if let Some(c) = &quic {
                    c.close(0u32.into(), b"refused");
                }
                return Err(ControlError::Refused {
                    code: e.code,
                    message: e.message,
                });
            }
            other => {
                return Err(ControlError::Protocol(format!(
                    "expected a welcome, got {other:?}"
                )))
            }
        };
        let send: FrameWriter = Arc::new(Mutex::new(send));
        let (link, source, tcp_in) = match &quic {
            Some(c) => (
                DatagramLink::Quic(c.clone()),
                DatagramSource::Quic(c.clone()),
                None,
            ),
            None => {
                let (tx, rx) = tokio::sync::mpsc::channel(1024);
                let budget =
                    weft_proto::queue::ByteBudget::new(super::transport::TCP_DATAGRAM_BYTES);
                (
                    super::transport::tcp_datagram_writer(send.clone()),
                    DatagramSource::Tcp(rx, budget.clone()),
                    Some((tx, budget)),
                )
            }
        };
        let heard = Heard::now();
        let asked = Interval::new(asked_keepalive(welcome.keepalive_ms));
        let (checked, fixed, liveness) = match &quic {
            // Kept alive by the coordinator at this interval for good.
            Some(c) if welcome.keeps_quic_alive => {
                let k = asked.get();
                let watch = keep_quic(
                    c.clone(),
                    heard.clone(),
                    Interval::new(k),
                    KeptBy::Coordinator,
                );
                (true, Some(k), Some(watch))
            }
            Some(c) => (
                true,
                None,
                Some(keep_quic(
                    c.clone(),
                    heard.clone(),
                    asked.clone(),
                    KeptBy::Host,
                )),
            ),
            // A coordinator that sets no interval answers no pings.
            None if welcome.keepalive_ms == 0 => (false, None, None),
            None => (true, None, Some(ping(send.clone(), asked.clone()))),
        };
        let mut session = Session {
            checked,
            asked,
            fixed,
            renew_at: None,
            quic,
            send,
            recv,
            partial: PartialFrame::default(),
            welcome,
            netmap,
            resumed: false,
            first: NetmapChange::default(),
            link,
            source: Some(source),
            tcp_in,
            heard,
            _liveness: liveness,
        };
        let first = session.next_change().await?;
        session.resumed = !first.full;
        session.first = first;
        Ok(session)
    }

    /// A new session in place of `old`, at the keep-alive interval the
    /// coordinator asks for now (see [`Session::renew_at`]), resuming from
    /// `old`'s netmap. `endpoints`: what the host last reported. Open it
    /// before dropping `old`: the coordinator replaces the old session with
    /// it, and no peer sees the host go offline.
    pub async fn renew(
        &self,
        old: &Session,
        info: &CoordinatorInfo,
        key: &StaticSecret,
        endpoints: Vec<SocketAddr>,
    ) -> Result<Session, ControlError> {
        self.connect(info, key, endpoints, Some(old.netmap.clone()))
            .await
    }
}

/// The interval a welcome or update asks for (0: an older coordinator's
/// default).
fn asked_keepalive(ms: u32) -> Duration {
    match ms {
        0 => weft_proto::KEEPALIVE,
        ms => Duration::from_millis(u64::from(ms)).min(weft_proto::MAX_KEEPALIVE),
    }
}

/// A renewal asked for by an update waits up to this long (at random), so
/// thousands of hosts do not reconnect in the same second.
const RENEW_SPREAD: Duration = Duration::from_secs(60);

/// Waits until `at` ([`Session::renew_at`]), forever if `None`: a select
/// branch beside [`Session::next_change`].
pub async fn renewal_due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A connected frame stream before the hello.
struct Wire {
    send: Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>,
    recv: FrameReader,
    exporter: [u8; 32],
    quic: Option<quinn::Connection>,
    /// The protocol version the TLS handshake chose (by ALPN).
    version: u32,
}

/// Tries `connect` on each of the coordinator's addresses in turn, each
/// within [`CONNECT_TIMEOUT`]: the first that succeeds; an identity
/// mismatch at once (never try the next address with a wrong pin); else
/// `Unreachable` with the last reason. `via` labels the transport in it.
async fn first_reachable<T, F>(
    info: &CoordinatorInfo,
    outcome: &weft_proto::tls::PinOutcome,
    via: &str,
    mut connect: impl FnMut(SocketAddr) -> F,
) -> Result<T, ControlError>
where
    F: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::from("the token names no address");
    for (i, addr) in info.addrs.iter().enumerate() {
        // With more addresses to try (coordinator replicas), one that does
        // not answer soon is given up for the next: a dead replica costs a
        // failing-over host FAILOVER_TIMEOUT, not CONNECT_TIMEOUT.
        let within = if i + 1 < info.addrs.len() {
            FAILOVER_TIMEOUT
        } else {
            CONNECT_TIMEOUT
        };
        let sa = match resolve(addr).await {
            Ok(sa) => sa,
            Err(e) => {
                last = e;
                continue;
            }
        };
        match tokio::time::timeout(within, connect(sa)).await {
            Ok(Ok(c)) => return Ok(c),
            Ok(Err(e)) => {
                if let Some(presented) = outcome.mismatched_pin() {
                    return Err(ControlError::IdentityMismatch {
                        addr: addr.clone(),
                        expected: hex::encode(info.pin),
                        presented: hex::encode(presented),
                    });
                }
                last = format!("{addr}{via}: {e}");
            }
            Err(_) => last = format!("{addr}{via}: no answer within {within:?}"),
        }
    }
    Err(ControlError::Unreachable {
        addrs: info.addrs.join(", "),
        reason: last,
    })
}

async fn resolve(addr: &str) -> Result<SocketAddr, String> {
    match tokio::net::lookup_host(addr).await {
        Ok(mut it) => it
            .find(|a| a.is_ipv4())
            .ok_or_else(|| format!("{addr}: no IPv4 address")),
        Err(e) => Err(format!("{addr}: {e}")),
    }
}

/// A frame being read. What arrived survives a read that was cancelled
/// (a `select!` branch beside [`Session::next_change`] that fired first):
/// the next read goes on from there, and the stream stays in step.
#[derive(Default)]
struct PartialFrame {
    header: [u8; codec::HEADER_LEN],
    got: usize,
    /// Once the header is in: the body and how much of it arrived.
    body: Option<(Vec<u8>, usize)>,
}

/// Reads one message. Cancel-safe: it reads with `read` (which loses
/// nothing when cancelled) into `part`.
async fn read_msg(
    quic: Option<&quinn::Connection>,
    recv: &mut FrameReader,
    part: &mut PartialFrame,
) -> Result<ServerMsg, ControlError> {
    while part.got < codec::HEADER_LEN {
        match recv.read(&mut part.header[part.got..]).await {
            Ok(0) => return Err(closed(quic, &"the coordinator closed the stream")),
            Ok(n) => part.got += n,
            Err(e) => return Err(closed(quic, &e)),
        }
    }
    if part.body.is_none() {
        let len =
            codec::frame_len(part.header).map_err(|e| ControlError::Protocol(e.to_string()))?;
        part.body = Some((vec![0u8; len], 0));
    }
    if let Some((body, filled)) = part.body.as_mut() {
        while *filled < body.len() {
            match recv.read(&mut body[*filled..]).await {
                Ok(0) => return Err(closed(quic, &"the coordinator closed the stream")),
                Ok(n) => *filled += n,
                Err(e) => return Err(closed(quic, &e)),
            }
        }
    }
    let (body, _) = part.body.take().unwrap_or_default();
    part.got = 0;
    codec::decode(&body).map_err(|e| ControlError::Protocol(e.to_string()))
}

fn closed(quic: Option<&quinn::Connection>, e: &dyn std::fmt::Display) -> ControlError {
    match quic.and_then(quinn::Connection::close_reason) {
        Some(quinn::ConnectionError::ApplicationClosed(c))
            if c.error_code == quinn::VarInt::from_u32(CLOSE_REMOVED) =>
        {
            ControlError::Removed
        }
        Some(reason) => ControlError::Connection(reason.to_string()),
        None => ControlError::Connection(e.to_string()),
    }
}

/// One live control session: the netmap and the stream of its updates.
pub struct Session {
    quic: Option<quinn::Connection>,
    send: FrameWriter,
    recv: FrameReader,
    /// The frame being read (see [`PartialFrame`]).
    partial: PartialFrame,
    welcome: Welcome,
    netmap: Netmap,
    resumed: bool,
    /// What the first update changed (see [`Session::first_change`]).
    first: NetmapChange,
    link: DatagramLink,
    source: Option<DatagramSource>,
    /// On TCP, where datagram frames read from the stream go (bounded in
    /// entries and in bytes).
    tcp_in: Option<(
        tokio::sync::mpsc::Sender<Vec<u8>>,
        weft_proto::queue::ByteBudget,
    )>,
    heard: Heard,
    /// Whether silence past [`weft_proto::liveness_deadline`] of `asked`
    /// ends the session (not on TCP to a coordinator that answers no
    /// pings).
    checked: bool,
    /// The keep-alive interval the coordinator last asked for.
    asked: Interval,
    /// On QUIC: the interval the coordinator keeps this connection alive
    /// at, for its life (`None`: it does not; the host keeps it alive at
    /// `asked`).
    fixed: Option<Duration>,
    /// When to open a session at `asked` instead (see
    /// [`Session::renew_at`]).
    renew_at: Option<tokio::time::Instant>,
    /// The pinger or watcher (none on TCP to a coordinator that answers no
    /// pings); it ends with the session.
    _liveness: Option<AbortOnDrop>,
}

impl Session {
    /// Whether the session continued from the cached netmap with a delta
    /// (rather than starting from a full snapshot).
    pub fn resumed(&self) -> bool {
        self.resumed
    }

    /// What the session's first update changed, the one [`ControlClient`]
    /// read before returning it (a resumed session's delta).
    pub fn first_change(&self) -> &NetmapChange {
        &self.first
    }

    /// When the coordinator was last heard from on this session.
    pub fn heard(&self) -> Heard {
        self.heard.clone()
    }

    /// "quic" or "tcp".
    pub fn transport(&self) -> &'static str {
        self.link.transport()
    }

    /// A handle that reads this session's traffic counters (QUIC only).
    pub fn wire_stats(&self) -> WireStats {
        WireStats(self.quic.clone())
    }

    /// This node's registration.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The netmap as of the last complete update.
    pub fn netmap(&self) -> &Netmap {
        &self.netmap
    }

    /// Ends the session and keeps the netmap (to resume from later).
    pub fn into_netmap(self) -> Netmap {
        self.close();
        self.netmap
    }

    /// Sends datagrams (relay, punches) on this session.
    pub fn datagram_link(&self) -> DatagramLink {
        self.link.clone()
    }

    /// Datagrams from the coordinator; can be taken once.
    pub fn take_datagrams(&mut self) -> Option<DatagramSource> {
        self.source.take()
    }

    /// Waits for the next complete netmap update and applies it. An error
    /// ends the session: reconnect (with [`ControlClient::connect`]).
    pub async fn next_change(&mut self) -> Result<NetmapChange, ControlError> {
        loop {
            let msg = self.read_live().await?;
            // Heard now: a shorter deadline asked for below starts here.
            self.heard.mark();
            match msg {
                ServerMsg::Netmap(update) => {
                    if let Some(ms) = update.keepalive_ms {
                        self.asked_for(asked_keepalive(ms));
                    }
                    match self.netmap.apply(update) {
                        Ok(Some(change)) => return Ok(change),
                        Ok(None) => continue,
                        Err(e) => {
                            // Start over from a full snapshot on reconnect.
                            self.netmap = self.netmap.emptied();
                            return Err(ControlError::Protocol(e.to_string()));
                        }
                    }
                }
                ServerMsg::Datagram(bytes) => {
                    if let Some((tx, budget)) = &self.tcp_in {
                        let len = bytes.len();
                        if budget.try_reserve(len) && tx.try_send(bytes.into_vec()).is_err() {
                            budget.release(len);
                        }
                    }
                }
                ServerMsg::Error(e) => {
                    return Err(ControlError::Refused {
                        code: e.code,
                        message: e.message,
                    })
                }
                _ => continue,
            }
        }
    }

    /// The next message, or an error once the coordinator has been silent
    /// past the deadline (on QUIC the pinger marks `heard` while this
    /// waits, and an update may ask for another interval, so the deadline
    /// moves).
    async fn read_live(&mut self) -> Result<ServerMsg, ControlError> {
        let read = read_msg(self.quic.as_ref(), &mut self.recv, &mut self.partial);
        tokio::pin!(read);
        if !self.checked {
            return read.await;
        }
        let heard = &self.heard;
        loop {
            let d = weft_proto::liveness_deadline(self.fixed.unwrap_or_else(|| self.asked.get()));
            let until = tokio::time::Instant::from_std(heard.at() + d);
            match tokio::time::timeout_at(until, &mut read).await {
                Ok(r) => return r,
                Err(_) if heard.ago() < d => continue,
                Err(_) => {
                    return Err(ControlError::Connection(format!(
                        "no word from the coordinator for {}s",
                        d.as_secs()
                    )))
                }
            }
        }
    }

    /// The keep-alive interval the coordinator asks for now.
    pub fn keepalive(&self) -> Duration {
        self.asked.get()
    }

    /// When this session should give way to one at the keep-alive interval
    /// the coordinator asks for now ([`ControlClient::renew`]): the
    /// coordinator keeps a QUIC connection alive at the interval it asked
    /// for when the connection opened, and asks for longer ones as its
    /// cluster grows (see [`weft_proto::keepalive_for`]). `None`: this one
    /// is fine.
    pub fn renew_at(&self) -> Option<tokio::time::Instant> {
        self.renew_at
    }

    /// A renewal failed: try again later.
    pub fn renewal_failed(&mut self) {
        if self.renew_at.is_some() {
            self.renew_at = Some(tokio::time::Instant::now() + RENEW_SPREAD);
        }
    }

    /// The coordinator asks for keep-alives every `asked`. On a QUIC
    /// connection it keeps alive, at least twice or at most half the
    /// connection's interval, a renewal is due within [`RENEW_SPREAD`] (at
    /// random, so thousands of hosts do not reconnect in the same second).
    fn asked_for(&mut self, asked: Duration) {
        self.asked.set(asked);
        let Some(k) = self.fixed else {
            return;
        };
        let far = asked >= k * 2 || asked * 2 <= k;
        if !far {
            self.renew_at = None;
        } else if self.renew_at.is_none() {
            let wait = RENEW_SPREAD.mul_f64(rand::random::<f64>());
            self.renew_at = Some(tokio::time::Instant::now() + wait);
        }
    }

    /// A handle to report endpoint changes while another task reads.
    pub fn updater(&self) -> EndpointUpdater {
        EndpointUpdater {
            send: self.send.clone(),
        }
    }

    /// Reports this host's current WireGuard endpoints.
    pub async fn set_endpoints(&self, endpoints: Vec<SocketAddr>) -> Result<(), ControlError> {
        self.updater().set_endpoints(endpoints).await
    }

    /// Closes the connection.
    pub fn close(&self) {
        if let Some(c) = &self.quic {
            c.close(0u32.into(), b"bye");
        }
        // A TCP session ends when its halves are dropped.
    }
}

/// Reads a QUIC session's traffic counters; outlives the session.
#[derive(Clone)]
pub struct WireStats(Option<quinn::Connection>);

impl WireStats {
    /// UDP datagrams sent and received so far; `None` on TCP.
    pub fn packets(&self) -> Option<(u64, u64)> {
        self.0.as_ref().map(|c| {
            let s = c.stats();
            (s.udp_tx.datagrams, s.udp_rx.datagrams)
        })
    }

    /// Bytes sent and received so far, counting IPv4 and UDP headers;
    /// `None` on TCP.
    pub fn bytes(&self) -> Option<(u64, u64)> {
        const IPV4_UDP: u64 = 28;
        self.0.as_ref().map(|c| {
            let s = c.stats();
            (
                s.udp_tx.bytes + IPV4_UDP * s.udp_tx.datagrams,
                s.udp_rx.bytes + IPV4_UDP * s.udp_rx.datagrams,
            )
        })
    }
}

/// Sends endpoint changes on a session.
#[derive(Clone)]
pub struct EndpointUpdater {
    send: FrameWriter,
}

impl EndpointUpdater {
    pub async fn set_endpoints(&self, endpoints: Vec<SocketAddr>) -> Result<(), ControlError> {
        self.send(&ClientMsg::SetEndpoints { endpoints }).await
    }

    /// Offers the networks this host routes to (the whole list).
    /// Leaves the cluster: the coordinator removes this node and closes
    /// the session as removed.
    pub async fn leave(&self) -> Result<(), ControlError> {
        self.send(&ClientMsg::Leave).await
    }

    /// Reports the path to each peer (the whole list).
    pub async fn report_paths(
        &self,
        paths: Vec<weft_proto::msg::PathReport>,
    ) -> Result<(), ControlError> {
        self.send(&ClientMsg::ReportPaths { paths }).await
    }

    pub async fn advertise_routes(
        &self,
        routes: Vec<weft_proto::policy::Cidr>,
    ) -> Result<(), ControlError> {
        self.send(&ClientMsg::AdvertiseRoutes { routes }).await
    }

    async fn send(&self, msg: &ClientMsg) -> Result<(), ControlError> {
        let frame = codec::encode(msg).map_err(|e| ControlError::Protocol(e.to_string()))?;
        self.send
            .lock()
            .await
            .write_all(&frame)
            .await
            .map_err(|e| ControlError::Connection(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_speaks_the_version_the_handshake_chose() {
        let newest = PROTOCOL_VERSION;
        assert_eq!(weft_proto::negotiated_version(Some(b"weft/3"), newest), 3);
        assert_eq!(
            weft_proto::negotiated_version(Some(weft_proto::ALPN), newest),
            newest
        );
        // None chosen, or something odd: the newest offered (the
        // coordinator's answer to the hello then says what is wrong).
        assert_eq!(weft_proto::negotiated_version(None, newest), newest);
        assert_eq!(weft_proto::negotiated_version(Some(b"h3"), 3), 3);
        // Never a version this client did not offer.
        assert_eq!(
            weft_proto::negotiated_version(Some(b"weft/9"), newest),
            newest
        );
    }

    #[tokio::test]
    async fn a_cancelled_read_keeps_the_stream_in_step() {
        let (mut tx, rx) = tokio::io::duplex(1024);
        let mut recv: FrameReader = Box::new(rx);
        let mut part = PartialFrame::default();
        let first = codec::encode(&ServerMsg::Pong).unwrap();
        let second = codec::encode(&ServerMsg::Datagram(serde_bytes::ByteBuf::from(vec![
            7u8;
            300
        ])))
        .unwrap();
        // Half a header, then half a body: each read is cancelled while
        // waiting for the rest.
        for piece in [&second[..2], &second[2..100]] {
            tx.write_all(piece).await.unwrap();
            let cut = tokio::time::timeout(
                Duration::from_millis(20),
                read_msg(None, &mut recv, &mut part),
            )
            .await;
            assert!(cut.is_err());
        }
        tx.write_all(&second[100..]).await.unwrap();
        tx.write_all(&first).await.unwrap();
        match read_msg(None, &mut recv, &mut part).await.unwrap() {
            ServerMsg::Datagram(d) => assert_eq!(d.into_vec(), vec![7u8; 300]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            read_msg(None, &mut recv, &mut part).await.unwrap(),
            ServerMsg::Pong
        ));
        drop(tx);
        assert!(read_msg(None, &mut recv, &mut part).await.is_err());
    }
}
