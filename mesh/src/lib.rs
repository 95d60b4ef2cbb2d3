//! The weft host agent as a library: the userspace WireGuard data plane,
//! its UAPI, and the control client.

pub mod agent;
pub mod allowed_ips;
pub mod control;
pub mod dataplane;
pub mod key;
pub mod private_socket;
pub mod uapi;
