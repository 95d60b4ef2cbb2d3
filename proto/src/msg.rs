//! Messages between a host (or an admin tool) and the coordinator.
//!
//! Every QUIC connection opens one bidirectional stream and sends a
//! [`Hello`] first. For a host the stream then stays open as its session:
//! the coordinator answers [`ServerMsg::Welcome`] and streams
//! [`ServerMsg::Netmap`] updates; the host sends [`ClientMsg`]s. An admin
//! request gets one [`ServerMsg::Admin`] reply and the stream ends. Any
//! refusal is one [`ServerMsg::Error`].

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::netmap::NetmapUpdate;
use crate::policy::{Cidr, Proto};
use crate::types::{HostSubnet, NodeId, WgPublicKey};

/// QUIC application close code: an admin removed the node.
pub const CLOSE_REMOVED: u32 = 0x10;
/// QUIC application close code: a newer session of the same node replaced
/// this one.
pub const CLOSE_REPLACED: u32 = 0x11;

/// The first message on a connection.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_version: u32,
    pub request: HelloRequest,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum HelloRequest {
    Join(JoinRequest),
    Resume(ResumeRequest),
    Admin(AdminRequest),
}

/// A new host joining with a token. The key proof shows the host holds the
/// private key of `public_key` (see [`crate::auth`]).
#[derive(Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub token_id: String,
    #[serde(with = "crate::types::bytes32")]
    pub token_secret: [u8; 32],
    pub public_key: WgPublicKey,
    #[serde(with = "crate::types::bytes32")]
    pub proof: [u8; 32],
    pub hostname: String,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
}

impl std::fmt::Debug for JoinRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinRequest")
            .field("token_id", &self.token_id)
            .field("public_key", &self.public_key)
            .field("hostname", &self.hostname)
            .field("endpoints", &self.endpoints)
            .finish_non_exhaustive()
    }
}

/// A registered host reconnecting. Identity comes from the proof alone.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ResumeRequest {
    pub public_key: WgPublicKey,
    #[serde(with = "crate::types::bytes32")]
    pub proof: [u8; 32],
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    /// The netmap the host already has, to resume with a delta.
    #[serde(default)]
    pub have_epoch: u64,
    #[serde(default)]
    pub have_version: u64,
    /// [`crate::Netmap::view`] of the cached netmap.
    #[serde(default)]
    pub have_view: u64,
    /// [`crate::Netmap::content_digest`] of the cached netmap (0: none).
    /// Added 2026-12-01: a coordinator that restarted, and so has no
    /// delta from `have_version`, resumes a host whose digest matches its
    /// view without a full snapshot.
    #[serde(default)]
    pub have_digest: u64,
}

/// Sent by a host on its session stream after the welcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ClientMsg {
    /// The host's WireGuard endpoints changed.
    SetEndpoints { endpoints: Vec<SocketAddr> },
    /// The networks outside the mesh this host can reach and offers to
    /// route (the whole list; empty withdraws). They take effect once an
    /// admin approves them.
    AdvertiseRoutes { routes: Vec<Cidr> },
    /// A [`crate::relay::Datagram`], on a TCP session (where QUIC datagrams
    /// do not exist).
    Datagram(serde_bytes::ByteBuf),
    /// Liveness on a TCP session, every `Welcome::keepalive_ms`; answered
    /// with [`ServerMsg::Pong`]. Sent only to a coordinator whose welcome
    /// sets `keepalive_ms`.
    Ping,
    /// This host leaves the cluster (`weft down`): the coordinator removes
    /// the node, as `weft node remove` would, and closes the session with
    /// the removed code. Sent only to a coordinator whose welcome sets
    /// `accepts_leave`.
    Leave,
    /// The path this host's traffic takes to each of its peers (the whole
    /// list, latest wins), for the coordinator's web page. Sent when a path
    /// changes, at most once a second, and only to a coordinator whose
    /// welcome sets `accepts_paths`. The coordinator keeps at most
    /// [`MAX_PATH_REPORTS`] entries and [`MAX_PATH_REASON`] bytes of each
    /// reason. Added 2026-12-01.
    ReportPaths { paths: Vec<PathReport> },
}

/// Most entries of a [`ClientMsg::ReportPaths`] the coordinator keeps.
pub const MAX_PATH_REPORTS: usize = 4096;
/// Longest reason of a [`PathReport`] the coordinator keeps, in bytes.
pub const MAX_PATH_REASON: usize = 160;

/// One peer's path as the reporting host sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathReport {
    pub peer: NodeId,
    pub path: PathClassReport,
    /// Why the peer is relayed, in words (only for `Relay`).
    #[serde(default)]
    pub reason: Option<String>,
}

/// The kind of path in a [`PathReport`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum PathClassReport {
    /// Directly to an address on one of the host's own networks.
    Lan,
    /// Directly to an address elsewhere (through NATs).
    Direct,
    /// Through the coordinator's relay.
    Relay,
    /// A kind from a newer host.
    #[serde(other)]
    Unknown,
}

impl PathClassReport {
    pub fn name(self) -> &'static str {
        match self {
            PathClassReport::Lan => "lan",
            PathClassReport::Direct => "direct",
            PathClassReport::Relay => "relay",
            PathClassReport::Unknown => "unknown",
        }
    }
}

/// Sent by the coordinator.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ServerMsg {
    Welcome(Welcome),
    Netmap(NetmapUpdate),
    Admin(AdminReply),
    Error(ErrorReply),
    /// A [`crate::relay::Datagram`], on a TCP session.
    Datagram(serde_bytes::ByteBuf),
    /// The answer to [`ClientMsg::Ping`].
    Pong,
}

/// The host's own registration, sent at the start of every session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub node_id: NodeId,
    pub name: String,
    pub subnet: HostSubnet,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The pool all host subnets come from (the mesh routes it).
    pub pool: HostSubnet,
    /// The cluster's DNS domain: services resolve as `NAME.<domain>`.
    #[serde(default = "default_domain")]
    pub domain: String,
    /// How often the host should keep its session alive, in milliseconds
    /// (it grows with the cluster: [`crate::keepalive_for`]); 0: the
    /// coordinator does not answer pings (older than liveness).
    #[serde(default)]
    pub keepalive_ms: u32,
    /// Whether the coordinator understands [`ClientMsg::Leave`].
    #[serde(default)]
    pub accepts_leave: bool,
    /// Whether the coordinator understands [`ClientMsg::ReportPaths`].
    #[serde(default)]
    pub accepts_paths: bool,
    /// On QUIC: whether the coordinator keeps this connection alive itself,
    /// with QUIC keep-alives every `keepalive_ms` for the connection's life
    /// (the host's QUIC stack answers them). Older coordinators do not: a
    /// host then sends an empty datagram every `keepalive_ms`.
    #[serde(default)]
    pub keeps_quic_alive: bool,
    /// The protocol version this session speaks (negotiated by ALPN); 0
    /// from a version-3 coordinator. Added 2026-12-02, version 4.
    #[serde(default)]
    pub protocol_version: u32,
}

/// The DNS domain of a cluster that did not choose one.
pub const DEFAULT_DOMAIN: &str = "weft.internal";

fn default_domain() -> String {
    DEFAULT_DOMAIN.to_string()
}

/// A refusal, with a message that says what to do next.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorReply {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorCode {
    VersionMismatch,
    /// Unknown token id or wrong secret.
    TokenInvalid,
    TokenExpired,
    TokenRevoked,
    TokenUsedUp,
    PoolExhausted,
    /// The WireGuard key is already registered to a node.
    KeyInUse,
    /// No node holds this key (never joined, or removed).
    NotRegistered,
    /// The key proof did not verify.
    ProofFailed,
    AdminDenied,
    NotFound,
    BadRequest,
    Internal,
    /// Too many attempts from this address or with this token: wait and
    /// retry (added 2026-12-01; older hosts see `Unknown`).
    RateLimited,
    /// An error code from a newer coordinator.
    #[serde(other)]
    Unknown,
}

/// An admin request, authenticated by the admin secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct AdminRequest {
    #[serde(with = "crate::types::bytes32")]
    pub secret: [u8; 32],
    pub command: AdminCommand,
}

impl std::fmt::Debug for AdminRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRequest")
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminCommand {
    TokenCreate {
        /// How many joins the token allows; `None` for unlimited.
        uses: Option<u32>,
        /// Seconds from now until the token expires; `None` for never.
        expires_in_secs: Option<u64>,
        #[serde(default)]
        tags: Vec<String>,
    },
    TokenList,
    TokenRevoke {
        id: String,
    },
    NodeList,
    /// Remove a node by id or by name.
    NodeRemove {
        node: String,
    },
    /// The policy in force.
    AclGet,
    /// Validates a policy document, runs its tests against the cluster, and
    /// puts it in force only if all pass.
    AclSet {
        text: String,
    },
    /// Validates and runs the tests of a document without changing anything.
    AclTest {
        text: String,
    },
    /// Every version of the policy, oldest first.
    AclHistory,
    ServiceExpose(ServiceInfo),
    ServiceList,
    ServiceRemove {
        name: String,
    },
    RouteList,
    /// Approves (or with `approve: false` revokes) a route a node advertised.
    RouteApprove {
        node: String,
        cidr: Cidr,
        approve: bool,
    },
    /// Sets how long a node may stay offline before it expires (by id or
    /// name). An expired node comes back, its offline time counted from now.
    /// Added in protocol 4.
    NodeSet {
        node: String,
        expiry: NodeExpiry,
    },
    /// A new named admin credential; its secret is in the reply, once.
    /// Added in protocol 4.
    AdminCreate {
        name: String,
    },
    AdminList,
    /// Revokes a named admin credential: it is refused from now on.
    AdminRevoke {
        name: String,
    },
    /// A consistent snapshot of the store and the coordinator's identity,
    /// answered as [`AdminReply::BackupPart`]s and a [`AdminReply::BackupDone`].
    /// Added in protocol 4.
    Backup,
}

impl AdminCommand {
    /// The command's name, for logs (no arguments: they may hold secrets).
    pub fn kind(&self) -> &'static str {
        match self {
            AdminCommand::TokenCreate { .. } => "token create",
            AdminCommand::TokenList => "token list",
            AdminCommand::TokenRevoke { .. } => "token revoke",
            AdminCommand::NodeList => "node list",
            AdminCommand::NodeRemove { .. } => "node remove",
            AdminCommand::AclGet => "acl get",
            AdminCommand::AclSet { .. } => "acl set",
            AdminCommand::AclTest { .. } => "acl test",
            AdminCommand::AclHistory => "acl history",
            AdminCommand::ServiceExpose(_) => "service expose",
            AdminCommand::ServiceList => "service list",
            AdminCommand::ServiceRemove { .. } => "service remove",
            AdminCommand::RouteList => "route list",
            AdminCommand::RouteApprove { .. } => "route approve",
            AdminCommand::NodeSet { .. } => "node set",
            AdminCommand::Backup => "backup",
            AdminCommand::AdminCreate { .. } => "admin create",
            AdminCommand::AdminList => "admin list",
            AdminCommand::AdminRevoke { .. } => "admin revoke",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AdminReply {
    TokenCreated {
        token: String,
        info: TokenInfo,
    },
    Tokens(Vec<TokenInfo>),
    TokenRevoked {
        id: String,
    },
    Nodes(Vec<NodeInfo>),
    NodeRemoved {
        id: NodeId,
        name: String,
    },
    /// The policy in force; `None` when none was ever set (allow-all).
    Acl(Option<AclVersion>),
    /// The document was put in force (`AclSet`), or would be (`AclTest`):
    /// its version (0 for a test) and how many of its tests passed.
    AclAccepted {
        version: u64,
        tests: usize,
    },
    AclHistory(Vec<AclVersion>),
    Services(Vec<ServiceInfo>),
    ServiceExposed(ServiceInfo),
    ServiceRemoved {
        name: String,
    },
    Routes(Vec<RouteInfo>),
    RouteApproved {
        node: String,
        cidr: Cidr,
        approve: bool,
    },
    /// The node after `NodeSet`.
    NodeSet(NodeInfo),
    /// One part of a backup, in order (each fits a frame).
    BackupPart(BackupBytes),
    /// The end of a backup: its length and SHA-256, to check the parts.
    BackupDone {
        len: u64,
        sha256: [u8; 32],
    },
    /// A new admin credential: its secret (hex), shown only now.
    AdminCreated {
        info: AdminInfo,
        secret: AdminSecret,
    },
    Admins(Vec<AdminInfo>),
    AdminRevoked {
        name: String,
    },
}

/// A named admin credential as `weft admin list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminInfo {
    pub name: String,
    /// Unix seconds.
    pub created_at: u64,
    /// The credential that created it.
    pub created_by: String,
    pub revoked_at: Option<u64>,
}

/// An admin secret (hex) in a reply: never in `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct AdminSecret(pub String);

impl std::fmt::Debug for AdminSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<admin secret>")
    }
}

/// One version of the policy document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AclVersion {
    pub version: u64,
    /// Unix seconds.
    pub set_at: u64,
    /// The document as the admin wrote it.
    pub text: String,
    /// The node each host name meant when this version was set: a `host:`
    /// selector names that node, never a later one given the same name.
    /// Names no node had then match any node that has them. Added
    /// 2026-12-01 (older versions pin nothing).
    #[serde(default)]
    pub hosts: std::collections::BTreeMap<String, NodeId>,
    /// The admin credential that set it (`root`: the state dir's
    /// admin.json). Added in protocol 4 (older versions name none).
    #[serde(default)]
    pub set_by: Option<String>,
}

/// A published service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    /// The node it runs on (the coordinator stores its name).
    pub node: String,
    pub port: u16,
    pub proto: Proto,
    /// The address it listens on when not the node's own (a container's).
    #[serde(default)]
    pub addr: Option<IpAddr>,
    /// Selectors of the clients allowed; empty means "as the policy says".
    #[serde(default)]
    pub allow: Vec<String>,
    /// A TCP port on `gateway` forwarded to the service from outside.
    #[serde(default)]
    pub public: Option<u16>,
    /// The node whose public port forwards to the service (default: the
    /// service's node).
    #[serde(default)]
    pub gateway: Option<String>,
    /// The node `node` named when the service was exposed: the service
    /// stays with that node, whoever takes the name later. Set by the
    /// coordinator (a client's value is ignored); added 2026-12-01.
    #[serde(default)]
    pub node_id: Option<NodeId>,
    /// The node `gateway` named when the service was exposed.
    #[serde(default)]
    pub gateway_id: Option<NodeId>,
}

impl ServiceInfo {
    /// The node the service runs on: the one bound when it was exposed,
    /// or (a record from before ids were bound) the one with its name.
    pub fn node_in(&self, by_name: impl Fn(&str) -> Option<NodeId>) -> Option<NodeId> {
        self.node_id.or_else(|| by_name(&self.node))
    }

    /// The node that forwards its public port, if it has one.
    pub fn gateway_in(&self, by_name: impl Fn(&str) -> Option<NodeId>) -> Option<NodeId> {
        self.public?;
        match (&self.gateway, self.gateway_id) {
            (_, Some(id)) => Some(id),
            (Some(name), None) => by_name(name),
            (None, None) => self.node_in(by_name),
        }
    }
}

/// The routes one node advertised, and which are approved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteInfo {
    pub node: String,
    pub advertised: Vec<Cidr>,
    pub approved: Vec<Cidr>,
    /// The routes in force: advertised, and approved by an admin or by the
    /// policy's `routes:`.
    #[serde(default)]
    pub active: Vec<Cidr>,
}

/// A token as `weft token list` shows it (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: String,
    /// Joins left; `None` for unlimited.
    pub uses_left: Option<u32>,
    pub used: u32,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub revoked: bool,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The admin credential that made it. Added in protocol 4.
    #[serde(default)]
    pub created_by: String,
}

/// A node as `weft node list` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    pub public_key: WgPublicKey,
    pub subnet: HostSubnet,
    #[serde(default)]
    pub endpoints: Vec<SocketAddr>,
    #[serde(default)]
    pub tags: Vec<String>,
    pub online: bool,
    /// Unix seconds.
    pub created_at: u64,
    /// When the coordinator last saw it connected (Unix seconds, up to the
    /// coordinator's refresh interval old; 0: unknown). Added in protocol 4.
    #[serde(default)]
    pub last_seen: u64,
    /// How long it may stay offline before it expires. Added in protocol 4.
    #[serde(default)]
    pub expiry: NodeExpiry,
    /// When it expired (it is in no netmap since; Unix seconds). Added in
    /// protocol 4.
    #[serde(default)]
    pub expired_at: Option<u64>,
}

/// Bytes of a backup: they hold the coordinator's private keys, so their
/// `Debug` shows only their length.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BackupBytes(pub serde_bytes::ByteBuf);

impl std::fmt::Debug for BackupBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes of a backup>", self.0.len())
    }
}

/// `30d`, `12h`, `90s`: the largest unit that divides `secs` (the form
/// `--node-expiry` takes).
pub fn short_duration(secs: u64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= n && secs.is_multiple_of(n) {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

/// How long one node may stay offline before it expires: out of every
/// netmap, and after a grace period removed, its subnet back in the pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeExpiry {
    /// The cluster's `--node-expiry`.
    #[default]
    Cluster,
    /// Never expires.
    Never,
    /// After this many seconds offline.
    After(u64),
}

impl std::fmt::Display for NodeExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NodeExpiry::Cluster => f.write_str("cluster"),
            NodeExpiry::Never => f.write_str("never"),
            NodeExpiry::After(s) => f.write_str(&short_duration(*s)),
        }
    }
}
