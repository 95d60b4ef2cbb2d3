//! Debian's Podman on its CNI backend, one private instance per lab host:
//! its own storage, run and tmp dirs, network configurations and plugin
//! directory (filled by `weft cni install`), run inside the host's network
//! namespace only (`nsenter --net`: `ip netns exec` would remount /sys
//! and hide the cgroup mounts Podman needs), with `runc` (crun refuses
//! this machine's cgroup layout) and cgroupfs (no systemd here).
//!
//! Images come from a busybox rootfs ([`crate::images::busybox_rootfs_tar`]) through
//! `podman import`: there is no registry to pull from.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

use crate::cluster::Host;

/// The image every lab container runs.
pub const IMAGE: &str = "localhost/weft-busybox:lab";

/// One host's Podman; removes its containers and storage when dropped.
pub struct Podman {
    ns: String,
    dir: PathBuf,
    conf: PathBuf,
}

impl Podman {
    /// Sets up Podman for `host` under `dir`, installs weft's CNI plugin
    /// and conflist for it with `weft cni install`, and imports [`IMAGE`].
    pub fn new(host: &Host, weft: &Path, dir: &Path) -> anyhow::Result<Podman> {
        let (bin, netd) = (dir.join("cni-bin"), dir.join("net.d"));
        let out = Command::new(weft)
            .args(["cni", "install", "--bin-dir"])
            .arg(&bin)
            .arg("--conf-dir")
            .arg(&netd)
            .arg("--state-dir")
            .arg(&host.state_dir)
            .output()
            .context("run weft cni install")?;
        if !out.status.success() {
            bail!(
                "weft cni install: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let conf = dir.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                // Podman gives root's containers limits (1048576 files, as
                // many processes as the host) above what a process here may
                // raise its own to, and runc then fails to start them.
                "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n\n\
                 [network]\nnetwork_backend = \"cni\"\ncni_plugin_dirs = [\"{}\", \"/usr/lib/cni\"]\n\
                 network_config_dir = \"{}\"\n\n[engine]\nruntime = \"runc\"\n\
                 cgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\n",
                bin.display(),
                netd.display()
            ),
        )
        .context("write containers.conf")?;
        let p = Podman {
            ns: host.ns.clone(),
            dir: dir.to_path_buf(),
            conf,
        };
        let tar = crate::images::busybox_rootfs_tar(dir)?;
        p.cmd(&["import", &tar.to_string_lossy(), IMAGE])?;
        Ok(p)
    }

    /// Runs `podman ARGS` in the host's network namespace; its stdout.
    pub fn cmd(&self, args: &[&str]) -> anyhow::Result<String> {
        let d = |s: &str| self.dir.join(s).to_string_lossy().into_owned();
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .arg("podman")
            .args(["--root", &d("storage"), "--runroot", &d("run")])
            .args(["--tmpdir", &d("tmp"), "--storage-driver", "vfs"])
            .args(args)
            .env("CONTAINERS_CONF", &self.conf)
            .output()
            .context("run podman (apt-get install podman runc)")?;
        if !out.status.success() {
            bail!(
                "podman {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Starts container `name` on network `weft` running `sh -c script`,
    /// detached.
    pub fn run(&self, name: &str, script: &str) -> anyhow::Result<()> {
        self.cmd(&[
            "run",
            "-d",
            "--name",
            name,
            "--network",
            "weft",
            IMAGE,
            "sh",
            "-c",
            script,
        ])
        .map(drop)
    }

    /// The address container `name` got on network `weft`.
    pub fn addr(&self, name: &str) -> anyhow::Result<Ipv4Addr> {
        let ip = self.cmd(&[
            "inspect",
            "-f",
            "{{(index .NetworkSettings.Networks \"weft\").IPAddress}}",
            name,
        ])?;
        ip.parse()
            .with_context(|| format!("podman inspect gave address {ip:?}"))
    }

    /// The name (under /run/netns) of container `name`'s network namespace.
    pub fn netns(&self, name: &str) -> anyhow::Result<String> {
        let key = self.cmd(&["inspect", "-f", "{{.NetworkSettings.SandboxKey}}", name])?;
        key.rsplit('/')
            .next()
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .with_context(|| format!("no network namespace in {key:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Stops and removes every container (and so their CNI DEL, their
        // namespaces and their conmon), then the storage.
        let _ = self.cmd(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.cmd(&["rmi", "--all", "--force"]);
    }
}
