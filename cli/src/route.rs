//! `weft route ...`: networks outside the mesh reached through a host.
//! `advertise` and `withdraw` talk to this host's agent; `list`, `approve`
//! and `revoke` to the coordinator's admin API.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_mesh::agent::api::{self, ApiReply, ApiRequest};
use weft_proto::msg::{AdminCommand, AdminReply};
use weft_proto::policy::Cidr;

use crate::token::admin_request;

#[derive(Args, Debug)]
pub struct RouteArgs {
    #[command(subcommand)]
    command: RouteCommand,
}

#[derive(Args, Debug)]
struct Local {
    /// State directory of this host's agent.
    #[arg(long, default_value = weft_mesh::agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    state_dir: PathBuf,
}

#[derive(Args, Debug)]
struct Admin {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long)]
    admin: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
enum RouteCommand {
    /// Offer to route a network this host reaches (run on that host). Other
    /// hosts route it here once it is approved, by an admin (`weft route
    /// approve`) or by the policy's `routes:`; the policy decides who may
    /// reach it. The network needs a route back to the mesh pool through
    /// this host.
    Advertise {
        cidr: Cidr,
        #[command(flatten)]
        local: Local,
    },
    /// Stop offering a network (run on the host that advertised it).
    Withdraw {
        cidr: Cidr,
        #[command(flatten)]
        local: Local,
    },
    /// List advertised and approved routes, per node.
    List {
        #[command(flatten)]
        admin: Admin,
    },
    /// Approve a route a node advertises (it may be approved before it is
    /// advertised).
    Approve {
        /// The node (name or id).
        #[arg(long)]
        node: String,
        cidr: Cidr,
        #[command(flatten)]
        admin: Admin,
    },
    /// Take back an approval: other hosts stop routing the network.
    Revoke {
        #[arg(long)]
        node: String,
        cidr: Cidr,
        #[command(flatten)]
        admin: Admin,
    },
}

/// Asks the agent for its advertised routes with `change` applied.
fn change_local(local: &Local, change: impl FnOnce(&mut Vec<Cidr>)) -> anyhow::Result<()> {
    let state = weft_mesh::agent::state::StateDir::open(&local.state_dir)?;
    let mut routes = state.advertised_routes()?;
    change(&mut routes);
    match api::request(&local.state_dir, &ApiRequest::AdvertiseRoutes { routes })? {
        ApiReply::Routes { routes } if routes.is_empty() => {
            eprintln!("this host advertises no routes");
        }
        ApiReply::Routes { routes } => {
            let list: Vec<String> = routes.iter().map(ToString::to_string).collect();
            eprintln!(
                "this host advertises {}; other hosts route there once approved (`weft route approve --node NODE CIDR`)",
                list.join(", ")
            );
        }
        ApiReply::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    }
    Ok(())
}

fn approve(admin: Admin, node: String, cidr: Cidr, approve: bool) -> anyhow::Result<()> {
    match admin_request(
        admin.admin,
        AdminCommand::RouteApprove {
            node,
            cidr,
            approve,
        },
    )? {
        AdminReply::RouteApproved {
            node,
            cidr,
            approve,
        } => {
            let what = if approve { "approved" } else { "revoked" };
            eprintln!("route {cidr} through {node} {what}");
        }
        other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
    }
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the CLI prints its results")]
pub fn run(args: RouteArgs) -> anyhow::Result<()> {
    match args.command {
        RouteCommand::Advertise { cidr, local } => change_local(&local, |r| r.push(cidr)),
        RouteCommand::Withdraw { cidr, local } => {
            change_local(&local, |r| r.retain(|c| *c != cidr))
        }
        RouteCommand::Approve { node, cidr, admin } => approve(admin, node, cidr, true),
        RouteCommand::Revoke { node, cidr, admin } => approve(admin, node, cidr, false),
        RouteCommand::List { admin } => {
            match admin_request(admin.admin, AdminCommand::RouteList)? {
                AdminReply::Routes(list) => {
                    println!(
                        "{:<24}  {:<32}  {:<32}  IN FORCE",
                        "NODE", "ADVERTISED", "APPROVED BY ADMIN"
                    );
                    for r in list {
                        let j = |v: &[Cidr]| {
                            v.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(",")
                        };
                        println!(
                            "{:<24}  {:<32}  {:<32}  {}",
                            r.node,
                            j(&r.advertised),
                            j(&r.approved),
                            j(&r.active)
                        );
                    }
                    Ok(())
                }
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
    }
}
