//! `weft wg IFACE`: a bare WireGuard interface in the foreground, configured
//! entirely through the stock `wg` tool, the way `wireguard-go -f` runs.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use weft_mesh::dataplane::{Device, DeviceOptions, DEFAULT_MTU};
use weft_mesh::uapi::server::{UapiServer, SOCKET_DIR};

#[derive(Args, Debug)]
pub struct WgArgs {
    /// Name of the TUN interface to create (e.g. wg0).
    pub interface: String,

    /// MTU of the interface.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u16,

    /// Directory of the UAPI socket that `wg` talks to.
    #[arg(long, default_value = SOCKET_DIR, env = "WEFT_UAPI_DIR")]
    pub socket_dir: PathBuf,

    /// Disable TUN segmentation offloads (for debugging or old kernels).
    #[arg(long)]
    pub no_offload: bool,
}

pub fn run(args: WgArgs) -> anyhow::Result<()> {
    let mut opts = DeviceOptions::new(&args.interface);
    opts.mtu = args.mtu;
    opts.offload = !args.no_offload;
    let device = Device::start(&opts)?;
    let uapi = UapiServer::start(&args.socket_dir, device.handle())?;
    tracing::info!(
        interface = %args.interface,
        socket = %uapi.path().display(),
        "ready; configure with `wg set {}` or `wg setconf {} FILE`",
        args.interface,
        args.interface
    );

    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    if let Some(sig) = signals.forever().next() {
        tracing::info!(signal = sig, "shutting down");
    }
    drop(uapi);
    drop(device);
    Ok(())
}
