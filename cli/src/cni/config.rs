//! What the plugin is told on stdin (the network configuration), what the
//! agent tells it (`network.json`), and the configuration it hands to the
//! reference `bridge` plugin. Pure: no I/O beyond reading `network.json`.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use serde_json::{json, Map, Value};

use super::error::{self, CniError};
use super::invocation::{is_cni_name, is_ifname, Verb};

/// The CNI versions this plugin speaks (the bridge plugin speaks them all).
pub const SUPPORTED_VERSIONS: [&str; 4] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0"];
/// Where the agent keeps its state unless the network configuration says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The file the agent writes once it has joined.
pub const NETWORK_FILE: &str = "network.json";

/// A string member of a JSON object, `""` if absent or not a string.
fn text<'a>(obj: &'a Map<String, Value>, key: &str) -> &'a str {
    obj.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The network configuration on stdin (alone or as one entry of a conflist).
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    pub cni_version: String,
    pub name: String,
    pub state_dir: PathBuf,
    /// The previous plugin's result; passed to the bridge plugin on CHECK and DEL.
    pub prev_result: Option<Value>,
    /// `args` and `runtimeConfig`, passed through (host-local reads `ips` from them).
    pub args: Option<Value>,
    pub runtime_config: Option<Value>,
}

impl NetConf {
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let decode = |details: String| {
            CniError::new(
                error::DECODE,
                "cannot decode the network configuration on stdin",
            )
            .with_details(details)
        };
        let v: Value = serde_json::from_slice(stdin).map_err(|e| decode(e.to_string()))?;
        let Value::Object(mut obj) = v else {
            return Err(decode("not a JSON object".into()));
        };
        let cni_version = text(&obj, "cniVersion").to_string();
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                error::INCOMPATIBLE_VERSION,
                "incompatible CNI versions",
                // Details name both sides, as libcni's skeleton does.
            )
            .with_details(format!(
                "config is {cni_version:?}, plugin supports {SUPPORTED_VERSIONS:?}"
            )));
        }
        let name = text(&obj, "name").to_string();
        if !is_cni_name(&name) {
            return Err(CniError::new(
                error::INVALID_CONFIG,
                "the network configuration needs a `name` of letters, digits, `_`, `.` and `-`",
            )
            .with_details(name));
        }
        let state_dir = match obj.get("stateDir") {
            None | Some(Value::Null) => PathBuf::from(DEFAULT_STATE_DIR),
            Some(Value::String(s)) if Path::new(s).is_absolute() => PathBuf::from(s),
            Some(other) => {
                return Err(CniError::new(
                    error::INVALID_CONFIG,
                    "`stateDir` must be an absolute path (the weft agent's --state-dir)",
                )
                .with_details(other.to_string()))
            }
        };
        Ok(Self {
            cni_version,
            name,
            state_dir,
            prev_result: obj.remove("prevResult"),
            args: obj.remove("args"),
            runtime_config: obj.remove("runtimeConfig"),
        })
    }

    /// CHECK exists from CNI 0.4.0 on.
    pub fn allows_check(&self) -> bool {
        !self.cni_version.starts_with("0.3.")
    }

    /// host-local's data directory: one file per allocated address under `<name>/`.
    pub fn ipam_data_dir(&self) -> PathBuf {
        self.state_dir.join("cni").join("networks")
    }
}

/// This host's share of the overlay, as the agent wrote it to `network.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostNetwork {
    pub subnet: IpNet,
    pub gateway: IpAddr,
    pub bridge: String,
    pub mtu: u32,
    /// The cluster's DNS domain: containers get the gateway as nameserver
    /// and this as search domain, so services resolve by bare name.
    pub domain: Option<String>,
    /// The host's resolvers, listed after the gateway for other names.
    pub upstream_dns: Vec<IpAddr>,
}

impl HostNetwork {
    /// Reads `<state_dir>/network.json`; `None` if the agent has not written it.
    pub fn load(state_dir: &Path) -> Result<Option<Self>, CniError> {
        let path = state_dir.join(NETWORK_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::parse(&bytes)
                .map(Some)
                .map_err(|e| e.with_details(path.display().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(CniError::new(
                error::IO_FAILURE,
                format!("cannot read {}: {e}", path.display()),
            )),
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, CniError> {
        let bad = |what: String| {
            CniError::new(
                error::INTERNAL,
                format!("the weft agent's network.json is invalid ({what}); restart the agent"),
            )
        };
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(bad("not a JSON object".into()));
        };
        let subnet: IpNet = text(&obj, "subnet")
            .parse()
            .map_err(|_| bad(format!("subnet {:?}", obj.get("subnet"))))?;
        let gateway: IpAddr = text(&obj, "gateway")
            .parse()
            .map_err(|_| bad(format!("gateway {:?}", obj.get("gateway"))))?;
        if !subnet.contains(&gateway) {
            return Err(bad(format!("gateway {gateway} is outside {subnet}")));
        }
        let bridge = text(&obj, "bridge");
        if !is_ifname(bridge) {
            return Err(bad(format!("bridge {bridge:?}")));
        }
        let mtu = obj
            .get("mtu")
            .and_then(Value::as_u64)
            .and_then(|m| u32::try_from(m).ok())
            .filter(|m| (68..=65535).contains(m))
            .ok_or_else(|| bad(format!("mtu {:?}", obj.get("mtu"))))?;
        let domain = obj
            .get("domain")
            .and_then(Value::as_str)
            .filter(|d| !d.is_empty())
            .map(str::to_string);
        let upstream_dns = obj
            .get("upstream_dns")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|v| v.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        Ok(Self {
            subnet,
            gateway,
            bridge: bridge.to_string(),
            mtu,
            domain,
            upstream_dns,
        })
    }
}

/// The error for ADD and CHECK before the agent has joined.
pub fn agent_not_ready(state_dir: &Path) -> CniError {
    CniError::new(
        error::TRY_AGAIN_LATER,
        "the weft agent is not running or has not joined a mesh yet: run `weft join` or `weft up`",
    )
    .with_details(format!(
        "{} does not exist",
        state_dir.join(NETWORK_FILE).display()
    ))
}

/// The configuration for the reference `bridge` plugin with `host-local`
/// IPAM, without `prevResult` (this is what an attachment records).
pub fn bridge_config(conf: &NetConf, net: &HostNetwork) -> Value {
    let mut v = json!({
        "cniVersion": conf.cni_version,
        "name": conf.name,
        "type": "bridge",
        "bridge": net.bridge,
        "isGateway": true,
        "ipMasq": false,
        "mtu": net.mtu,
        "ipam": {
            "type": "host-local",
            "ranges": [[{ "subnet": net.subnet.to_string(), "gateway": net.gateway.to_string() }]],
            "routes": [{ "dst": "0.0.0.0/0" }],
            "dataDir": conf.ipam_data_dir(),
        },
    });
    if let Some(domain) = &net.domain {
        // The bridge plugin returns this in its result; runtimes write the
        // container's resolv.conf from it.
        // The gateway first (it answers the cluster's names and refuses
        // others, so resolvers move on), then the host's own.
        let mut servers = vec![net.gateway.to_string()];
        servers.extend(net.upstream_dns.iter().map(ToString::to_string));
        v["dns"] = json!({
            "nameservers": servers,
            "search": [domain],
        });
    }
    if let Some(args) = &conf.args {
        v["args"] = args.clone();
    }
    if let Some(rc) = &conf.runtime_config {
        v["runtimeConfig"] = rc.clone();
    }
    v
}

/// A bridge configuration for a DEL that knows neither the attachment nor
/// the host network: good enough for the bridge plugin to remove the
/// container's interface and for host-local to release every address the
/// container holds (it releases by container id and interface, whatever the
/// range).
pub fn release_only_config(conf: &NetConf) -> Value {
    let placeholder = HostNetwork {
        subnet: IpNet::V4(Ipv4Net::new_assert([100, 64, 0, 0].into(), 10)),
        gateway: IpAddr::from([100, 64, 0, 1]),
        bridge: "weftbr0".into(),
        mtu: 1420,
        domain: None,
        upstream_dns: Vec::new(),
    };
    bridge_config(conf, &placeholder)
}

/// Readies a recorded or fresh bridge configuration for `verb`: the caller's
/// CNI version, and the previous result on CHECK and DEL.
pub fn for_verb(mut delegate: Value, conf: &NetConf, verb: Verb) -> Value {
    delegate["cniVersion"] = Value::String(conf.cni_version.clone());
    if let Some(obj) = delegate.as_object_mut() {
        obj.remove("prevResult");
    }
    if matches!(verb, Verb::Check | Verb::Del) {
        if let Some(prev) = &conf.prev_result {
            delegate["prevResult"] = prev.clone();
        }
    }
    delegate
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netconf_defaults_and_passes_prev_result_through() {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni"}"#).unwrap();
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(c.prev_result, None);
        assert!(c.allows_check());

        // As one entry of a conflist, as the runtime hands it over on CHECK.
        let c = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"weft","type":"weft-cni","stateDir":"/s",
                "prevResult":{"ips":[]},"capabilities":{"ips":true},"runtimeConfig":{"ips":["100.64.1.9/24"]}}"#,
        )
        .unwrap();
        assert_eq!(c.state_dir, Path::new("/s"));
        assert_eq!(c.prev_result, Some(json!({"ips": []})));
        assert_eq!(c.ipam_data_dir(), Path::new("/s/cni/networks"));
        assert_eq!(c.runtime_config, Some(json!({"ips": ["100.64.1.9/24"]})));
    }

    #[test]
    fn netconf_errors_carry_cni_codes() {
        assert_eq!(NetConf::parse(b"{").unwrap_err().code, error::DECODE);
        let e = NetConf::parse(br#"{"cniVersion":"0.2.0","name":"weft"}"#).unwrap_err();
        assert_eq!(e.code, error::INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"name":"weft"}"#).unwrap_err();
        assert_eq!(e.code, error::INCOMPATIBLE_VERSION);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"../x"}"#).unwrap_err();
        assert_eq!(e.code, error::INVALID_CONFIG);
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"weft","stateDir":"rel"}"#)
            .unwrap_err();
        assert_eq!(e.code, error::INVALID_CONFIG);
        let c = NetConf::parse(br#"{"cniVersion":"0.3.1","name":"weft"}"#).unwrap();
        assert!(!c.allows_check());
    }

    fn agent_file() -> &'static [u8] {
        br#"{"subnet":"100.64.1.0/24","gateway":"100.64.1.1","pool":"100.64.0.0/10","bridge":"weftbr0","mtu":1420}"#
    }

    #[test]
    fn host_network_is_validated() {
        let n = HostNetwork::parse(agent_file()).unwrap();
        assert_eq!(n.subnet.to_string(), "100.64.1.0/24");
        assert_eq!(n.mtu, 1420);
        for bad in [
            r#"{"subnet":"100.64.1.0/24","gateway":"100.64.2.1","bridge":"b","mtu":1420}"#,
            r#"{"subnet":"100.64.1.0/33","gateway":"100.64.1.1","bridge":"b","mtu":1420}"#,
            r#"{"subnet":"100.64.1.0/24","gateway":"100.64.1.1","bridge":"","mtu":1420}"#,
            r#"{"subnet":"100.64.1.0/24","gateway":"100.64.1.1","bridge":"b","mtu":0}"#,
            r#"{"subnet":"100.64.1.0/24"}"#,
        ] {
            assert!(HostNetwork::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn bridge_config_is_the_flannel_shape() {
        let conf = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"weft","stateDir":"/var/lib/weft","prevResult":{"x":1}}"#).unwrap();
        let net = HostNetwork::parse(agent_file()).unwrap();
        let d = bridge_config(&conf, &net);
        assert_eq!(
            d,
            json!({
                "cniVersion": "1.0.0", "name": "weft", "type": "bridge", "bridge": "weftbr0",
                "isGateway": true, "ipMasq": false, "mtu": 1420,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": "100.64.1.0/24", "gateway": "100.64.1.1"}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": "/var/lib/weft/cni/networks"
                }
            })
        );
        assert_eq!(
            for_verb(d.clone(), &conf, Verb::Add).get("prevResult"),
            None
        );
        assert_eq!(
            for_verb(d.clone(), &conf, Verb::Check)["prevResult"],
            json!({"x": 1})
        );
        assert_eq!(for_verb(d, &conf, Verb::Del)["prevResult"], json!({"x": 1}));
    }

    #[test]
    fn a_recorded_config_takes_the_callers_version() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"weft"}"#).unwrap();
        let recorded = json!({"cniVersion": "1.0.0", "prevResult": {"stale": true}});
        let d = for_verb(recorded, &conf, Verb::Del);
        assert_eq!(d, json!({"cniVersion": "0.4.0"}));
        let release = release_only_config(&conf);
        assert_eq!(release["ipam"]["type"], "host-local");
        assert_eq!(release["ipam"]["dataDir"], "/var/lib/weft/cni/networks");
    }
}
