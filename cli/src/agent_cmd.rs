//! `weft join` and `weft up`: the host agent in the foreground.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use weft_mesh::agent::{self, AgentConfig, Start};
use weft_mesh::dataplane::DEFAULT_MTU;

/// Options shared by `join` and `up`.
#[derive(Args, Debug)]
pub struct AgentArgs {
    /// Directory holding this host's key, identity and cached netmap.
    #[arg(long, default_value = agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Name of the WireGuard TUN interface [default: weft0, or the one stored at join].
    #[arg(long)]
    pub interface: Option<String>,
    /// UDP port of the WireGuard socket [default: 51820, or the one stored at join].
    #[arg(long)]
    pub port: Option<u16>,
    /// Bridge the containers of this host attach to.
    #[arg(long, default_value = agent::DEFAULT_BRIDGE)]
    pub bridge: String,
    /// MTU of the tunnel and the container bridge.
    #[arg(long, default_value_t = DEFAULT_MTU)]
    pub mtu: u16,
    /// Disable TUN segmentation offloads (for debugging or old kernels).
    #[arg(long)]
    pub no_offload: bool,
}

#[derive(Args, Debug)]
pub struct JoinArgs {
    /// The join token from `weft token create` (weft1.…).
    pub token: String,
    /// This host's name in the cluster [default: the hostname].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
}

pub fn join(args: JoinArgs) -> anyhow::Result<()> {
    run(
        args.agent,
        Start::Join {
            token: args.token,
            name: args.name,
        },
    )
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    run(args.agent, Start::Up)
}

fn run(args: AgentArgs, start: Start) -> anyhow::Result<()> {
    let mut config = AgentConfig::new(args.state_dir);
    config.interface = args.interface;
    config.listen_port = args.port;
    config.bridge = args.bridge;
    config.mtu = args.mtu;
    config.offload = !args.no_offload;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (tx, rx) = tokio::sync::oneshot::channel::<i32>();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])
        .context("cannot install signal handlers")?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = tx.send(sig);
        }
    });
    rt.block_on(agent::run(config, start, async move {
        if let Ok(sig) = rx.await {
            tracing::info!(signal = sig, "shutting down");
        }
    }))?;
    Ok(())
}
