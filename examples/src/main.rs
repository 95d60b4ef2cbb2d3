//! `weft-lab`: a whole weft cluster on one machine, in network namespaces.
//!
//! A coordinator on a simulated internet, three clouds of two hosts each,
//! two containers per host attached through `weft cni`; then ping and a TCP
//! transfer across clouds, every container pair checked, and teardown.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use weft_tests::demo::{self, DemoOptions};
use weft_tests::NatKind;

/// Build a whole weft cluster in network namespaces and show it working
/// (needs root; everything is removed on exit and on Ctrl-C).
#[derive(Parser, Debug)]
#[command(name = "weft-lab", version)]
struct Args {
    /// The weft binary [default: `weft` next to this program].
    #[arg(long)]
    weft: Option<PathBuf>,
    /// Leave the cluster up to explore; Ctrl-C tears it down.
    #[arg(long)]
    keep: bool,
    /// Number of clouds (each a LAN behind its own router).
    #[arg(long, default_value_t = 3)]
    clouds: usize,
    /// Hosts per cloud.
    #[arg(long, default_value_t = 2)]
    hosts: usize,
    /// Containers per host.
    #[arg(long, default_value_t = 2)]
    containers: usize,
    /// NAT in front of each cloud, comma-separated, one per cloud: routed,
    /// eim-eif, eim-adf, eim-apdf, symmetric, udp-blocked (RFC 4787 kinds).
    #[arg(long, value_delimiter = ',', default_values_t = weft_tests::demo::DEFAULT_NAT)]
    nat: Vec<NatKind>,
    /// MiB sent by the cross-cloud TCP transfer.
    #[arg(long, default_value_t = 64)]
    transfer_mib: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let weft = match args.weft {
        Some(p) => p,
        None => std::env::current_exe()
            .context("cannot find this program's path; pass --weft")?
            .with_file_name("weft"),
    };
    // SAFETY: geteuid has no preconditions.
    anyhow::ensure!(
        unsafe { libc::geteuid() } == 0,
        "weft-lab needs root (network namespaces and TUN devices); run it with sudo"
    );
    let mut opts = DemoOptions::new(weft);
    opts.spec.clouds = args.clouds;
    opts.spec.hosts_per_cloud = args.hosts;
    opts.spec.containers_per_host = args.containers;
    opts.spec = opts.spec.with_nat(&args.nat);
    opts.transfer_bytes = args.transfer_mib << 20;
    opts.keep = args.keep;
    demo::run(&opts)
}
