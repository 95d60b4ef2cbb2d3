//! `weft cni` through the real binary with the reference `bridge` and
//! `host-local` plugins: a "host" namespace holds the bridge the agent would
//! have made, containers are namespaces attached by ADD, checked by CHECK
//! and torn down by DEL. Needs root and `containernetworking-plugins`; in CI
//! (`CI` set) a missing privilege fails the test instead of skipping it.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step should fail the test loudly"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::{json, Value};

const PLUGINS: &str = "/usr/lib/cni";
const SUBNET: &str = "100.64.7.0/24";
const GATEWAY: &str = "100.64.7.1";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A name unique to this process and call, short enough for a netns.
fn unique(tag: &str) -> String {
    format!(
        "wc{}{tag}{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn")
}

fn ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The host namespace with its bridge, the container namespaces and the
/// agent's state dir; all removed on drop (and on panic).
struct Lab {
    host: String,
    containers: Vec<String>,
    state: PathBuf,
}

impl Lab {
    fn new() -> Self {
        let lab = Self {
            host: unique("h"),
            containers: Vec::new(),
            state: std::env::temp_dir().join(unique("weft-cni-test-")),
        };
        ok(&["ip", "netns", "add", &lab.host]);
        let h = lab.host.as_str();
        ok(&["ip", "-n", h, "link", "set", "lo", "up"]);
        ok(&["ip", "-n", h, "link", "add", "weftbr0", "type", "bridge"]);
        ok(&[
            "ip",
            "-n",
            h,
            "addr",
            "add",
            &format!("{GATEWAY}/24"),
            "dev",
            "weftbr0",
        ]);
        ok(&["ip", "-n", h, "link", "set", "weftbr0", "up"]);
        std::fs::create_dir_all(&lab.state).unwrap();
        lab.write_network();
        lab
    }

    /// What the agent writes once it has joined.
    fn write_network(&self) {
        let net = json!({
            "subnet": SUBNET, "gateway": GATEWAY, "pool": "100.64.0.0/10",
            "bridge": "weftbr0", "mtu": 1420, "domain": "weft.internal",
            "upstream_dns": ["192.0.2.53"]
        });
        std::fs::write(self.state.join("network.json"), net.to_string()).unwrap();
    }

    fn container(&mut self) -> String {
        let name = unique("c");
        ok(&["ip", "netns", "add", &name]);
        self.containers.push(name.clone());
        name
    }

    fn conf(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni", "stateDir": self.state})
    }

    /// host-local's record of `ip` (an address without prefix).
    fn lease(&self, ip: &str) -> PathBuf {
        self.state.join("cni/networks/weft").join(ip)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.containers.iter().chain([&self.host]) {
            let _ = sh(&["ip", "netns", "del", n]);
        }
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}): {:?}; stderr: {}",
                self.stdout, self.stderr
            )
        })
    }

    fn assert_ok(&self, what: &str) {
        assert!(
            self.success,
            "{what} failed: {}; stderr: {}",
            self.stdout, self.stderr
        );
    }
}

/// Runs the plugin (`weft cni`, or `plugin` if given) in the lab's host
/// namespace, the way a runtime would.
fn cni(
    lab: &Lab,
    plugin: Option<&Path>,
    command: &str,
    id: &str,
    netns: &str,
    conf: &Value,
    cni_args: &str,
) -> Run {
    let weft = env!("CARGO_BIN_EXE_weft");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &lab.host]);
    match plugin {
        Some(p) => cmd.arg(p),
        None => cmd.args([weft, "cni"]),
    };
    let mut child = cmd
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", format!("/var/run/netns/{netns}"))
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PLUGINS)
        .env("CNI_ARGS", cni_args)
        .env_remove("WEFT_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The container's IPv4 address (without prefix) from an ADD result.
fn address(result: &Value) -> String {
    let cidr = result["ips"][0]["address"].as_str().unwrap();
    let (ip, prefix) = cidr.split_once('/').unwrap();
    assert_eq!(prefix, "24", "{result}");
    assert!(ip.starts_with("100.64.7.") && ip != GATEWAY, "{result}");
    ip.to_string()
}

fn eth0(netns: &str) -> String {
    sh(&["ip", "-n", netns, "-4", "-o", "addr", "show", "dev", "eth0"])
        .stdout
        .iter()
        .map(|&b| b as char)
        .collect()
}

fn ping(netns: &str, ip: &str) {
    ok(&["ip", "netns", "exec", netns, "ping", "-c1", "-W2", ip]);
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this machine can run the test; panics in CI if it cannot.
fn runnable() -> bool {
    let missing = if !is_root() {
        "needs root"
    } else if !Path::new(PLUGINS).join("bridge").exists() {
        "needs the CNI reference plugins (apt-get install containernetworking-plugins)"
    } else {
        return true;
    };
    if std::env::var_os("CI").is_some() {
        panic!("{missing} in CI");
    }
    eprintln!("skipping: {missing}");
    false
}

#[test]
fn add_check_del_through_the_reference_plugins() {
    if !runnable() {
        return;
    }
    let mut lab = Lab::new();
    let conf = lab.conf();

    // ADD: an address from the host's subnet, on eth0, reaching the gateway.
    let c1 = lab.container();
    let add = cni(&lab, None, "ADD", "c1", &c1, &conf, "");
    add.assert_ok("ADD");
    let result = add.json();
    assert_eq!(result["cniVersion"], "1.0.0");
    assert_eq!(result["ips"][0]["gateway"], GATEWAY, "{result}");
    // Services resolve through the gateway's DNS responder.
    assert_eq!(result["dns"]["nameservers"][0], GATEWAY, "{result}");
    assert_eq!(result["dns"]["search"][0], "weft.internal", "{result}");
    assert_eq!(result["dns"]["nameservers"][1], "192.0.2.53", "{result}");
    let ip1 = address(&result);
    assert!(
        eth0(&c1).contains(&format!("inet {ip1}/24")),
        "{}",
        eth0(&c1)
    );
    assert!(lab.lease(&ip1).exists());
    ping(&c1, GATEWAY);

    // CHECK with the ADD result as prevResult, as a runtime sends it.
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = result.clone();
    let check = cni(&lab, None, "CHECK", "c1", &c1, &check_conf, "");
    check.assert_ok("CHECK");
    assert_eq!(check.stdout, "");

    // A second container: another address, and the two reach each other.
    let c2 = lab.container();
    let add2 = cni(&lab, None, "ADD", "c2", &c2, &conf, "");
    add2.assert_ok("second ADD");
    let ip2 = address(&add2.json());
    assert_ne!(ip1, ip2);
    ping(&c2, &ip1);

    // DEL releases the address; a repeated DEL succeeds.
    let mut del_conf = conf.clone();
    del_conf["prevResult"] = result;
    for round in ["DEL", "repeated DEL"] {
        let del = cni(&lab, None, "DEL", "c1", &c1, &del_conf, "");
        del.assert_ok(round);
        assert_eq!(del.stdout, "");
    }
    assert!(!lab.lease(&ip1).exists(), "{ip1} still leased after DEL");
    assert!(eth0(&c1).is_empty(), "eth0 still there: {}", eth0(&c1));

    // The released address can be handed out again (asked for by name, so
    // host-local's round robin does not hide it), here through the plugin
    // binary name a runtime would find in CNI_PATH.
    let bin = lab.state.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let plugin = bin.join("weft-cni");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_weft"), &plugin).unwrap();
    let c3 = lab.container();
    let again = cni(
        &lab,
        Some(&plugin),
        "ADD",
        "c3",
        &c3,
        &conf,
        &format!("IgnoreUnknown=1;IP={ip1}"),
    );
    again.assert_ok("ADD of a released address");
    assert_eq!(address(&again.json()), ip1);
    ping(&c3, &ip2);

    // VERSION, through the plugin name too.
    let version = cni(&lab, Some(&plugin), "VERSION", "", &c3, &json!({}), "");
    version.assert_ok("VERSION");
    let v = version.json();
    assert_eq!(v["cniVersion"], "1.0.0");
    for supported in ["0.3.1", "0.4.0", "1.0.0"] {
        assert!(
            v["supportedVersions"]
                .as_array()
                .unwrap()
                .contains(&json!(supported)),
            "{v}"
        );
    }

    // Without the agent: ADD fails with a CNI error saying what to do...
    std::fs::remove_file(lab.state.join("network.json")).unwrap();
    let c4 = lab.container();
    let refused = cni(&lab, None, "ADD", "c4", &c4, &conf, "");
    assert!(!refused.success, "ADD without network.json succeeded");
    let e = refused.json();
    assert_eq!(e["code"], 11, "{e}");
    assert!(e["msg"].as_str().unwrap().contains("weft join"), "{e}");

    // ...and DEL still succeeds and releases: from the ADD record (c2), and
    // with no record at all (c3).
    std::fs::remove_dir_all(lab.state.join("cni/attachments/c3")).unwrap();
    for (id, netns, ip) in [("c2", &c2, &ip2), ("c3", &c3, &ip1)] {
        let del = cni(&lab, None, "DEL", id, netns, &conf, "");
        del.assert_ok("DEL without the agent");
        assert!(
            !lab.lease(ip).exists(),
            "{ip} still leased after DEL of {id}"
        );
    }
    cni(&lab, None, "DEL", "c4", &c4, &conf, "").assert_ok("DEL of a failed ADD");
}
