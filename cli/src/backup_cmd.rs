//! `weft coordinator backup` and `weft coordinator restore`
//! (see `weft_coordinator::backup`).

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use weft_coordinator::backup::BackupFile;
use weft_proto::msg::{AdminCommand, AdminReply};

use crate::coordinator_cmd::{etcd_config, EtcdArgs};
use crate::token::admin_request;

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup (mode 0600; it holds the coordinator's
    /// private keys).
    file: PathBuf,
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long)]
    admin: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The file `weft coordinator backup` wrote.
    file: PathBuf,
    /// The state dir of the coordinator to restore (it must be stopped):
    /// the identity files go here, and with the redb store its weft.redb.
    #[arg(long, default_value = weft_coordinator::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Where the store goes: redb (the state dir's weft.redb) or
    /// etcd://HOST:PORT,... (an empty prefix).
    #[arg(long, value_name = "redb|etcd://HOST:PORT,...", default_value = "redb")]
    store: String,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Replace an existing database, identity or etcd prefix.
    #[arg(long)]
    force: bool,
}

pub fn backup(args: BackupArgs) -> anyhow::Result<()> {
    let reply = admin_request(args.admin, AdminCommand::Backup)?;
    let AdminReply::BackupPart(bytes) = reply else {
        anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
    };
    let file = BackupFile::decode("the coordinator's reply", &bytes.0)?;
    weft_coordinator::state::write_private(&args.file, &bytes.0)?;
    eprintln!(
        "backup of {} nodes, {} tokens and {} policy versions written to {} ({} bytes); it holds the coordinator's private keys: keep it as secret as the state dir",
        file.store.loaded.nodes.len(),
        file.store.tokens.len(),
        file.store.policy_history.len(),
        args.file.display(),
        bytes.0.len()
    );
    Ok(())
}

pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let name = args.file.display().to_string();
    let bytes = std::fs::read(&args.file).with_context(|| format!("cannot read {name}"))?;
    let file = BackupFile::decode(&name, &bytes)?;
    if args.store == "redb" {
        file.restore_redb(&args.state_dir, args.force)?;
    } else {
        let cfg = etcd_config(&args.store, &args.etcd)
            .map_err(|e| anyhow::anyhow!("--store: {e} (or redb, the default)"))?;
        file.restore_etcd(&args.state_dir, &cfg, args.force)?;
    }
    eprintln!(
        "restored {} nodes, {} tokens and {} policy versions (taken at {}) into {}; start the coordinator with --state-dir {}{}",
        file.store.loaded.nodes.len(),
        file.store.tokens.len(),
        file.store.policy_history.len(),
        weft_coordinator::fmt_time(file.taken_at),
        args.state_dir.display(),
        args.state_dir.display(),
        if args.store == "redb" {
            String::new()
        } else {
            format!(" --store {}", args.store)
        }
    );
    Ok(())
}
