//! `weft status`: this host, its coordinator connection and its peers, from
//! the running agent's local API.

use std::path::PathBuf;

use clap::Args;
use weft_mesh::agent::api::{self, ApiReply, ApiRequest};

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// State directory of the agent to ask.
    #[arg(long, default_value = weft_mesh::agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct MetricsArgs {
    /// State directory of the agent to ask.
    #[arg(long, default_value = weft_mesh::agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
}

/// `weft metrics`: the agent's Prometheus metrics, as `--metrics-listen`
/// serves them.
#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn metrics(args: MetricsArgs) -> anyhow::Result<()> {
    match api::request(&args.state_dir, &ApiRequest::Metrics)? {
        ApiReply::Metrics { text } => {
            print!("{text}");
            Ok(())
        }
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    }
}

#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn run(args: StatusArgs) -> anyhow::Result<()> {
    match api::request(&args.state_dir, &ApiRequest::Status)? {
        ApiReply::Status(s) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", s.render());
            }
            Ok(())
        }
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    }
}
