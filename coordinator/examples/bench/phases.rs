//! One run of the benchmark: the phases in order, and their report.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_control::ControlClient;
use weft_proto::msg::{AdminCommand, AdminReply};
use weft_proto::NodeId;
use x25519_dalek::StaticSecret;

use crate::coordinator::{admin, token, Proc};
use crate::hosts::{self, client_socket, Host, Probe, CLIENT_SOCKETS};

const JOIN_CONCURRENCY: usize = 64;
const ENDPOINT_ROUNDS: u16 = 5;
/// Seconds of idle steady state measured (CPU and control traffic).
const IDLE_SECS: u64 = 10;
/// The join stream during which new hosts are timed: this many a second,
/// for this long; every `STREAM_SAMPLE`-th is timed.
const STREAM_RATE: u64 = 100;
const STREAM_SECS: u64 = 5;
const STREAM_SAMPLE: u64 = 100;
/// Tags of the 20-rule policy's hosts: host `i` has `t{i % TAGS}`.
const TAGS: usize = 10;

/// The 20-rule policy: everyone may ping the `t0` hosts (so every host
/// sees host 0, and the new hosts, which are `t0`), and 19 rules between
/// other tags on their own ports.
fn rules20() -> String {
    let mut p = String::from(
        "default: deny\nrules:\n  - allow: { from: ['*'], to: [tag:t0], ports: [icmp] }\n",
    );
    for k in 1..20 {
        let a = 1 + k % 9;
        let b = 1 + (k * 4) % 9;
        p.push_str(&format!(
            "  - allow: {{ from: [tag:t{a}], to: [tag:t{b}], ports: [tcp/{}] }}\n",
            8000 + k
        ));
    }
    p
}

/// The change timed: the `t0` hosts may reach every host on one more port
/// (every host's filter changes, and with it its view).
fn rules20_changed() -> String {
    format!(
        "{}  - allow: {{ from: [tag:t0], to: ['*'], ports: [tcp/9100] }}\n",
        rules20()
    )
}

#[derive(Default)]
pub struct Report {
    store: String,
    policy: String,
    n: usize,
    join_secs: f64,
    converge_secs: f64,
    retries: usize,
    endpoint: (f64, f64, f64),
    policy_change: Option<(f64, f64, f64)>,
    newcomer: (f64, f64, f64),
    /// Of `newcomer`, the part until the new host's join returned (its
    /// welcome and first netmap): the rest is the fan-out to old hosts.
    newcomer_joined: (f64, f64, f64),
    join_cpu: f64,
    idle_cpu_pct: f64,
    rss_kb: u64,
    rss_per_host_kb: f64,
    idle_bytes_per_min: (f64, f64),
    /// After kill -9: seconds until every session resumed, how many with a
    /// delta, and the admin command's p50 / max (ms) meanwhile.
    storm_secs: f64,
    /// The keep-alive interval the coordinator asks for while idle.
    idle_keepalive: Duration,
    /// Sessions renewed at another keep-alive interval during the idle
    /// seconds (their handshakes are in the idle CPU figure).
    idle_renewed: u64,
    storm_delta: u64,
    storm_admin: (f64, f64),
    storm_admin_failed: usize,
    /// Sessions resumed within [`STORM_LIMIT_SECS`].
    storm_resumed: u64,
    /// (new host, old host) pairs where the old host had not seen the new
    /// one 60 s after its join (left out of `newcomer`).
    newcomer_missed: usize,
}

/// How long the benchmark waits for every session to resume.
const STORM_LIMIT_SECS: u64 = 300;

fn ms3(v: (f64, f64, f64)) -> String {
    format!("{:.1} / {:.1} / {:.1}", v.0, v.1, v.2)
}

impl Report {
    pub fn header() -> String {
        "| store | policy | hosts | join rate (joins/s) | endpoint change p50 / p99 / max (ms) | policy change in every view p50 / p99 / max (ms) | new host at every host, joins at 100/s, p50 / p99 / max (ms) | coord CPU during joins (core-s) | coord CPU idle (% of a core) | coord RSS (MB) | RSS per host (KB) | idle traffic per host sent / received (B/min) | resync after kill -9 (s) | resumed with a delta | admin command during the storm p50 / max (ms) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|".into()
    }

    pub fn describe(&self) -> String {
        format!(
            "{} {} N={}: joins {:.0}/s ({} retried), netmaps complete after {:.1} s; endpoint {}; policy {}; new host {} (joined in {}); join CPU {:.1} core-s; idle CPU {:.1}%; RSS {:.1} MB ({:.1} KB/host); idle traffic {:.0}/{:.0} B/min; resync {:.1} s ({} deltas), admin {:.0}/{:.0} ms ({} failed)",
            self.store, self.policy, self.n, self.n as f64 / self.join_secs, self.retries,
            self.converge_secs, ms3(self.endpoint),
            self.policy_change.map_or("-".into(), ms3), ms3(self.newcomer),
            ms3(self.newcomer_joined),
            self.join_cpu, self.idle_cpu_pct, self.rss_kb as f64 / 1024.0, self.rss_per_host_kb,
            self.idle_bytes_per_min.0, self.idle_bytes_per_min.1,
            self.storm_secs, self.storm_delta, self.storm_admin.0, self.storm_admin.1,
            self.storm_admin_failed,
        )
    }

    pub fn row(&self) -> String {
        format!(
            "| {} | {} | {} | {:.0} | {} | {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} / {:.0} | {} | {} of {} | {:.0} / {:.0}{} |",
            self.store, self.policy, self.n, self.n as f64 / self.join_secs,
            ms3(self.endpoint), self.policy_change.map_or("-".into(), ms3),
            if self.newcomer_missed > 0 {
                format!("{} ({} not within 60 s)", ms3(self.newcomer), self.newcomer_missed)
            } else {
                ms3(self.newcomer)
            },
            self.join_cpu, self.idle_cpu_pct, self.rss_kb as f64 / 1024.0, self.rss_per_host_kb,
            self.idle_bytes_per_min.0, self.idle_bytes_per_min.1,
            if self.storm_resumed as usize == self.n + (STREAM_RATE * STREAM_SECS) as usize {
                format!("{:.1}", self.storm_secs)
            } else {
                format!("{} resumed in {STORM_LIMIT_SECS} s", self.storm_resumed)
            },
            self.storm_delta, self.n + (STREAM_RATE * STREAM_SECS) as usize,
            self.storm_admin.0, self.storm_admin.1,
            if self.storm_admin_failed > 0 { format!(" ({} failed)", self.storm_admin_failed) } else { String::new() },
        )
    }
}

fn percentiles(mut v: Vec<f64>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99), *v.last().unwrap())
}

/// Waits until the first `hosts` entries of `seen` are set (60 s at most);
/// their delays from `t0`, in ms.
async fn wait_all(
    seen: &std::sync::Mutex<Vec<Option<Instant>>>,
    hosts: usize,
    t0: Instant,
    what: &str,
) -> Vec<f64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        {
            let s = seen.lock().unwrap();
            if s.iter().take(hosts).all(Option::is_some) {
                return s
                    .iter()
                    .take(hosts)
                    .flatten()
                    .map(|t| t.saturating_duration_since(t0).as_secs_f64() * 1000.0)
                    .collect();
            }
            if Instant::now() > deadline {
                let missing: Vec<usize> = (0..hosts).filter(|i| s[*i].is_none()).collect();
                panic!(
                    "{what} did not reach {} of {hosts} hosts in 60 s (hosts {:?}...)",
                    missing.len(),
                    &missing[..missing.len().min(8)]
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

struct Cluster {
    dir: std::path::PathBuf,
    listen: SocketAddr,
    store: String,
    child: Proc,
    clients: Vec<ControlClient>,
    probe: Arc<Probe>,
    host0: NodeId,
    /// Tokens by tag index (one, untagged, for allow-all).
    tokens: Vec<Arc<String>>,
    /// The hosts' tasks, stopped at the end of the run.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Cluster {
    fn token_for(&self, i: usize) -> Arc<String> {
        self.tokens[i % self.tokens.len()].clone()
    }

    /// Joins host `idx` and starts its task; its node id, when its join
    /// started and returned, and its retries.
    fn spawn_join(
        &self,
        idx: usize,
        token: Arc<String>,
        sem: Option<Arc<tokio::sync::Semaphore>>,
    ) -> tokio::task::JoinHandle<Joined> {
        // Its own transport preference, as an agent has (a QUIC join
        // that times out under the storm sends only this host to TCP).
        let client = self.clients[idx % CLIENT_SOCKETS].sharing_socket();
        let host0 = self.host0;
        tokio::spawn(async move {
            let _permit = match &sem {
                Some(s) => Some(s.acquire().await.unwrap()),
                None => None,
            };
            let started = Instant::now();
            let key = StaticSecret::random_from_rng(rand::rngs::OsRng);
            let endpoint: SocketAddr = ([192, 0, 2, 1], 10_000 + (idx % 50_000) as u16).into();
            let (id, info, session, tries) = hosts::join(
                &client,
                &token,
                &key,
                &format!("sim-{idx}"),
                endpoint,
                host0,
            )
            .await;
            let host = Host {
                idx,
                host0,
                client,
                info,
                key,
                endpoint,
            };
            (id, (started, Instant::now()), tries, session, host)
        })
    }
}

/// A finished join: node id, (started, returned), retries, session, host.
type Joined = (
    NodeId,
    (Instant, Instant),
    usize,
    weft_control::Session,
    Host,
);

pub async fn run(n: usize, store: &str, policy: &str) -> Report {
    let stream = (STREAM_RATE * STREAM_SECS) as usize;
    let total = n + stream;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let listen = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = Proc::start(&dir, listen, store);
    let tags = policy == "rules20";
    let mut tokens = Vec::new();
    if tags {
        for t in 0..TAGS {
            tokens.push(Arc::new(token(&dir, vec![format!("t{t}")]).await));
        }
        let set = admin(
            &dir,
            AdminCommand::AclSet { text: rules20() },
            Duration::from_secs(10),
        )
        .await;
        assert!(
            matches!(set, Some(AdminReply::AclAccepted { .. })),
            "{set:?}"
        );
    } else {
        tokens.push(Arc::new(token(&dir, Vec::new()).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = child.rss_kb();
    let mut c = Cluster {
        dir: dir.clone(),
        listen,
        store: store.to_string(),
        child,
        clients: (0..CLIENT_SOCKETS).map(client_socket).collect(),
        probe: Probe::new(total),
        host0: NodeId(1),
        tokens,
        tasks: Vec::new(),
    };
    let mut r = Report {
        store: if store == "redb" {
            "redb".into()
        } else {
            "etcd".into()
        },
        policy: policy.to_string(),
        n,
        ..Report::default()
    };

    // Converged: a host has every peer it may see (all others under
    // allow-all; under the policy, at least the t0 hosts).
    let expect = if tags { n / TAGS } else { n - 1 };
    c.probe.expect.store(expect as u64, Ordering::Relaxed);
    eprintln!("{store} {policy} N={n}: coordinator up, joining");
    // Join phase: 64 in flight; host 0 first, so it is node 1.
    let cpu0 = c.child.cpu_secs();
    let t0 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(JOIN_CONCURRENCY));
    let first = c.spawn_join(0, c.token_for(0), None).await.unwrap();
    assert_eq!(first.0, c.host0);
    let mut joins = vec![tokio::spawn(async move { first })];
    for i in 1..n {
        joins.push(c.spawn_join(i, c.token_for(i), Some(sem.clone())));
    }
    for j in joins {
        let (_, _, tries, session, host) = j.await.unwrap();
        r.retries += tries;
        c.tasks
            .push(tokio::spawn(host.run(session, c.probe.clone())));
    }
    r.join_secs = t0.elapsed().as_secs_f64();
    eprintln!("  {n} joined in {:.1} s", r.join_secs);
    let deadline = Instant::now() + Duration::from_secs(600);
    while c.probe.converged.load(Ordering::Relaxed) < n as u64 {
        assert!(Instant::now() < deadline, "netmaps did not converge");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    r.converge_secs = t0.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    r.join_cpu = c.child.cpu_secs() - cpu0;

    eprintln!("  netmaps complete after {:.1} s", r.converge_secs);
    // Endpoint changes by host 0 (it does not see its own: it counts as 0).
    let mut ep_lat = Vec::new();
    for round in 1..=ENDPOINT_ROUNDS {
        let port = 40_000 + round;
        c.probe
            .ep_seen
            .lock()
            .unwrap()
            .iter_mut()
            .for_each(|s| *s = None);
        c.probe.port.store(u64::from(port), Ordering::Relaxed);
        let t = Instant::now();
        c.probe.ep_seen.lock().unwrap()[0] = Some(t);
        let updater0 = c.probe.updater0.lock().unwrap().clone().unwrap();
        updater0
            .set_endpoints(vec![([192, 0, 2, 1], port).into()])
            .await
            .unwrap();
        let mut lat = wait_all(&c.probe.ep_seen, n, t, "an endpoint change").await;
        lat.remove(0);
        ep_lat.extend(lat);
        c.probe.port.store(0, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    r.endpoint = percentiles(ep_lat);
    eprintln!("  endpoint change p50/p99/max {}", ms3(r.endpoint));

    if tags {
        c.probe.policy_round.store(true, Ordering::Relaxed);
        let t = Instant::now();
        let set = admin(
            &c.dir,
            AdminCommand::AclSet {
                text: rules20_changed(),
            },
            Duration::from_secs(30),
        )
        .await;
        assert!(
            matches!(set, Some(AdminReply::AclAccepted { .. })),
            "{set:?}"
        );
        let lat = wait_all(&c.probe.policy_seen, n, t, "the policy change").await;
        c.probe.policy_round.store(false, Ordering::Relaxed);
        let p = percentiles(lat);
        eprintln!("  policy change in every view p50/p99/max {}", ms3(p));
        r.policy_change = Some(p);
    }

    eprintln!("  endpoint and policy changes timed; joining at {STREAM_RATE}/s");
    // New hosts at 100 a second; every 100th is timed at every old host.
    // Node ids are assigned in order, so the timed ids are known ahead.
    {
        let mut nc = c.probe.newcomers.lock().unwrap();
        nc.0 = (1..=STREAM_SECS * STREAM_RATE / STREAM_SAMPLE)
            .map(|k| NodeId(n as u64 + k * STREAM_SAMPLE))
            .collect();
        nc.1 = vec![vec![None; total]; nc.0.len()];
    }
    let t_stream = Instant::now();
    let mut stream_joins = Vec::new();
    let t0_token = c.token_for(0);
    for k in 0..stream {
        let due = t_stream + Duration::from_millis(k as u64 * 1000 / STREAM_RATE);
        tokio::time::sleep_until(due.into()).await;
        stream_joins.push(c.spawn_join(n + k, t0_token.clone(), None));
    }
    let mut started_by_id = std::collections::HashMap::new();
    for j in stream_joins {
        let (id, started, tries, session, host) = j.await.unwrap();
        r.retries += tries;
        started_by_id.insert(id, started);
        c.tasks
            .push(tokio::spawn(host.run(session, c.probe.clone())));
    }
    let ids = c.probe.newcomers.lock().unwrap().0.clone();
    let mut nc_lat = Vec::new();
    let mut joined_ms = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let (started, joined) = *started_by_id.get(id).unwrap();
        joined_ms.push(joined.saturating_duration_since(started).as_secs_f64() * 1000.0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let done = {
                let nc = c.probe.newcomers.lock().unwrap();
                nc.1[k].iter().take(n).filter(|s| s.is_none()).count() == 0
            };
            if done || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let nc = c.probe.newcomers.lock().unwrap();
        r.newcomer_missed += nc.1[k].iter().take(n).filter(|s| s.is_none()).count();
        nc_lat.extend(
            nc.1[k]
                .iter()
                .take(n)
                .flatten()
                .map(|t| t.saturating_duration_since(started).as_secs_f64() * 1000.0),
        );
    }
    r.newcomer = percentiles(nc_lat);
    r.newcomer_joined = percentiles(joined_ms);
    eprintln!(
        "  new host at every host p50/p99/max {} ({} sightings missing after 60 s); its own join took {}",
        ms3(r.newcomer),
        r.newcomer_missed,
        ms3(r.newcomer_joined)
    );

    // Idle steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Per host, and only hosts whose session stayed the same throughout.
    let wire_now = |c: &Cluster| -> Vec<Option<(u64, u64)>> {
        c.probe
            .wire
            .lock()
            .unwrap()
            .iter()
            .map(|w| w.as_ref().and_then(weft_control::WireStats::bytes))
            .collect()
    };
    let cpu = c.child.cpu_secs();
    let renewed0 = c.probe.renewed.load(Ordering::Relaxed);
    let b0 = wire_now(&c);
    let ti = Instant::now();
    tokio::time::sleep(Duration::from_secs(IDLE_SECS)).await;
    let idle = ti.elapsed().as_secs_f64();
    r.idle_cpu_pct = (c.child.cpu_secs() - cpu) / idle * 100.0;
    let b1 = wire_now(&c);
    r.idle_renewed = c.probe.renewed.load(Ordering::Relaxed) - renewed0;
    r.idle_keepalive = Duration::from_millis(c.probe.keepalive_ms.load(Ordering::Relaxed));
    let (mut sent, mut recvd, mut hosts) = (0u64, 0u64, 0u64);
    for (a, b) in b0.iter().zip(&b1) {
        if let (Some(a), Some(b)) = (a, b) {
            if b.0 >= a.0 && b.1 >= a.1 {
                sent += b.0 - a.0;
                recvd += b.1 - a.1;
                hosts += 1;
            }
        }
    }
    let per_min = |d: u64| d as f64 / hosts.max(1) as f64 / idle * 60.0;
    r.idle_bytes_per_min = (per_min(sent), per_min(recvd));
    r.rss_kb = c.child.rss_kb();
    r.rss_per_host_kb = r.rss_kb.saturating_sub(rss0) as f64 / total as f64;

    eprintln!(
        "  idle CPU {:.1}%, RSS {:.1} KB/host, keep-alives asked every {:?} ({} sessions renewed at another interval so far, {} of them while idle); kill -9 and restart",
        r.idle_cpu_pct,
        r.rss_per_host_kb,
        r.idle_keepalive,
        c.probe.renewed.load(Ordering::Relaxed),
        r.idle_renewed
    );
    storm(&mut c, total, &mut r).await;
    drop(c);
    r
}

/// `kill -9`, a restart on the same state and port, and every host
/// reconnecting with its cached netmap; an admin command every 250 ms
/// meanwhile.
async fn storm(c: &mut Cluster, total: usize, r: &mut Report) {
    c.child.restart(&c.dir, c.listen, &c.store);
    let t = Instant::now();
    let mut admin_ms = Vec::new();
    let mut failed = 0;
    let mut up = false;
    let deadline = t + Duration::from_secs(STORM_LIMIT_SECS);
    while c.probe.resumed_count.load(Ordering::Relaxed) < total as u64 {
        if Instant::now() >= deadline {
            break;
        }
        let a = Instant::now();
        // Timed from the first answer on: before it, the new process is
        // still opening its store.
        match admin(&c.dir, AdminCommand::NodeList, Duration::from_secs(5)).await {
            Some(AdminReply::Nodes(_)) if up => admin_ms.push(a.elapsed().as_secs_f64() * 1000.0),
            Some(AdminReply::Nodes(_)) => up = true,
            _ if up => failed += 1,
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let last = c
        .probe
        .resumed
        .lock()
        .unwrap()
        .iter()
        .flatten()
        .max()
        .copied()
        .unwrap_or(t);
    r.storm_secs = last.saturating_duration_since(t).as_secs_f64();
    r.storm_resumed = c.probe.resumed_count.load(Ordering::Relaxed);
    r.storm_delta = c.probe.resumed_delta.load(Ordering::Relaxed);
    let (p50, _, max) = percentiles(admin_ms);
    r.storm_admin = (p50, max);
    r.storm_admin_failed = failed;
}
