//! `weft admin ...`: named admin credentials, through the coordinator's
//! admin API. Each is a file like the state dir's admin.json, with its own
//! secret; every admin operation is logged with the credential's name, and
//! `weft acl history` shows which one set each policy version.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_coordinator::admin::AdminCredential;
use weft_proto::msg::{AdminCommand, AdminReply};

use crate::token::admin_request;

#[derive(Args, Debug)]
pub struct AdminArgs {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long, global = true)]
    admin: Option<PathBuf>,
    #[command(subcommand)]
    command: AdminCommandArg,
}

#[derive(Subcommand, Debug)]
enum AdminCommandArg {
    /// Make a new credential named NAME and write it to a file (mode 0600)
    /// for the person or system that will use it.
    Create {
        /// 1 to 64 of a-z, 0-9, -, _ and . (`root` is the state dir's own).
        name: String,
        /// Where to write it [default: ./admin-NAME.json].
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// List the named credentials, revoked ones included.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a credential: the coordinator refuses it from now on.
    Revoke { name: String },
}

#[expect(clippy::print_stdout, reason = "the CLI prints its results")]
pub fn run(args: AdminArgs) -> anyhow::Result<()> {
    match args.command {
        AdminCommandArg::Create { name, out } => {
            let path = AdminCredential::locate(args.admin.as_deref());
            let mine = AdminCredential::load(&path)?;
            let out = out.unwrap_or_else(|| PathBuf::from(format!("admin-{name}.json")));
            anyhow::ensure!(
                !out.exists(),
                "{} exists; pass another --out, or move it away",
                out.display()
            );
            let reply = admin_request(args.admin, AdminCommand::AdminCreate { name })?;
            let AdminReply::AdminCreated { info, secret } = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            let cred = AdminCredential {
                secret: secret.0,
                ..mine
            };
            cred.save(&out)?;
            eprintln!(
                "admin credential {} written to {}; use it with --admin {} or WEFT_ADMIN, and revoke it with `weft admin revoke {}`",
                info.name,
                out.display(),
                out.display(),
                info.name
            );
        }
        AdminCommandArg::List { json } => {
            let reply = admin_request(args.admin, AdminCommand::AdminList)?;
            let AdminReply::Admins(list) = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:<24}  {:<20}  {:<16}  REVOKED", "NAME", "CREATED", "BY");
            for a in list {
                println!(
                    "{:<24}  {:<20}  {:<16}  {}",
                    a.name,
                    weft_coordinator::fmt_time(a.created_at),
                    a.created_by,
                    a.revoked_at
                        .map_or_else(|| "-".to_string(), weft_coordinator::fmt_time)
                );
            }
        }
        AdminCommandArg::Revoke { name } => {
            let reply = admin_request(args.admin, AdminCommand::AdminRevoke { name })?;
            let AdminReply::AdminRevoked { name } = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            eprintln!("admin credential {name} revoked");
        }
    }
    Ok(())
}
