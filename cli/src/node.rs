//! `weft node ...`: registered nodes, through the coordinator's admin API.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_proto::msg::{AdminCommand, AdminReply};

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
                    "{:<6}  {:<24}  {:<18}  {:<7}  {:<44}  {:<24}  TAGS",
                    "ID", "NAME", "SUBNET", "ONLINE", "PUBLIC KEY", "ENDPOINTS"
                );
                for n in nodes {
                    let eps: Vec<String> = n.endpoints.iter().map(|e| e.to_string()).collect();
                    println!(
                        "{:<6}  {:<24}  {:<18}  {:<7}  {:<44}  {:<24}  {}",
                        n.id,
                        n.name,
                        n.subnet.to_string(),
                        if n.online { "yes" } else { "no" },
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
    }
    Ok(())
}
