//! `weft node ...`: registered nodes, through the coordinator's admin API.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_proto::msg::{AdminCommand, AdminReply, NodeExpiry, NodeInfo};

use crate::token::admin_request;

#[derive(Args, Debug)]
pub struct NodeArgs {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long, global = true)]
    admin: Option<PathBuf>,
    #[command(subcommand)]
    command: NodeCommand,
}

#[derive(Subcommand, Debug)]
enum NodeCommand {
    /// List registered nodes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Remove a node (by id or name): peers drop it, it cannot reconnect, its
    /// subnet returns to the pool.
    Remove { node: String },
    /// Change a node's settings (by id or name).
    Set {
        node: String,
        /// How long it may stay offline before it expires: a duration
        /// (90d), `never`, or `cluster` for the coordinator's --node-expiry.
        /// Setting it brings an expired node back.
        #[arg(long, value_name = "DURATION|never|cluster", value_parser = parse_node_expiry)]
        expiry: NodeExpiry,
    },
}

fn parse_node_expiry(s: &str) -> Result<NodeExpiry, String> {
    if s.eq_ignore_ascii_case("cluster") || s.eq_ignore_ascii_case("default") {
        return Ok(NodeExpiry::Cluster);
    }
    match crate::token::parse_expiry(s)?.0 {
        None => Ok(NodeExpiry::Never),
        Some(d) if d.as_secs() == 0 => {
            Err("an expiry must be at least 1s; give a duration such as 90d, or `never`".into())
        }
        Some(d) => Ok(NodeExpiry::After(d.as_secs())),
    }
}

/// What the STATE column shows: online, offline, or expired.
fn state(n: &NodeInfo) -> &'static str {
    match (n.expired_at, n.online) {
        (Some(_), _) => "expired",
        (None, true) => "online",
        (None, false) => "offline",
    }
}

/// `3d`, `5h`, `12m`, `40s` ago; `-` when unknown.
fn ago(then: u64, now: u64) -> String {
    if then == 0 {
        return "-".into();
    }
    let s = now.saturating_sub(then);
    for (unit, n) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s >= n {
            return format!("{}{unit}", s / n);
        }
    }
    format!("{s}s")
}

#[expect(clippy::print_stdout, reason = "the CLI prints its results")]
pub fn run(args: NodeArgs) -> anyhow::Result<()> {
    match args.command {
        NodeCommand::List { json } => {
            let reply = admin_request(args.admin, AdminCommand::NodeList)?;
            let AdminReply::Nodes(nodes) = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                println!(
                    "{:<6}  {:<24}  {:<18}  {:<7}  {:<9}  {:<8}  {:<44}  {:<24}  TAGS",
                    "ID",
                    "NAME",
                    "SUBNET",
                    "STATE",
                    "LAST SEEN",
                    "EXPIRY",
                    "PUBLIC KEY",
                    "ENDPOINTS"
                );
                let now = weft_coordinator::now_unix();
                for n in nodes {
                    let eps: Vec<String> = n.endpoints.iter().map(|e| e.to_string()).collect();
                    let seen = if n.online {
                        "now".into()
                    } else {
                        ago(n.last_seen, now)
                    };
                    println!(
                        "{:<6}  {:<24}  {:<18}  {:<7}  {:<9}  {:<8}  {:<44}  {:<24}  {}",
                        n.id,
                        n.name,
                        n.subnet.to_string(),
                        state(&n),
                        seen,
                        n.expiry.to_string(),
                        n.public_key.to_string(),
                        eps.join(","),
                        n.tags.join(",")
                    );
                }
            }
        }
        NodeCommand::Remove { node } => {
            let reply = admin_request(args.admin, AdminCommand::NodeRemove { node })?;
            let AdminReply::NodeRemoved { id, name } = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            eprintln!("node {id} ({name}) removed");
        }
        NodeCommand::Set { node, expiry } => {
            let reply = admin_request(args.admin, AdminCommand::NodeSet { node, expiry })?;
            let AdminReply::NodeSet(n) = reply else {
                anyhow::bail!("unexpected reply from the coordinator: {reply:?}");
            };
            eprintln!(
                "node {} ({}): expiry {}, {}",
                n.id,
                n.name,
                n.expiry,
                state(&n)
            );
        }
    }
    Ok(())
}
