//! Outbound: TUN -> encrypt -> UDP. Reads a batch from the TUN (a TSO
//! super-packet arrives already split into MTU-sized packets), encrypts each
//! packet straight into a GSO buffer, and sends runs of equal-sized
//! datagrams to the same endpoint as one UDP GSO send. A run may span TUN
//! reads: plain packets (UDP without USO, ICMP) arrive one per read, and are
//! batched until the TUN is drained, the run breaks or the GSO buffer is
//! full, so a burst of them costs one send, and a lone packet waits for no
//! more than one extra (empty) read. While an inbound filter is active,
//! the flow of every packet sent is recorded so that its replies pass.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use boringtun::noise::{Tunn, TunnResult};
use tun_rs::{IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

use super::filter::{FilterView, Recorder};
use super::udp::UdpEndpoint;
use super::wake::{self, Ready};
use super::{bump, Shared};

/// Largest buffer a TUN read can need (one IP packet, or a super-packet).
pub(super) const MAX_PACKET: usize = 65535;
/// The most a GSO send may carry in total.
const GSO_BYTES: usize = 65000;
/// Room boringtun needs for a handshake initiation it may emit instead.
const MIN_ENCAP_ROOM: usize = 148;

/// Datagrams waiting to go out as one GSO send.
pub(super) struct GsoBatch {
    buf: Vec<u8>,
    len: usize,
    dest: Option<SocketAddr>,
    segment: usize,
    count: usize,
    /// A short final segment was added; nothing more may follow.
    closed: bool,
}

impl GsoBatch {
    pub(super) fn new() -> Self {
        GsoBatch {
            buf: vec![0u8; GSO_BYTES + MAX_PACKET + MIN_ENCAP_ROOM],
            len: 0,
            dest: None,
            segment: 0,
            count: 0,
            closed: false,
        }
    }

    /// Space for the next datagram, after the ones already batched.
    fn tail(&mut self, need: usize) -> &mut [u8] {
        &mut self.buf[self.len..self.len + need.max(MIN_ENCAP_ROOM)]
    }

    /// Adds the `n`-byte datagram just written at the tail, sending the
    /// batch first if the new datagram cannot join it.
    fn commit(&mut self, dest: SocketAddr, n: usize, udp: &UdpEndpoint, shared: &Shared) {
        let max_segments = udp.max_gso_segments();
        let joins = self.count > 0
            && self.dest == Some(dest)
            && !self.closed
            && n <= self.segment
            && self.count < max_segments
            && self.len + n <= GSO_BYTES;
        if !joins && self.count > 0 {
            self.send_pending(udp, shared);
            self.buf.copy_within(self.len..self.len + n, 0);
            self.len = 0;
            self.count = 0;
        }
        if self.count == 0 {
            self.dest = Some(dest);
            self.segment = n;
            self.closed = false;
        } else if n < self.segment {
            self.closed = true;
        }
        self.len += n;
        self.count += 1;
    }

    fn flush(&mut self, udp: &UdpEndpoint, shared: &Shared) {
        self.send_pending(udp, shared);
        self.len = 0;
        self.count = 0;
    }

    /// Sends the batched datagrams (one GSO send when there are several).
    fn send_pending(&self, udp: &UdpEndpoint, shared: &Shared) {
        let Some(dest) = self.dest.filter(|_| self.count > 0) else {
            return;
        };
        let segment = (self.count > 1).then_some(self.segment);
        if let Err(e) = shared.send_wire(udp, dest, &self.buf[..self.len], segment) {
            bump(&shared.counters.tx_send_errors);
            tracing::debug!(%dest, error = %e, "UDP send failed");
        }
    }
}

pub(super) fn run(shared: Arc<Shared>) {
    let offset = VIRTIO_NET_HDR_LEN;
    let mut original = vec![0u8; offset + MAX_PACKET];
    let mut bufs: Vec<Vec<u8>> = (0..IDEAL_BATCH_SIZE)
        .map(|_| vec![0u8; offset + MAX_PACKET])
        .collect();
    let mut sizes = vec![0usize; IDEAL_BATCH_SIZE];
    let mut batch = GsoBatch::new();
    let mut filter = FilterView::default();

    loop {
        if shared.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let n = match shared
            .tun
            .recv_multiple(&mut original, &mut bufs, &mut sizes, offset)
        {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // Drained: send what is batched before sleeping.
                if batch.count > 0 {
                    batch.flush(&shared.udp.load(), &shared);
                }
                match wake::wait(
                    Some(shared.tun.as_raw_fd()),
                    libc::POLLIN,
                    &[&shared.stop],
                    -1,
                ) {
                    Ok(Ready::Woken(_)) => return,
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::error!(error = %e, "waiting on the TUN failed; outbound stopped");
                        return;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // A malformed super-packet is dropped; the device stays up.
                tracing::debug!(error = %e, "TUN read failed");
                bump(&shared.counters.tx_malformed);
                continue;
            }
        };
        let table = shared.table.load();
        let udp = shared.udp.load();
        let mut flows = filter
            .refresh(&shared.filter)
            .map(|_| Recorder::new(&shared.conntrack, shared.conntrack.now()));
        for i in 0..n {
            let pkt = &bufs[i][offset..offset + sizes[i]];
            let Some(dst) = Tunn::dst_address(pkt) else {
                bump(&shared.counters.tx_malformed);
                continue;
            };
            let Some(peer) = table.routes.lookup(dst) else {
                bump(&shared.counters.tx_no_route);
                continue;
            };
            if let Some(flows) = flows.as_mut() {
                flows.packet(pkt);
            }
            let mut st = peer.state();
            let Some(endpoint) = st.endpoint else {
                bump(&shared.counters.tx_no_endpoint);
                continue;
            };
            let Some(tunn) = st.tunn.as_mut() else {
                bump(&shared.counters.tx_no_endpoint);
                continue;
            };
            let written = match tunn.encapsulate(pkt, batch.tail(pkt.len() + 32)) {
                TunnResult::WriteToNetwork(out) => out.len(),
                TunnResult::Err(e) => {
                    tracing::debug!(error = ?e, "encapsulate failed");
                    0
                }
                _ => 0,
            };
            drop(st);
            if written > 0 {
                peer.add_tx(written, &shared.traffic);
                peer.data_packets
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                batch.commit(endpoint, written, &udp, &shared);
            }
        }
    }
}
