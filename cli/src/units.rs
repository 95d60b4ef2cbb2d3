//! `weft install-units`: the systemd units for the agent and the
//! coordinator (`deploy/systemd/`), written with the path of the weft binary
//! that runs the command.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;

/// The units as shipped, naming this path for the binary.
const SHIPPED_BIN: &str = "/usr/local/bin/weft";
pub const AGENT_UNIT: (&str, &str) = (
    "weft-agent.service",
    include_str!("../../deploy/systemd/weft-agent.service"),
);
pub const DOCKER_PLUGIN_UNIT: (&str, &str) = (
    "weft-docker-plugin.service",
    include_str!("../../deploy/systemd/weft-docker-plugin.service"),
);
pub const COORDINATOR_UNIT: (&str, &str) = (
    "weft-coordinator.service",
    include_str!("../../deploy/systemd/weft-coordinator.service"),
);

#[derive(Args, Debug)]
pub struct InstallUnitsArgs {
    /// Where to write the units.
    #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
    pub dir: PathBuf,
    /// The weft binary the units run [default: this one].
    #[arg(long, value_name = "PATH")]
    pub bin: Option<PathBuf>,
    /// Write only a host's units, the agent's and the Docker plugin's (a
    /// host that runs no coordinator).
    #[arg(long, conflicts_with = "coordinator_only")]
    pub agent_only: bool,
    /// Write only the coordinator's unit.
    #[arg(long)]
    pub coordinator_only: bool,
}

/// `unit` with the binary at `bin`.
pub fn render(unit: &str, bin: &Path) -> anyhow::Result<String> {
    let bin = bin.to_str().context("the binary's path is not UTF-8")?;
    anyhow::ensure!(
        Path::new(bin).is_absolute() && !bin.contains(char::is_whitespace),
        "the binary's path must be absolute and without spaces for a unit file, not `{bin}`"
    );
    Ok(unit.replace(SHIPPED_BIN, bin))
}

#[expect(clippy::print_stdout, reason = "the command's report to the user")]
pub fn run(args: InstallUnitsArgs) -> anyhow::Result<()> {
    let bin = match args.bin {
        Some(b) => b,
        None => std::env::current_exe()
            .and_then(std::fs::canonicalize)
            .context("cannot tell where this weft binary is; pass --bin")?,
    };
    let mut units = Vec::new();
    if !args.coordinator_only {
        units.push(AGENT_UNIT);
        units.push(DOCKER_PLUGIN_UNIT);
    }
    if !args.agent_only {
        units.push(COORDINATOR_UNIT);
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    for (name, text) in units {
        let dest = args.dir.join(name);
        crate::cni::write_atomic(&dest, render(text, &bin)?.as_bytes(), 0o644)?;
        println!("wrote {}", dest.display());
    }
    println!(
        "now: systemctl daemon-reload, then systemctl enable --now weft-agent (a host: put its \
         join token in /etc/weft/token first, mode 0600), weft-docker-plugin (a host with \
         Docker) or weft-coordinator"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_run_the_given_binary_as_notify_services() {
        for (_, unit) in [AGENT_UNIT, DOCKER_PLUGIN_UNIT, COORDINATOR_UNIT] {
            let r = render(unit, Path::new("/opt/weft/bin/weft")).unwrap();
            assert!(!r.contains(SHIPPED_BIN), "{r}");
            assert!(r.contains("ExecStart=/opt/weft/bin/weft "), "{r}");
            assert!(r.contains("Type=notify") && r.contains("Restart=on-failure"));
            assert!(r.contains("ProtectSystem=strict"));
        }
        let agent = render(AGENT_UNIT.1, Path::new("/w")).unwrap();
        assert!(agent.contains("--token-file /etc/weft/token"));
        assert!(agent.contains("CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_BIND_SERVICE"));
        assert!(render(AGENT_UNIT.1, Path::new("relative/weft")).is_err());
        assert!(render(AGENT_UNIT.1, Path::new("/with space/weft")).is_err());
    }
}
