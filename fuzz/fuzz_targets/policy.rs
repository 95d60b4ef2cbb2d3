//! The policy document: parse, compile against a cluster and run its tests.
//! scripts/fuzz.sh runs this one with a time and a memory limit per input,
//! so group expansion that blows up is found.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_proto::policy::{compile, run_tests, Cluster, ClusterNode, Policy};
use weft_proto::{HostSubnet, NodeId};

fn cluster() -> Cluster {
    let node = |i: u8, name: &str, tag: &str| ClusterNode {
        id: NodeId(u64::from(i)),
        name: name.into(),
        tags: vec![tag.into()],
        subnet: HostSubnet { addr: std::net::Ipv4Addr::new(100, 64, i, 0), prefix_len: 24 },
        routes: vec!["10.20.0.0/16".parse().expect("cidr")],
    };
    Cluster {
        nodes: vec![node(1, "a", "web"), node(2, "b", "db"), node(3, "c", "web")],
        services: Vec::new(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > 64 * 1024 {
        return;
    }
    let Ok(policy) = Policy::parse(text) else {
        return;
    };
    let c = cluster();
    let _ = compile(&policy, &c);
    let _ = run_tests(&policy, &c);
});
