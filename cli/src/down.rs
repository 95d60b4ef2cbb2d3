//! `weft down`: this host leaves the cluster. The running agent tells the
//! coordinator (which removes the node, as `weft node remove` would), then
//! forgets its identity and stops. Stopping without leaving is SIGTERM
//! (`systemctl stop weft-agent`), which keeps the node for `weft up`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use weft_mesh::agent::api::{self, ApiReply, ApiRequest};

#[derive(Args, Debug)]
pub struct DownArgs {
    /// State directory of the agent that leaves.
    #[arg(long, default_value = weft_mesh::agent::state::DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// Leave without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// How long the agent gets to stop after leaving.
const STOP_WAIT: Duration = Duration::from_secs(10);

#[expect(clippy::print_stdout, reason = "the command's output")]
pub fn run(args: DownArgs) -> anyhow::Result<()> {
    let status = match api::request(&args.state_dir, &ApiRequest::Status)? {
        ApiReply::Status(s) => s,
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    };
    let who = format!(
        "node {} (id {}, subnet {})",
        status.host.name, status.host.node_id, status.host.subnet
    );
    if !args.yes {
        confirm(&who)?;
    }
    match api::request(&args.state_dir, &ApiRequest::Leave)? {
        ApiReply::Left { name } => println!("{name} left the cluster; the agent is stopping"),
        other => anyhow::bail!("unexpected reply from the agent: {other:?}"),
    }
    // The agent removes its API socket as it stops.
    let socket = args.state_dir.join(weft_mesh::agent::state::API_SOCKET);
    let t0 = Instant::now();
    while socket.exists() {
        if t0.elapsed() > STOP_WAIT {
            anyhow::bail!(
                "the node left, but the agent has not stopped after {STOP_WAIT:?}; stop it \
                 (systemctl stop weft-agent, or SIGTERM)"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "stopped; to join again, get a new token and run `weft join --state-dir {}`",
        args.state_dir.display()
    );
    Ok(())
}

/// Asks on the terminal; refuses without one (scripts pass `--yes`).
fn confirm(who: &str) -> anyhow::Result<()> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "`weft down` removes {who} from the cluster; pass --yes to confirm (to stop the agent \
             and keep the node, send it SIGTERM or run `systemctl stop weft-agent` instead)"
        );
    }
    let mut err = std::io::stderr().lock();
    write!(
        err,
        "Leave the cluster as {who}? The coordinator forgets this node and its subnet; joining \
         again needs a new token. [y/N] "
    )
    .and_then(|()| err.flush())
    .context("cannot ask on the terminal")?;
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        anyhow::bail!("not leaving; nothing changed")
    }
}
