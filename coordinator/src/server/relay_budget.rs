//! What one host may push through the relay: datagrams of bounded size, a
//! byte budget (a token bucket), and punch requests at most every
//! [`PUNCH_EVERY`] per peer. Sans-IO: the caller passes the time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weft_proto::NodeId;

/// The largest relayed datagram: a WireGuard message and the relay header.
pub const MAX_RELAY_DATAGRAM: usize = 65_535 + weft_proto::relay::RELAY_HEADER;
/// Bytes a second a host may relay, sustained (128 Mbit/s).
pub const RELAY_RATE: f64 = 16.0 * 1024.0 * 1024.0;
/// Bytes a host may relay in one burst.
pub const RELAY_BURST: f64 = 4.0 * 1024.0 * 1024.0;
/// The least time between two punch requests from one host to one peer.
pub const PUNCH_EVERY: Duration = Duration::from_millis(250);
/// Peers whose last punch is remembered; past this, the memory starts over.
const PUNCH_MEMORY: usize = 4096;

/// One session's relay allowance.
#[derive(Debug)]
pub struct RelayBudget {
    tokens: f64,
    last: Instant,
    punched: HashMap<NodeId, Instant>,
}

impl RelayBudget {
    pub fn new(now: Instant) -> RelayBudget {
        RelayBudget {
            tokens: RELAY_BURST,
            last: now,
            punched: HashMap::new(),
        }
    }

    /// Whether a relayed datagram of `len` bytes may pass now (and if so,
    /// it is charged).
    pub fn relay(&mut self, len: usize, now: Instant) -> bool {
        if len > MAX_RELAY_DATAGRAM {
            return false;
        }
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * RELAY_RATE).min(RELAY_BURST);
        if self.tokens < len as f64 {
            return false;
        }
        self.tokens -= len as f64;
        true
    }

    /// Whether a punch request to `to` may pass now.
    pub fn punch(&mut self, to: NodeId, now: Instant) -> bool {
        if let Some(t) = self.punched.get(&to) {
            if now.saturating_duration_since(*t) < PUNCH_EVERY {
                return false;
            }
        }
        if self.punched.len() >= PUNCH_MEMORY {
            self.punched.clear();
        }
        self.punched.insert(to, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thousand_punches_a_second_become_four() {
        let t0 = Instant::now();
        let mut b = RelayBudget::new(t0);
        let passed = (0..1000)
            .filter(|i| b.punch(NodeId(2), t0 + Duration::from_millis(*i)))
            .count();
        assert_eq!(passed, 4);
        assert!(b.punch(NodeId(3), t0), "another peer has its own allowance");
    }

    #[test]
    fn the_byte_budget_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = RelayBudget::new(t0);
        assert!(!b.relay(MAX_RELAY_DATAGRAM + 1, t0), "oversized");
        let burst = (0..10_000).take_while(|_| b.relay(1400, t0)).count();
        assert_eq!(burst, (RELAY_BURST / 1400.0) as usize);
        assert!(!b.relay(1400, t0));
        let later = t0 + Duration::from_millis(100);
        let refill = (0..10_000).take_while(|_| b.relay(1400, later)).count();
        let want = (RELAY_RATE * 0.1 / 1400.0) as usize;
        assert!(refill.abs_diff(want) <= 1, "{refill} vs {want}");
    }
}
