//! Inbound: UDP -> decrypt -> TUN. Receives batches (recvmmsg, each buffer
//! possibly several GRO-coalesced datagrams), routes each message to its
//! peer by session index (or by the key inside a handshake initiation),
//! decrypts straight into a TUN buffer, enforces cryptokey routing on the
//! inner source address and the inbound filter, and writes the batch to the
//! TUN, where tun-rs coalesces TCP/UDP segments into super-packets again.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::{Packet, TunnResult};
use quinn_udp::RecvMeta;
use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::filter::FilterView;
use super::hooks::{is_disco, relay_node};
use super::peer::{Peer, PeerTable};
use super::udp::UdpEndpoint;
use super::wake::{self, Ready};
use super::{bump, Shared};
use crate::allowed_ips::Cidr;
use crate::key::Key;

/// Bytes per receive buffer: one GRO super-datagram at most.
const RECV_BUF: usize = 65536;
/// Receive buffers per recvmmsg call.
const RECV_BATCH: usize = quinn_udp::BATCH_SIZE;
/// Plain size TUN buffers are kept at between uses.
const TUN_BUF: usize = 2048;

/// Decrypted packets waiting for one batched TUN write.
pub(super) struct TunBatch {
    bufs: Vec<Vec<u8>>,
    count: usize,
    gro: GROTable,
    /// The inbound filter for this batch, and the conntrack second.
    filter: FilterView,
    now: u32,
    /// The destinations this host accepts, for this batch.
    local: Option<Arc<Vec<Cidr>>>,
}

impl TunBatch {
    pub(super) fn new() -> Self {
        TunBatch {
            bufs: (0..IDEAL_BATCH_SIZE)
                .map(|_| {
                    let mut v = Vec::with_capacity(VIRTIO_NET_HDR_LEN + 65535);
                    v.resize(VIRTIO_NET_HDR_LEN + TUN_BUF, 0);
                    v
                })
                .collect(),
            count: 0,
            gro: GROTable::default(),
            filter: FilterView::default(),
            now: 0,
            local: None,
        }
    }

    /// Picks up the filter for the packets that follow: one atomic load
    /// while no filter is installed or changed.
    pub(super) fn begin(&mut self, shared: &Shared) {
        if self.filter.refresh(&shared.filter).is_some() {
            self.now = shared.conntrack.now();
        }
        self.local = shared.local_nets.load_full();
    }

    /// Whether the `n` bytes just written are addressed to this host's own
    /// networks (always, when none are set).
    fn addressed_here(&self, n: usize) -> bool {
        let Some(local) = &self.local else {
            return true;
        };
        destination(self.written(n)).is_some_and(|dst| local.iter().any(|net| net.contains(dst)))
    }

    /// Whether the filter admits the `n` bytes just written into the buffer
    /// from [`next`](Self::next).
    fn admits(&self, shared: &Shared, n: usize, via: impl Fn(std::net::IpAddr) -> bool) -> bool {
        let Some(filter) = self.filter.current() else {
            return true;
        };
        filter.check_from(&shared.conntrack, self.now, self.written(n), via)
    }

    /// The `n` bytes just written into the buffer from [`next`](Self::next).
    fn written(&self, n: usize) -> &[u8] {
        self.bufs
            .get(self.count)
            .and_then(|b| b.get(VIRTIO_NET_HDR_LEN..VIRTIO_NET_HDR_LEN + n))
            .unwrap_or_default()
    }

    /// The next free buffer, at least `need` bytes past the header room.
    fn next(&mut self, need: usize) -> &mut [u8] {
        let buf = &mut self.bufs[self.count];
        let want = VIRTIO_NET_HDR_LEN + need.max(TUN_BUF);
        if buf.len() < want {
            buf.resize(want, 0);
        }
        &mut buf[VIRTIO_NET_HDR_LEN..]
    }

    /// Keeps the `n` bytes just written into the buffer from [`next`].
    fn commit(&mut self, n: usize) {
        self.bufs[self.count].truncate(VIRTIO_NET_HDR_LEN + n);
        self.count += 1;
    }

    pub(super) fn is_full(&self) -> bool {
        self.count == self.bufs.len()
    }

    pub(super) fn flush(&mut self, shared: &Shared) {
        if self.count == 0 {
            return;
        }
        let bufs = &mut self.bufs[..self.count];
        if let Err(e) = shared
            .tun
            .send_multiple(&mut self.gro, bufs, VIRTIO_NET_HDR_LEN)
        {
            tracing::debug!(error = %e, "TUN write failed");
        }
        self.count = 0;
    }
}

pub(super) fn run(shared: Arc<Shared>) {
    let mut storage = vec![0u8; RECV_BUF * RECV_BATCH];
    let mut iovs: Vec<IoSliceMut<'_>> = storage.chunks_mut(RECV_BUF).map(IoSliceMut::new).collect();
    let mut metas = vec![RecvMeta::default(); RECV_BATCH];
    let mut tun = TunBatch::new();
    let mut scratch = vec![0u8; RECV_BUF];

    let mut udp = shared.udp.load_full();
    loop {
        if shared.stopping.load(Ordering::Relaxed) {
            return;
        }
        let n = match udp.recv(&mut iovs, &mut metas) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match wake::wait(
                    Some(udp.raw_fd()),
                    libc::POLLIN,
                    &[&shared.stop, &shared.rebind, &shared.inject],
                    -1,
                ) {
                    Ok(Ready::Woken(0)) => return,
                    Ok(Ready::Woken(2)) => {
                        handle_injected(&shared, &udp, &mut tun, &mut scratch);
                        continue;
                    }
                    Ok(Ready::Woken(_)) => {
                        shared.rebind.clear();
                        udp = shared.udp.load_full();
                        continue;
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "waiting on the UDP socket failed; inbound stopped");
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // ICMP errors surface here on some kernels; they are not fatal.
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let table = shared.table.load();
        tun.begin(&shared);
        for (meta, iov) in metas[..n].iter().zip(iovs.iter()) {
            let data = &iov[..meta.len.min(iov.len())];
            let stride = if meta.stride == 0 {
                data.len().max(1)
            } else {
                meta.stride
            };
            for dgram in data.chunks(stride) {
                if is_disco(dgram) {
                    if let Some(sink) = shared.disco.load().as_ref() {
                        sink(meta.addr, dgram);
                    }
                    continue;
                }
                if tun.is_full() {
                    tun.flush(&shared);
                }
                handle_datagram(
                    &shared,
                    &table,
                    &udp,
                    meta.addr,
                    dgram,
                    &mut tun,
                    &mut scratch,
                );
            }
        }
        tun.flush(&shared);
        if shared.has_injected.load(Ordering::Acquire) {
            handle_injected(&shared, &udp, &mut tun, &mut scratch);
        }
    }
}

/// Processes the datagrams that arrived through the relay.
fn handle_injected(shared: &Shared, udp: &UdpEndpoint, tun: &mut TunBatch, scratch: &mut [u8]) {
    let table = shared.table.load();
    tun.begin(shared);
    for (src, dgram) in shared.take_injected() {
        if is_disco(&dgram) {
            if let Some(sink) = shared.disco.load().as_ref() {
                sink(src, &dgram);
            }
            continue;
        }
        if tun.is_full() {
            tun.flush(shared);
        }
        handle_datagram(shared, &table, udp, src, &dgram, tun, scratch);
    }
    tun.flush(shared);
}

/// Roaming: the endpoint follows the source of the latest authenticated
/// packet, except that a packet through the relay never replaces a direct
/// endpoint (the agent's path manager decides when direct has failed).
fn roam(st: &mut super::peer::PeerState, src: SocketAddr) {
    if relay_node(&src).is_some() && st.endpoint.is_some_and(|e| relay_node(&e).is_none()) {
        return;
    }
    st.endpoint = Some(src);
}

/// Processes one WireGuard message from `src`.
pub(super) fn handle_datagram(
    shared: &Shared,
    table: &PeerTable,
    udp: &UdpEndpoint,
    src: SocketAddr,
    dgram: &[u8],
    tun: &mut TunBatch,
    scratch: &mut [u8],
) {
    let (Some(identity), Some(limiter)) = (&table.identity, &table.rate_limiter) else {
        bump(&shared.counters.rx_unknown_peer);
        return;
    };
    let mut cookie = [0u8; 64];
    let packet = match limiter.verify_packet(Some(src.ip()), dgram, &mut cookie) {
        Ok(p) => p,
        Err(TunnResult::WriteToNetwork(reply)) => {
            bump(&shared.counters.cookies_sent);
            let _ = shared.send_wire(udp, src, reply, None);
            return;
        }
        Err(_) => {
            bump(&shared.counters.rx_invalid);
            return;
        }
    };
    let peer: Option<&Arc<Peer>> = match &packet {
        Packet::HandshakeInit(p) => parse_handshake_anon(&identity.secret, &identity.public, p)
            .ok()
            .and_then(|h| table.by_key.get(&Key(h.peer_static_public))),
        Packet::HandshakeResponse(p) => table.by_index.get(&(p.receiver_idx >> 8)),
        Packet::PacketCookieReply(p) => table.by_index.get(&(p.receiver_idx >> 8)),
        Packet::PacketData(p) => table.by_index.get(&(p.receiver_idx >> 8)),
    };
    let Some(peer) = peer else {
        bump(&shared.counters.rx_unknown_peer);
        if matches!(packet, Packet::PacketData(_)) {
            rekey_sender(shared, table, src);
        }
        return;
    };
    let is_data = matches!(packet, Packet::PacketData(_));
    let is_cookie = matches!(packet, Packet::PacketCookieReply(_));

    let mut st = peer.state();
    let Some(tunn) = st.tunn.as_mut() else {
        bump(&shared.counters.rx_unknown_peer);
        return;
    };
    let out = tun.next(dgram.len());
    // boringtun keeps its verified-packet entry point private, so the
    // message is verified again inside decapsulate (cheap for data).
    let _ = packet;
    match tunn.decapsulate(Some(src.ip()), dgram, out) {
        TunnResult::Done => {
            if !is_cookie {
                roam(&mut st, src);
                drop(st);
                peer.add_rx(dgram.len(), &shared.traffic);
            }
        }
        TunnResult::Err(e) => {
            bump(&shared.counters.rx_invalid);
            tracing::debug!(error = ?e, %src, "dropped WireGuard message");
            let stale = matches!(
                e,
                WireGuardError::NoCurrentSession | WireGuardError::WrongIndex
            );
            drop(st);
            if is_data && stale {
                rekey_sender(shared, table, src);
            }
        }
        TunnResult::WriteToNetwork(reply) => {
            // A handshake response or cookie: send it, then whatever
            // boringtun queued while the session was being set up.
            let mut pending: Vec<Vec<u8>> = vec![reply.to_vec()];
            while let TunnResult::WriteToNetwork(p) = tunn.decapsulate(None, &[], scratch) {
                pending.push(p.to_vec());
            }
            roam(&mut st, src);
            drop(st);
            peer.add_rx(dgram.len(), &shared.traffic);
            for p in pending {
                peer.add_tx(p.len(), &shared.traffic);
                if shared.send_wire(udp, src, &p, None).is_err() {
                    bump(&shared.counters.tx_send_errors);
                }
            }
        }
        TunnResult::WriteToTunnelV4(inner, ip) => {
            let n = inner.len();
            roam(&mut st, src);
            drop(st);
            accept_inner(shared, table, peer, ip.into(), n, dgram.len(), tun);
        }
        TunnResult::WriteToTunnelV6(inner, ip) => {
            let n = inner.len();
            roam(&mut st, src);
            drop(st);
            accept_inner(shared, table, peer, ip.into(), n, dgram.len(), tun);
        }
    }
}

/// Transport data from `src` that no session here can decrypt: when `src`
/// is a peer's endpoint, that peer still uses a session with this host's
/// previous process (or one that expired), and a handshake now saves it
/// waiting for its rekey timeout. Scans are capped per second and the
/// handshake per endpoint (see [`super::kick`]), so spoofed data costs
/// little.
fn rekey_sender(shared: &Shared, table: &PeerTable, src: SocketAddr) {
    if !shared.kicks.may_scan() {
        return;
    }
    let src = super::udp::canonical(src);
    if let Some(peer) = table.peers.values().find(|p| p.endpoint() == Some(src)) {
        tracing::debug!(%src, "undecryptable data from a peer; handshaking");
        shared.kicks.push(peer, super::kick::Kick::Handshake);
    }
}

/// The destination address of an IPv4 or IPv6 packet.
fn destination(packet: &[u8]) -> Option<std::net::IpAddr> {
    match packet.first()? >> 4 {
        4 => {
            let b: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            Some(std::net::Ipv4Addr::from(b).into())
        }
        6 => {
            let b: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            Some(std::net::Ipv6Addr::from(b).into())
        }
        _ => None,
    }
}

/// Cryptokey routing on the way in: the inner source must be one of the
/// sending peer's allowed IPs, the destination one of this host's own
/// networks; then the inbound filter decides (and counts what it drops).
fn accept_inner(
    shared: &Shared,
    table: &PeerTable,
    peer: &Arc<Peer>,
    src_ip: std::net::IpAddr,
    inner_len: usize,
    wire_len: usize,
    tun: &mut TunBatch,
) {
    peer.add_rx(wire_len, &shared.traffic);
    peer.data_packets
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    match table.routes.lookup(src_ip) {
        Some(owner) if Arc::ptr_eq(owner, peer) => {
            let via = |ip| {
                table
                    .routes
                    .lookup(ip)
                    .is_some_and(|o| Arc::ptr_eq(o, peer))
            };
            if !tun.addressed_here(inner_len) {
                bump(&shared.counters.rx_dst_not_local);
                return;
            }
            if tun.admits(shared, inner_len, via) {
                tun.commit(inner_len);
            }
        }
        _ => {
            bump(&shared.counters.rx_src_not_allowed);
            tracing::debug!(%src_ip, "dropped packet from outside the peer's allowed IPs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::destination;

    #[test]
    fn destination_of_v4_v6_and_garbage() {
        let mut v4 = [0u8; 20];
        v4[0] = 0x45;
        v4[16..20].copy_from_slice(&[100, 64, 1, 7]);
        assert_eq!(destination(&v4), Some("100.64.1.7".parse().unwrap()));
        let mut v6 = [0u8; 40];
        v6[0] = 0x60;
        v6[24] = 0xfd;
        v6[39] = 1;
        assert_eq!(destination(&v6), Some("fd00::1".parse().unwrap()));
        assert_eq!(destination(&v4[..19]), None, "truncated");
        assert_eq!(destination(&[]), None);
        assert_eq!(destination(&[0x15; 40]), None, "not IP");
    }
}
