//! Coordinator benchmark: N simulated hosts (real QUIC clients on loopback,
//! many per process, see `hosts.rs`) join one coordinator running in a
//! child process and hold their sessions; then it measures, under an
//! allow-all policy (every host sees every other: the largest views) or a
//! 20-rule policy over ten tags:
//!
//! - the join rate (64 joins in flight);
//! - how long an endpoint change takes to reach every host (5 rounds);
//! - how long a 20-rule policy change takes to be in force in every view
//!   (20-rule runs only);
//! - how long a new host takes to be visible to every host while joins
//!   arrive at 100 a second (5 s of them; every 100th is timed);
//! - idle coordinator CPU and control traffic per host (10 s);
//! - coordinator RSS per host;
//! - after `kill -9` and a restart, how long until every session has
//!   resumed, how many resumed with a delta, and how long an admin command
//!   takes meanwhile.
//!
//! Run (release build, not part of CI):
//!
//! ```text
//! cargo run --release -p weft-coordinator --example bench -- 1000 5000 10000
//! ```
//!
//! `BENCH_POLICIES` lists the policies, space-separated: `allow-all` and
//! `rules20` (default: both). `BENCH_STORES` lists the stores: `redb` (the
//! default) and `etcd://HOST:PORT,...` (each run under a fresh key prefix);
//! `scripts/bench-coordinator-etcd.sh` starts a 3-member etcd on loopback.
//!
//! See `coordinator/BENCH.md` for results.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark tool")]

mod coordinator;
mod hosts;
mod phases;

use std::time::Duration;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        coordinator::serve(
            args[2].clone().into(),
            args[3].parse().unwrap(),
            args.get(4).cloned().unwrap_or_else(|| "redb".into()),
        );
        return;
    }
    let list = |var: &str, default: &str| -> Vec<String> {
        std::env::var(var)
            .unwrap_or_else(|_| default.into())
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let stores = list("BENCH_STORES", "redb");
    let policies = list("BENCH_POLICIES", "allow-all rules20");
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![100, 1000]
    };
    raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for n in sizes {
        for store in &stores {
            for policy in &policies {
                let r = rt.block_on(phases::run(n, store, policy));
                println!("{}", r.describe());
                rows.push(r);
            }
        }
    }
    println!();
    println!("{}", phases::Report::header());
    for r in rows {
        println!("{}", r.row());
    }
    // Sessions still open end with the runtime.
    rt.shutdown_timeout(Duration::from_secs(1));
}

/// 10,000 hosts' sessions need more than the usual 1,024 open files only
/// for the coordinator's admin connections and the store; raise the soft
/// limit to the hard one anyway.
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write one valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
