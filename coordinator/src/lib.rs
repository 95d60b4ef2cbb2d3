//! The weft coordinator as a library.
//!
//! [`Coordinator::start`] opens (or initialises) a state dir and serves hosts
//! and admins over QUIC. The pieces: [`state`] (keys, certificate and admin
//! credential on disk), [`store`] (nodes, tokens and configuration: pure
//! decisions, a backend trait with redb and in-memory backends, and one
//! group-committing writer thread), [`cluster`] (policy, services, routes
//! and each host's compiled view), [`ipam`] (host subnets), [`registry`]
//! (nodes in memory and the change log netmaps are built from), [`server`]
//! (the QUIC endpoint and one task per connection), [`admin`] (the admin
//! credential and the client side of admin commands, used by the `weft`
//! CLI), [`metrics`] (Prometheus) and [`web`] (the cluster's web page).

pub mod admin;
pub mod backup;
pub mod cluster;
pub mod endpoints;
pub mod expiry;
pub mod ipam;
pub mod live_hint;
pub mod metrics;
pub mod names;
pub mod registry;
pub mod server;
pub mod state;
pub mod store;
pub mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use server::Coordinator;

/// Where the coordinator keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft-coordinator";
/// The default UDP listen address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7443";
/// The default cluster pool.
pub const DEFAULT_POOL: &str = "100.64.0.0/10";
/// The default host subnet prefix length.
pub const DEFAULT_SUBNET_PREFIX: u8 = 24;

/// How the coordinator is started.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    pub pool: ipnet::Ipv4Net,
    pub subnet_prefix: u8,
    /// `host:port` addresses put into join tokens. Empty: derived from
    /// `listen`.
    pub advertise: Vec<String>,
    /// How long changes are gathered before they are sent to hosts.
    pub coalesce: Duration,
    /// How much longer hosts' keep-alive interval gets per connected host
    /// (see [`weft_proto::keepalive_for`]); tests make it large to see a
    /// large cluster's behaviour with two hosts.
    pub keepalive_per_host: Duration,
    /// TCP port of the TLS fallback for hosts whose UDP is blocked; `None`:
    /// the QUIC port.
    pub tcp_port: Option<u16>,
    /// The cluster's DNS domain (services resolve as `NAME.<domain>`).
    pub domain: String,
    /// Keep loopback endpoints hosts report (for benchmarks with every
    /// host on one machine); off, they are dropped like other addresses no
    /// peer could reach.
    pub allow_loopback_endpoints: bool,
    /// Where nodes, tokens and the configuration are kept. The identity
    /// (keys, certificate, admin credential) stays in `state_dir` either
    /// way.
    pub store: StoreConfig,
    /// With an etcd store: where the other replicas reach this one to
    /// forward relayed datagrams (`host:port` of its QUIC listener).
    /// `None`: the first `advertise` address.
    pub replica_addr: Option<String>,
    /// Where to serve Prometheus metrics (`GET /metrics`, no
    /// authentication); `None`: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// Where to serve the web page of the cluster (behind the admin
    /// credential, see [`web`]); `None`: not served.
    pub web_listen: Option<SocketAddr>,
    /// When offline nodes expire, and when expired ones are removed.
    pub expiry: expiry::ExpiryRules,
}

/// The store's backend.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreConfig {
    /// `weft.redb` in the state dir.
    #[default]
    Redb,
    /// An etcd v3 cluster, shared by every coordinator replica.
    Etcd(store::etcd::EtcdConfig),
}

impl Config {
    /// The defaults, with the given state dir and listen address.
    pub fn new(state_dir: impl Into<PathBuf>, listen: SocketAddr) -> Self {
        Self {
            listen,
            state_dir: state_dir.into(),
            pool: ipnet::Ipv4Net::new(std::net::Ipv4Addr::new(100, 64, 0, 0), 10)
                .unwrap_or_default(),
            subnet_prefix: DEFAULT_SUBNET_PREFIX,
            advertise: Vec::new(),
            coalesce: Duration::from_millis(25),
            keepalive_per_host: weft_proto::KEEPALIVE_PER_HOST,
            tcp_port: None,
            domain: weft_proto::msg::DEFAULT_DOMAIN.to_string(),
            allow_loopback_endpoints: false,
            store: StoreConfig::Redb,
            replica_addr: None,
            metrics_listen: None,
            web_listen: None,
            expiry: expiry::ExpiryRules::default(),
        }
    }
}

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum CoordinatorError {
    #[error("state dir {path}: {source}; check that it exists and is writable by this user, or pass --state-dir")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is damaged ({reason}); restore it from a backup, or move the state dir away to start a new cluster")]
    StateFile { path: String, reason: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("invalid address plan: {0}")]
    Ipam(#[from] ipam::IpamError),
    #[error("cannot listen on {addr}: {source}; is another coordinator running? pass a different --listen")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("cannot serve {what} on {addr}: {source}; is something else listening there? pick another address")]
    Http {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A Unix time as RFC 3339 (UTC), for messages and listings.
pub fn fmt_time(secs: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(secs)).to_string()
}
