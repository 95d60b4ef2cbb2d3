//! `weft ping` and `weft netcheck`: what the path to a peer and this host's
//! network look like, from the running agent.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use weft_mesh::agent::api::{self, ApiReply, ApiRequest};

#[derive(Args, Debug)]
pub struct PingArgs {
    /// The peer: its node name, or an address in its subnet.
    pub peer: String,
    /// How many probes to send.
    #[arg(short = 'c', long, default_value_t = 4)]
    pub count: u32,
    /// State directory of the agent to ask.
    #[arg(long, default_value = weft_mesh::agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
}

#[derive(Args, Debug)]
pub struct NetcheckArgs {
    /// State directory of the agent to ask.
    #[arg(long, default_value = weft_mesh::agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn ping(args: PingArgs) -> anyhow::Result<()> {
    let mut answered = 0;
    for i in 0..args.count {
        if i > 0 {
            std::thread::sleep(Duration::from_millis(500));
        }
        match api::request(
            &args.state_dir,
            &ApiRequest::Ping {
                peer: args.peer.clone(),
            },
        ) {
            Ok(ApiReply::Pong {
                peer,
                address,
                pong,
            }) => {
                answered += 1;
                let via = pong.endpoint.map_or_else(String::new, |e| format!(" {e}"));
                println!(
                    "pong from {peer} ({address}) via {}{via} in {:.2} ms",
                    pong.kind, pong.rtt_ms
                );
            }
            Ok(other) => anyhow::bail!("unexpected reply from the agent: {other:?}"),
            Err(api::ApiError::Agent(msg)) => println!("{msg}"),
            Err(e) => return Err(e.into()),
        }
    }
    if answered == 0 {
        anyhow::bail!("no pong from {}", args.peer);
    }
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn netcheck(args: NetcheckArgs) -> anyhow::Result<()> {
    match api::request(&args.state_dir, &ApiRequest::Netcheck)? {
        ApiReply::Netcheck(r) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print!("{}", r.render());
            }
            Ok(())
        }
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    }
}
