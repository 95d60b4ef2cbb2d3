//! Wire types shared by the weft host agent and the coordinator.
//!
//! This crate is free of I/O: no tokio, no sockets. Both sides import it.
//!
//! Messages travel as length-delimited frames ([`codec`]) on QUIC streams.
//! The payload is MessagePack with named fields, so a field added later
//! (always with `#[serde(default)]`) is ignored by older readers and
//! defaulted by newer ones.
//!
//! # Protocol changes
//!
//! Every change to a message gets a dated line here.
//!
//! - 2026-11-27, version 1: join, key-proof resume, netmap snapshot and
//!   deltas, admin commands for tokens and nodes.
//! - 2026-11-27, version 2: NAT traversal. QUIC datagrams on the session
//!   connection ([`relay`]): relayed WireGuard datagrams and "punch now"
//!   requests; the disco datagrams of [`disco`] on the WireGuard socket.
//!   Where UDP is blocked the same session runs over TLS on TCP (same port,
//!   same ALPN), with datagrams as `ClientMsg::Datagram` /
//!   `ServerMsg::Datagram` frames.
//! - 2026-11-28, version 3: policy. A host's netmap holds only the peers the
//!   policy lets it reach or be reached by; [`NetmapUpdate::filter`] carries
//!   its inbound packet filter and [`NetmapUpdate::services`] the services
//!   it may reach (both whenever they change, and in every full update);
//!   a session resumes with a delta only when the host's cached netmap holds
//!   the view in force ([`NetmapUpdate::view`], `ResumeRequest::have_view`),
//!   else it starts with a full update. `Peer::routes` lists approved
//!   advertised routes; `ClientMsg::AdvertiseRoutes` advertises them;
//!   `Welcome::domain` is the cluster's DNS domain. Admin commands for the
//!   policy (`Acl*`), services and routes. A version 2 host would ignore the
//!   filter, so it is refused.
//! - 2026-12-01, version 3, additive: session liveness.
//!   `Welcome::keepalive_ms` (0 from older coordinators) says the
//!   coordinator answers `ClientMsg::Ping` with `ServerMsg::Pong`; a host
//!   sends a ping only when it is set. See [`KEEPALIVE`].
//! - 2026-12-01, version 3, additive: keep-alives that scale.
//!   `Welcome::keepalive_ms`, and `NetmapUpdate::keepalive_ms` in every
//!   update, grow with the number of hosts connected ([`keepalive_for`]).
//!   On TCP a host pings at that interval. On QUIC a host set QUIC's own
//!   keep-alives at the interval it expected and renewed its session when
//!   asked for one twice or half as long. Both sides give a session up
//!   after [`liveness_deadline`] of silence.
//! - 2026-12-02, version 3, additive: the coordinator keeps QUIC sessions
//!   alive (`Welcome::keeps_quic_alive`), with QUIC keep-alives at the
//!   interval it asks for when it accepts the connection: the host's QUIC
//!   stack answers them, and neither side's application wakes for them.
//!   QUIC fixes that interval for the connection's life, so when an update
//!   asks for one at least twice or at most half as long, the host opens a
//!   new session and only then closes the old one (the coordinator
//!   replaces the session; peers see nothing). To a coordinator that does
//!   not keep it alive, a host sends an empty QUIC datagram at the interval
//!   asked for (a coordinator of this version drops it before the relay).

pub mod auth;
pub mod codec;
pub mod disco;
pub mod msg;
pub mod netmap;
pub mod policy;
pub mod queue;
pub mod relay;
#[cfg(feature = "tls")]
pub mod tls;
pub mod token;
pub mod types;
pub mod web;

/// The protocol version both sides put in their first message. A peer with a
/// different version is refused with [`msg::ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 3;

/// How often a host shows its coordinator it is alive when nothing else is
/// sent, in a small cluster: QUIC keep-alives on a QUIC session,
/// `ClientMsg::Ping` on a TCP one. About 120 bytes a second in both directions together, headers
/// included (measured in the coordinator benchmark). A coordinator with
/// many hosts asks for less ([`keepalive_for`]).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// The longest keep-alive interval a coordinator asks for.
pub const MAX_KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(10);

/// A session that hears nothing for this long is dead: the host reconnects
/// and `weft status` says so. Five keep-alives in a row must be lost first.
/// The floor of [`liveness_deadline`].
pub const LIVENESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The longest QUIC idle timeout: past the longest [`liveness_deadline`].
/// A coordinator offers the deadline of the interval it keeps a connection
/// alive at, a host the longest deadline, and both ends keep the smaller.
pub const SESSION_IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(35);

/// The keep-alive interval a coordinator with `sessions` hosts registered
/// asks for: [`KEEPALIVE`] up to about 1,700 hosts, then
/// 0.6 ms per host, so keep-alives cost it about 1,700 packets a second
/// (and as many acknowledgements) however large the cluster, up to
/// [`MAX_KEEPALIVE`] (16,700 hosts). What it costs is noticing a vanished
/// coordinator later (see [`liveness_deadline`]).
pub fn keepalive_for(sessions: usize) -> std::time::Duration {
    keepalive_scaled(sessions, KEEPALIVE_PER_HOST)
}

/// How much longer [`keepalive_for`] gets per connected host.
pub const KEEPALIVE_PER_HOST: std::time::Duration = std::time::Duration::from_micros(600);

/// [`keepalive_for`] with another step per host.
pub fn keepalive_scaled(sessions: usize, per_host: std::time::Duration) -> std::time::Duration {
    let scaled = per_host.saturating_mul(u32::try_from(sessions).unwrap_or(u32::MAX));
    scaled.clamp(KEEPALIVE, MAX_KEEPALIVE)
}

/// How long a session may be silent, on either side, when the host sends a
/// keep-alive every `keepalive`: three lost in a row, plus two seconds for
/// a loaded coordinator, and never less than [`LIVENESS_DEADLINE`].
pub fn liveness_deadline(keepalive: std::time::Duration) -> std::time::Duration {
    (keepalive.saturating_mul(3) + std::time::Duration::from_secs(2)).max(LIVENESS_DEADLINE)
}

/// The ALPN protocol id of the coordinator's QUIC endpoint.
pub const ALPN: &[u8] = b"weft/3";

/// The TLS server name clients ask for. Identity is checked by the key pin,
/// not by this name.
pub const SERVER_NAME: &str = "weft-coordinator";

pub use netmap::{Netmap, NetmapChange, NetmapError, NetmapUpdate, ServiceEntry};
pub use types::{HostSubnet, NodeId, Peer, WgPublicKey};

#[cfg(test)]
mod keepalive_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn keepalives_stretch_with_the_cluster_and_deadlines_with_them() {
        assert_eq!(keepalive_for(0), KEEPALIVE);
        assert_eq!(keepalive_for(1_000), KEEPALIVE);
        assert_eq!(keepalive_for(10_000), Duration::from_secs(6));
        assert_eq!(keepalive_for(1_000_000), MAX_KEEPALIVE);
        assert_eq!(liveness_deadline(KEEPALIVE), LIVENESS_DEADLINE);
        assert_eq!(
            liveness_deadline(Duration::from_secs(6)),
            Duration::from_secs(20)
        );
        assert!(liveness_deadline(MAX_KEEPALIVE) > MAX_KEEPALIVE * 3);
        assert!(SESSION_IDLE_TIMEOUT > liveness_deadline(MAX_KEEPALIVE));
    }
}
