//! `weft`: the one binary. Each subcommand lives in its own module.

mod acl;
mod admin_cmd;
mod agent_cmd;
mod backup_cmd;
mod cloud_init;
mod cni;
mod coordinator_cmd;
mod docker;
mod down;
mod node;
mod probe;
mod route;
mod service;
mod status;
mod token;
mod units;
mod web_url;
mod wg;

use clap::{Parser, Subcommand};

/// weft: an encrypted WireGuard mesh for container clusters.
#[derive(Parser)]
#[command(name = "weft", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level: error, warn, info, debug, trace, or a filter such as
    /// `info,weft_mesh=debug` [default: WEFT_LOG, else info (warn for the
    /// CNI plugin)].
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Log format on stderr: `text`, or `json` (one object a line, for
    /// journald and log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a bare userspace WireGuard interface in the foreground, configured with `wg`.
    Wg(wg::WgArgs),
    /// Join a cluster with a token and run this host's agent in the foreground.
    Join(agent_cmd::JoinArgs),
    /// Run this host's agent again from its stored identity (no token needed).
    Up(agent_cmd::UpArgs),
    /// Leave the cluster: the running agent has the coordinator remove this node, then stops
    /// (SIGTERM stops without leaving).
    Down(down::DownArgs),
    /// Show this host, its coordinator connection and its peers.
    Status(status::StatusArgs),
    /// Print this host's Prometheus metrics (what the agent's --metrics-listen serves).
    Metrics(status::MetricsArgs),
    /// Probe a peer on its current path (lan, direct or relay) and print each RTT.
    Ping(probe::PingArgs),
    /// Report whether UDP works, how this host's NAT maps, and the coordinator RTT.
    Netcheck(probe::NetcheckArgs),
    /// Run the coordinator: join tokens, node registry, address space, netmaps.
    Coordinator(Box<coordinator_cmd::CoordinatorArgs>),
    /// Create, list and revoke join tokens (needs the admin credential).
    Token(token::TokenArgs),
    /// Create, list and revoke named admin credentials (needs an admin credential).
    Admin(admin_cmd::AdminArgs),
    /// List and remove nodes (needs the admin credential).
    Node(node::NodeArgs),
    /// Get, set, test and list versions of the access policy (needs the admin credential).
    Acl(acl::AclArgs),
    /// Publish services by name, with who may reach them (needs the admin credential).
    Service(service::ServiceArgs),
    /// Advertise networks outside the mesh from a host; list and approve them (admin).
    Route(route::RouteArgs),
    /// Container Network Interface plugin (CNI 1.0.0); invoked by container runtimes, reads
    /// CNI_* env and config on stdin.
    Cni(cni::CniArgs),
    /// Docker network and IPAM driver: serves /run/docker/plugins/weft.sock, so
    /// `docker network create -d weft --ipam-driver weft weft` puts containers on the mesh.
    #[command(long_about = docker::LONG_ABOUT)]
    DockerPlugin(docker::DockerPluginArgs),
    /// Write the systemd units for the agent and the coordinator (to /etc/systemd/system).
    InstallUnits(units::InstallUnitsArgs),
    /// Print the login link of the coordinator's web page (--web-listen); anyone with it can
    /// see the cluster, so treat it like the admin credential.
    WebUrl(web_url::WebUrlArgs),
    /// Print a shell completion script: `weft completions bash > /etc/bash_completion.d/weft`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Logs go to stderr, filtered by `level` (`--log-level`), else `WEFT_LOG`,
/// else at `default` level.
fn init_logging(default: &str, level: Option<&str>, format: LogFormat) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| {
            anyhow::anyhow!(
                "--log-level {l:?} is not a level or filter ({e}); use error, warn, info, debug \
                 or trace, or a filter such as info,weft_mesh=debug"
            )
        })?,
        None => EnvFilter::try_from_env("WEFT_LOG").unwrap_or_else(|_| EnvFilter::new(default)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        // Runtimes and service managers collect stderr into logs: no colour codes there.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // Runtimes run CNI plugins by file name with no arguments: as `weft-cni`
    // (a copy or symlink in CNI_PATH) this binary is `weft cni`.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new(cni::PLUGIN_NAME)) {
        // Quiet by default: runtimes collect a plugin's stderr.
        let _ = init_logging("warn", None, LogFormat::Text);
        std::process::exit(cni::main());
    }
    let cli = Cli::parse();
    init_logging(
        match cli.command {
            Command::Cni(_) => "warn",
            _ => "info",
        },
        cli.log_level.as_deref(),
        cli.log_format,
    )?;
    match cli.command {
        Command::Wg(args) => wg::run(args),
        Command::Join(args) => agent_cmd::join(args),
        Command::Up(args) => agent_cmd::up(args),
        Command::Down(args) => down::run(args),
        Command::Status(args) => status::run(args),
        Command::Metrics(args) => status::metrics(args),
        Command::Ping(args) => probe::ping(args),
        Command::Netcheck(args) => probe::netcheck(args),
        Command::Admin(args) => admin_cmd::run(args),
        Command::Coordinator(args) => coordinator_cmd::run(*args),
        Command::Token(args) => token::run(args),
        Command::Node(args) => node::run(args),
        Command::Acl(args) => acl::run(args),
        Command::Service(args) => service::run(args),
        Command::Route(args) => route::run(args),
        Command::Cni(args) => cni::run(args),
        Command::DockerPlugin(args) => docker::run(args),
        Command::InstallUnits(args) => units::run(args),
        Command::WebUrl(args) => web_url::run(args),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "weft", &mut script);
            match std::io::Write::write_all(&mut std::io::stdout(), &script) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
    }
}
