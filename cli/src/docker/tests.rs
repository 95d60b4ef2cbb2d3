//! The plugin's requests end to end, without Docker: decoding, the IPAM
//! bookkeeping against the real host-local plugin (when installed), the
//! state across a restart, and the errors' advice. Join and Leave need
//! root and a bridge: the namespace test (`cli/tests/docker.rs`) has them.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::Plugin;

const CNI: &str = "/usr/lib/cni";

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-docker-unit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn call(p: &mut Plugin, method: &str, body: Value) -> Result<Value, String> {
    p.dispatch(method, body.to_string().as_bytes())
        .unwrap_or_else(|| panic!("{method} unknown"))
        .map_err(|e| e.msg)
}

fn leases(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("cni/networks/weft"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("100."))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn calls_without_state_and_hostile_bodies() {
    let dir = scratch().join("plain");
    let mut p = Plugin::open(dir.clone(), CNI).unwrap();
    let a = call(&mut p, "Plugin.Activate", json!(null)).unwrap();
    assert_eq!(a, json!({"Implements": ["NetworkDriver", "IpamDriver"]}));
    let c = call(&mut p, "NetworkDriver.GetCapabilities", json!({})).unwrap();
    assert_eq!(c["Scope"], "local");
    assert!(p.dispatch("NetworkDriver.Nope", b"{}").is_none());
    // Before the agent has joined: say how to start it.
    let e = call(&mut p, "IpamDriver.RequestPool", json!({})).unwrap_err();
    assert!(e.contains("run `weft up`"), "{e}");
    for body in [&b"{"[..], b"[]", b"{\"PoolID\":7}", b"\x00\xff"] {
        let r = p.dispatch("IpamDriver.RequestAddress", body).unwrap();
        assert!(r.is_err(), "{body:?}");
    }
    let e = call(
        &mut p,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": "../x"}),
    );
    assert!(e.unwrap_err().contains("not a Docker id"));
    // Nothing was written for any of it.
    assert!(!dir.join("docker").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ipam_leases_through_host_local_and_cleans_up() {
    if !Path::new(CNI).join("host-local").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "host-local is not installed"
        );
        eprintln!("skipping: no {CNI}/host-local");
        return;
    }
    let dir = scratch().join("ipam");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("network.json"),
        r#"{"subnet":"100.64.7.0/24","gateway":"100.64.7.1","pool":"100.64.0.0/10","bridge":"weftbr0","mtu":1420}"#,
    )
    .unwrap();
    let mut p = Plugin::open(dir.clone(), CNI).unwrap();
    let e = call(
        &mut p,
        "IpamDriver.RequestPool",
        json!({"Pool": "100.64.8.0/24"}),
    )
    .unwrap_err();
    assert!(e.contains("--subnet 100.64.7.0/24"), "{e}");
    assert!(call(&mut p, "IpamDriver.RequestPool", json!({"V6": true})).is_err());
    let pool = call(
        &mut p,
        "IpamDriver.RequestPool",
        json!({"AddressSpace": "weft"}),
    )
    .unwrap();
    assert_eq!(pool["Pool"], "0.0.0.0/0");
    let id = pool["PoolID"].as_str().unwrap().to_string();
    let gw_opts = json!({"RequestAddressType": "com.docker.network.gateway"});
    let gw = call(
        &mut p,
        "IpamDriver.RequestAddress",
        json!({"PoolID": id, "Options": gw_opts}),
    )
    .unwrap();
    assert_eq!(gw["Address"], "100.64.7.1/24");
    assert!(leases(&dir).is_empty(), "the gateway is not leased");

    let a = call(&mut p, "IpamDriver.RequestAddress", json!({"PoolID": id})).unwrap();
    let a = a["Address"].as_str().unwrap().to_string();
    let bare = a.trim_end_matches("/24").to_string();
    assert_eq!(leases(&dir), [bare.as_str()]);
    let fixed = json!({"PoolID": id, "Address": "100.64.7.50"});
    let f = call(&mut p, "IpamDriver.RequestAddress", fixed.clone()).unwrap();
    assert_eq!(f["Address"], "100.64.7.50/24");
    // Asked again (Docker after a restart): the same lease.
    assert_eq!(call(&mut p, "IpamDriver.RequestAddress", fixed).unwrap(), f);
    for (addr, why) in [("100.64.7.1", "gateway"), ("100.64.9.1", "outside")] {
        let e = call(
            &mut p,
            "IpamDriver.RequestAddress",
            json!({"PoolID": id, "Address": addr}),
        );
        assert!(e.unwrap_err().contains(why), "{addr}");
    }
    let e = call(
        &mut p,
        "IpamDriver.RequestAddress",
        json!({"PoolID": "weft-x"}),
    )
    .unwrap_err();
    assert!(e.contains("--ipam-driver weft"), "{e}");

    let data =
        |pool: &str| json!([{"AddressSpace": "weft", "Pool": pool, "Gateway": "100.64.7.1/24"}]);
    let net = "n".repeat(64);
    let e = call(
        &mut p,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "IPv4Data": data("172.18.0.0/16")}),
    )
    .unwrap_err();
    assert!(e.contains("--ipam-driver weft"), "{e}");
    call(
        &mut p,
        "NetworkDriver.CreateNetwork",
        json!({"NetworkID": net, "IPv4Data": data("0.0.0.0/0"), "IPv6Data": []}),
    )
    .unwrap();
    let ep = "e".repeat(64);
    call(
        &mut p,
        "NetworkDriver.CreateEndpoint",
        json!({"NetworkID": net, "EndpointID": ep, "Interface": {"Address": a}}),
    )
    .unwrap();

    // A restarted plugin knows all of it.
    drop(p);
    let mut p = Plugin::open(dir.clone(), CNI).unwrap();
    let info = call(
        &mut p,
        "NetworkDriver.EndpointOperInfo",
        json!({"NetworkID": net, "EndpointID": ep}),
    );
    assert_eq!(info.unwrap()["Value"]["address"], a.as_str());

    call(
        &mut p,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": id, "Address": bare}),
    )
    .unwrap();
    assert_eq!(leases(&dir), ["100.64.7.50"]);
    call(
        &mut p,
        "NetworkDriver.DeleteNetwork",
        json!({"NetworkID": net}),
    )
    .unwrap();
    call(
        &mut p,
        "IpamDriver.ReleaseAddress",
        json!({"PoolID": id, "Address": "100.64.7.1"}),
    )
    .unwrap();
    // The pool's last release frees what is left in it.
    call(&mut p, "IpamDriver.ReleasePool", json!({"PoolID": id})).unwrap();
    assert!(leases(&dir).is_empty(), "{:?}", leases(&dir));
    let state: Value =
        serde_json::from_slice(&std::fs::read(dir.join("docker/state.json")).unwrap()).unwrap();
    assert_eq!(state, json!({"networks": {}, "endpoints": {}, "pools": {}}));
    let _ = std::fs::remove_dir_all(&dir);
}
