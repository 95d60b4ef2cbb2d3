//! The cross-platform WireGuard UAPI: the text protocol and the unix-socket
//! server that lets the stock `wg` tool configure and inspect our interface.

pub mod protocol;
pub mod server;
