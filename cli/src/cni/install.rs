//! `weft cni install` and `weft cni uninstall`: put the plugin and a
//! network configuration list where container runtimes look for them.
//!
//! - Podman (CNI backend) runs plugins from `/usr/lib/cni` and
//!   `/opt/cni/bin`; containerd, nerdctl and the kubelet from
//!   `/opt/cni/bin`. All of them read `/etc/cni/net.d`.
//! - Every file is written beside its final name and renamed over it, so a
//!   runtime that reads the directory meanwhile sees the old file or the
//!   new one, never half of one (a conflist read half-written makes the
//!   runtime give up on the network).

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde_json::json;

use super::config::DEFAULT_STATE_DIR;
use super::PLUGIN_NAME;

/// Where runtimes look for plugins: Debian's reference plugins and Podman
/// use the first, containerd and the kubelet the second.
pub const BIN_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];
/// Where runtimes look for network configurations.
pub const CONF_DIR: &str = "/etc/cni/net.d";

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Directory to put the plugin (`weft-cni`) in; repeat for several
    /// [default: /usr/lib/cni and /opt/cni/bin].
    #[arg(long = "bin-dir", value_name = "DIR")]
    pub bin_dirs: Vec<PathBuf>,
    /// Directory of network configurations the runtime reads.
    #[arg(long, value_name = "DIR", default_value = CONF_DIR)]
    pub conf_dir: PathBuf,
    /// The network's name: `podman run --network NAME`, `nerdctl run
    /// --network NAME`.
    #[arg(long, default_value = "weft")]
    pub name: String,
    /// The agent's state directory (its `--state-dir`), where the plugin
    /// finds this host's subnet.
    #[arg(long, default_value = DEFAULT_STATE_DIR, env = "WEFT_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The conflist's file name; runtimes that pick one network take the
    /// first in lexical order, so the leading digits rank it.
    #[arg(long, default_value = "10-weft.conflist")]
    pub file: String,
}

impl InstallArgs {
    fn bin_dirs(&self) -> Vec<PathBuf> {
        if self.bin_dirs.is_empty() {
            BIN_DIRS.iter().map(PathBuf::from).collect()
        } else {
            self.bin_dirs.clone()
        }
    }
}

/// The network configuration list runtimes read.
pub fn conflist(name: &str, state_dir: &Path) -> serde_json::Value {
    json!({
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [{ "type": PLUGIN_NAME, "stateDir": state_dir }],
    })
}

pub fn install(args: &InstallArgs) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot tell where this weft binary is")?;
    install_from(args, &exe)
}

/// [`install`] with the plugin binary taken from `exe`.
fn install_from(args: &InstallArgs, exe: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(
        super::invocation::is_cni_name(&args.name),
        "`{}` is not a valid network name: use letters, digits, `_`, `.` and `-`",
        args.name
    );
    anyhow::ensure!(
        args.state_dir.is_absolute(),
        "--state-dir must be an absolute path (the plugin runs from other directories)"
    );
    check_file_name(&args.file)?;
    let binary = std::fs::read(exe).with_context(|| format!("cannot read {}", exe.display()))?;
    for dir in args.bin_dirs() {
        let dest = dir.join(PLUGIN_NAME);
        write_atomic(&dest, &binary, 0o755)?;
        say(format!("installed {}", dest.display()));
    }
    let mut text = serde_json::to_vec_pretty(&conflist(&args.name, &args.state_dir))?;
    text.push(b'\n');
    let dest = args.conf_dir.join(&args.file);
    write_atomic(&dest, &text, 0o644)?;
    say(format!(
        "wrote {} (network `{}`, agent state in {})",
        dest.display(),
        args.name,
        args.state_dir.display()
    ));
    say(format!(
        "containers join with `podman run --network {0} …` or `nerdctl run --network {0} …` \
         once the agent runs (`weft up`)",
        args.name
    ));
    Ok(())
}

pub fn uninstall(args: &InstallArgs) -> anyhow::Result<()> {
    check_file_name(&args.file)?;
    let mut paths: Vec<PathBuf> = args
        .bin_dirs()
        .iter()
        .map(|d| d.join(PLUGIN_NAME))
        .collect();
    paths.push(args.conf_dir.join(&args.file));
    for p in paths {
        match std::fs::remove_file(&p) {
            Ok(()) => say(format!("removed {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", p.display())),
        }
    }
    Ok(())
}

fn check_file_name(file: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !file.is_empty()
            && !file.contains('/')
            && !file.starts_with('.')
            && (file.ends_with(".conflist") || file.ends_with(".conf")),
        "--file must be a plain file name ending in .conflist, not `{file}`"
    );
    Ok(())
}

/// Writes `bytes` to a temporary file beside `dest` with `mode`, then
/// renames it over `dest` (creating the directory if needed).
pub(crate) fn write_atomic(dest: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        // The umask may have narrowed the mode.
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        std::fs::rename(&tmp, dest)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", dest.display()));
    }
    Ok(())
}

#[expect(clippy::print_stdout, reason = "the command's report to the user")]
fn say(line: String) {
    println!("{line}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_the_plugin_and_conflist_atomically_and_removes_them() {
        let d = std::env::temp_dir().join(format!("weft-cni-install-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        let args = InstallArgs {
            bin_dirs: vec![d.join("bin1"), d.join("bin2")],
            conf_dir: d.join("net.d"),
            name: "weft".into(),
            state_dir: "/var/lib/weft-x".into(),
            file: "10-weft.conflist".into(),
        };
        std::fs::create_dir_all(&d).unwrap();
        let exe = d.join("weft");
        std::fs::write(&exe, b"\x7fELF not really").unwrap();
        install_from(&args, &exe).unwrap();
        for b in ["bin1", "bin2"] {
            let m = std::fs::metadata(d.join(b).join(PLUGIN_NAME)).unwrap();
            assert_eq!(m.permissions().mode() & 0o777, 0o755);
            assert_eq!(m.len(), 15);
        }
        let conf: serde_json::Value =
            serde_json::from_slice(&std::fs::read(d.join("net.d/10-weft.conflist")).unwrap())
                .unwrap();
        assert_eq!(conf["plugins"][0]["type"], PLUGIN_NAME);
        assert_eq!(conf["plugins"][0]["stateDir"], "/var/lib/weft-x");
        // No temporary file is left beside the real ones.
        let leftovers: Vec<_> = std::fs::read_dir(d.join("net.d"))
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        uninstall(&args).unwrap();
        assert!(!d.join("net.d/10-weft.conflist").exists());
        assert!(!d.join("bin1").join(PLUGIN_NAME).exists());
        uninstall(&args).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn refuses_names_and_paths_that_would_escape() {
        let mut args = InstallArgs {
            bin_dirs: vec!["/nonexistent-weft".into()],
            conf_dir: "/nonexistent-weft".into(),
            name: "../x".into(),
            state_dir: "/var/lib/weft".into(),
            file: "10-weft.conflist".into(),
        };
        assert!(install(&args).is_err());
        args.name = "weft".into();
        args.file = "../evil.conflist".into();
        assert!(format!("{:#}", install(&args).unwrap_err()).contains("--file"));
        args.file = "10-weft.conflist".into();
        args.state_dir = "relative".into();
        assert!(install(&args).is_err());
    }
}
