//! Hooks the agent plugs into the data plane for NAT traversal: datagrams
//! that are not WireGuard ("disco" probes, reflector answers) are handed to
//! the agent; WireGuard datagrams for a peer reached through the relay go to
//! the agent instead of the UDP socket; relayed datagrams come back in.
//!
//! A relayed peer's endpoint is a marker address in `100::/64` (RFC 6666's
//! discard-only prefix, never routed) carrying the peer's node id, so the
//! packet paths keep handling one `SocketAddr` per peer and only the final
//! send looks at it. A peer reached from a side socket has a marker of its
//! own in the same prefix (`weft_paths::side`, see [`super::side`]).

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::udp::UdpEndpoint;
use super::{DeviceHandle, Shared};

/// The first bytes of every non-WireGuard datagram weft sends on the
/// WireGuard socket. WireGuard messages start with a type 1-4 followed by
/// three zero bytes, so the two never collide.
pub const DISCO_MAGIC: [u8; 4] = *b"WFT\xd1";

/// Receives the relayed WireGuard datagrams for node `.0`.
pub type RelaySink = Box<dyn Fn(u64, &[u8]) + Send + Sync>;
/// Receives disco datagrams with their source.
pub type DiscoSink = Box<dyn Fn(SocketAddr, &[u8]) + Send + Sync>;

/// The marker endpoint meaning "through the relay, to node `node`".
pub fn relay_endpoint(node: u64) -> SocketAddr {
    let ip = Ipv6Addr::new(
        0x100,
        0,
        0,
        0,
        (node >> 48) as u16,
        (node >> 32) as u16,
        (node >> 16) as u16,
        node as u16,
    );
    SocketAddr::new(IpAddr::V6(ip), 0)
}

/// The node a relay marker endpoint stands for; `None` for real addresses.
pub fn relay_node(addr: &SocketAddr) -> Option<u64> {
    match addr.ip() {
        IpAddr::V6(v6) if addr.port() == 0 => {
            let s = v6.segments();
            (s[0] == 0x100 && s[1] == 0 && s[2] == 0 && s[3] == 0).then(|| {
                (u64::from(s[4]) << 48)
                    | (u64::from(s[5]) << 32)
                    | (u64::from(s[6]) << 16)
                    | u64::from(s[7])
            })
        }
        _ => None,
    }
}

/// Whether a datagram is for the agent rather than WireGuard.
pub fn is_disco(dgram: &[u8]) -> bool {
    dgram.len() >= 4 && dgram[..4] == DISCO_MAGIC
}

impl DeviceHandle {
    /// Sends the relay's share of outbound WireGuard datagrams to `sink`.
    pub fn set_relay_sink(&self, sink: RelaySink) {
        self.shared.relay.store(Some(Arc::new(sink)));
    }

    /// Hands non-WireGuard datagrams (see [`hooks::DISCO_MAGIC`]) to `sink`.
    pub fn set_disco_sink(&self, sink: DiscoSink) {
        self.shared.disco.store(Some(Arc::new(sink)));
    }

    /// Feeds a datagram that came through the relay from node `from_node`.
    pub fn inject_relayed(&self, from_node: u64, dgram: &[u8]) {
        self.shared.inject(from_node, dgram);
    }

    /// Sends a disco datagram from the WireGuard socket, or from a side
    /// socket to a side marker.
    pub fn send_disco(&self, dest: SocketAddr, dgram: &[u8]) -> io::Result<()> {
        self.shared
            .send_wire(&self.shared.udp.load(), dest, dgram, None)
    }

    /// Opens exactly the side sockets `slots` (see [`super::side`]);
    /// on failure, the slots that could not be bound and why.
    pub fn set_side_sockets(&self, slots: &[u16]) -> Result<(), (Vec<u16>, io::Error)> {
        super::side::set(&self.shared, slots)
    }

    /// How many side sockets are open.
    pub fn side_socket_count(&self) -> usize {
        self.shared.side.load().len()
    }
}

impl Shared {
    /// Sends WireGuard datagrams (`segment`-sized when GSO-batched) to
    /// `dest`: the UDP socket, the relay for a relay marker, or a side
    /// socket for a side marker.
    pub(crate) fn send_wire(
        &self,
        udp: &UdpEndpoint,
        dest: SocketAddr,
        buf: &[u8],
        segment: Option<usize>,
    ) -> io::Result<()> {
        let Some(node) = relay_node(&dest) else {
            if let Some((slot, remote)) = weft_paths::side::parse_side(&dest) {
                return super::side::send(self, slot, remote, buf, segment);
            }
            return udp.send(dest, buf, segment, &self.stop);
        };
        let sink = self.relay.load();
        let Some(sink) = sink.as_ref() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no relay is attached",
            ));
        };
        match segment {
            Some(s) if s > 0 => buf.chunks(s).for_each(|c| sink(node, c)),
            _ => sink(node, buf),
        }
        Ok(())
    }

    /// Queues a datagram that arrived through the relay for the receive
    /// thread, which handles it like one from the socket.
    pub(crate) fn inject(&self, from_node: u64, dgram: &[u8]) {
        let mut q = self.injected.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded in entries and bytes: a stalled receive thread must not
        // grow memory.
        if q.queue.len() >= INJECTED_MAX || q.bytes + dgram.len() > INJECTED_MAX_BYTES {
            super::bump(&self.counters.rx_invalid);
            return;
        }
        q.bytes += dgram.len();
        q.queue.push((relay_endpoint(from_node), dgram.to_vec()));
        drop(q);
        self.has_injected.store(true, Ordering::Release);
        self.inject.signal();
    }

    /// Takes the queued relayed datagrams.
    pub(crate) fn take_injected(&self) -> Vec<(SocketAddr, Vec<u8>)> {
        self.inject.clear();
        self.has_injected.store(false, Ordering::Release);
        let mut q = self.injected.lock().unwrap_or_else(|p| p.into_inner());
        q.bytes = 0;
        std::mem::take(&mut q.queue)
    }
}

/// Relayed datagrams at most waiting for the receive thread.
const INJECTED_MAX: usize = 4096;
/// Bytes of relayed datagrams at most waiting for the receive thread.
const INJECTED_MAX_BYTES: usize = 4 << 20;

/// Relayed datagrams waiting for the receive thread, and their bytes.
#[derive(Debug, Default)]
pub(crate) struct Injected {
    queue: Vec<(SocketAddr, Vec<u8>)>,
    bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_markers_round_trip_and_real_addresses_are_not_markers() {
        for node in [0u64, 1, 42, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(relay_node(&relay_endpoint(node)), Some(node));
        }
        assert_eq!(relay_node(&"198.18.1.10:51820".parse().unwrap()), None);
        assert_eq!(relay_node(&"[2001:db8::1]:0".parse().unwrap()), None);
        assert_eq!(relay_node(&"[100::1]:51820".parse().unwrap()), None);
    }

    #[test]
    fn disco_never_matches_a_wireguard_message() {
        for t in 1u8..=4 {
            let mut m = vec![t, 0, 0, 0];
            m.extend_from_slice(&[0u8; 60]);
            assert!(!is_disco(&m));
        }
        assert!(is_disco(b"WFT\xd1\x01rest"));
    }
}
