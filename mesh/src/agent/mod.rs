//! The host agent: joins (or rejoins) the cluster, runs the data plane, keeps
//! it in sync with the coordinator, sets up container networking, and serves
//! the local API.
//!
//! Start with [`run`]. The pieces: [`state`] (files in the state directory),
//! [`peers`] (netmap to data-plane configuration, pure), [`control_loop`]
//! (reconnects and deltas), [`host_net`] (bridge, routes, forwarding),
//! [`endpoints`] (what to report), [`api`] and [`status`] (`weft status`).

pub mod api;
pub mod applier;
pub mod control_loop;
pub mod dns;
pub mod endpoints;
pub mod host_net;
pub mod host_nft;
pub mod metrics;
pub mod metrics_http;
pub mod mtu;
pub mod netmap_cache;
pub mod netwatch;
pub mod overview;
pub mod peers;
pub mod services;
pub mod state;
pub mod status;
pub mod traversal;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use weft_proto::Netmap;
use x25519_dalek::StaticSecret;

use crate::control::{ControlClient, ControlError};
use crate::dataplane::settings::DeviceUpdate;
use crate::dataplane::{Device, DeviceError, DeviceOptions, DEFAULT_MTU};
use crate::key::Key;
use crate::uapi::server::{UapiServer, SOCKET_DIR};
use host_net::HostNetwork;
use state::{Identity, NetworkFile, StateDir, StateError};

/// The default TUN interface name.
pub const DEFAULT_INTERFACE: &str = "weft0";
/// The default container bridge name.
pub const DEFAULT_BRIDGE: &str = "weftbr0";
/// The default WireGuard UDP port.
pub const DEFAULT_PORT: u16 = 51820;
/// How long `weft up` waits for the coordinator before starting from the
/// cached netmap.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(3);

/// How the agent starts. Its `Debug` never shows the token.
#[derive(Clone)]
pub enum Start {
    /// Join with a token (first start of a host).
    Join { token: String, name: Option<String> },
    /// Rejoin with the stored identity.
    Up,
}

impl std::fmt::Debug for Start {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Start::Join { name, .. } => f
                .debug_struct("Join")
                .field("name", name)
                .finish_non_exhaustive(),
            Start::Up => f.write_str("Up"),
        }
    }
}

/// Settings of one agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    /// `None`: the stored one (`weft up`), else [`DEFAULT_INTERFACE`].
    pub interface: Option<String>,
    pub bridge: String,
    /// `None`: the stored one (`weft up`), else [`DEFAULT_PORT`].
    pub listen_port: Option<u16>,
    /// `None`: picked from the uplinks and followed ([`mtu`]).
    pub mtu: Option<u16>,
    pub offload: bool,
    /// Translate container traffic that leaves for the underlay to the
    /// host's address ([`host_nft`]).
    pub masquerade: bool,
    /// Serve Prometheus metrics here (`GET /metrics`).
    pub metrics_listen: Option<SocketAddr>,
    /// Add per-peer series to the metrics.
    pub metrics_per_peer: bool,
    /// Directory of the UAPI socket (`wg show IFACE` looks in the default).
    pub uapi_dir: PathBuf,
    /// Test only: the newest protocol version to offer (an older agent's);
    /// `None`: this build's.
    pub protocol_version: Option<u32>,
}

impl AgentConfig {
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.into(),
            interface: None,
            bridge: DEFAULT_BRIDGE.into(),
            listen_port: None,
            mtu: None,
            offload: true,
            masquerade: true,
            metrics_listen: None,
            metrics_per_peer: false,
            uapi_dir: SOCKET_DIR.into(),
            protocol_version: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    HostNet(#[from] host_net::HostNetError),
    #[error(transparent)]
    Api(#[from] api::ApiError),
    #[error(transparent)]
    Uapi(#[from] crate::uapi::server::UapiServerError),
    #[error("{0}")]
    Other(String),
}

/// What the control loop, the local API and the agent share.
pub struct Shared {
    state: StateDir,
    public_key: Key,
    bridge: String,
    view: Mutex<View>,
    /// The netmap, shared with the traversal engine.
    netmap: Arc<Mutex<traversal::NetmapCell>>,
    /// Tells the traversal engine the netmap changed.
    netmap_changed: Arc<tokio::sync::Notify>,
    /// This host's public mapping, as the reflector saw it.
    reflected: Arc<Mutex<Option<SocketAddr>>>,
    /// Signalled when the endpoints to report changed.
    endpoints_changed: Arc<tokio::sync::Notify>,
    /// Signalled when `weft route advertise` changed the routes to offer.
    routes_changed: tokio::sync::Notify,
    traversal: traversal::TraversalView,
    services: Mutex<services::Services>,
    /// `weft down`: asks the control loop to leave; it answers on the
    /// oneshot.
    leave: tokio::sync::mpsc::Sender<control_loop::LeaveReply>,
    /// Set once the node has left: the agent forgets its identity on exit.
    left: std::sync::atomic::AtomicBool,
    /// Sessions with the coordinator established so far.
    sessions: std::sync::atomic::AtomicU64,
    /// Add per-peer series to the metrics.
    metrics_per_peer: bool,
}

struct View {
    identity: Identity,
    connected: bool,
    since: Instant,
    last_error: Option<String>,
    endpoints: Vec<SocketAddr>,
    /// The live session's last-heard clock and transport.
    heard: Option<(crate::control::Heard, &'static str)>,
    /// The protocol version of the session (or the last one).
    protocol_version: Option<u32>,
    /// When the netmap in force was applied.
    netmap_at: Option<Instant>,
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn identity(&self) -> Identity {
        self.view().identity.clone()
    }

    /// The netmap in force (an O(1) copy).
    fn netmap(&self) -> Netmap {
        lock(&self.netmap).map.clone()
    }

    fn endpoints(&self) -> Vec<SocketAddr> {
        self.view().endpoints.clone()
    }

    /// Puts `netmap` in force; `change` says what changed in it (`None`:
    /// all of it), for the traversal engine.
    fn set_netmap(&self, netmap: Netmap, change: Option<&weft_proto::NetmapChange>) {
        {
            let mut cell = lock(&self.netmap);
            cell.map = netmap;
            cell.changed.note(change);
        }
        self.view().netmap_at = Some(Instant::now());
        self.netmap_changed.notify_one();
    }

    /// The metrics text (`weft metrics`, `--metrics-listen`).
    fn metrics(&self, handle: &crate::dataplane::DeviceHandle) -> String {
        let status = self.status(handle);
        let extra = metrics::Extra {
            sessions: self.sessions.load(std::sync::atomic::Ordering::Relaxed),
            netmap_age_secs: self.view().netmap_at.map(|t| t.elapsed().as_secs_f64()),
            dns: lock(&self.services).dns_stats(),
        };
        metrics::render(&status, &handle.traffic(), extra, self.metrics_per_peer)
    }

    /// Re-reads the local endpoints, adds the public mapping, and remembers
    /// them.
    fn scan_endpoints(&self) -> Vec<SocketAddr> {
        let id = self.identity();
        let eps = with_public(
            endpoints::local_endpoints(id.listen_port, &[&id.interface, &self.bridge], id.pool),
            &self.reflected,
        );
        self.view().endpoints = eps.clone();
        eps
    }

    /// What this host accepts from the mesh: packets to its own subnet and
    /// to the networks it routes for the mesh (advertised and approved).
    /// Anything else a peer sends is a peer using it as a router, and is
    /// dropped.
    fn accepted_networks(&self, netmap: &Netmap) -> Vec<crate::allowed_ips::Cidr> {
        // The routes in force for this host, as the coordinator says; from
        // an older coordinator, the ones this host advertises.
        let advertised;
        let routes = match netmap.own_routes() {
            Some(r) => r,
            None => {
                advertised = self.state.advertised_routes().unwrap_or_default();
                &advertised
            }
        };
        let mut nets = vec![peers::subnet_net(self.identity().subnet)];
        nets.extend(routes.iter().copied());
        nets
    }

    fn set_connected(&self, heard: crate::control::Heard, transport: &'static str, protocol: u32) {
        self.sessions
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut v = self.view();
        v.connected = true;
        v.since = Instant::now();
        v.last_error = None;
        v.heard = Some((heard, transport));
        v.protocol_version = Some(protocol).filter(|p| *p > 0);
    }

    fn set_disconnected(&self, error: String) {
        let mut v = self.view();
        if v.connected {
            v.since = Instant::now();
        }
        v.connected = false;
        v.last_error = Some(error);
    }
}

/// The endpoints to report: the interface addresses plus the public mapping
/// the reflector saw, if it is not one of them already.
fn with_public(mut eps: Vec<SocketAddr>, reflected: &Mutex<Option<SocketAddr>>) -> Vec<SocketAddr> {
    if let Some(p) = *lock(reflected) {
        if !eps.contains(&p) {
            eps.push(p);
        }
    }
    eps
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

/// Runs the agent until `shutdown` completes, then removes the interface,
/// routes and (when no container is attached) the bridge.
pub async fn run(
    config: AgentConfig,
    start: Start,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // A token that does not parse is refused before anything exists.
    if let Start::Join { token, .. } = &start {
        token
            .parse::<weft_proto::token::JoinToken>()
            .map_err(ControlError::from)?;
    }
    let state = StateDir::open(&config.state_dir)?;
    let key = state.host_key()?;
    let secret = StaticSecret::from(key.0);
    let stored = if state.has_identity() {
        Some(state.identity()?)
    } else {
        None
    };
    if let (Start::Join { .. }, Some(id)) = (&start, &stored) {
        return Err(AgentError::Other(format!(
            "{} already holds node {} ({}); restart it with `weft up --state-dir {}`, or remove that directory to join as a new node",
            state.path().display(),
            id.name,
            id.node_id.0,
            state.path().display()
        )));
    }
    if matches!(start, Start::Up) && stored.is_none() {
        return Err(StateError::NotJoined(state.path().to_path_buf()).into());
    }
    let interface = config
        .interface
        .clone()
        .or_else(|| stored.as_ref().map(|i| i.interface.clone()))
        .unwrap_or_else(|| DEFAULT_INTERFACE.into());
    let port = config
        .listen_port
        .or_else(|| stored.as_ref().map(|i| i.listen_port))
        .unwrap_or(DEFAULT_PORT);

    let mtu = config
        .mtu
        .unwrap_or_else(|| mtu::pick(&[&interface, &config.bridge], DEFAULT_MTU));
    let mut opts = DeviceOptions::new(&interface);
    opts.mtu = mtu;
    opts.offload = config.offload;
    opts.listen_port = port;
    let device = Device::start(&opts)?;
    let handle = device.handle();
    let listen_port = device.listen_port();
    handle
        .apply(&DeviceUpdate {
            private_key: Some(Some(key)),
            ..DeviceUpdate::default()
        })
        .map_err(|e| AgentError::Other(format!("cannot set the host key: {}", e.reason)))?;
    let uapi = UapiServer::start(&config.uapi_dir, handle.clone())?;

    // NAT traversal starts before the join so the first endpoints the
    // coordinator hears include this host's public mapping.
    let coordinator_info = match (&start, &stored) {
        (Start::Join { token, .. }, _) => {
            let t: weft_proto::token::JoinToken = token.parse().map_err(ControlError::from)?;
            crate::control::CoordinatorInfo::from(&t)
        }
        (_, Some(id)) => id.coordinator.clone(),
        (Start::Up, None) => return Err(StateError::NotJoined(state.path().to_path_buf()).into()),
    };
    let coordinator_addr = resolve(&coordinator_info).await;
    let (tview, tinputs, nc_tx) = traversal::attach(&handle);
    let netmap_cell = Arc::new(Mutex::new(traversal::NetmapCell::default()));
    let reflected = Arc::new(Mutex::new(None));
    let endpoints_changed = Arc::new(tokio::sync::Notify::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let netmap_changed = Arc::new(tokio::sync::Notify::new());
    let engine = {
        let cell = netmap_cell.clone();
        let refl = reflected.clone();
        let notify = endpoints_changed.clone();
        traversal::driver::Driver::new(
            handle.clone(),
            secret.clone(),
            coordinator_addr,
            traversal::local_networks(&[&interface, &config.bridge]),
            traversal::driver::Wiring {
                view: tview.clone(),
                netcheck: nc_tx,
                netmap: cell,
                netmap_changed: netmap_changed.clone(),
                on_public: Box::new(move |p| {
                    *lock(&refl) = p;
                    notify.notify_one();
                }),
            },
        )
    };
    let engine_task = tokio::spawn(engine.run(tinputs, stop_rx.clone()));
    let mut nc = tview.netcheck.clone();
    let _ = tokio::time::timeout(
        traversal::netcheck::FIRST_REFLECT_WAIT,
        nc.wait_for(|r| r.public.is_some() && r.public_second.is_some()),
    )
    .await;

    let mut client = ControlClient::new()?;
    if let Some(v) = config.protocol_version {
        client = client.speaking(v);
    }
    let (identity, session, netmap) = match (&start, stored) {
        (Start::Join { token, name }, _) => {
            let pool_guess = weft_proto::HostSubnet {
                addr: std::net::Ipv4Addr::new(100, 64, 0, 0),
                prefix_len: 10,
            };
            let eps = with_public(
                endpoints::local_endpoints(listen_port, &[&interface, &config.bridge], pool_guess),
                &reflected,
            );
            let name = name.clone().unwrap_or_else(hostname);
            let out = client.join(token, &secret, &name, eps).await?;
            let id = Identity {
                node_id: out.node_id,
                name: out.name,
                subnet: out.subnet,
                pool: out.pool,
                tags: out.tags,
                coordinator: out.coordinator,
                interface: interface.clone(),
                listen_port,
                domain: out.session.welcome().domain.clone(),
            };
            state.save_identity(&id)?;
            tracing::info!(node = id.node_id.0, name = %id.name, subnet = %id.subnet, "joined the cluster");
            let netmap = out.session.netmap().clone();
            (id, Some(out.session), netmap)
        }
        (Start::Up, Some(mut id)) => {
            id.interface = interface.clone();
            id.listen_port = listen_port;
            state.save_identity(&id)?;
            let cached = state.cached_netmap().unwrap_or_else(|e| {
                tracing::warn!(error = %e, "ignoring the cached netmap");
                None
            });
            let eps = with_public(
                endpoints::local_endpoints(listen_port, &[&interface, &config.bridge], id.pool),
                &reflected,
            );
            let attempt = tokio::time::timeout(
                FIRST_CONNECT_WAIT,
                client.connect(&id.coordinator, &secret, eps, cached.clone()),
            )
            .await;
            match attempt {
                Ok(Ok(s)) => {
                    let m = s.netmap().clone();
                    if id.domain != s.welcome().domain {
                        id.domain = s.welcome().domain.clone();
                        state.save_identity(&id)?;
                    }
                    (id, Some(s), m)
                }
                Ok(Err(e @ ControlError::Removed)) => return Err(e.into()),
                Ok(Err(e)) if matches!(e, ControlError::Refused { .. }) => return Err(e.into()),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "coordinator unreachable; starting from the cached netmap");
                    (id, None, cached.unwrap_or_default())
                }
                Err(_) => {
                    tracing::warn!("coordinator did not answer in {FIRST_CONNECT_WAIT:?}; starting from the cached netmap");
                    (id, None, cached.unwrap_or_default())
                }
            }
        }
        (Start::Up, None) => return Err(StateError::NotJoined(state.path().to_path_buf()).into()),
    };

    let net = HostNetwork::setup(
        &interface,
        &config.bridge,
        identity.subnet,
        identity.pool,
        mtu,
    )?;
    let rules = host_nft::HostRules {
        interface: interface.clone(),
        bridge: config.bridge.clone(),
        subnet: identity.subnet,
        pool: identity.pool,
        masquerade: config.masquerade,
    };
    let rules = match rules.install() {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(error = %e, "containers will not reach beyond the mesh (no masquerade) and TCP MSS is not clamped to the tunnel");
            None
        }
    };
    let services = services::Services::start(&identity.domain, identity.subnet.host_addr()).await;
    let (leave_tx, leave_rx) = tokio::sync::mpsc::channel(1);
    let shared = Arc::new(Shared {
        state: state.clone(),
        public_key: key,
        bridge: config.bridge.clone(),
        view: Mutex::new(View {
            identity: identity.clone(),
            connected: session.is_some(),
            since: Instant::now(),
            heard: None,
            protocol_version: None,
            last_error: None,
            endpoints: Vec::new(),
            netmap_at: None,
        }),
        netmap: netmap_cell,
        netmap_changed,
        reflected,
        endpoints_changed,
        routes_changed: tokio::sync::Notify::new(),
        traversal: tview.clone(),
        services: Mutex::new(services),
        leave: leave_tx,
        left: std::sync::atomic::AtomicBool::new(false),
        sessions: std::sync::atomic::AtomicU64::new(u64::from(session.is_some())),
        metrics_per_peer: config.metrics_per_peer,
    });
    shared.scan_endpoints();
    handle.set_local_networks(Some(shared.accepted_networks(&netmap)));
    state.save_network(&NetworkFile {
        subnet: identity.subnet.to_string(),
        gateway: identity.subnet.host_addr(),
        pool: identity.pool.to_string(),
        bridge: config.bridge.clone(),
        mtu,
        domain: identity.domain.clone(),
        upstream_dns: state::upstream_resolvers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    })?;
    let mut applier = control_loop::Applier::new(host_net::MeshRoutes::new(
        &interface,
        identity.subnet.host_addr(),
    ));
    applier.apply(&netmap, &handle, &shared.services);
    shared.set_netmap(netmap, None);

    let api = {
        let shared = shared.clone();
        let handle = handle.clone();
        api::ApiServer::start(
            &state.api_socket(),
            Arc::new(move |req| {
                let shared = shared.clone();
                let handle = handle.clone();
                Box::pin(async move { api::answer(&shared, &handle, req).await })
            }),
        )?
    };
    let metrics_server = match config.metrics_listen {
        Some(addr) => {
            let (shared, handle) = (shared.clone(), handle.clone());
            let scrape: metrics_http::Scrape = {
                let (shared, handle) = (shared.clone(), handle.clone());
                Arc::new(move || shared.metrics(&handle))
            };
            let page: metrics_http::PageJson = Arc::new(move || {
                let o = overview::overview(&shared.status(&handle), overview::now_unix());
                serde_json::to_vec(&o).unwrap_or_default()
            });
            let (_, task) = metrics_http::serve(addr, scrape, Some(page))
                .await
                .map_err(|e| {
                    AgentError::Other(format!(
                    "cannot serve metrics on {addr}: {e}; pick another --metrics-listen address"
                ))
                })?;
            Some(crate::control::AbortOnDrop(task))
        }
        None => None,
    };
    tracing::info!(
        interface = %interface,
        address = %identity.subnet.host_addr(),
        subnet = %identity.subnet,
        port = listen_port,
        "agent up; see `weft status --state-dir {}`",
        state.path().display()
    );

    // The tunnel, routes, DNS and API are up: a Type=notify unit is ready.
    tell_service_manager(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&format!(
            "{} {} on {interface}",
            identity.name,
            identity.subnet.host_addr()
        )),
    ]);
    let control = control_loop::ControlLoop {
        client,
        key: secret,
        shared: shared.clone(),
        handle: handle.clone(),
        applier,
        cache: netmap_cache::NetmapCache::new(state.clone()),
        leave: leave_rx,
    };
    let follow_mtu = config.mtu.is_none().then(|| mtu::MtuFollower {
        interface: interface.clone(),
        bridge: config.bridge.clone(),
        current: mtu,
        state: state.clone(),
    });
    let netwatch = tokio::spawn(netwatch::watch(
        shared.clone(),
        handle.clone(),
        [interface.clone(), config.bridge.clone()],
        follow_mtu,
        stop_rx.clone(),
    ));
    let mut control = tokio::spawn(control.run(session, stop_rx));
    tokio::pin!(shutdown);
    let result = tokio::select! {
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut control).await;
            Ok(())
        }
        r = &mut control => match r {
            Ok(r) => r,
            Err(e) => Err(AgentError::Other(format!("control loop failed: {e}"))),
        },
    };
    let _ = stop_tx.send(true);
    tell_service_manager(&[sd_notify::NotifyState::Stopping]);
    engine_task.abort();
    netwatch.abort();
    tview.link.set(None);
    drop(api);
    drop(metrics_server);
    state.clear_network();
    if shared.left.load(std::sync::atomic::Ordering::SeqCst) {
        state.forget_identity();
        tracing::info!(
            "left the cluster; {} keeps only the host key (join again with a new token)",
            state.path().display()
        );
    }
    drop(uapi);
    drop(device);
    if let Some(r) = rules {
        r.remove();
    }
    net.teardown();
    result
}

/// Tells systemd (through `NOTIFY_SOCKET`, when a `Type=notify` unit runs
/// the agent) how the service stands; nothing without one.
pub fn tell_service_manager(states: &[sd_notify::NotifyState<'_>]) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// The coordinator's first address that resolves (IPv4), for the reflector.
async fn resolve(info: &crate::control::CoordinatorInfo) -> Option<SocketAddr> {
    for a in &info.addrs {
        if let Ok(mut it) = tokio::net::lookup_host(a.as_str()).await {
            if let Some(sa) = it.find(SocketAddr::is_ipv4) {
                return Some(sa);
            }
        }
    }
    None
}
