//! Handshakes and keep-alives the data plane sends on its own initiative,
//! not because a packet waits: they make a restarted or moved host
//! reachable again within a round trip instead of WireGuard's 15 s.
//!
//! - A peer pointed at a new endpoint while it has no session (an agent
//!   that just started, a path that just appeared) gets a handshake there.
//! - A peer whose endpoint sends transport data this side cannot decrypt
//!   (its session is from this host's previous process) gets a handshake,
//!   at most once a second.
//! - After a change of this host's addresses every peer gets a keep-alive
//!   (a handshake where it has no session), so it sees the new source of
//!   an authenticated packet and roams to it.
//!
//! Kicks are queued and sent by the timer thread, at most
//! [`KICKS_PER_ROUND`] every [`ROUND`], so a host with thousands of peers
//! does not send thousands of handshakes in one burst.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;

use super::peer::Peer;
use super::udp::UdpEndpoint;
use super::wake::WakeFd;
use super::Shared;

/// Kicks sent per round of the timer thread.
pub(super) const KICKS_PER_ROUND: usize = 64;
/// Time between two rounds while kicks wait: 6,400 a second at most.
pub(super) const ROUND: Duration = Duration::from_millis(10);
/// The least time between two handshakes kicked to the same endpoint.
const SAME_ENDPOINT_EVERY: Duration = Duration::from_secs(1);
/// Scans for the sender of undecryptable data, per second at most (each is
/// a pass over the peers).
const SCANS_PER_SEC: u32 = 20;

/// What a peer is to be sent. Ordered: a handshake also covers a keep-alive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Kick {
    /// A keep-alive on the current session, or a handshake without one.
    Keepalive = 1,
    /// A fresh handshake initiation.
    Handshake = 2,
}

/// Per-peer bookkeeping of kicks, kept beside the peer.
#[derive(Debug, Default)]
pub struct KickState {
    /// The strongest [`Kick`] queued (0: none queued).
    queued: AtomicU8,
    /// Where and when the last handshake was kicked.
    last: Mutex<Option<(SocketAddr, Instant)>>,
}

/// The queue of peers with a kick due, and the fd that wakes the timer
/// thread for it. Each peer is in the queue at most once.
pub(crate) struct KickQueue {
    peers: Mutex<VecDeque<Arc<Peer>>>,
    pub(super) wake: WakeFd,
    scans: Mutex<(Instant, u32)>,
}

impl KickQueue {
    pub(super) fn new() -> std::io::Result<KickQueue> {
        Ok(KickQueue {
            peers: Mutex::new(VecDeque::new()),
            wake: WakeFd::new()?,
            scans: Mutex::new((Instant::now(), 0)),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<Peer>>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `kick` for `peer` (upgrading one already queued).
    pub(super) fn push(&self, peer: &Arc<Peer>, kick: Kick) {
        let prev = peer.kicks.queued.fetch_max(kick as u8, Ordering::AcqRel);
        if prev == 0 {
            self.lock().push_back(peer.clone());
            self.wake.signal();
        }
    }

    /// Whether a scan for the sender of undecryptable data may run now.
    pub(super) fn may_scan(&self) -> bool {
        let mut s = self.scans.lock().unwrap_or_else(|p| p.into_inner());
        if s.0.elapsed() >= Duration::from_secs(1) {
            *s = (Instant::now(), 0);
        }
        s.1 += 1;
        s.1 <= SCANS_PER_SEC
    }

    /// Sends up to [`KICKS_PER_ROUND`] queued kicks; whether more wait.
    pub(super) fn send_round(&self, shared: &Shared, udp: &UdpEndpoint, buf: &mut [u8]) -> bool {
        self.wake.clear();
        for _ in 0..KICKS_PER_ROUND {
            let Some(peer) = self.lock().pop_front() else {
                return false;
            };
            let kick = match peer.kicks.queued.swap(0, Ordering::AcqRel) {
                1 => Kick::Keepalive,
                2 => Kick::Handshake,
                _ => continue,
            };
            send(shared, udp, &peer, kick, buf);
        }
        !self.lock().is_empty()
    }
}

/// Formats and sends one kick to the peer's current endpoint.
fn send(shared: &Shared, udp: &UdpEndpoint, peer: &Peer, kick: Kick, buf: &mut [u8]) {
    let mut st = peer.state();
    let Some(endpoint) = st.endpoint else {
        return;
    };
    let Some(tunn) = st.tunn.as_mut() else {
        return;
    };
    let has_session = tunn.time_since_last_handshake().is_some();
    let out = if kick == Kick::Keepalive && has_session {
        tunn.encapsulate(&[], buf)
    } else {
        let mut last = peer.kicks.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_some_and(|(at, t)| at == endpoint && t.elapsed() < SAME_ENDPOINT_EVERY) {
            return;
        }
        *last = Some((endpoint, Instant::now()));
        // Forced: a handshake in progress may be one sent to an endpoint
        // that never answers.
        tunn.format_handshake_initiation(buf, true)
    };
    let n = match out {
        TunnResult::WriteToNetwork(p) => p.len(),
        _ => return,
    };
    drop(st);
    peer.add_tx(n, &shared.traffic);
    if shared.send_wire(udp, endpoint, &buf[..n], None).is_err() {
        super::bump(&shared.counters.tx_send_errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_queued_once_with_its_strongest_kick() {
        let q = KickQueue::new().unwrap();
        let p = Arc::new(Peer::new(crate::key::Key([7; 32]), 1, 1));
        q.push(&p, Kick::Keepalive);
        q.push(&p, Kick::Handshake);
        q.push(&p, Kick::Keepalive);
        assert_eq!(q.lock().len(), 1);
        assert_eq!(
            p.kicks.queued.load(Ordering::Acquire),
            Kick::Handshake as u8
        );
    }

    #[test]
    fn scans_are_capped_per_second() {
        let q = KickQueue::new().unwrap();
        let allowed = (0..100).filter(|_| q.may_scan()).count();
        assert_eq!(allowed, SCANS_PER_SEC as usize);
    }
}
