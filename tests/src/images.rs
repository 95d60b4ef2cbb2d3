//! Container images for the lab, which has no registry to pull from: a
//! busybox root filesystem as a tar, for `docker import` and `podman import`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// A tar of a minimal root filesystem: busybox (static) and a link for
/// each of its applets in `/bin`. Made once per directory.
pub fn busybox_rootfs_tar(dir: &Path) -> anyhow::Result<PathBuf> {
    let tar = dir.join("busybox-rootfs.tar");
    if tar.exists() {
        return Ok(tar);
    }
    let root = dir.join("rootfs");
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).context("create rootfs")?;
    for d in ["etc", "tmp", "proc", "sys", "dev", "root"] {
        std::fs::create_dir_all(root.join(d)).context("create rootfs")?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox is not installed (apt-get install busybox-static)")?;
    std::fs::copy(busybox, bin.join("busybox")).context("copy busybox")?;
    let list = Command::new(busybox)
        .arg("--list")
        .output()
        .context("busybox --list")?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet.is_empty() || applet.contains('/') || applet == "busybox" {
            continue;
        }
        let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
    }
    let out = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tar)
        .arg(".")
        .output()
        .context("run tar")?;
    if !out.status.success() {
        bail!("tar: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(tar)
}
