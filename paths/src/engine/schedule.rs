//! What is probed when: active peers on the full schedule (the current
//! path every 2 s, every 500 ms once a pong is late, other candidates every 5 s, every candidate every
//! second and a punch every 3 s while relayed), idle peers only by a slow
//! sweep of a few per tick, whatever their number. Data through a tunnel
//! ([`PathEngine::handle_traffic`]) wakes an idle peer: all its candidates
//! are probed at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_proto::NodeId;

use super::{PathEngine, PROBE_CURRENT, PROBE_OTHERS_DIRECT, PROBE_RELAYED, PUNCH_EVERY};
use crate::{Dest, Event};

/// Idle peers looked at per tick (their current direct path is probed if
/// it was not within [`SWEEP_EVERY`]): at most 16 probes a second, however
/// many peers are idle.
const SWEEP_PER_TICK: usize = 4;
/// An idle peer's current path is probed at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// A current path whose pong is this late past [`PROBE_CURRENT`] is
/// suspect: probed every [`PROBE_SUSPECT`] until it answers or dies, so a
/// lost ping or two does not cost a live path.
const SUSPECT_AFTER: Duration = Duration::from_millis(500);
const PROBE_SUSPECT: Duration = Duration::from_millis(500);
/// How long a woken peer's current path is held while its first probe is
/// answered.
const WAKE_GRACE: Duration = Duration::from_millis(1500);

impl PathEngine {
    /// Data went through `node`'s tunnel (either way; not keep-alives). An
    /// idle peer wakes: its candidates are probed at once, and it is
    /// punched if relayed.
    pub fn handle_traffic(&mut self, node: NodeId, now: Instant) {
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let woke = !peer.active(now);
        peer.last_data = Some(now);
        if !woke {
            return;
        }
        peer.grace_until = Some(now + WAKE_GRACE);
        if peer.current.is_none() && peer.online {
            peer.last_punch = Some(now);
            self.events.push_back(Event::Punch(node));
        }
        let mut targets: Vec<SocketAddr> = peer.candidates.keys().copied().collect();
        targets.sort();
        for t in targets {
            self.ping(node, Dest::Addr(t), None, now);
        }
    }

    /// Probes at once the candidates never probed (a new peer, a new
    /// endpoint) of active peers among `ids`, and punches new relayed peers:
    /// a path is found in one round trip, not at the next tick.
    pub(super) fn probe_new(&mut self, ids: &[NodeId], now: Instant) {
        for &node in ids {
            let Some(peer) = self.peers.get_mut(&node) else {
                continue;
            };
            if !peer.active(now) {
                continue;
            }
            let mut fresh: Vec<SocketAddr> = peer
                .candidates
                .iter()
                .filter(|(_, c)| c.last_ping.is_none())
                .map(|(a, _)| *a)
                .collect();
            fresh.sort();
            if peer.current.is_none() && peer.online && peer.last_punch.is_none() {
                peer.last_punch = Some(now);
                self.events.push_back(Event::Punch(node));
            }
            for addr in fresh {
                self.ping(node, Dest::Addr(addr), None, now);
            }
        }
    }

    /// Every peer's choice again, and the probes and punches due by `now`.
    pub(super) fn probe_due(&mut self, now: Instant) {
        let mut ids: Vec<NodeId> = self.peers.keys().copied().collect();
        ids.sort();
        let mut idle = Vec::new();
        for node in ids {
            self.evaluate(node, now);
            let Some(peer) = self.peers.get(&node) else {
                continue;
            };
            if !peer.active(now) {
                idle.push(node);
                continue;
            }
            let direct_alive = peer.current.is_some();
            let mut due: Vec<SocketAddr> = peer
                .candidates
                .iter()
                .filter(|(addr, c)| {
                    let suspect = c
                        .last_pong
                        .is_none_or(|t| now.duration_since(t) >= PROBE_CURRENT + SUSPECT_AFTER);
                    let every = if peer.current == Some(**addr) && suspect {
                        PROBE_SUSPECT
                    } else if peer.current == Some(**addr) {
                        PROBE_CURRENT
                    } else if direct_alive {
                        PROBE_OTHERS_DIRECT
                    } else {
                        PROBE_RELAYED
                    };
                    c.last_ping.is_none_or(|t| now.duration_since(t) >= every)
                })
                .map(|(a, _)| *a)
                .collect();
            due.sort();
            let punch = !direct_alive
                && peer.online
                && peer
                    .last_punch
                    .is_none_or(|t| now.duration_since(t) >= PUNCH_EVERY);
            if punch {
                self.events.push_back(Event::Punch(node));
                if let Some(p) = self.peers.get_mut(&node) {
                    p.last_punch = Some(now);
                }
            }
            for addr in due {
                self.ping(node, Dest::Addr(addr), None, now);
            }
        }
        self.sweep_idle(&idle, now);
    }

    /// Probes the current direct path of the next few idle peers.
    fn sweep_idle(&mut self, idle: &[NodeId], now: Instant) {
        if idle.is_empty() {
            return;
        }
        for k in 0..SWEEP_PER_TICK.min(idle.len()) {
            let node = idle[(self.sweep + k) % idle.len()];
            let due = self.peers.get(&node).and_then(|p| {
                let cur = p.current?;
                let c = p.candidates.get(&cur)?;
                c.last_ping
                    .is_none_or(|t| now.duration_since(t) >= SWEEP_EVERY)
                    .then_some(cur)
            });
            if let Some(cur) = due {
                self.ping(node, Dest::Addr(cur), None, now);
            }
        }
        self.sweep = (self.sweep + SWEEP_PER_TICK) % idle.len();
    }
}
