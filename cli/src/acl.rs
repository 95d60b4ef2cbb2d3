//! `weft acl ...`: the cluster's access policy, through the coordinator's
//! admin API.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Subcommand};
use weft_proto::msg::{AdminCommand, AdminReply};

use crate::token::admin_request;

#[derive(Args, Debug)]
pub struct AclArgs {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long, global = true)]
    admin: Option<PathBuf>,
    #[command(subcommand)]
    command: AclCommand,
}

#[derive(Subcommand, Debug)]
enum AclCommand {
    /// Print the policy in force (a cluster where none was set allows all).
    Get,
    /// Put a policy file in force. It is validated and its `tests:` run
    /// against the live cluster first; on any failure nothing changes.
    Set {
        /// The policy document (YAML); `-` reads standard input.
        file: PathBuf,
    },
    /// Validate a policy file and run its tests against the live cluster,
    /// changing nothing.
    Test {
        /// The policy document (YAML); `-` reads standard input.
        file: PathBuf,
    },
    /// List every version of the policy, oldest first.
    History {
        /// Print each version's whole document.
        #[arg(long)]
        full: bool,
    },
}

fn read_doc(file: &Path) -> anyhow::Result<String> {
    if file == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("cannot read standard input");
    }
    std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))
}

#[expect(clippy::print_stdout, reason = "the CLI prints its results")]
pub fn run(args: AclArgs) -> anyhow::Result<()> {
    match args.command {
        AclCommand::Get => match admin_request(args.admin, AdminCommand::AclGet)? {
            AdminReply::Acl(Some(v)) => {
                eprintln!(
                    "# policy version {}, set {}",
                    v.version,
                    weft_coordinator::fmt_time(v.set_at)
                );
                print!("{}", v.text);
            }
            AdminReply::Acl(None) => {
                eprintln!("no policy was ever set: every host may reach every other; set one with `weft acl set FILE`");
            }
            other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
        },
        AclCommand::Set { file } => {
            let text = read_doc(&file)?;
            match admin_request(args.admin, AdminCommand::AclSet { text })? {
                AdminReply::AclAccepted { version, tests } => {
                    eprintln!("policy version {version} in force ({tests} tests passed)");
                }
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
        AclCommand::Test { file } => {
            let text = read_doc(&file)?;
            match admin_request(args.admin, AdminCommand::AclTest { text })? {
                AdminReply::AclAccepted { tests, .. } => {
                    eprintln!("policy is valid; {tests} tests passed against the live cluster");
                }
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
        AclCommand::History { full } => {
            match admin_request(args.admin, AdminCommand::AclHistory)? {
                AdminReply::AclHistory(versions) => {
                    if versions.is_empty() {
                        eprintln!("no policy was ever set");
                    }
                    for v in versions {
                        let lines = v.text.lines().count();
                        println!(
                            "version {}  set {}  by {}  {lines} lines",
                            v.version,
                            weft_coordinator::fmt_time(v.set_at),
                            v.set_by.as_deref().unwrap_or("(not recorded)")
                        );
                        if full {
                            println!("{}", v.text);
                        }
                    }
                }
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
    }
    Ok(())
}
