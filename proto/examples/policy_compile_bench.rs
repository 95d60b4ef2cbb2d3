//! How long compiling every host's view of the policy takes: 1,000, 5,000
//! and 10,000 hosts (ten tags), allow-all, a three-rule and a 20-rule
//! policy (the coordinator benchmark's), the median of five runs each; and
//! how many distinct peer sets the hosts share. A benchmark, not a test: run it on purpose, in release.
//!
//! ```text
//! cargo run -p weft-proto --release --example policy_compile_bench
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark tool")]

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use weft_proto::policy::{compile, Cluster, ClusterNode, Policy};
use weft_proto::{HostSubnet, NodeId};

const RUNS: usize = 5;

fn cluster(hosts: u64) -> Cluster {
    let nodes = (0..hosts)
        .map(|i| ClusterNode {
            id: NodeId(i),
            name: format!("h{i}"),
            tags: vec![format!("t{}", i % 10)],
            subnet: HostSubnet {
                addr: Ipv4Addr::from(0x6440_0000 + ((i as u32) << 8)),
                prefix_len: 24,
            },
            routes: vec![],
        })
        .collect();
    Cluster {
        nodes,
        services: vec![],
    }
}

fn main() {
    let rules = Policy::parse(
        "rules:\n  - allow: { from: ['*'], to: ['*'], ports: [icmp] }\n  - allow: { from: [tag:t0, tag:t1], to: [tag:t2], ports: [tcp/5432, tcp/80] }\n  - deny: { from: [tag:t3], to: [tag:t4] }\n",
    )
    .unwrap();
    let mut twenty = String::from(
        "default: deny\nrules:\n  - allow: { from: ['*'], to: [tag:t0], ports: [icmp] }\n",
    );
    for k in 1..20 {
        twenty.push_str(&format!(
            "  - allow: {{ from: [tag:t{}], to: [tag:t{}], ports: [tcp/{}] }}\n",
            1 + k % 9,
            1 + (k * 4) % 9,
            8000 + k
        ));
    }
    let twenty = Policy::parse(&twenty).unwrap();
    println!(
        "| hosts | policy | compile (median of {RUNS}) | distinct peer sets | peer ids held | node 2's view (bytes) |"
    );
    println!("|---|---|---|---|---|---|");
    for hosts in [1000u64, 5000, 10_000] {
        let c = cluster(hosts);
        for (name, p) in [
            ("allow-all", Policy::allow_all()),
            ("three rules", rules.clone()),
            ("twenty rules", twenty.clone()),
        ] {
            let mut times: Vec<Duration> = Vec::new();
            let mut last = None;
            for _ in 0..RUNS {
                let t = Instant::now();
                let compiled = compile(&p, &c);
                times.push(t.elapsed());
                last = Some(compiled);
            }
            times.sort();
            let compiled = last.unwrap();
            let mut distinct: Vec<*const _> = compiled
                .nodes
                .values()
                .map(|n| std::sync::Arc::as_ptr(&n.peers))
                .collect();
            distinct.sort();
            distinct.dedup();
            let held: usize = {
                let mut seen = std::collections::HashSet::new();
                compiled
                    .nodes
                    .values()
                    .filter(|n| seen.insert(std::sync::Arc::as_ptr(&n.peers)))
                    .map(|n| n.peers.len())
                    .sum()
            };
            let bytes = rmp_serde::to_vec_named(compiled.node(NodeId(2)).unwrap()).unwrap();
            println!(
                "| {hosts} | {name} | {:.1} ms | {} | {held} | {} |",
                times[RUNS / 2].as_secs_f64() * 1000.0,
                distinct.len(),
                bytes.len()
            );
        }
    }
}
