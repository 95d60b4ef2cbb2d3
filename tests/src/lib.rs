//! The lab: real packets through real kernels on one machine. Every "host",
//! "router" and "container" is a network namespace joined by veth pairs;
//! processes run inside them through `ip netns exec`.
//!
//! A [`Lab`] owns everything it creates (namespaces, processes, files, a
//! private temp dir) and tears it down on drop, on panic (drop runs while
//! unwinding) and on Ctrl-C/SIGTERM (a handler thread, installed with the
//! first lab, tears down every live lab and exits with status 130). Names
//! carry a per-lab tag (prefix, process id, counter) so tests run in
//! parallel. Traffic stays inside these namespaces; the address plan is the
//! one in `DESIGN.md` ("The lab").
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use weft_tests::{ping, require_root, Lab};
//! if !require_root() {
//!     return Ok(());
//! }
//! let lab = Lab::new("ex");
//! let (a, b) = (lab.netns("a"), lab.netns("b"));
//! lab.veth(&a, "eth0", &b, "eth0");
//! lab.addr(&a, "eth0", "192.0.2.1/24");
//! lab.addr(&b, "eth0", "192.0.2.2/24");
//! ping(&a, "192.0.2.2")?;
//! # Ok(())
//! # }
//! ```

pub mod browser;
pub mod cloud_init;
pub mod cluster;
mod cluster_ops;
mod cmd;
pub mod demo;
mod demo_docker;
pub mod docker;
pub mod images;
mod lab;
pub mod nat;
mod pinger;
pub mod podman;
mod registry;
pub mod replicas;
mod service;
mod sniff;
mod stream;
mod traffic;
pub mod wg;

pub use cluster_ops::INTERNET_HOST;
pub use cmd::{in_netns, run, run_ok, try_run};
pub use lab::{Lab, Proc};
pub use nat::{NatKind, NatRouter};
pub use pinger::{unix_now, Pinger};
pub use service::{greet, resolve, udp_echo, Server};
pub use sniff::{Capture, Packet, UdpPacket};
pub use stream::SteadyStream;
pub use traffic::{ping, ping_with, snmp_counter, tcp_transfer, vm_rss_kib};

use std::time::{Duration, Instant};

/// Whether the programs at `paths` are installed. Otherwise prints a note
/// and returns false so the caller skips, except in CI (`CI` set), where
/// the test fails, naming the Debian `packages` that provide them.
pub fn require_tools(paths: &[&str], packages: &str) -> bool {
    let missing: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| !std::path::Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "this test needs {missing:?} in CI (apt-get install {packages})"
    );
    eprintln!("skipping: {missing:?} not installed (apt-get install {packages})");
    false
}

/// Whether namespace tests can run here: true as root. Otherwise prints a
/// note and returns false so the caller skips, except in CI (`CI` set), where
/// a missing privilege must fail the test rather than silently skip it.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "namespace tests need root in CI"
    );
    eprintln!("skipping: namespace tests need root");
    false
}

/// Polls `f` every 50 ms until it returns `Some`, or fails after `timeout`
/// with `what` in the error.
pub fn wait_for<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_for_returns_first_value_or_times_out() {
        let mut n = 0;
        let v = wait_for(Duration::from_secs(5), "n to reach 3", || {
            n += 1;
            (n == 3).then_some(n)
        });
        assert_eq!(v.unwrap(), 3);
        let err = wait_for(Duration::from_millis(120), "never", || None::<()>).unwrap_err();
        assert!(err.to_string().contains("never"), "{err}");
    }
}
