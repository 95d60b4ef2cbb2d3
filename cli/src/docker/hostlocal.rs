//! Addresses come from the reference `host-local` IPAM plugin, run with
//! exactly the configuration `weft cni` gives it (same data dir, network
//! name and range), so Docker and Podman/CNI containers on one host never
//! get the same address.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Value};

use super::wire::PluginError;
use crate::cni::config::{self, HostNetwork, NetConf};

/// The plugin that keeps the leases.
pub const HOST_LOCAL: &str = "host-local";
/// The CNI network name `weft cni` is configured with (README, `10-weft.conf`).
pub const NETWORK_NAME: &str = "weft";
/// The interface name host-local files each lease under; one per holder id.
const IFNAME: &str = "eth0";
/// Where the reference plugins are unless `--cni-path` says otherwise.
pub const DEFAULT_CNI_PATH: &str = "/usr/lib/cni:/opt/cni/bin";

pub struct HostLocal {
    cni_path: String,
    state_dir: PathBuf,
}

impl HostLocal {
    /// `state_dir` is absolute (the CNI config requires it).
    pub fn new(cni_path: &str, state_dir: &Path) -> Self {
        Self {
            cni_path: cni_path.to_string(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    /// Where host-local keeps this network's leases: one file per address.
    pub fn lease_dir(&self) -> PathBuf {
        self.state_dir
            .join("cni")
            .join("networks")
            .join(NETWORK_NAME)
    }

    /// The host-local configuration: `weft cni`'s bridge configuration for
    /// `subnet` (host-local reads `name`, `ipam` and `runtimeConfig.ips`).
    pub fn config(
        &self,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        ip: Option<Ipv4Addr>,
    ) -> Result<Value, PluginError> {
        let mut conf = json!({
            "cniVersion": "1.0.0",
            "name": NETWORK_NAME,
            "type": "weft-cni",
            "stateDir": self.state_dir,
        });
        if let Some(ip) = ip {
            conf["runtimeConfig"] = json!({ "ips": [format!("{ip}/{}", subnet.prefix_len())] });
        }
        let conf = NetConf::parse(conf.to_string().as_bytes())
            .map_err(|e| PluginError::new(format!("invalid host-local configuration: {e}")))?;
        let net = HostNetwork {
            subnet: IpNet::V4(subnet),
            gateway: IpAddr::V4(gateway),
            // The bridge settings are not host-local's; these are placeholders.
            bridge: "weftbr0".into(),
            mtu: 1420,
            domain: None,
            upstream_dns: Vec::new(),
        };
        Ok(config::bridge_config(&conf, &net))
    }

    /// Leases an address (`ip` if given) for `holder`; the address with prefix.
    pub fn add(
        &self,
        holder: &str,
        subnet: Ipv4Net,
        gateway: Ipv4Addr,
        ip: Option<Ipv4Addr>,
    ) -> Result<Ipv4Net, PluginError> {
        let conf = self.config(subnet, gateway, ip)?;
        let out = self.exec("ADD", holder, &conf)?;
        let v: Value = serde_json::from_slice(&out).map_err(|e| {
            PluginError::new(format!("host-local printed something unreadable: {e}"))
        })?;
        leased_address(&v)
            .ok_or_else(|| PluginError::new(format!("host-local returned no IPv4 address: {v}")))
    }

    /// Releases every address `holder` leases. Idempotent.
    pub fn del(&self, holder: &str, subnet: Ipv4Net, gateway: Ipv4Addr) -> Result<(), PluginError> {
        let conf = self.config(subnet, gateway, None)?;
        self.exec("DEL", holder, &conf).map(drop)
    }

    fn exec(&self, command: &str, holder: &str, conf: &Value) -> Result<Vec<u8>, PluginError> {
        let plugin = find_plugin(HOST_LOCAL, &self.cni_path)?;
        let failed = |what: String| PluginError::new(format!("{}: {what}", plugin.display()));
        let mut child = Command::new(&plugin)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", holder)
            // host-local never enters the namespace, but the CNI skeleton
            // requires one on ADD.
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", &self.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| failed(format!("cannot run it: {e}")))?;
        if let Some(mut stdin) = child.stdin.take() {
            // A few hundred bytes: fits the pipe, so this cannot block.
            stdin
                .write_all(conf.to_string().as_bytes())
                .map_err(|e| failed(format!("cannot write its config: {e}")))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| failed(format!("did not finish: {e}")))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(failed(cni_error_text(&out.stdout, &out.stderr)))
    }
}

/// Finds `plugin` in the colon-separated `cni_path`, as `weft cni` does.
fn find_plugin(plugin: &str, cni_path: &str) -> Result<PathBuf, PluginError> {
    use std::os::unix::fs::PermissionsExt as _;
    cni_path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(plugin))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .ok_or_else(|| {
            PluginError::new(format!(
                "the reference `{plugin}` plugin is not in {cni_path}; install the CNI reference \
                 plugins (Debian: `apt-get install containernetworking-plugins`, into \
                 /usr/lib/cni) or pass --cni-path"
            ))
        })
}

/// The first IPv4 address of a CNI result.
fn leased_address(result: &Value) -> Option<Ipv4Net> {
    result
        .get("ips")?
        .as_array()?
        .iter()
        .filter_map(|i| i.get("address")?.as_str()?.parse::<Ipv4Net>().ok())
        .next()
}

/// A CNI error (`{"code","msg","details"}`) as one line, else the raw output.
fn cni_error_text(stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        if let Some(msg) = v.get("msg").and_then(Value::as_str) {
            let details = v.get("details").and_then(Value::as_str).unwrap_or("");
            return if details.is_empty() {
                msg.to_string()
            } else {
                format!("{msg} ({details})")
            };
        }
    }
    let text = format!(
        "{} {}",
        String::from_utf8_lossy(stdout).trim(),
        String::from_utf8_lossy(stderr).trim()
    );
    text.trim().chars().take(500).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_one_weft_cni_gives_host_local() {
        let h = HostLocal::new("/usr/lib/cni", Path::new("/var/lib/weft"));
        let c = h
            .config(
                "100.64.1.0/24".parse().unwrap(),
                [100, 64, 1, 1].into(),
                Some([100, 64, 1, 9].into()),
            )
            .unwrap();
        assert_eq!(c["name"], "weft");
        assert_eq!(
            c["ipam"],
            json!({
                "type": "host-local",
                "ranges": [[{"subnet": "100.64.1.0/24", "gateway": "100.64.1.1"}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": "/var/lib/weft/cni/networks",
            })
        );
        assert_eq!(c["runtimeConfig"], json!({"ips": ["100.64.1.9/24"]}));
        assert_eq!(h.lease_dir(), Path::new("/var/lib/weft/cni/networks/weft"));
        let c = h
            .config(
                "100.64.1.0/24".parse().unwrap(),
                [100, 64, 1, 1].into(),
                None,
            )
            .unwrap();
        assert_eq!(c.get("runtimeConfig"), None);
    }

    #[test]
    fn reads_results_and_errors() {
        let r = json!({"cniVersion": "1.0.0", "ips": [{"address": "100.64.1.5/24", "gateway": "100.64.1.1"}]});
        assert_eq!(leased_address(&r).unwrap().to_string(), "100.64.1.5/24");
        assert_eq!(leased_address(&json!({"ips": []})), None);
        assert_eq!(
            leased_address(&json!({"ips": [{"address": "fd00::5/64"}]})),
            None
        );
        let e = br#"{"code":11,"msg":"requested IP address 100.64.1.9 is not available","details":"x"}"#;
        assert_eq!(
            cni_error_text(e, b""),
            "requested IP address 100.64.1.9 is not available (x)"
        );
        assert_eq!(cni_error_text(b"panic", b"boom"), "panic boom");
        let e = find_plugin(HOST_LOCAL, "/nonexistent:").unwrap_err();
        assert!(e.msg.contains("containernetworking-plugins"), "{e}");
    }
}
