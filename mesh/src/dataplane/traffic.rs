//! Bytes and packets on the wire by path (lan, direct, relay), for the
//! agent's metrics. Each peer carries the class of the path its traffic
//! takes (set by the agent as it points the peer somewhere); the device
//! adds every authenticated datagram it receives and every one it sends to
//! the counters of that class. Device-wide, so the totals keep counting up
//! as peers come and go.
//!
//! Cost: one relaxed load and two relaxed adds per datagram, on counters
//! that only one thread writes in the common case (received on `wg-rx`,
//! sent on `wg-tx`), each direction on its own cache line.

use std::sync::atomic::{AtomicU64, Ordering};

/// The kind of path a peer's datagrams take.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PathClass {
    /// To an address off this host's own networks (through NATs).
    Direct = 0,
    /// To an address on one of this host's own networks.
    Lan = 1,
    /// Through the coordinator's relay.
    Relay = 2,
}

impl PathClass {
    pub const ALL: [PathClass; 3] = [PathClass::Lan, PathClass::Direct, PathClass::Relay];

    pub fn name(self) -> &'static str {
        match self {
            PathClass::Direct => "direct",
            PathClass::Lan => "lan",
            PathClass::Relay => "relay",
        }
    }

    pub fn from_u8(v: u8) -> PathClass {
        match v {
            1 => PathClass::Lan,
            2 => PathClass::Relay,
            _ => PathClass::Direct,
        }
    }
}

/// One direction's counters, alone on a cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line {
    bytes: [AtomicU64; 3],
    packets: [AtomicU64; 3],
}

impl Line {
    fn add(&self, class: PathClass, n: usize) {
        let i = class as usize;
        self.bytes[i].fetch_add(n as u64, Ordering::Relaxed);
        self.packets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> ([u64; 3], [u64; 3]) {
        let r = |a: &[AtomicU64; 3]| {
            [
                a[0].load(Ordering::Relaxed),
                a[1].load(Ordering::Relaxed),
                a[2].load(Ordering::Relaxed),
            ]
        };
        (r(&self.bytes), r(&self.packets))
    }
}

/// The device's wire traffic by direction and path.
#[derive(Debug)]
pub struct PathTraffic {
    rx: Line,
    tx: Line,
    /// Counting at all (fixed when the device starts).
    on: bool,
}

impl Default for PathTraffic {
    fn default() -> Self {
        Self::new(true)
    }
}

/// A copy of [`PathTraffic`]; arrays are indexed by `PathClass as usize`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficSnapshot {
    pub rx_bytes: [u64; 3],
    pub rx_packets: [u64; 3],
    pub tx_bytes: [u64; 3],
    pub tx_packets: [u64; 3],
}

impl PathTraffic {
    /// Counters that count when `on` (else they stay at zero).
    pub fn new(on: bool) -> Self {
        PathTraffic {
            rx: Line::default(),
            tx: Line::default(),
            on,
        }
    }

    /// Whether it counts (callers skip finding the class when not).
    #[inline]
    pub fn counting(&self) -> bool {
        self.on
    }

    #[inline]
    pub fn add_rx(&self, class: PathClass, n: usize) {
        if self.on {
            self.rx.add(class, n);
        }
    }

    #[inline]
    pub fn add_tx(&self, class: PathClass, n: usize) {
        if self.on {
            self.tx.add(class, n);
        }
    }

    pub fn snapshot(&self) -> TrafficSnapshot {
        let (rx_bytes, rx_packets) = self.rx.read();
        let (tx_bytes, tx_packets) = self.tx.read();
        TrafficSnapshot {
            rx_bytes,
            rx_packets,
            tx_bytes,
            tx_packets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_direction_and_class() {
        let t = PathTraffic::default();
        t.add_rx(PathClass::Relay, 100);
        t.add_rx(PathClass::Relay, 50);
        t.add_tx(PathClass::Lan, 7);
        let s = t.snapshot();
        assert_eq!(s.rx_bytes[PathClass::Relay as usize], 150);
        assert_eq!(s.rx_packets[PathClass::Relay as usize], 2);
        assert_eq!(s.tx_bytes, [0, 7, 0]);
        assert_eq!(PathClass::from_u8(PathClass::Relay as u8), PathClass::Relay);
        assert_eq!(PathClass::from_u8(200), PathClass::Direct);
    }

    #[test]
    fn off_counts_nothing() {
        let t = PathTraffic::new(false);
        t.add_rx(PathClass::Relay, 100);
        t.add_tx(PathClass::Lan, 7);
        assert_eq!(t.snapshot(), TrafficSnapshot::default());
    }
}
