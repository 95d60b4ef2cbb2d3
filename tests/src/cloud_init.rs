//! Boots "a fresh VM" from a cloud-init user-data document: a lab host's
//! network namespace plus a private mount namespace in which `/etc`,
//! `/usr/local`, `/var/lib` and `/run` are overlays over the machine's (so
//! the document writes where it would on a real VM, and nothing reaches
//! the real directories). The runner does what cloud-init does with the
//! parts weft's document uses: checks `packages` are installed, writes
//! `write_files` with their permissions and owner, and runs `runcmd`.
//!
//! There is no systemd in the lab: a stand-in `systemctl` first on PATH
//! takes `daemon-reload` (nothing to do) and `enable --now UNIT`, which runs
//! the unit's `ExecStart` with its `Environment=` in the foreground, as
//! systemd would start it. Everything else the document does is real.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};
use serde::Deserialize;

use crate::{Lab, Proc};

#[derive(Debug, Deserialize)]
struct UserData {
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    write_files: Vec<WriteFile>,
    #[serde(default)]
    runcmd: Vec<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct WriteFile {
    path: String,
    content: String,
    #[serde(default)]
    permissions: Option<String>,
    #[serde(default)]
    owner: Option<String>,
}

/// The stand-in for systemctl (see the module comment).
const SYSTEMCTL: &str = r#"#!/bin/sh
case "$1" in
  daemon-reload) exit 0 ;;
  enable)
    [ "$2" = --now ] || exit 0
    unit=/etc/systemd/system/$3
    [ -f "$unit" ] || { echo "systemctl (lab): no unit $unit" >&2; exit 1; }
    env=$(sed -n 's/^Environment=//p' "$unit")
    cmd=$(sed -n 's/^ExecStart=//p' "$unit")
    exec env $env $cmd ;;
  *) echo "systemctl (lab): $* is not supported here" >&2; exit 1 ;;
esac
"#;

/// A booted VM: its runner (and, once the document starts it, the agent).
pub struct Vm {
    pub proc: Proc,
    root: PathBuf,
}

impl Vm {
    /// Where a file the VM wrote to `path` (absolute) is on the machine.
    pub fn file(&self, path: &str) -> PathBuf {
        self.root.join("upper").join(path.trim_start_matches('/'))
    }
}

/// Boots a VM in namespace `ns` from `user_data`; `dir` holds its overlays.
pub fn boot(lab: &Lab, ns: &str, user_data: &str, dir: &Path) -> anyhow::Result<Vm> {
    anyhow::ensure!(
        user_data.starts_with("#cloud-config\n"),
        "not a cloud-config document"
    );
    let doc: UserData = serde_saphyr::from_str(user_data).context("parse the user data")?;
    for p in &doc.packages {
        let ok = Command::new("dpkg")
            .args(["-s", p])
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            bail!("package {p} of the document is not installed here");
        }
    }
    let fake = dir.join("fake-bin");
    std::fs::create_dir_all(&fake).context("create the VM dir")?;
    std::fs::write(fake.join("systemctl"), SYSTEMCTL).context("write systemctl")?;
    let mut script = String::from("#!/bin/sh\nset -eu\n");
    let root = dir.display();
    for d in ["etc", "usr/local", "var/lib", "run"] {
        script += &format!(
            "mkdir -p {root}/upper/{d} {root}/work/{d}\n\
             mount -t overlay overlay -o lowerdir=/{d},upperdir={root}/upper/{d},workdir={root}/work/{d} /{d}\n"
        );
    }
    // A fresh VM has none of weft's state, whatever this machine holds
    // (the removal is a whiteout in the overlay).
    script += "rm -rf /etc/weft /var/lib/weft /usr/local/bin/weft /etc/systemd/system/weft-agent.service\n";
    for (i, f) in doc.write_files.iter().enumerate() {
        anyhow::ensure!(
            f.path.starts_with('/') && !f.path.contains(".."),
            "write_files path {:?}",
            f.path
        );
        let src = dir.join(format!("file-{i}"));
        std::fs::write(&src, &f.content).context("stage a file")?;
        let mode = f.permissions.as_deref().unwrap_or("0644");
        let (user, group) = f
            .owner
            .as_deref()
            .unwrap_or("root:root")
            .split_once(':')
            .unwrap_or(("root", "root"));
        script += &format!(
            "install -D -m {mode} -o {user} -g {group} {} {}\n",
            src.display(),
            f.path
        );
    }
    script += &format!("chmod 0755 {}/systemctl\n", fake.display());
    script += &format!("export PATH={}:$PATH\n", fake.display());
    for cmd in &doc.runcmd {
        let quoted: Vec<String> = cmd
            .iter()
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect();
        script += &quoted.join(" ");
        script += "\n";
    }
    let runner = dir.join("boot.sh");
    std::fs::write(&runner, script).context("write the runner")?;
    let proc = lab.spawn(
        ns,
        "unshare",
        &[
            "--mount",
            "--propagation",
            "private",
            "sh",
            &runner.to_string_lossy(),
        ],
        &[],
    );
    Ok(Vm {
        proc,
        root: dir.to_path_buf(),
    })
}
