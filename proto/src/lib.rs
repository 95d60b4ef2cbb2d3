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
/// sent: QUIC keep-alives on a QUIC session, `ClientMsg::Ping` on a TCP
/// one. About 120 bytes a second in both directions together, headers
/// included (measured in the coordinator benchmark).
pub const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(1);

/// A session that hears nothing for this long is dead: the host reconnects
/// and `weft status` says so. Five keep-alives in a row must be lost first.
pub const LIVENESS_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The ALPN protocol id of the coordinator's QUIC endpoint.
pub const ALPN: &[u8] = b"weft/3";

/// The TLS server name clients ask for. Identity is checked by the key pin,
/// not by this name.
pub const SERVER_NAME: &str = "weft-coordinator";

pub use netmap::{Netmap, NetmapChange, NetmapError, NetmapUpdate, ServiceEntry};
pub use types::{HostSubnet, NodeId, Peer, WgPublicKey};
