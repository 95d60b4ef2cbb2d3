//! The control client: joins a coordinator, proves its key, receives netmaps.
//!
//! [`ControlClient::join`] registers a new host with a join token;
//! [`ControlClient::connect`] reconnects a registered host with no token, by
//! proving possession of its WireGuard private key over this TLS session.
//! Both return a [`Session`] that already holds the first netmap; the agent
//! then calls [`Session::next_change`] in a loop. Netmap folding is the pure
//! reducer [`weft_proto::Netmap::apply`]; this module only moves bytes.
//!
//! Liveness ([`Heard`], `liveness`): a ping at the interval the welcome
//! asks for ([`weft_proto::KEEPALIVE`] in a small cluster, longer in a
//! large one) and a deadline of [`weft_proto::liveness_deadline`] of it
//! on both transports.
//!
//! What a host must keep to reconnect later is [`CoordinatorInfo`] (from the
//! token) plus its own private key.

mod client;
mod error;
mod liveness;
mod transport;

pub use client::{
    renewal_due, ControlClient, CoordinatorInfo, EndpointUpdater, JoinOutcome, Session, WireStats,
};
pub use error::ControlError;
pub use liveness::AbortOnDrop;
pub use liveness::Heard;
pub use transport::{DatagramLink, DatagramSource};
pub use weft_proto::msg::{ErrorCode, Welcome};
pub use weft_proto::{Netmap, NetmapChange};
