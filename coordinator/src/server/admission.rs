//! Who may take the coordinator's time before proving who they are:
//! connections that have not finished their hello are limited in all and
//! per source address, and failed join attempts (an unknown token id, a
//! wrong secret, a failed key proof) are rate-limited per source and per
//! token id: a source or token id past its allowance is refused at once.
//! Joins that succeed cost nothing, so a cluster coming up behind one NAT is
//! not slowed. Everything here is bounded in memory whatever the
//! attacker sends. Sans-IO: the callers pass the time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Connections still in their hello, in all, from sources that already
/// have [`QUIET_SOURCE`] or more in theirs: what a reconnect storm (10,000
/// hosts retrying at once) or a flood from a few addresses can fill.
pub const MAX_UNAUTHENTICATED: usize = 1024;
/// Room kept above [`MAX_UNAUTHENTICATED`] for quiet sources, so an admin
/// (or a new host) still gets in while a storm fills the rest; bounded, so
/// many addresses cannot take memory without end either.
pub const RESERVED_FOR_QUIET: usize = 256;
/// A source with fewer connections than this in their hello is quiet.
pub const QUIET_SOURCE: usize = 2;
/// Connections still in their hello, per source address.
pub const MAX_UNAUTHENTICATED_PER_SOURCE: usize = 64;
/// Above this many connections in their hello, QUIC clients must prove
/// their address first (a Retry) before the coordinator keeps any state.
pub const RETRY_ABOVE: usize = MAX_UNAUTHENTICATED / 4;

/// Failed join attempts a second per source address, sustained, and in a
/// burst.
pub const JOINS_PER_SOURCE: (f64, f64) = (20.0, 40.0);
/// Failed join attempts a second per token id, sustained, and in a burst.
pub const JOINS_PER_TOKEN: (f64, f64) = (50.0, 100.0);
/// Sources or token ids remembered; past this the oldest are forgotten.
const RATE_MEMORY: usize = 16_384;

/// Counts connections in their hello.
#[derive(Debug, Default)]
pub struct Gate {
    inner: Mutex<GateCounts>,
}

#[derive(Debug, Default)]
struct GateCounts {
    total: usize,
    per_source: HashMap<IpAddr, usize>,
}

/// A connection's place at the gate; dropping it (hello done, or the
/// connection gone) frees it.
#[derive(Debug)]
pub struct Pass {
    gate: Arc<Gate>,
    source: IpAddr,
}

impl Gate {
    fn lock(&self) -> std::sync::MutexGuard<'_, GateCounts> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place for a new connection from `source`, unless the limits are
    /// reached.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Option<Pass> {
        let mut c = self.lock();
        let here = c.per_source.get(&source).copied().unwrap_or(0);
        let cap = if here < QUIET_SOURCE {
            MAX_UNAUTHENTICATED + RESERVED_FOR_QUIET
        } else {
            MAX_UNAUTHENTICATED
        };
        if c.total >= cap || here >= MAX_UNAUTHENTICATED_PER_SOURCE {
            return None;
        }
        c.total += 1;
        *c.per_source.entry(source).or_default() += 1;
        Some(Pass {
            gate: self.clone(),
            source,
        })
    }

    /// Connections in their hello now.
    pub fn waiting(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Pass {
    fn drop(&mut self) {
        let mut c = self.gate.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                c.per_source.remove(&self.source);
            }
        }
    }
}

/// Token buckets keyed by source or token id, bounded in number.
#[derive(Debug)]
struct Buckets<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, (f64, Instant)>,
}

impl<K: std::hash::Hash + Eq + Clone> Buckets<K> {
    fn new((rate, burst): (f64, f64)) -> Self {
        Buckets {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// The bucket of `key`, refilled to `now`.
    fn refilled(&mut self, key: &K, now: Instant) -> &mut f64 {
        if !self.buckets.contains_key(key) && self.buckets.len() >= RATE_MEMORY {
            // Forget the buckets that have refilled (nothing to remember),
            // or, under a flood of new keys, all of them.
            let (rate, burst) = (self.rate, self.burst);
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.saturating_duration_since(*at).as_secs_f64() * rate < burst
            });
            if self.buckets.len() >= RATE_MEMORY {
                self.buckets.clear();
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let (tokens, at) = self.buckets.entry(key.clone()).or_insert((burst, now));
        *tokens = (*tokens + now.saturating_duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        tokens
    }

    /// Whether `key` has allowance left.
    fn has(&mut self, key: &K, now: Instant) -> bool {
        if !self.buckets.contains_key(key) {
            return true;
        }
        *self.refilled(key, now) >= 1.0
    }

    /// Uses one unit of `key`'s allowance.
    fn charge(&mut self, key: &K, now: Instant) {
        let t = self.refilled(key, now);
        *t = (*t - 1.0).max(0.0);
    }
}

/// Join attempts per source and per token id.
#[derive(Debug)]
pub struct JoinLimiter {
    inner: Mutex<(Buckets<IpAddr>, Buckets<String>)>,
}

impl Default for JoinLimiter {
    fn default() -> Self {
        JoinLimiter {
            inner: Mutex::new((
                Buckets::new(JOINS_PER_SOURCE),
                Buckets::new(JOINS_PER_TOKEN),
            )),
        }
    }
}

impl JoinLimiter {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Buckets<IpAddr>, Buckets<String>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a join from `source` with token id `token_id` may be tried.
    pub fn allow(&self, source: IpAddr, token_id: &str, now: Instant) -> bool {
        // A token id longer than any real one is refused without a bucket.
        if token_id.len() > 64 {
            return false;
        }
        let mut g = self.lock();
        g.0.has(&source, now) && g.1.has(&token_id.to_string(), now)
    }

    /// Records a join from `source` with `token_id` that was refused.
    pub fn failed(&self, source: IpAddr, token_id: &str, now: Instant) {
        if token_id.len() > 64 {
            return;
        }
        let mut g = self.lock();
        g.0.charge(&source, now);
        g.1.charge(&token_id.to_string(), now);
    }
}

/// Untrusted text for a log line: at most 64 characters, printable ASCII,
/// anything else escaped.
pub fn loggable(s: &str) -> String {
    let mut out: String = s
        .chars()
        .take(64)
        .flat_map(|c| {
            if c.is_ascii_graphic() || c == ' ' {
                vec![c]
            } else {
                c.escape_default().collect()
            }
        })
        .collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_gate_limits_per_source_and_in_all() {
        let gate = Arc::new(Gate::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let passes: Vec<Pass> = (0..100).filter_map(|_| gate.enter(a)).collect();
        assert_eq!(passes.len(), MAX_UNAUTHENTICATED_PER_SOURCE);
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(gate.enter(b).is_some(), "another source still gets in");
        drop(passes);
        assert_eq!(gate.waiting(), 0);
        // Busy sources (a storm from 16 addresses) fill the shared room...
        let busy: Vec<Pass> = (0..2000u32)
            .filter_map(|i| {
                gate.enter(IpAddr::from(std::net::Ipv4Addr::from(0xC000_0200 + i % 16)))
            })
            .collect();
        assert_eq!(busy.len(), MAX_UNAUTHENTICATED);
        // ...and a quiet one (an admin) still gets in, up to the reserve.
        let admin: IpAddr = "203.0.113.9".parse().unwrap();
        let admin_pass = gate.enter(admin);
        assert!(admin_pass.is_some(), "a quiet source during a storm");
        let quiet: Vec<Pass> = (0..2000u32)
            .filter_map(|i| gate.enter(IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i))))
            .collect();
        assert_eq!(
            busy.len() + quiet.len() + 1,
            MAX_UNAUTHENTICATED + RESERVED_FOR_QUIET
        );
    }

    #[test]
    fn failed_joins_are_rate_limited_per_source_and_token() {
        let l = JoinLimiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // Joins that succeed cost nothing.
        assert_eq!((0..1000).filter(|_| l.allow(a, "good", t0)).count(), 1000);
        let tried = (0..1000)
            .filter(|i| {
                let id = format!("bad{i}");
                let ok = l.allow(a, &id, t0);
                if ok {
                    l.failed(a, &id, t0);
                }
                ok
            })
            .count();
        assert_eq!(tried, JOINS_PER_SOURCE.1 as usize);
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.allow(b, "other", t0), "another source still joins");
        assert!(l.allow(a, "x", t0 + Duration::from_secs(1)), "refilled");
        assert!(!l.allow(b, &"x".repeat(65), t0));
        // A flood of new sources and token ids stays bounded.
        for i in 0..50_000u32 {
            l.failed(
                IpAddr::from(std::net::Ipv4Addr::from(i)),
                &i.to_string(),
                t0,
            );
        }
        let g = l.lock();
        assert!(g.0.buckets.len() <= RATE_MEMORY && g.1.buckets.len() <= RATE_MEMORY);
    }

    #[test]
    fn log_text_is_bounded_and_printable() {
        assert_eq!(loggable("tok-1"), "tok-1");
        assert_eq!(loggable("a\nb\u{1b}[31m"), "a\\nb\\u{1b}[31m");
        assert!(loggable(&"x".repeat(10_000)).chars().count() <= 65);
    }
}
