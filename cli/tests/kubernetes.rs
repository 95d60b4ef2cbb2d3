//! The Kubernetes manifests (`deploy/kubernetes/`): every document
//! validates against the Kubernetes schema (`kubernetes-validate --strict`,
//! from PyPI, which `.ci/run` installs; its schemas are bundled, so this
//! runs offline), the pieces fit together (the agent is a host-network
//! DaemonSet with NET_ADMIN and /dev/net/tun whose init container installs
//! the CNI plugin, the coordinator a StatefulSet on a persistent volume,
//! the token a Secret the agent mounts), and every `weft` command line in
//! them parses with this binary. No cluster runs here: the manifests are
//! checked, not deployed.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn manifests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

fn files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(manifests())
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

fn documents() -> Vec<Value> {
    files()
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).expect("read");
            serde_saphyr::from_multiple::<Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

#[test]
fn every_manifest_validates_against_the_kubernetes_schema() {
    let files = files();
    assert!(files.len() >= 4, "{files:?}");
    let out = match Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var_os("CI").is_none() => {
            eprintln!("skipping: kubernetes-validate is not installed ({e}); pip install kubernetes-validate");
            return;
        }
        Err(e) => panic!("kubernetes-validate is not installed ({e}); .ci/run installs it"),
    };
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    assert!(!report.contains("ERROR"), "{report}");
    // One "passed" line per document.
    assert_eq!(
        report.matches(" passed for resource ").count(),
        documents().len(),
        "{report}"
    );
}

#[test]
fn the_pieces_fit_together() {
    let docs = documents();
    for d in &docs {
        if d["kind"] != "Namespace" {
            assert_eq!(d["metadata"]["namespace"], "weft-system", "{d}");
        }
    }
    let ds = find(&docs, "DaemonSet", "weft-agent");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    let agent = &pod["containers"][0];
    let caps = agent["securityContext"]["capabilities"]["add"]
        .as_array()
        .expect("caps");
    assert!(caps.iter().any(|c| c == "NET_ADMIN"), "{caps:?}");
    let mounts = agent["volumeMounts"].as_array().expect("mounts");
    assert!(mounts.iter().any(|m| m["mountPath"] == "/dev/net/tun"));
    let init = &pod["initContainers"][0];
    assert_eq!(init["args"][0], "cni");
    assert_eq!(init["args"][1], "install");
    let secret = find(&docs, "Secret", "weft-join-token");
    let token_vol = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .find(|v| v["secret"]["secretName"] == secret["metadata"]["name"])
        .expect("the agent mounts the token Secret");
    assert!(mounts.iter().any(|m| m["name"] == token_vol["name"]));

    let sts = find(&docs, "StatefulSet", "weft-coordinator");
    let claim = &sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"];
    let co = &sts["spec"]["template"]["spec"]["containers"][0];
    assert!(co["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .any(|m| m["name"] == *claim && m["mountPath"] == "/var/lib/weft-coordinator"));
    let svc = find(&docs, "Service", "weft-coordinator");
    assert_eq!(
        svc["spec"]["selector"],
        sts["spec"]["selector"]["matchLabels"]
    );
}

/// Every container's arguments parse with this weft (`--help` after them:
/// clap checks every flag before it prints help).
#[test]
fn every_weft_command_line_in_the_manifests_parses() {
    let docs = documents();
    let mut checked = 0;
    for d in &docs {
        let pod = &d["spec"]["template"]["spec"];
        for list in ["initContainers", "containers"] {
            for c in pod[list].as_array().into_iter().flatten() {
                let args: Vec<String> = c["args"]
                    .as_array()
                    .expect("args")
                    .iter()
                    .map(|a| a.as_str().expect("string arg").to_string())
                    .collect();
                let out = Command::new(env!("CARGO_BIN_EXE_weft"))
                    .args(&args)
                    .arg("--help")
                    .output()
                    .expect("run weft");
                assert!(
                    out.status.success(),
                    "weft {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 3, "coordinator, agent and the CNI installer");
}
