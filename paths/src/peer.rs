//! One peer's candidates and the choice among them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use weft_proto::disco::ReplayGuard;

use crate::DEAD_AFTER;

/// A peer with data through its tunnel within this long (or that appeared
/// within it) is probed on the full schedule; others are idle: only a
/// slow sweep probes them, and their path is held as it is until data
/// flows again. The default of [`crate::EngineConfig::active_window`].
pub const ACTIVE_WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(crate) struct Candidate {
    pub from_netmap: bool,
    /// When it was learned another way (`None`: from the netmap).
    pub learned: Option<Instant>,
    pub last_ping: Option<Instant>,
    pub last_pong: Option<Instant>,
    pub rtt: Option<Duration>,
}

impl Candidate {
    pub fn alive(&self, now: Instant) -> bool {
        self.last_pong
            .is_some_and(|t| now.duration_since(t) < DEAD_AFTER)
    }
}

pub(crate) struct PeerPaths {
    pub key: [u8; 32],
    pub probe_key: [u8; 32],
    /// Which of this peer's pings were already seen.
    pub replay: ReplayGuard,
    pub online: bool,
    pub candidates: HashMap<SocketAddr, Candidate>,
    /// `None`: relayed.
    pub current: Option<SocketAddr>,
    pub last_punch: Option<Instant>,
    pub seen: Instant,
    pub direct_after: Option<Duration>,
    /// The latest data through the tunnel (not keep-alives), as the driver
    /// reports it.
    pub last_data: Option<Instant>,
    /// After waking from idle, the current path is held until then while
    /// its first probe is answered.
    pub grace_until: Option<Instant>,
    /// See [`ACTIVE_WINDOW`].
    pub active_window: Duration,
}

impl PeerPaths {
    #[cfg(test)]
    pub fn new(key: [u8; 32], probe_key: [u8; 32], online: bool, now: Instant) -> Self {
        Self::with_window(key, probe_key, online, now, ACTIVE_WINDOW)
    }

    pub fn with_window(
        key: [u8; 32],
        probe_key: [u8; 32],
        online: bool,
        now: Instant,
        active_window: Duration,
    ) -> Self {
        PeerPaths {
            key,
            probe_key,
            replay: ReplayGuard::default(),
            online,
            candidates: HashMap::new(),
            current: None,
            last_punch: None,
            seen: now,
            direct_after: None,
            last_data: None,
            grace_until: None,
            active_window,
        }
    }

    /// Whether the peer is probed on the full schedule (see
    /// [`ACTIVE_WINDOW`]).
    pub fn active(&self, now: Instant) -> bool {
        now.duration_since(self.seen) < self.active_window
            || self
                .last_data
                .is_some_and(|t| now.duration_since(t) < self.active_window)
    }

    /// Whether the current path is kept without answers: the peer is idle
    /// (nothing probes it, so silence means nothing), or just woke and its
    /// first probe is in flight.
    pub fn holds_current(&self, now: Instant) -> bool {
        !self.active(now) || self.grace_until.is_some_and(|t| now < t)
    }

    pub fn learned_count(&self) -> usize {
        self.candidates.values().filter(|c| !c.from_netmap).count()
    }

    /// The path to use next: the best live candidate (on-link before
    /// others, then the lowest RTT), except that a live current path is
    /// kept unless the best is of a better class. `None`: the relay.
    pub fn choose(
        &self,
        now: Instant,
        on_link: impl Fn(&SocketAddr) -> bool,
    ) -> Option<SocketAddr> {
        let class = |a: &SocketAddr| u8::from(!on_link(a));
        let best = self
            .candidates
            .iter()
            .filter(|(_, c)| c.alive(now))
            .min_by_key(|(a, c)| (class(a), c.rtt.unwrap_or(Duration::MAX), **a))
            .map(|(a, _)| *a);
        let hold = self.holds_current(now);
        let current_alive = hold
            || self
                .current
                .and_then(|c| self.candidates.get(&c))
                .is_some_and(|c| c.alive(now));
        match (self.current, best) {
            (Some(cur), None) if hold => Some(cur),
            (_, None) => None,
            (Some(cur), Some(b)) if current_alive && class(&b) >= class(&cur) => Some(cur),
            (_, Some(b)) => Some(b),
        }
    }

    /// Drops learned candidates that never answered within `ttl`, or
    /// stopped; netmap candidates and the current path stay.
    pub fn expire(&mut self, now: Instant, ttl: Duration) {
        let current = self.current;
        self.candidates.retain(|a, c| {
            c.from_netmap
                || current == Some(*a)
                || c.alive(now)
                || c.learned.is_some_and(|t| now.duration_since(t) < ttl)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap_or_else(|_| unreachable!())
    }

    #[test]
    fn keeps_a_live_path_and_moves_to_a_better_class() {
        let t0 = Instant::now();
        let mut p = PeerPaths::new([1; 32], [2; 32], true, t0);
        let public = addr("203.0.113.5:1");
        let lan = addr("198.18.0.5:1");
        let pong = |rtt_ms| Candidate {
            last_pong: Some(t0),
            rtt: Some(Duration::from_millis(rtt_ms)),
            ..Candidate::default()
        };
        p.candidates.insert(public, pong(20));
        assert_eq!(p.choose(t0, |_| false), Some(public));
        p.current = Some(public);
        // A faster public path does not replace a live one.
        let faster = addr("203.0.113.6:1");
        p.candidates.insert(faster, pong(1));
        assert_eq!(p.choose(t0, |_| false), Some(public));
        // An on-link one does.
        p.candidates.insert(lan, pong(30));
        assert_eq!(p.choose(t0, |a| *a == lan), Some(lan));
        // Nothing answered for DEAD_AFTER: the relay.
        assert_eq!(p.choose(t0 + DEAD_AFTER, |_| false), None);
    }

    #[test]
    fn learned_candidates_expire_and_netmap_ones_stay() {
        let t0 = Instant::now();
        let mut p = PeerPaths::new([1; 32], [2; 32], true, t0);
        p.candidates.insert(
            addr("203.0.113.5:1"),
            Candidate {
                from_netmap: true,
                ..Candidate::default()
            },
        );
        p.candidates.insert(
            addr("203.0.113.5:2"),
            Candidate {
                learned: Some(t0),
                ..Candidate::default()
            },
        );
        assert_eq!(p.learned_count(), 1);
        p.expire(t0 + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(p.candidates.len(), 1);
    }
}
