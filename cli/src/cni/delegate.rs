//! Running the reference `bridge` plugin, and the record of what each
//! attachment was set up with.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::error::{self, CniError};

/// The plugin weft delegates to; it runs `host-local` for addresses.
pub const BRIDGE_PLUGIN: &str = "bridge";

/// Where the reference plugins are looked for after `CNI_PATH`: Debian
/// installs them in the first, upstream releases in the second, and a
/// runtime's `CNI_PATH` often names only the directory weft is in (for
/// containerd, `/opt/cni/bin`).
const FALLBACK_DIRS: [&str; 2] = ["/usr/lib/cni", "/opt/cni/bin"];

/// Finds `plugin` in the colon-separated `cni_path`, then in the usual
/// directories.
pub fn find_plugin(plugin: &str, cni_path: &str) -> Result<PathBuf, CniError> {
    let dirs: Vec<&str> = cni_path.split(':').chain(FALLBACK_DIRS).collect();
    find_in(plugin, &dirs).ok_or_else(|| not_found(plugin, cni_path))
}

fn find_in(plugin: &str, dirs: &[&str]) -> Option<PathBuf> {
    dirs.iter()
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn not_found(plugin: &str, cni_path: &str) -> CniError {
    CniError::new(
        error::INTERNAL,
        format!(
            "the reference `{plugin}` plugin is not in CNI_PATH ({cni_path}) nor in {}; install \
             the CNI reference plugins (Debian: `apt-get install containernetworking-plugins`, \
             into /usr/lib/cni) or list their directory in CNI_PATH",
            FALLBACK_DIRS.join(" or ")
        ),
    )
}

/// Runs `plugin` with our CNI_* environment and `config` on stdin; returns
/// its stdout on success and its CNI error otherwise. Its stderr is ours.
pub fn exec(plugin: &Path, config: &Value) -> Result<Vec<u8>, CniError> {
    let name = plugin.display();
    let failed = |what: String| CniError::new(error::INTERNAL, what);
    let mut child = Command::new(plugin)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| failed(format!("cannot run {name}: {e}")))?;
    let input = serde_json::to_vec(config).map_err(|e| failed(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A few hundred bytes: fits the pipe, so this cannot block on the child.
        stdin
            .write_all(&input)
            .map_err(|e| failed(format!("cannot write to {name}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| failed(format!("{name} did not finish: {e}")))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    Err(
        CniError::from_plugin_output(&out.stdout).unwrap_or_else(|| {
            failed(format!("{name} failed ({})", out.status))
                .with_details(String::from_utf8_lossy(&out.stdout).into_owned())
        }),
    )
}

/// The bridge configuration each attachment (container id, interface) was
/// added with, kept under `<stateDir>/cni/attachments/` so that CHECK and
/// DEL act on what ADD did even if the agent's network changed or is gone
/// (flannel keeps the same record).
pub struct Attachments {
    dir: PathBuf,
}

impl Attachments {
    pub fn new(state_dir: &Path) -> Self {
        Self {
            dir: state_dir.join("cni").join("attachments"),
        }
    }

    /// Both parts are validated CNI names, so the path stays under `dir`.
    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(container_id).join(format!("{ifname}.json"))
    }

    pub fn save(&self, container_id: &str, ifname: &str, config: &Value) -> Result<(), CniError> {
        let path = self.path(container_id, ifname);
        let io = |e: std::io::Error| {
            CniError::new(
                error::IO_FAILURE,
                format!("cannot record the attachment in {}: {e}", path.display()),
            )
        };
        let parent = path.parent().unwrap_or(&self.dir);
        std::fs::create_dir_all(parent).map_err(io)?;
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(config).map_err(|e| io(e.into()))?;
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The recorded configuration; `None` if there is none or it is unreadable.
    pub fn load(&self, container_id: &str, ifname: &str) -> Option<Value> {
        let path = self.path(container_id, ifname);
        let bytes = std::fs::read(&path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(path = %path.display(), "ignoring unreadable attachment record: {e}");
                None
            }
        }
    }

    pub fn remove(&self, container_id: &str, ifname: &str) {
        let path = self.path(container_id, ifname);
        let _ = std::fs::remove_file(&path);
        // Succeeds only once the container's last interface is gone.
        if let Some(parent) = path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-cni-unit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn finds_only_executables_along_the_path() {
        let d = scratch("path");
        let (a, b) = (d.join("a"), d.join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        std::fs::write(a.join("bridge"), "not executable").unwrap();
        std::fs::write(b.join("bridge"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(b.join("bridge"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
        assert_eq!(find_in("bridge", &[&a_s, "", &b_s]), Some(b.join("bridge")));
        assert_eq!(find_in("bridge", &[&a_s]), None);
        let e = not_found("bridge", &a_s);
        assert!(e.msg.contains("containernetworking-plugins"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn passes_a_delegate_error_through() {
        let d = scratch("exec");
        let plugin = d.join("failing");
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\necho '{\"cniVersion\":\"1.0.0\",\"code\":7,\"msg\":\"no\"}'\nexit 1\n",
        )
        .unwrap();
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = exec(&plugin, &serde_json::json!({})).unwrap_err();
        assert_eq!((e.code, e.msg.as_str()), (error::INVALID_CONFIG, "no"));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn attachments_round_trip_and_clean_up() {
        let d = scratch("att");
        let a = Attachments::new(&d);
        assert_eq!(a.load("c1", "eth0"), None);
        a.save("c1", "eth0", &serde_json::json!({"bridge": "weftbr0"}))
            .unwrap();
        assert_eq!(a.load("c1", "eth0").unwrap()["bridge"], "weftbr0");
        a.remove("c1", "eth0");
        a.remove("c1", "eth0");
        assert_eq!(a.load("c1", "eth0"), None);
        assert!(!d.join("cni/attachments/c1").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
