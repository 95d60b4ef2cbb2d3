//! `weft token ...`: join tokens, through the coordinator's admin API.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use weft_coordinator::admin::AdminCredential;
use weft_proto::msg::{AdminCommand, AdminReply, TokenInfo};

#[derive(Args, Debug)]
pub struct TokenArgs {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long, global = true)]
    admin: Option<PathBuf>,
    #[command(subcommand)]
    command: TokenCommand,
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a join token and print it.
    Create {
        /// Allow any number of joins.
        #[arg(long, conflicts_with = "uses")]
        reusable: bool,
        /// Allow this many joins (default 1).
        #[arg(long)]
        uses: Option<u32>,
        /// Expire after this long, e.g. `1h`, `30m`, `7d`, or `never`.
        #[arg(long, value_parser = parse_expiry, default_value = "24h")]
        expires: Expiry,
        /// Tag given to nodes that join with this token. Repeat for several.
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// Print a cloud-init user-data document instead of the bare token:
        /// a new VM given it as user data installs weft, writes the token
        /// (mode 0600) and the systemd units, and comes up joined.
        #[arg(long)]
        cloud_init: bool,
        /// Where the VM downloads the weft binary from (http or https)
        /// [default: none; the image must have /usr/local/bin/weft].
        #[arg(long, value_name = "URL", requires = "cloud_init", value_parser = parse_url)]
        binary_url: Option<String>,
        /// The binary's SHA-256 (`sha256sum weft`); the VM refuses a
        /// download that does not match.
        #[arg(long, value_name = "HEX", requires = "binary_url", value_parser = parse_sha256)]
        binary_sha256: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token so it can no longer be used.
    Revoke { id: String },
}

/// How long a token lives: `None` for ever.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Expiry(pub(crate) Option<Duration>);

fn parse_url(s: &str) -> Result<String, String> {
    crate::cloud_init::check_url(s).map(|()| s.to_string())
}

fn parse_sha256(s: &str) -> Result<String, String> {
    crate::cloud_init::check_sha256(s).map(|()| s.to_ascii_lowercase())
}

pub(crate) fn parse_expiry(s: &str) -> Result<Expiry, String> {
    if s.eq_ignore_ascii_case("never") {
        return Ok(Expiry(None));
    }
    humantime::parse_duration(s)
        .map(|d| Expiry(Some(d)))
        .map_err(|e| format!("{e}; give a duration such as 1h, 30m or 7d, or `never`"))
}

/// Runs one admin command on a fresh runtime.
pub fn admin_request(admin: Option<PathBuf>, command: AdminCommand) -> anyhow::Result<AdminReply> {
    let path = AdminCredential::locate(admin.as_deref());
    let cred = AdminCredential::load(&path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(rt.block_on(cred.request(command))?)
}

fn fmt_opt_time(t: Option<u64>) -> String {
    t.map_or_else(|| "never".into(), weft_coordinator::fmt_time)
}

#[expect(clippy::print_stdout, reason = "the CLI prints its results")]
pub fn run(args: TokenArgs) -> anyhow::Result<()> {
    match args.command {
        TokenCommand::Create {
            reusable,
            uses,
            expires,
            tags,
            cloud_init,
            binary_url,
            binary_sha256,
        } => {
            let uses = if reusable {
                None
            } else {
                Some(uses.unwrap_or(1))
            };
            let reply = admin_request(
                args.admin,
                AdminCommand::TokenCreate {
                    uses,
                    expires_in_secs: expires.0.map(|d| d.as_secs().max(1)),
                    tags,
                },
            )?;
            let AdminReply::TokenCreated { token, info } = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            let about = format!(
                "token {} ({}, expires {})",
                info.id,
                uses_text(&info),
                fmt_opt_time(info.expires_at)
            );
            if cloud_init {
                eprintln!("{about}; give this document to new VMs as their user data");
                print!(
                    "{}",
                    crate::cloud_init::user_data(
                        &token,
                        &about,
                        binary_url.as_deref(),
                        binary_sha256.as_deref()
                    )
                );
            } else {
                eprintln!("{about}; on each new host run: weft join <TOKEN>");
                println!("{token}");
            }
        }
        TokenCommand::List { json } => {
            let reply = admin_request(args.admin, AdminCommand::TokenList)?;
            let AdminReply::Tokens(mut tokens) = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            tokens.sort_by_key(|t| t.created_at);
            if json {
                println!("{}", serde_json::to_string_pretty(&tokens)?);
            } else {
                println!(
                    "{:<16}  {:<10}  {:<5}  {:<20}  {:<20}  {:<8}  TAGS",
                    "ID", "USES LEFT", "USED", "CREATED", "EXPIRES", "STATE"
                );
                let now = weft_coordinator::now_unix();
                for t in tokens {
                    let state = if t.revoked {
                        "revoked"
                    } else if t.expires_at.is_some_and(|e| now >= e) {
                        "expired"
                    } else if t.uses_left == Some(0) {
                        "used-up"
                    } else {
                        "valid"
                    };
                    println!(
                        "{:<16}  {:<10}  {:<5}  {:<20}  {:<20}  {:<8}  {}",
                        t.id,
                        t.uses_left.map_or("unlimited".into(), |n| n.to_string()),
                        t.used,
                        weft_coordinator::fmt_time(t.created_at),
                        fmt_opt_time(t.expires_at),
                        state,
                        t.tags.join(",")
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            admin_request(args.admin, AdminCommand::TokenRevoke { id: id.clone() })?;
            eprintln!("token {id} revoked");
        }
    }
    Ok(())
}

fn uses_text(t: &TokenInfo) -> String {
    match t.uses_left {
        None => "reusable".into(),
        Some(1) => "single use".into(),
        Some(n) => format!("{n} uses"),
    }
}
