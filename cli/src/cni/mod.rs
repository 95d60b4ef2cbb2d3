//! `weft cni`: the CNI 1.0.0 plugin container runtimes call (also as a
//! binary or symlink named `weft-cni`). It gives each container an address
//! from this host's subnet and attaches it to the host's bridge, the way
//! flannel's plugin does: by delegating to the reference `bridge` plugin with
//! `host-local` addresses, configured from what the agent wrote to
//! `<stateDir>/network.json`.
//!
//! Stdout carries only the result (or a CNI error); logs go to stderr.

pub(crate) mod config;
mod delegate;
pub(crate) mod error;
mod install;
pub(crate) use install::write_atomic;
pub(crate) mod invocation;

use std::io::{IsTerminal as _, Read as _, Write as _};

use clap::Args;
use serde_json::json;

use config::{HostNetwork, NetConf, SUPPORTED_VERSIONS};
use delegate::{Attachments, BRIDGE_PLUGIN};
use error::CniError;
use invocation::{Invocation, Verb};

/// The name under which the binary acts as the plugin without a subcommand.
pub const PLUGIN_NAME: &str = "weft-cni";

/// Without a subcommand, `weft cni` is the plugin itself: everything comes
/// from CNI_* and stdin, as a runtime runs it.
#[derive(Args, Debug)]
pub struct CniArgs {
    #[command(subcommand)]
    command: Option<CniCommand>,
}

#[derive(clap::Subcommand, Debug)]
enum CniCommand {
    /// Put the plugin (as `weft-cni`) and a conflist where Podman,
    /// containerd, nerdctl and the kubelet look for them (written
    /// atomically).
    Install(install::InstallArgs),
    /// Remove what `install` put there (same options).
    Uninstall(install::InstallArgs),
}

pub fn run(args: CniArgs) -> anyhow::Result<()> {
    match args.command {
        Some(CniCommand::Install(a)) => install::install(&a),
        Some(CniCommand::Uninstall(a)) => install::uninstall(&a),
        None => std::process::exit(main()),
    }
}

/// Runs one invocation from the process environment and stdin, prints the
/// result or the error, and returns the exit code.
pub fn main() -> i32 {
    // Errors are rendered in the caller's CNI version once the config says it.
    let mut version = "1.0.0".to_string();
    let (out, code) = match handle(&mut version) {
        Ok(out) => (out, 0),
        Err(e) => {
            tracing::warn!("{e}");
            let mut out = e.to_json(&version).to_string().into_bytes();
            out.push(b'\n');
            (out, 1)
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&out).and_then(|()| stdout.flush()) {
        Ok(()) => code,
        Err(_) => 1,
    }
}

fn handle(version: &mut String) -> Result<Vec<u8>, CniError> {
    let inv = Invocation::from_env(|k| std::env::var(k).ok())?;
    if inv.verb == Verb::Version {
        let v = json!({ "cniVersion": "1.0.0", "supportedVersions": SUPPORTED_VERSIONS });
        return Ok(format!("{v}\n").into_bytes());
    }
    let conf = NetConf::parse(&read_stdin()?)?;
    version.clone_from(&conf.cni_version);
    let cni_path = std::env::var("CNI_PATH").unwrap_or_default();
    tracing::debug!(
        command = inv.verb.as_str(),
        container = %inv.container_id,
        ifname = %inv.ifname,
        state_dir = %conf.state_dir.display(),
        "CNI invocation"
    );
    match inv.verb {
        Verb::Add => add(&inv, &conf, &cni_path),
        Verb::Check => check(&inv, &conf, &cni_path).map(|()| Vec::new()),
        Verb::Del => del(&inv, &conf, &cni_path).map(|()| Vec::new()),
        Verb::Version => Ok(Vec::new()),
    }
}

fn read_stdin() -> Result<Vec<u8>, CniError> {
    let mut stdin = std::io::stdin().lock();
    if stdin.is_terminal() {
        return Err(CniError::new(
            error::DECODE,
            "expected the network configuration on stdin: this is a CNI plugin, run by a \
             container runtime",
        ));
    }
    let mut buf = Vec::new();
    stdin
        .read_to_end(&mut buf)
        .map_err(|e| CniError::new(error::IO_FAILURE, format!("cannot read stdin: {e}")))?;
    Ok(buf)
}

fn ready_network(conf: &NetConf) -> Result<HostNetwork, CniError> {
    HostNetwork::load(&conf.state_dir)?.ok_or_else(|| config::agent_not_ready(&conf.state_dir))
}

fn add(inv: &Invocation, conf: &NetConf, cni_path: &str) -> Result<Vec<u8>, CniError> {
    let net = ready_network(conf)?;
    let bridge = delegate::find_plugin(BRIDGE_PLUGIN, cni_path)?;
    let delegate = config::bridge_config(conf, &net);
    // Recorded first, so the DEL a runtime sends after a failed ADD finds it.
    Attachments::new(&conf.state_dir).save(&inv.container_id, &inv.ifname, &delegate)?;
    let out = delegate::exec(&bridge, &config::for_verb(delegate, conf, Verb::Add))?;
    tracing::info!(container = %inv.container_id, subnet = %net.subnet, "container attached");
    Ok(out)
}

fn check(inv: &Invocation, conf: &NetConf, cni_path: &str) -> Result<(), CniError> {
    if !conf.allows_check() {
        return Err(CniError::new(
            error::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs CNI 0.4.0 or later; the config is {}",
                conf.cni_version
            ),
        ));
    }
    let net = ready_network(conf)?;
    let current = config::bridge_config(conf, &net);
    let delegate = match Attachments::new(&conf.state_dir).load(&inv.container_id, &inv.ifname) {
        Some(recorded) => {
            for key in ["/bridge", "/ipam/ranges"] {
                if recorded.pointer(key) != current.pointer(key) {
                    return Err(CniError::new(
                        error::INTERNAL,
                        format!(
                            "the container was attached to another network than this host's \
                             now ({} {} then, {} now); recreate the container",
                            key.trim_start_matches('/'),
                            recorded.pointer(key).unwrap_or(&json!(null)),
                            current.pointer(key).unwrap_or(&json!(null)),
                        ),
                    ));
                }
            }
            recorded
        }
        None => current,
    };
    let bridge = delegate::find_plugin(BRIDGE_PLUGIN, cni_path)?;
    delegate::exec(&bridge, &config::for_verb(delegate, conf, Verb::Check)).map(drop)
}

/// Idempotent. Uses what ADD recorded, else the agent's network, else a
/// placeholder that still releases the container's addresses. Without the
/// agent's network it is best effort: it reports success whatever happens,
/// so a runtime can always tear a container down.
fn del(inv: &Invocation, conf: &NetConf, cni_path: &str) -> Result<(), CniError> {
    let attachments = Attachments::new(&conf.state_dir);
    let net = HostNetwork::load(&conf.state_dir);
    let agent_ready = matches!(net, Ok(Some(_)));
    let delegate = attachments
        .load(&inv.container_id, &inv.ifname)
        .or_else(|| net.ok().flatten().map(|n| config::bridge_config(conf, &n)))
        .unwrap_or_else(|| config::release_only_config(conf));
    let done = delegate::find_plugin(BRIDGE_PLUGIN, cni_path)
        .and_then(|p| delegate::exec(&p, &config::for_verb(delegate, conf, Verb::Del)));
    match done {
        Ok(_) => {
            attachments.remove(&inv.container_id, &inv.ifname);
            Ok(())
        }
        Err(e) if !agent_ready => {
            tracing::warn!(
                container = %inv.container_id,
                "the weft agent is not running; DEL did what it could: {e}"
            );
            Ok(())
        }
        Err(e) => Err(e),
    }
}
