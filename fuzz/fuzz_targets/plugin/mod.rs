//! The CNI plugin's pure modules, compiled in from the `weft` binary's
//! source (the binary has no library to depend on).
#![allow(dead_code, clippy::all)]

#[path = "../../../cli/src/cni/config.rs"]
pub mod config;
#[path = "../../../cli/src/cni/error.rs"]
pub mod error;
#[path = "../../../cli/src/cni/invocation.rs"]
pub mod invocation;
