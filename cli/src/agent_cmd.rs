//! `weft join` and `weft up`: the host agent in the foreground.

use std::path::PathBuf;

use std::io::Read as _;

use anyhow::Context as _;
use clap::Args;
use signal_hook::consts::{SIGINT, SIGTERM};
use weft_mesh::agent::{self, AgentConfig, Start};

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
    /// MTU of the tunnel and the container bridge [default: the smallest
    /// MTU among the uplinks (the interfaces of the default routes) minus
    /// 60 over IPv4 or 80 over IPv6, followed when it changes; 1420 without
    /// a default route].
    #[arg(long, value_parser = clap::value_parser!(u16).range(576..=65535))]
    pub mtu: Option<u16>,
    /// Do not translate containers' traffic to destinations outside the
    /// mesh to this host's address (then they reach only the mesh, unless
    /// the underlay routes the overlay subnets).
    #[arg(long)]
    pub no_masquerade: bool,
    /// Serve Prometheus metrics on this address (`GET /metrics`), e.g.
    /// 127.0.0.1:9586 or the host's overlay address; unauthenticated, so
    /// not on a public address. `weft metrics` prints the same text.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Add per-peer series (a `peer` label per peer: as many series as the
    /// cluster has hosts).
    #[arg(long)]
    pub metrics_per_peer: bool,
    /// Disable TUN segmentation offloads (for debugging or old kernels).
    #[arg(long)]
    pub no_offload: bool,
    /// Test only: speak protocol versions up to N, as an agent of that
    /// release does (the rolling-upgrade test's "previous binary").
    #[arg(long, value_name = "N", hide = true)]
    pub speak_protocol: Option<u32>,
}

#[derive(Args)]
pub struct JoinArgs {
    /// The join token from `weft token create` (weft1.…), or `-` to read it
    /// from standard input. A token on the command line is visible in the
    /// process list: prefer `--token-file` or `WEFT_TOKEN`.
    #[arg(conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the join token from this file (the first line).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// This host's name in the cluster [default: the hostname].
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Args, Debug)]
pub struct UpArgs {
    /// On first start only (this state dir holds no node yet), join with
    /// the token in this file; afterwards the file is not read. For service
    /// units and cloud-init, where one command must do both.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// This host's name when joining with --token-file [default: the hostname].
    #[arg(long, requires = "token_file")]
    pub name: Option<String>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

impl std::fmt::Debug for JoinArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinArgs")
            .field("token_file", &self.token_file)
            .field("name", &self.name)
            .field("agent", &self.agent)
            .finish_non_exhaustive()
    }
}

/// Where `weft join` takes its token from, in this order: the argument
/// (`-`: standard input), `--token-file`, `WEFT_TOKEN`.
fn read_token(args: &JoinArgs) -> anyhow::Result<String> {
    read_token_from(args.token.as_deref(), args.token_file.as_deref())
}

fn read_token_from(
    token: Option<&str>,
    token_file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    let raw = match (token, token_file) {
        (Some("-"), _) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin().take(64 * 1024), &mut s)
                .context("cannot read the join token from standard input")?;
            s
        }
        (Some(t), _) => t.to_string(),
        (None, Some(path)) => {
            let mut s = String::new();
            std::fs::File::open(path)
                .and_then(|f| std::io::Read::read_to_string(&mut f.take(64 * 1024), &mut s))
                .with_context(|| format!("cannot read the join token from {}", path.display()))?;
            s
        }
        (None, None) => std::env::var("WEFT_TOKEN").map_err(|_| {
            anyhow::anyhow!(
                "no join token: give it as `weft join --token-file FILE`, in WEFT_TOKEN, on standard input with `weft join -`, or as an argument; create one on the coordinator with `weft token create`"
            )
        })?,
    };
    let token = raw
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    // Checked before anything is created: a bad token leaves no interface,
    // no key and no state dir behind.
    token.parse::<weft_proto::token::JoinToken>().context(
        "this is not a valid join token; copy the whole line `weft token create` printed",
    )?;
    Ok(token.to_string())
}

pub fn join(args: JoinArgs) -> anyhow::Result<()> {
    let token = read_token(&args)?;
    run(
        args.agent,
        Start::Join {
            token,
            name: args.name,
        },
    )
}

pub fn up(args: UpArgs) -> anyhow::Result<()> {
    if let Some(file) = &args.token_file {
        let state = agent::state::StateDir::open(&args.agent.state_dir)?;
        if !state.has_identity() {
            let token = read_token_from(None, Some(file))?;
            tracing::info!(state_dir = %args.agent.state_dir.display(), "no node here yet: joining with the token in {}", file.display());
            return run(
                args.agent,
                Start::Join {
                    token,
                    name: args.name,
                },
            );
        }
    }
    run(args.agent, Start::Up)
}

fn run(args: AgentArgs, start: Start) -> anyhow::Result<()> {
    let mut config = AgentConfig::new(args.state_dir);
    config.interface = args.interface;
    config.listen_port = args.port;
    config.bridge = args.bridge;
    config.mtu = args.mtu;
    config.masquerade = !args.no_masquerade;
    config.metrics_listen = args.metrics_listen;
    config.metrics_per_peer = args.metrics_per_peer;
    config.offload = !args.no_offload;
    if let Some(v) = args.speak_protocol {
        anyhow::ensure!(
            (weft_proto::OLDEST_PROTOCOL_VERSION..=weft_proto::PROTOCOL_VERSION).contains(&v),
            "--speak-protocol {v}: this build speaks {} to {}",
            weft_proto::OLDEST_PROTOCOL_VERSION,
            weft_proto::PROTOCOL_VERSION
        );
    }
    config.protocol_version = args.speak_protocol;
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
