//! `weft cni`'s own code for `network.json` and the bridge configuration
//! (which holds the host-local settings), compiled a second time here
//! because `cni/mod.rs` keeps its modules private. Sharing the source keeps
//! both plugins on the same host-local data dir, network name and range.
//! Once `cni/mod.rs` says `pub(crate) mod config;`, this module becomes a
//! `use` line. (Their unit tests run twice; they are pure.)

#![allow(dead_code, unused_imports, clippy::duplicate_mod)]

#[path = "../../cni/config.rs"]
pub(crate) mod config;
#[path = "../../cni/error.rs"]
pub(crate) mod error;
#[path = "../../cni/invocation.rs"]
pub(crate) mod invocation;
