//! Coordinator benchmark: N simulated hosts (real QUIC clients on loopback,
//! many per process) join one coordinator running in a child process and
//! hold their sessions; then it measures join rate, how long one endpoint
//! change and one new node take to reach every host, the coordinator's
//! CPU and RSS per host, and the idle control traffic (keep-alives) per
//! host.
//!
//! Run (release build, not part of CI):
//!
//! ```text
//! cargo run --release -p weft-coordinator --example bench -- 100 1000 5000
//! ```
//!
//! `BENCH_STORES` lists the stores to run every size on, space-separated:
//! `redb` (the default) and `etcd://HOST:PORT,...` (each run under a fresh
//! key prefix); `scripts/bench-coordinator-etcd.sh` starts a 3-member etcd
//! on loopback and runs both side by side.
//!
//! See `coordinator/BENCH.md` for results.

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a benchmark tool")]

use weft_control as control;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use control::ControlClient;
use weft_coordinator::admin::AdminCredential;
use weft_coordinator::{Config, Coordinator};
use weft_proto::msg::{AdminCommand, AdminReply};
use weft_proto::NodeId;
use x25519_dalek::StaticSecret;

/// Client UDP sockets the simulated hosts are spread over.
const CLIENT_SOCKETS: usize = 16;
const JOIN_CONCURRENCY: usize = 64;
const ENDPOINT_ROUNDS: u16 = 5;
/// Seconds of idle steady state measured (CPU and control traffic).
const IDLE_SECS: u64 = 10;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("serve") {
        serve(
            PathBuf::from(&args[2]),
            args[3].parse().unwrap(),
            args.get(4).cloned().unwrap_or_else(|| "redb".into()),
        );
        return;
    }
    let stores: Vec<String> = std::env::var("BENCH_STORES")
        .unwrap_or_else(|_| "redb".into())
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let sizes: Vec<usize> = if args.len() > 1 {
        args[1..].iter().map(|a| a.parse().unwrap()).collect()
    } else {
        vec![100, 1000]
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rows = Vec::new();
    for n in sizes {
        for store in &stores {
            let mut r = rt.block_on(run(n, store));
            r.store = if store == "redb" {
                "redb".into()
            } else {
                "etcd".into()
            };
            println!("{}", r.describe());
            rows.push(r);
        }
    }
    println!();
    println!("| store | hosts | join rate (joins/s) | endpoint change to all hosts p50 / p99 / max (ms) | new node at all hosts p50 / p99 / max (ms) | coord CPU during joins (core-s) | coord CPU idle (% of a core) | coord RSS (MB) | RSS per host (KB) | idle control traffic per host, sent / received (B/min) |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{}", r.row());
    }
}

/// The child process: just a coordinator, on `store`.
fn serve(dir: PathBuf, listen: SocketAddr, store: String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut config = Config::new(dir, listen);
        if store != "redb" {
            let mut etcd = weft_coordinator::store::etcd::EtcdConfig::from_url(&store).unwrap();
            // A fresh prefix per run: earlier runs' keys do not count.
            etcd.prefix = format!("/weft-bench-{}", std::process::id());
            config.store = weft_coordinator::StoreConfig::Etcd(etcd);
        }
        let _c = Coordinator::start(config).await.unwrap();
        std::future::pending::<()>().await;
    });
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
    /// Resident set size in KiB.
    fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
    /// User + system CPU seconds.
    fn cpu_secs(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}

async fn admin(dir: &Path, cmd: AdminCommand) -> Option<AdminReply> {
    let cred = AdminCredential::load(&dir.join("admin.json")).ok()?;
    tokio::time::timeout(Duration::from_secs(2), cred.request(cmd))
        .await
        .ok()?
        .ok()
}

#[derive(Default)]
struct Report {
    store: String,
    n: usize,
    join_secs: f64,
    converge_secs: f64,
    retries: usize,
    endpoint: (f64, f64, f64),
    newcomer: (f64, f64, f64),
    join_cpu: f64,
    idle_cpu_pct: f64,
    rss_kb: u64,
    rss_per_host_kb: f64,
    /// Idle control traffic per host per minute, sent and received by the
    /// host (bytes, IPv4 and UDP headers included).
    idle_bytes_per_min: (f64, f64),
}

impl Report {
    fn describe(&self) -> String {
        format!(
            "{} N={}: {} joins in {:.2}s ({:.0}/s, {} retried), all netmaps complete after {:.2}s; endpoint change p50 {:.1} ms p99 {:.1} ms max {:.1} ms; new node p50 {:.1} p99 {:.1} max {:.1} ms; join CPU {:.2} core-s; idle CPU {:.1}%; RSS {:.1} MB ({:.1} KB/host); idle traffic per host {:.0} B/min sent, {:.0} B/min received",
            self.store, self.n, self.n, self.join_secs, self.n as f64 / self.join_secs, self.retries, self.converge_secs,
            self.endpoint.0, self.endpoint.1, self.endpoint.2,
            self.newcomer.0, self.newcomer.1, self.newcomer.2,
            self.join_cpu, self.idle_cpu_pct, self.rss_kb as f64 / 1024.0, self.rss_per_host_kb,
            self.idle_bytes_per_min.0, self.idle_bytes_per_min.1
        )
    }
    fn row(&self) -> String {
        format!(
            "| {} | {} | {:.0} | {:.1} / {:.1} / {:.1} | {:.1} / {:.1} / {:.1} | {:.2} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} |",
            self.store, self.n, self.n as f64 / self.join_secs,
            self.endpoint.0, self.endpoint.1, self.endpoint.2,
            self.newcomer.0, self.newcomer.1, self.newcomer.2,
            self.join_cpu, self.idle_cpu_pct, self.rss_kb as f64 / 1024.0, self.rss_per_host_kb,
            self.idle_bytes_per_min.0, self.idle_bytes_per_min.1
        )
    }
}

/// What every host task reports: when it first saw the current probe.
struct Probe {
    /// The endpoint port host 0 announces in the current round (0: none).
    port: AtomicU64,
    /// Arrival instants, indexed by host, for the current probe.
    seen: Mutex<Vec<Option<Instant>>>,
    /// Node id whose appearance is being timed (0: none).
    newcomer: AtomicU64,
    /// Hosts whose netmap holds every other simulated host.
    converged: AtomicU64,
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

async fn wait_all(probe: &Probe, hosts: usize, t0: Instant) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let seen = probe.seen.lock().unwrap();
            if seen.iter().take(hosts).all(|s| s.is_some()) {
                return seen
                    .iter()
                    .take(hosts)
                    .map(|s| s.unwrap().saturating_duration_since(t0).as_secs_f64() * 1000.0)
                    .collect();
            }
        }
        if Instant::now() > deadline {
            let seen = probe.seen.lock().unwrap();
            let missing: Vec<usize> = (0..hosts).filter(|i| seen[*i].is_none()).collect();
            panic!(
                "update did not reach {} of {hosts} hosts in 60 s (first: {:?})",
                missing.len(),
                &missing[..missing.len().min(10)]
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A client endpoint with a large receive buffer: hundreds of simulated
/// hosts share each socket.
fn client_socket() -> ControlClient {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let _ = sock.set_recv_buffer_size(4 << 20);
    let _ = sock.set_send_buffer_size(4 << 20);
    sock.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    ControlClient::with_endpoint(endpoint)
}

async fn run(n: usize, store: &str) -> Report {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Proc(
        Command::new(std::env::current_exe().unwrap())
            .args(["serve", dir.to_str().unwrap(), &listen.to_string(), store])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let token = loop {
        if let Some(AdminReply::TokenCreated { token, .. }) = admin(
            &dir,
            AdminCommand::TokenCreate {
                uses: None,
                expires_in_secs: None,
                tags: vec![],
            },
        )
        .await
        {
            break Arc::new(token);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = child.rss_kb();
    let clients: Vec<ControlClient> = (0..CLIENT_SOCKETS).map(|_| client_socket()).collect();
    let probe = Arc::new(Probe {
        port: AtomicU64::new(0),
        seen: Mutex::new(vec![None; n]),
        newcomer: AtomicU64::new(0),
        converged: AtomicU64::new(0),
    });

    // Join phase.
    let cpu0 = child.cpu_secs();
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(JOIN_CONCURRENCY));
    let mut joins = Vec::new();
    for i in 0..n {
        let (token, client, sem) = (
            token.clone(),
            clients[i % CLIENT_SOCKETS].clone(),
            sem.clone(),
        );
        joins.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let key = StaticSecret::random_from_rng(rand::rngs::OsRng);
            let ep: SocketAddr = ([192, 0, 2, 1], 10_000 + i as u16).into();
            // Under a join storm on two shared cores a handshake can time
            // out; a real host would retry too.
            let mut tries = 0;
            loop {
                match client
                    .join(&token, &key, &format!("sim-{i}"), vec![ep])
                    .await
                {
                    Ok(out) => break (out, tries),
                    Err(e) if tries < 10 => {
                        tries += 1;
                        if tries == 1 {
                            eprintln!("join {i} retrying: {e}");
                        }
                    }
                    Err(e) => panic!("join {i} failed: {e}"),
                }
            }
        }));
    }
    let mut outcomes = Vec::with_capacity(n);
    let mut retries = 0;
    for j in joins {
        let (out, tries) = j.await.unwrap();
        retries += tries;
        outcomes.push(out);
    }
    let join_secs = t0.elapsed().as_secs_f64();
    let host0 = outcomes[0].node_id;
    let updater0 = outcomes[0].session.updater();

    let wire: Vec<control::WireStats> = outcomes.iter().map(|o| o.session.wire_stats()).collect();
    let wire_total = || {
        wire.iter()
            .filter_map(control::WireStats::bytes)
            .fold((0u64, 0u64), |(t, r), (a, b)| (t + a, r + b))
    };
    // Every host folds its netmap and notes when it sees a probe.
    for (idx, out) in outcomes.into_iter().enumerate() {
        let probe = probe.clone();
        let mut session = out.session;
        tokio::spawn(async move {
            let mut converged = session.netmap().len() + 1 >= n;
            if converged {
                probe.converged.fetch_add(1, Ordering::Relaxed);
            }
            loop {
                let change = match session.next_change().await {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("host {idx}: session ended: {e}");
                        return;
                    }
                };
                if !converged && session.netmap().len() + 1 >= n {
                    converged = true;
                    probe.converged.fetch_add(1, Ordering::Relaxed);
                }
                let port = probe.port.load(Ordering::Relaxed);
                if port != 0 {
                    let hit = session
                        .netmap()
                        .peer(host0)
                        .is_some_and(|p| p.endpoints.iter().any(|e| u64::from(e.port()) == port));
                    if hit || idx == 0 {
                        let mut seen = probe.seen.lock().unwrap();
                        if seen[idx].is_none() && (hit || idx == 0) {
                            seen[idx] = Some(Instant::now());
                        }
                    }
                }
                let nc = probe.newcomer.load(Ordering::Relaxed);
                if nc != 0 && change.upserted.contains(&NodeId(nc)) {
                    let mut seen = probe.seen.lock().unwrap();
                    seen[idx].get_or_insert_with(Instant::now);
                }
            }
        });
    }
    // Let the join storm settle: every host has every other one.
    let deadline = Instant::now() + Duration::from_secs(300);
    while probe.converged.load(Ordering::Relaxed) < n as u64 {
        assert!(Instant::now() < deadline, "netmaps did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let converge_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let join_cpu = child.cpu_secs() - cpu0;

    // Endpoint changes by host 0 (it does not see its own change; it counts as 0).
    let mut ep_lat = Vec::new();
    for round in 1..=ENDPOINT_ROUNDS {
        let port = 40_000 + round;
        {
            let mut seen = probe.seen.lock().unwrap();
            seen.iter_mut().for_each(|s| *s = None);
        }
        probe.port.store(u64::from(port), Ordering::Relaxed);
        let t = Instant::now();
        probe.seen.lock().unwrap()[0] = Some(t);
        updater0
            .set_endpoints(vec![([192, 0, 2, 1], port).into()])
            .await
            .unwrap();
        let mut lat = wait_all(&probe, n, t).await;
        lat.remove(0);
        ep_lat.extend(lat);
        probe.port.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A new node appears at every host.
    {
        let mut seen = probe.seen.lock().unwrap();
        seen.iter_mut().for_each(|s| *s = None);
    }
    // Ids are assigned in order, so the newcomer's id is known in advance.
    probe.newcomer.store(n as u64 + 1, Ordering::Relaxed);
    let t = Instant::now();
    let key = StaticSecret::random_from_rng(rand::rngs::OsRng);
    let newcomer = clients[0]
        .join(&token, &key, "newcomer", vec![])
        .await
        .unwrap();
    assert_eq!(newcomer.node_id, NodeId(n as u64 + 1));
    let nc_lat = wait_all(&probe, n, t).await;

    // Idle steady state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c0 = child.cpu_secs();
    let b0 = wire_total();
    let ti = Instant::now();
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let idle = ti.elapsed().as_secs_f64();
    let idle_cpu_pct = (child.cpu_secs() - c0) / idle * 100.0;
    let b1 = wire_total();
    let per_min = |d: u64| d as f64 / n as f64 / idle * 60.0;
    let idle_bytes_per_min = (per_min(b1.0 - b0.0), per_min(b1.1 - b0.1));
    let rss = child.rss_kb();
    Report {
        n,
        join_secs,
        converge_secs,
        retries,
        endpoint: percentiles(ep_lat),
        newcomer: percentiles(nc_lat),
        join_cpu,
        idle_cpu_pct,
        rss_kb: rss,
        rss_per_host_kb: (rss.saturating_sub(rss0)) as f64 / n as f64,
        idle_bytes_per_min,
        store: String::new(),
    }
}
