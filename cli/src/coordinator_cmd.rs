//! `weft coordinator`: runs the coordinator in the foreground.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use weft_coordinator::store::etcd::EtcdConfig;
use weft_coordinator::{Config, Coordinator, StoreConfig};

#[derive(Args, Debug)]
pub struct CoordinatorArgs {
    /// UDP address to serve QUIC on.
    #[arg(long, default_value = weft_coordinator::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Directory holding keys, certificate, database and admin credential.
    #[arg(long, default_value = weft_coordinator::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// IPv4 pool host subnets are taken from.
    #[arg(long, default_value = weft_coordinator::DEFAULT_POOL)]
    pool: ipnet::Ipv4Net,
    /// Prefix length of each host's subnet.
    #[arg(long, default_value_t = weft_coordinator::DEFAULT_SUBNET_PREFIX)]
    subnet_prefix: u8,
    /// Address hosts use to reach this coordinator (HOST:PORT), put into join
    /// tokens. Repeat for several.
    #[arg(long = "advertise", value_name = "HOST:PORT")]
    advertise: Vec<String>,
    /// DNS domain of the cluster: services resolve as NAME.DOMAIN on every
    /// host's bridge gateway address.
    #[arg(long, default_value = weft_proto::msg::DEFAULT_DOMAIN)]
    domain: String,
    /// Keep loopback addresses among the endpoints hosts report (only for
    /// benchmarks with every host on one machine; otherwise they are
    /// dropped, with multicast, link-local and overlay addresses).
    #[arg(long)]
    allow_loopback_endpoints: bool,
    /// Where nodes, tokens and the configuration are kept: `redb` (a file
    /// in the state dir) or `etcd://HOST:PORT,HOST:PORT,...` (an etcd v3
    /// cluster several coordinators share). Keys, certificate and admin
    /// credential stay in the state dir either way.
    #[arg(long, value_name = "redb|etcd://HOST:PORT,...", default_value = "redb")]
    store: String,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// With --store etcd: where the other replicas reach this one to
    /// forward relayed traffic (HOST:PORT of --listen); default: the first
    /// --advertise.
    #[arg(long, value_name = "HOST:PORT")]
    replica_addr: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics (sessions, joins,
    /// netmap fan-out, store commits, relay, refusals). Unauthenticated:
    /// use a private address such as 127.0.0.1:9090. Off by default.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the cluster's live web page (nodes, the path matrix, policy,
    /// services, routes) on http://ADDR/, behind the admin credential:
    /// `weft web-url` prints the login link. Off by default.
    #[arg(long, value_name = "ADDR")]
    web_listen: Option<SocketAddr>,
    /// How long a node may stay offline before it expires: it leaves every
    /// netmap, and after --expiry-grace more it is removed and its subnet
    /// returns to the pool. A duration (30d, 12h) or `never`. Time the
    /// coordinator itself is down does not count. Per node:
    /// `weft node set NODE --expiry`.
    #[arg(long, value_name = "DURATION|never", value_parser = crate::token::parse_expiry, default_value = "30d")]
    node_expiry: crate::token::Expiry,
    /// How long an expired node keeps its subnet, key and name (and can be
    /// brought back with `weft node set`) before it is removed.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, default_value = "7d")]
    expiry_grace: Duration,
    /// How long changes are gathered before they are pushed (milliseconds).
    #[arg(long, default_value_t = 25, hide = true)]
    coalesce_ms: u64,
    #[command(subcommand)]
    action: Option<CoordinatorAction>,
}

/// How to reach etcd: shared by the coordinator and `migrate`.
#[derive(Args, Debug)]
pub(crate) struct EtcdArgs {
    /// Prefix of every key the coordinator writes to etcd.
    #[arg(long, value_name = "PREFIX", default_value = "/weft")]
    etcd_prefix: String,
    /// CA (PEM) that signed the etcd members' certificates; speaks TLS to etcd.
    #[arg(long, value_name = "FILE")]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for etcd, with --etcd-key.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Key (PEM) of the client certificate for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum CoordinatorAction {
    /// Move a stopped coordinator's store (redb, in its state dir) into
    /// etcd: nodes, tokens, policy history, services and routes, so hosts
    /// reconnect without joining again. Then start the coordinator (and
    /// its replicas, with copies of the state dir's identity files) with
    /// --store etcd://...
    Migrate(Box<MigrateArgs>),
    /// Take a consistent snapshot of a running coordinator, through its
    /// admin API: nodes, tokens, policy history, services, routes and the
    /// coordinator's identity (its private keys: keep the file secret).
    Backup(crate::backup_cmd::BackupArgs),
    /// Put a backup into a stopped coordinator's state dir (redb), or into
    /// an empty etcd prefix; then start the coordinator on it. Hosts
    /// reconnect as before: the identity they pin is the same.
    Restore(Box<crate::backup_cmd::RestoreArgs>),
}

#[derive(Args, Debug)]
struct MigrateArgs {
    /// The coordinator's state dir (its weft.redb is read, not changed).
    #[arg(long, value_name = "STATE_DIR")]
    from: PathBuf,
    /// The etcd cluster: etcd://HOST:PORT,HOST:PORT,...
    #[arg(long, value_name = "etcd://HOST:PORT,...")]
    to: String,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Replace whatever the prefix holds (it is deleted first).
    #[arg(long)]
    force: bool,
}

pub(crate) fn etcd_config(url: &str, etcd: &EtcdArgs) -> anyhow::Result<EtcdConfig> {
    let mut cfg = EtcdConfig::from_url(url).map_err(|e| anyhow::anyhow!("{e}"))?;
    let prefix = &etcd.etcd_prefix;
    anyhow::ensure!(
        prefix.starts_with('/') && prefix.len() > 1,
        "--etcd-prefix {prefix} must start with / and name something, like /weft"
    );
    cfg.prefix = prefix.to_string();
    cfg.ca = etcd.etcd_ca.clone();
    cfg.cert = etcd.etcd_cert.clone();
    cfg.key = etcd.etcd_key.clone();
    Ok(cfg)
}

#[expect(clippy::print_stdout, reason = "the command's output")]
fn migrate(args: MigrateArgs) -> anyhow::Result<()> {
    let cfg = etcd_config(&args.to, &args.etcd).map_err(|e| anyhow::anyhow!("--to: {e}"))?;
    let db = args.from.join(weft_coordinator::state::DB_FILE);
    let m = weft_coordinator::store::etcd::migrate(&db, &cfg, args.force)?;
    println!(
        "moved {} nodes, {} tokens, {} policy versions, {} services and {} route records from {} to {} under {}",
        m.nodes,
        m.tokens,
        m.policy_versions,
        m.services,
        m.routes,
        db.display(),
        args.to,
        cfg.prefix
    );
    println!(
        "start the coordinator with --state-dir {} --store {}{}; {} is left as it was",
        args.from.display(),
        args.to,
        if cfg.prefix == "/weft" {
            String::new()
        } else {
            format!(" --etcd-prefix {}", cfg.prefix)
        },
        db.display()
    );
    Ok(())
}

/// The store `--store` and the `--etcd-*` flags name.
fn store_config(args: &CoordinatorArgs) -> anyhow::Result<StoreConfig> {
    if args.store == "redb" {
        let etcd_flag = args.etcd.etcd_ca.is_some()
            || args.etcd.etcd_cert.is_some()
            || args.etcd.etcd_prefix != "/weft";
        anyhow::ensure!(
            !etcd_flag,
            "--etcd-prefix, --etcd-ca, --etcd-cert and --etcd-key apply only with --store etcd://HOST:PORT,..."
        );
        return Ok(StoreConfig::Redb);
    }
    let cfg = etcd_config(&args.store, &args.etcd)
        .map_err(|e| anyhow::anyhow!("--store: {e} (or redb, the default)"))?;
    Ok(StoreConfig::Etcd(cfg))
}

pub fn run(mut args: CoordinatorArgs) -> anyhow::Result<()> {
    match args.action.take() {
        Some(CoordinatorAction::Migrate(m)) => return migrate(*m),
        Some(CoordinatorAction::Backup(b)) => return crate::backup_cmd::backup(b),
        Some(CoordinatorAction::Restore(r)) => return crate::backup_cmd::restore(*r),
        None => {}
    }
    let store = store_config(&args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut config = Config::new(args.state_dir, args.listen);
        config.pool = args.pool;
        config.subnet_prefix = args.subnet_prefix;
        config.advertise = args.advertise;
        config.domain = args.domain.trim_end_matches('.').to_ascii_lowercase();
        config.coalesce = Duration::from_millis(args.coalesce_ms.min(50));
        config.allow_loopback_endpoints = args.allow_loopback_endpoints;
        config.store = store;
        config.replica_addr = args.replica_addr;
        config.metrics_listen = args.metrics_listen;
        config.web_listen = args.web_listen;
        anyhow::ensure!(
            args.node_expiry.0.is_none_or(|d| d >= Duration::from_secs(60))
                && args.expiry_grace >= Duration::from_secs(60),
            "--node-expiry and --expiry-grace must be at least 1m (--node-expiry never turns expiry off)"
        );
        config.expiry = weft_coordinator::expiry::ExpiryRules {
            node_expiry: args.node_expiry.0,
            grace: args.expiry_grace,
        };
        let coordinator = Coordinator::start(config).await?;
        tracing::info!(
            admin = %coordinator.admin_credential_path().display(),
            "admin credential written; create a join token with `weft token create`"
        );
        weft_mesh::agent::tell_service_manager(&[sd_notify::NotifyState::Ready]);
        coordinator.run_until(shutdown_signal()).await;
        weft_mesh::agent::tell_service_manager(&[sd_notify::NotifyState::Stopping]);
        Ok(())
    })
}

/// Completes on SIGINT or SIGTERM (what systemd sends), so hosts see the
/// connection close at once rather than after the idle timeout.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("shutting down");
}
