//! The weft host agent as a library: the userspace WireGuard data plane,
//! its UAPI, and the control client.

pub mod agent;
pub mod allowed_ips;
pub use weft_control as control;
pub mod dataplane;
pub mod key;
pub mod private_socket;
pub mod uapi;
