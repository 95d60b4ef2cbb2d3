//! The userspace WireGuard data plane: one TUN device, one UDP socket, one
//! boringtun session per peer, cryptokey routing through [`AllowedIps`].
//!
//! Threads: `tx` reads batches from the TUN (TSO super-packets split by
//! tun-rs), encrypts and sends them with UDP GSO; `rx` receives batches with
//! recvmmsg/GRO, decrypts, checks the source against the sender's allowed IPs
//! and writes coalesced batches to the TUN; `timers` drives handshakes,
//! rekeys and keepalives, and sends the handshakes the device starts on its
//! own ([`kick`]: a restarted or moved host is reachable again within a
//! round trip). Configuration changes build a new [`PeerTable`]
//! and swap it in, so the packet threads read it without locks. When the
//! coordinator's policy restricts this host, `rx` passes decrypted packets
//! through the stateful [`filter`] and `tx` records the flows it sends.
//!
//! [`AllowedIps`]: crate::allowed_ips::AllowedIps

mod config;
pub mod filter;
pub mod hooks;
mod kick;
pub mod peer;
mod rx;
pub mod settings;
pub(crate) mod side;
mod timers;
pub mod traffic;
mod tx;
pub mod udp;
pub mod wake;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::{ArcSwap, ArcSwapOption};
use tun_rs::{DeviceBuilder, SyncDevice};

pub use config::DeviceState;
pub use filter::{FilterStats, RuleDrops};
use peer::PeerTable;
use udp::UdpEndpoint;
use wake::WakeFd;

/// Default MTU of the tunnel interface: 1500 minus the worst-case
/// WireGuard-over-IPv6 overhead (40 + 8 + 32).
pub const DEFAULT_MTU: u16 = 1420;

/// How to create the device.
#[derive(Clone, Debug)]
pub struct DeviceOptions {
    /// Interface name, e.g. `weft0`.
    pub name: String,
    pub mtu: u16,
    /// Open the TUN with virtio-net headers (TSO/USO and GRO on writes).
    pub offload: bool,
    /// UDP port to listen on; 0 picks a free one.
    pub listen_port: u16,
    /// Count wire traffic by path ([`traffic`], for metrics). Off, the
    /// packet path skips it (one predictable branch).
    pub path_counters: bool,
}

impl DeviceOptions {
    pub fn new(name: impl Into<String>) -> Self {
        DeviceOptions {
            name: name.into(),
            mtu: DEFAULT_MTU,
            offload: true,
            listen_port: 0,
            path_counters: true,
        }
    }
}

/// Why the device could not start.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot create TUN interface `{name}`: {source}; run as root (or with CAP_NET_ADMIN) and check that /dev/net/tun exists")]
    Tun { name: String, source: io::Error },
    #[error("cannot bind UDP port {port}: {source}; pick another port or stop what is using it")]
    Bind { port: u16, source: io::Error },
    #[error("cannot start data-plane thread: {0}")]
    Thread(io::Error),
}

/// Packets the data plane dropped, by reason. Read with [`Counters::snapshot`].
#[derive(Debug, Default)]
pub struct Counters {
    /// Outbound packets to an address no peer's allowed IPs cover.
    pub tx_no_route: AtomicU64,
    /// Outbound packets for a peer whose endpoint is unknown.
    pub tx_no_endpoint: AtomicU64,
    /// Outbound packets that are not IPv4/IPv6.
    pub tx_malformed: AtomicU64,
    /// UDP sends that failed (unreachable network, ...).
    pub tx_send_errors: AtomicU64,
    /// Datagrams that are not valid WireGuard messages, fail authentication,
    /// or are replays.
    pub rx_invalid: AtomicU64,
    /// Datagrams for a session index or key we do not know.
    pub rx_unknown_peer: AtomicU64,
    /// Decrypted packets whose source is outside the sender's allowed IPs.
    pub rx_src_not_allowed: AtomicU64,
    /// Decrypted packets addressed outside this host's own networks (see
    /// [`DeviceHandle::set_local_networks`]): a peer trying to use this
    /// host as a router.
    pub rx_dst_not_local: AtomicU64,
    /// Cookie replies sent because handshakes arrived faster than the limit.
    pub cookies_sent: AtomicU64,
}

/// A copy of [`Counters`] at one instant.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CounterSnapshot {
    pub tx_no_route: u64,
    pub tx_no_endpoint: u64,
    pub tx_malformed: u64,
    pub tx_send_errors: u64,
    pub rx_invalid: u64,
    pub rx_unknown_peer: u64,
    pub rx_src_not_allowed: u64,
    pub rx_dst_not_local: u64,
    pub cookies_sent: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            tx_no_route: r(&self.tx_no_route),
            tx_no_endpoint: r(&self.tx_no_endpoint),
            tx_malformed: r(&self.tx_malformed),
            tx_send_errors: r(&self.tx_send_errors),
            rx_invalid: r(&self.rx_invalid),
            rx_unknown_peer: r(&self.rx_unknown_peer),
            rx_src_not_allowed: r(&self.rx_src_not_allowed),
            rx_dst_not_local: r(&self.rx_dst_not_local),
            cookies_sent: r(&self.cookies_sent),
        }
    }
}

pub(crate) fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the packet threads and the configuration path.
pub(crate) struct Shared {
    pub name: String,
    pub tun: SyncDevice,
    pub udp: ArcSwap<UdpEndpoint>,
    pub table: ArcSwap<PeerTable>,
    pub config: Mutex<DeviceState>,
    pub counters: Counters,
    /// Signalled once, at shutdown; never cleared.
    pub stop: WakeFd,
    /// Signalled when the UDP socket was replaced; cleared by `rx`.
    pub rebind: WakeFd,
    pub stopping: AtomicBool,
    /// Where datagrams for relayed peers go (set by the agent).
    pub relay: ArcSwapOption<hooks::RelaySink>,
    /// Where disco datagrams go (set by the agent).
    pub disco: ArcSwapOption<hooks::DiscoSink>,
    /// Relayed datagrams waiting for the receive thread.
    pub injected: Mutex<hooks::Injected>,
    pub has_injected: AtomicBool,
    /// Signalled when `injected` has work; cleared by `rx`.
    pub inject: WakeFd,
    /// The inbound filter (set by the agent); none means everything passes.
    pub filter: filter::FilterSlot,
    /// Flows this host started, recorded by `tx` while a filter is active.
    pub conntrack: filter::Conntrack,
    /// Handshakes and keep-alives due on the device's own initiative.
    pub kicks: kick::KickQueue,
    /// The networks inbound packets may be addressed to; none: any (a bare
    /// WireGuard interface, as with stock WireGuard).
    pub local_nets: ArcSwapOption<Vec<crate::allowed_ips::Cidr>>,
    /// Wire traffic by path, for metrics.
    pub traffic: traffic::PathTraffic,
    /// The side sockets the path engine asked for ([`side`]).
    pub side: ArcSwap<side::SideSockets>,
    /// Signalled when `side` changed; cleared by the `wg-side` thread.
    pub side_changed: WakeFd,
}

/// A running WireGuard interface. Dropping it stops the threads and removes
/// the TUN interface.
pub struct Device {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Device {
    /// Creates the TUN interface and UDP socket and starts the packet threads.
    pub fn start(opts: &DeviceOptions) -> Result<Device, DeviceError> {
        let tun_err = |source| DeviceError::Tun {
            name: opts.name.clone(),
            source,
        };
        let tun = DeviceBuilder::new()
            .name(&opts.name)
            .mtu(opts.mtu)
            .offload(opts.offload)
            .build_sync()
            .map_err(tun_err)?;
        tun.set_nonblocking(true).map_err(tun_err)?;
        let udp = UdpEndpoint::bind(opts.listen_port).map_err(|source| DeviceError::Bind {
            port: opts.listen_port,
            source,
        })?;
        let state = DeviceState::new(udp.port());
        let shared = Arc::new(Shared {
            name: opts.name.clone(),
            tun,
            udp: ArcSwap::from_pointee(udp),
            table: ArcSwap::from_pointee(PeerTable::default()),
            config: Mutex::new(state),
            counters: Counters::default(),
            stop: WakeFd::new().map_err(DeviceError::Thread)?,
            rebind: WakeFd::new().map_err(DeviceError::Thread)?,
            stopping: AtomicBool::new(false),
            relay: ArcSwapOption::empty(),
            disco: ArcSwapOption::empty(),
            injected: Mutex::new(hooks::Injected::default()),
            has_injected: AtomicBool::new(false),
            inject: WakeFd::new().map_err(DeviceError::Thread)?,
            filter: filter::FilterSlot::default(),
            conntrack: filter::Conntrack::default(),
            kicks: kick::KickQueue::new().map_err(DeviceError::Thread)?,
            local_nets: ArcSwapOption::empty(),
            traffic: traffic::PathTraffic::new(opts.path_counters),
            side: ArcSwap::from_pointee(side::SideSockets::default()),
            side_changed: WakeFd::new().map_err(DeviceError::Thread)?,
        });
        let mut device = Device {
            shared: shared.clone(),
            threads: Vec::new(),
        };
        let spawn = |name: &str, f: fn(Arc<Shared>)| {
            let s = shared.clone();
            std::thread::Builder::new()
                .name(format!("{name}-{}", opts.name))
                .spawn(move || f(s))
                .map_err(DeviceError::Thread)
        };
        device.threads.push(spawn("wg-tx", tx::run)?);
        device.threads.push(spawn("wg-rx", rx::run)?);
        device.threads.push(spawn("wg-timers", timers::run)?);
        device.threads.push(spawn("wg-side", side::run)?);
        tracing::info!(interface = %opts.name, port = shared.udp.load().port(), "WireGuard device up");
        Ok(device)
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The UDP port WireGuard listens on.
    pub fn listen_port(&self) -> u16 {
        self.shared.udp.load().port()
    }

    /// Stops the packet threads and waits for them; idempotent.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.stop.signal();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }

    /// A handle the UAPI server and the agent use to configure the device.
    pub fn handle(&self) -> DeviceHandle {
        DeviceHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A cloneable handle to configure a running device and read its state.
#[derive(Clone)]
pub struct DeviceHandle {
    shared: Arc<Shared>,
}

impl DeviceHandle {
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn apply(
        &self,
        update: &settings::DeviceUpdate,
    ) -> Result<(), crate::uapi::protocol::UapiError> {
        config::apply(&self.shared, update)
    }

    pub fn snapshot(&self) -> settings::DeviceSnapshot {
        config::snapshot(&self.shared)
    }

    /// The keys of the device's peers (cheaper than a snapshot: nothing
    /// per peer but the key).
    pub fn peer_keys(&self) -> std::collections::HashSet<crate::key::Key> {
        self.shared.table.load().by_key.keys().copied().collect()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.shared.counters.snapshot()
    }

    /// Enforces `filter` on inbound packets; `None` (or a filter that
    /// allows everything) turns filtering off. Setting the filter already
    /// in force keeps its counters.
    /// Returns whether the filter in force changed.
    pub fn set_filter(&self, filter: Option<&weft_proto::policy::PacketFilter>) -> bool {
        self.shared.filter.set(filter)
    }

    /// Accepts from peers only packets addressed to `nets` (this host's
    /// subnet and the networks it routes for the mesh), under any policy,
    /// and counts the rest as `rx_dst_not_local`. `None` accepts any
    /// destination, as stock WireGuard does.
    pub fn set_local_networks(&self, nets: Option<Vec<crate::allowed_ips::Cidr>>) {
        self.shared.local_nets.store(nets.map(Arc::new));
    }

    /// What the inbound filter dropped since it was installed.
    pub fn filter_stats(&self) -> FilterStats {
        self.shared.filter.stats()
    }

    /// Points peer `key` at `endpoint` (a socket address or a relay marker);
    /// false if there is no such peer. A peer without a session gets a
    /// handshake at the new endpoint at once (see [`kick`]).
    pub fn set_endpoint(&self, key: &crate::key::Key, endpoint: std::net::SocketAddr) -> bool {
        let table = self.shared.table.load();
        match table.by_key.get(key) {
            Some(peer) => {
                let endpoint = Some(udp::canonical(endpoint));
                let moved = std::mem::replace(&mut peer.state().endpoint, endpoint) != endpoint;
                if moved && !peer.has_session() {
                    self.shared.kicks.push(peer, kick::Kick::Handshake);
                }
                true
            }
            None => false,
        }
    }

    /// Tells the device which kind of path peer `key` takes now, so its
    /// traffic is counted under that path; false if there is no such peer.
    pub fn set_path(&self, key: &crate::key::Key, class: traffic::PathClass) -> bool {
        let table = self.shared.table.load();
        match table.by_key.get(key) {
            Some(peer) => {
                peer.path.store(class as u8, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Every peer's count of data packets so far (see
    /// [`peer::Peer::data_packets`]).
    pub fn data_packets(&self) -> Vec<(crate::key::Key, u64)> {
        let table = self.shared.table.load();
        table
            .peers
            .values()
            .map(|p| (p.public_key, p.data_packets.load(Ordering::Relaxed)))
            .collect()
    }

    /// The device's wire traffic by direction and path.
    pub fn traffic(&self) -> traffic::TrafficSnapshot {
        self.shared.traffic.snapshot()
    }

    /// Sends every peer a keep-alive (a handshake where there is no
    /// session), paced: after this host's addresses changed, the peers see
    /// an authenticated packet from its new source and roam to it.
    pub fn nudge_peers(&self) {
        let table = self.shared.table.load();
        for peer in table.peers.values() {
            self.shared.kicks.push(peer, kick::Kick::Keepalive);
        }
    }

    /// Points peer `key` at `endpoint` only if it has none (a peer just
    /// added); false if there is no such peer.
    pub fn set_endpoint_if_unset(
        &self,
        key: &crate::key::Key,
        endpoint: std::net::SocketAddr,
    ) -> bool {
        let table = self.shared.table.load();
        match table.by_key.get(key) {
            Some(peer) => {
                let mut st = peer.state();
                if st.endpoint.is_none() {
                    st.endpoint = Some(udp::canonical(endpoint));
                    drop(st);
                    if !peer.has_session() {
                        self.shared.kicks.push(peer, kick::Kick::Handshake);
                    }
                }
                true
            }
            None => false,
        }
    }

    pub fn is_stopping(&self) -> bool {
        self.shared.stopping.load(Ordering::SeqCst)
    }

    pub(crate) fn stop_fd(&self) -> &WakeFd {
        &self.shared.stop
    }
}
