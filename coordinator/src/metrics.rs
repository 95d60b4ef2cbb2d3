//! The coordinator's Prometheus metrics: served on `--metrics-listen ADDR`
//! (`GET /metrics`).
//!
//! Counters and histograms are updated where things happen (a join, a
//! relayed datagram, a commit); gauges that describe the current state
//! (sessions by transport, the deepest session queue, nodes online) are
//! set from the server's state at each scrape. Every label takes values
//! from a small fixed set, so the series count does not grow with the
//! cluster.
//!
//! Cost on the relay path: one lookup in a family of at most five series
//! (a read lock) and two atomic adds per datagram.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use weft_proto::msg::ErrorCode;

type Labels = [(&'static str, &'static str); 1];

/// Every family the coordinator exports. Cheap to clone (all handles).
#[derive(Clone)]
pub struct CoordinatorMetrics {
    registry: Arc<Registry>,
    /// Host sessions open now, by `transport` (quic, tcp).
    pub sessions: Family<Labels, Gauge>,
    /// Nodes registered, and of them online.
    pub nodes: Gauge,
    pub nodes_online: Gauge,
    /// Join attempts by `result` (ok, or the refusal).
    pub joins: Family<Labels, Counter>,
    /// Netmap updates written to sessions.
    pub netmap_updates: Counter,
    /// Of them, frames encoded, and frames another session had encoded
    /// already (encode once: `result` = encoded, shared).
    pub netmap_frames: Family<Labels, Counter>,
    /// New netmap versions published to the sessions.
    pub netmap_publishes: Counter,
    /// Seconds from a change reaching the coordinator to the last session
    /// that had to hear of it having written its update.
    pub fanout: Histogram,
    /// Bytes queued for the busiest session (relayed datagrams not yet on
    /// the wire).
    pub queue_max: Gauge,
    /// Seconds per store commit (a batch of joins, removals and
    /// configuration changes).
    pub commit: Histogram,
    /// Relayed datagrams and bytes by `result` (forwarded, or why not).
    pub relay_datagrams: Family<Labels, Counter>,
    pub relay_bytes: Family<Labels, Counter>,
    /// Reflector requests answered.
    pub reflector: Counter,
    /// Connections and requests refused, by `reason`.
    pub refused: Family<Labels, Counter>,
}

/// Why a relayed datagram went nowhere, or that it went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayResult {
    Forwarded,
    /// Over the sender's relay budget.
    OverBudget,
    /// Sender and destination are not peers (the policy keeps them apart).
    NotPeers,
    /// The destination has no session here or on another replica.
    NoSession,
    /// Not a datagram at all.
    Malformed,
}

impl RelayResult {
    const ALL: [RelayResult; 5] = [
        RelayResult::Forwarded,
        RelayResult::OverBudget,
        RelayResult::NotPeers,
        RelayResult::NoSession,
        RelayResult::Malformed,
    ];

    fn name(self) -> &'static str {
        match self {
            RelayResult::Forwarded => "forwarded",
            RelayResult::OverBudget => "over_budget",
            RelayResult::NotPeers => "not_peers",
            RelayResult::NoSession => "no_session",
            RelayResult::Malformed => "malformed",
        }
    }
}

/// Why a connection or request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many connections from one source still in their hello.
    HelloGate,
    /// No hello within the deadline, or the TLS handshake failed.
    Handshake,
    /// The hello or a frame was malformed or too large.
    BadFrame,
    /// The refusal sent to a host or admin tool, by its code.
    Code(ErrorCode),
}

/// The `result`/`reason` label of an error code: a fixed set, so a newer
/// code cannot add series.
pub fn code_label(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::VersionMismatch => "version_mismatch",
        ErrorCode::TokenInvalid => "token_invalid",
        ErrorCode::TokenExpired => "token_expired",
        ErrorCode::TokenRevoked => "token_revoked",
        ErrorCode::TokenUsedUp => "token_used_up",
        ErrorCode::PoolExhausted => "pool_exhausted",
        ErrorCode::KeyInUse => "key_in_use",
        ErrorCode::NotRegistered => "not_registered",
        ErrorCode::ProofFailed => "proof_failed",
        ErrorCode::AdminDenied => "admin_denied",
        ErrorCode::NotFound => "not_found",
        ErrorCode::BadRequest => "bad_request",
        ErrorCode::RateLimited => "rate_limited",
        _ => "other",
    }
}

impl Refusal {
    fn name(self) -> &'static str {
        match self {
            Refusal::HelloGate => "hello_gate",
            Refusal::Handshake => "handshake",
            Refusal::BadFrame => "bad_frame",
            Refusal::Code(c) => code_label(c),
        }
    }
}

/// The store commit histogram's buckets: 100 us to about 3 s.
pub fn commit_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

impl Default for CoordinatorMetrics {
    fn default() -> Self {
        Self::new(commit_histogram())
    }
}

impl CoordinatorMetrics {
    /// `commit`: the store's commit histogram (see
    /// [`crate::store::Opened::commit_seconds`]).
    pub fn new(commit: Histogram) -> Self {
        let mut reg = Registry::with_prefix("weft_coordinator");
        let sessions = Family::<Labels, Gauge>::default();
        reg.register(
            "sessions",
            "Host sessions open now, by transport (quic, tcp)",
            sessions.clone(),
        );
        let nodes = Gauge::default();
        reg.register("nodes", "Nodes registered", nodes.clone());
        let nodes_online = Gauge::default();
        reg.register(
            "nodes_online",
            "Nodes with a session (here or on another replica)",
            nodes_online.clone(),
        );
        let joins = Family::<Labels, Counter>::default();
        reg.register(
            "joins",
            "Join attempts by result (ok, or the refusal)",
            joins.clone(),
        );
        let netmap_updates = Counter::default();
        reg.register(
            "netmap_updates",
            "Netmap updates written to host sessions",
            netmap_updates.clone(),
        );
        let netmap_frames = Family::<Labels, Counter>::default();
        for r in ["encoded", "shared"] {
            let _ = netmap_frames.get_or_create(&[("result", r)]);
        }
        reg.register(
            "netmap_frames",
            "Small netmap update frames by result: encoded for this session, or shared with another that sent the same",
            netmap_frames.clone(),
        );
        let netmap_publishes = Counter::default();
        reg.register(
            "netmap_publishes",
            "Netmap versions published to the sessions (one per coalesced burst of changes)",
            netmap_publishes.clone(),
        );
        // 1 ms to about 16 s.
        let fanout = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        reg.register_with_unit(
            "netmap_fanout",
            "From a change reaching the coordinator to the last session that had to hear of it having written its update",
            Unit::Seconds,
            fanout.clone(),
        );
        let queue_max = Gauge::default();
        reg.register_with_unit(
            "session_queue_max",
            "Bytes queued for the busiest host session (relayed datagrams not yet sent)",
            Unit::Bytes,
            queue_max.clone(),
        );
        reg.register_with_unit(
            "store_commit",
            "Store commits (each a batch of joins, removals and configuration changes)",
            Unit::Seconds,
            commit.clone(),
        );
        let relay_datagrams = Family::<Labels, Counter>::default();
        reg.register(
            "relay_datagrams",
            "Relayed datagrams (WireGuard ciphertext and punches) by result",
            relay_datagrams.clone(),
        );
        let relay_bytes = Family::<Labels, Counter>::default();
        reg.register_with_unit(
            "relay",
            "Relayed datagram bytes by result",
            Unit::Bytes,
            relay_bytes.clone(),
        );
        let reflector = Counter::default();
        reg.register(
            "reflector_requests",
            "Reflector requests answered (hosts asking for their public mapping)",
            reflector.clone(),
        );
        let refused = Family::<Labels, Counter>::default();
        reg.register(
            "refused",
            "Connections and requests refused, by reason",
            refused.clone(),
        );
        // Series that exist from the start at zero, so a rate or an alert
        // on them works before the first event.
        for t in ["quic", "tcp"] {
            let _ = sessions.get_or_create(&[("transport", t)]);
        }
        let _ = joins.get_or_create(&[("result", "ok")]);
        for r in RelayResult::ALL {
            let _ = relay_datagrams.get_or_create(&[("result", r.name())]);
            let _ = relay_bytes.get_or_create(&[("result", r.name())]);
        }
        for r in [Refusal::HelloGate, Refusal::Handshake, Refusal::BadFrame] {
            let _ = refused.get_or_create(&[("reason", r.name())]);
        }
        CoordinatorMetrics {
            registry: Arc::new(reg),
            sessions,
            nodes,
            nodes_online,
            joins,
            netmap_updates,
            netmap_frames,
            netmap_publishes,
            fanout,
            queue_max,
            commit,
            relay_datagrams,
            relay_bytes,
            reflector,
            refused,
        }
    }

    pub fn join(&self, result: Result<(), ErrorCode>) {
        let label = match result {
            Ok(()) => "ok",
            Err(c) => code_label(c),
        };
        self.joins.get_or_create(&[("result", label)]).inc();
    }

    pub fn relayed(&self, result: RelayResult, bytes: usize) {
        let l = [("result", result.name())];
        self.relay_datagrams.get_or_create(&l).inc();
        self.relay_bytes.get_or_create(&l).inc_by(bytes as u64);
    }

    pub fn refused(&self, why: Refusal) {
        self.refused.get_or_create(&[("reason", why.name())]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_fixed_labels() {
        let m = CoordinatorMetrics::default();
        m.join(Ok(()));
        m.join(Err(ErrorCode::TokenInvalid));
        m.relayed(RelayResult::Forwarded, 148);
        m.relayed(RelayResult::NotPeers, 100);
        m.refused(Refusal::Code(ErrorCode::ProofFailed));
        m.sessions.get_or_create(&[("transport", "quic")]).set(3);
        m.commit.observe(0.002);
        m.fanout.observe(0.02);
        let text = m.render();
        for needle in [
            "weft_coordinator_joins_total{result=\"ok\"} 1",
            "weft_coordinator_joins_total{result=\"token_invalid\"} 1",
            "weft_coordinator_relay_bytes_total{result=\"forwarded\"} 148",
            "weft_coordinator_relay_datagrams_total{result=\"not_peers\"} 1",
            "weft_coordinator_refused_total{reason=\"proof_failed\"} 1",
            "weft_coordinator_sessions{transport=\"quic\"} 3",
            "weft_coordinator_store_commit_seconds_count 1",
            "weft_coordinator_netmap_fanout_seconds_count 1",
            "weft_coordinator_reflector_requests_total 0",
            "weft_coordinator_refused_total{reason=\"hello_gate\"} 0",
            "weft_coordinator_relay_datagrams_total{result=\"over_budget\"} 0",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn an_unknown_error_code_is_one_label() {
        assert_eq!(code_label(ErrorCode::Unknown), "other");
        assert_eq!(code_label(ErrorCode::Internal), "other");
    }
}
