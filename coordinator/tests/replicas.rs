//! Several coordinator replicas on one real three-member etcd cluster
//! ([`etcd_cluster`]): what a host on one replica does reaches hosts on
//! the others (joins, online state and endpoints, policy, relayed
//! datagrams), a replica with another identity is refused, and a replica
//! killed with SIGKILL in the middle of a stream of joins loses no
//! acknowledged join while its hosts fail over to another replica.
//!
//! The killed replica is a separate process: this test binary run again
//! with `WEFT_REPLICA_CHILD` set (see [`replica_child`]).

#![allow(clippy::unwrap_used, reason = "test helpers should panic on failure")]

mod etcd_cluster;
mod support;

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;
use weft_coordinator::admin::AdminCredential;
use weft_coordinator::store::etcd::EtcdConfig;
use weft_coordinator::{Config, Coordinator, StoreConfig};
use weft_proto::msg::{AdminCommand, AdminReply};
use weft_proto::relay::Datagram;

use etcd_cluster::Cluster;

const CHILD_ENV: &str = "WEFT_REPLICA_CHILD";

fn etcd_config(c: &Cluster, prefix: &str) -> EtcdConfig {
    let mut cfg = EtcdConfig::from_url(&format!("etcd://{}", c.endpoints().join(","))).unwrap();
    cfg.prefix = prefix.into();
    cfg.timeout = Duration::from_secs(3);
    cfg
}

/// Loopback ports free now, for replicas whose addresses must be known
/// before they start (each replica's tokens list all of them).
/// A replica listens on both UDP (QUIC) and TCP (the TLS fallback) at its
/// port, so a port is taken only when both are free: an ephemeral TCP port
/// of another test's connection is not.
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let mut held = Vec::new();
    while held.len() < n {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = udp.local_addr().unwrap();
        if let Ok(tcp) = std::net::TcpListener::bind(addr) {
            held.push((udp, tcp));
        }
    }
    held.iter().map(|(u, _)| u.local_addr().unwrap()).collect()
}

/// State dirs for `n` replicas sharing one identity: the first created
/// by the coordinator's own code, the rest copies of its identity files
/// and admin credential (what an operator does).
fn shared_identity_dirs(root: &Path, n: usize) -> Vec<PathBuf> {
    let dirs: Vec<PathBuf> = (0..n).map(|i| root.join(format!("r{i}"))).collect();
    let id = weft_coordinator::state::load_or_create(&dirs[0]).unwrap();
    let mut secret = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut secret);
    AdminCredential {
        coordinator: vec![],
        pin: hex::encode(id.pin),
        secret: hex::encode(secret),
        web: None,
    }
    .save(&weft_coordinator::state::admin_path(&dirs[0]))
    .unwrap();
    for d in &dirs[1..] {
        std::fs::create_dir_all(d).unwrap();
        let files = weft_coordinator::state::IDENTITY_FILES
            .iter()
            .chain([&weft_coordinator::state::ADMIN_FILE]);
        for f in files {
            std::fs::copy(dirs[0].join(f), d.join(f)).unwrap();
        }
    }
    dirs
}

/// Replica `i`'s configuration: its own address first in its tokens, then
/// the others.
fn replica_config(dir: &Path, addrs: &[SocketAddr], i: usize, etcd: &EtcdConfig) -> Config {
    let mut c = Config::new(dir, addrs[i]);
    c.coalesce = Duration::from_millis(10);
    c.store = StoreConfig::Etcd(etcd.clone());
    c.advertise = (0..addrs.len())
        .map(|k| addrs[(i + k) % addrs.len()].to_string())
        .collect();
    c
}

async fn admin(dir: &Path, cmd: AdminCommand) -> AdminReply {
    AdminCredential::load(&weft_coordinator::state::admin_path(dir))
        .unwrap()
        .request(cmd)
        .await
        .unwrap()
}

fn has_peer_online(s: &Session, name: &str) -> bool {
    s.netmap()
        .peers()
        .any(|p| p.name == name && p.online && !p.endpoints.is_empty())
}

fn punch(to: weft_proto::NodeId) -> Vec<u8> {
    Datagram::Punch { node: to }.encode()
}

/// Sends punches from `from` to `to` until one arrives (the first ones
/// may be dropped while the replica link is dialled); how long it took.
async fn relayed(
    from: &Session,
    to: &mut control::DatagramSource,
    from_id: weft_proto::NodeId,
    to_id: weft_proto::NodeId,
) -> Duration {
    let t = Instant::now();
    loop {
        from.datagram_link().send(punch(to_id));
        if let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(300), to.next()).await {
            assert_eq!(
                Datagram::node(&d),
                Some(from_id),
                "the relayed punch names its sender"
            );
            return t.elapsed();
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no punch relayed between replicas within 5 s"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_on_one_replica_reach_hosts_on_the_others_within_a_second() {
    init_tracing();
    let Some(etcd) = etcd_cluster::start() else {
        return;
    };
    let cfg = etcd_config(&etcd, "/replicas");
    let root = tempfile::tempdir().unwrap();
    let dirs = shared_identity_dirs(root.path(), 3);
    let addrs = free_ports(3);
    let mut coords = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        coords.push(
            Coordinator::start(replica_config(dir, &addrs, i, &cfg))
                .await
                .unwrap(),
        );
    }
    // One identity: every replica presents the same pin.
    assert!(coords.iter().all(|c| c.pin() == coords[0].pin()));
    let (a, b, c) = (&coords[0], &coords[1], &coords[2]);

    // x on B, y on C.
    let (_kx, mut x) = join(&b.create_token(None, None, vec![]).await.unwrap(), "x").await;
    let (_ky, mut y) = join(&c.create_token(None, None, vec![]).await.unwrap(), "y").await;
    wait_for(&mut x.session, Duration::from_secs(3), |s| {
        has_peer_online(s, "y")
    })
    .await;

    // z joins on A: x (on B) sees it, online with its endpoints.
    let token_a = a.create_token(None, None, vec![]).await.unwrap();
    assert!(
        token_a
            .parse::<weft_proto::token::JoinToken>()
            .unwrap()
            .addrs
            == [addrs[0], addrs[1], addrs[2]].map(|a| a.to_string()),
        "a token carries every replica's address, its own first"
    );
    let t = Instant::now();
    let (_kz, mut z) = join(&token_a, "z").await;
    let joined = t.elapsed();
    let t = Instant::now();
    wait_for(&mut x.session, Duration::from_secs(1), |s| {
        s.netmap().peers().any(|p| p.name == "z")
    })
    .await;
    let seen = t.elapsed();
    wait_for(&mut x.session, Duration::from_secs(1), |s| {
        has_peer_online(s, "z")
    })
    .await;
    let online = t.elapsed();
    eprintln!("join on A ({joined:?}) seen by a host on B after {seen:?}, online with endpoints after {online:?}");
    assert!(online < Duration::from_secs(1));
    wait_for(&mut z.session, Duration::from_secs(2), |s| {
        has_peer_online(s, "x") && has_peer_online(s, "y")
    })
    .await;

    // A host that joined on A and moves to C at once (before C's watch
    // may have brought its join) is known there.
    let (kq, q) = join(&token_a, "q").await;
    let mut on_c = q.coordinator.clone();
    on_c.addrs = vec![addrs[2].to_string()];
    let q_id = q.node_id;
    drop(q);
    let moved = ControlClient::new()
        .unwrap()
        .connect(&on_c, &kq, vec![], None)
        .await
        .unwrap();
    assert_eq!(moved.welcome().node_id, q_id);
    drop(moved);

    // The relay between hosts on different replicas: z (A) to x (B), and
    // y (C) to z (A).
    let mut x_in = x.session.take_datagrams().unwrap();
    let mut z_in = z.session.take_datagrams().unwrap();
    let took = relayed(&z.session, &mut x_in, z.node_id, x.node_id).await;
    let took2 = relayed(&y.session, &mut z_in, y.node_id, z.node_id).await;
    eprintln!("relayed across replicas after {took:?} and {took2:?}");

    // x leaves B; while it is away y (on C) moves; x comes back on A with
    // its cached netmap and resumes with a delta that has y's move.
    wait_for(&mut x.session, Duration::from_secs(2), |s| {
        s.netmap().peer(q_id).is_some()
    })
    .await;
    let x_map = x.session.netmap().clone();
    let x_info = x.coordinator.clone();
    let x_id = x.node_id;
    drop(x_in);
    drop(x);
    let moved_to: SocketAddr = "192.0.2.77:4242".parse().unwrap();
    y.session.set_endpoints(vec![moved_to]).await.unwrap();
    wait_for(&mut z.session, Duration::from_secs(2), |s| {
        s.netmap()
            .peers()
            .any(|p| p.name == "y" && p.endpoints == [moved_to])
    })
    .await;
    let mut on_a = x_info.clone();
    on_a.addrs = vec![addrs[0].to_string()];
    let mut x2 = ControlClient::new()
        .unwrap()
        .connect(
            &on_a,
            &_kx,
            vec!["192.0.2.10:51820".parse().unwrap()],
            Some(x_map),
        )
        .await
        .unwrap();
    assert_eq!(x2.welcome().node_id, x_id);
    assert!(
        x2.resumed(),
        "a host moving to another replica resumes with a delta"
    );
    wait_for(&mut x2, Duration::from_secs(1), |s| {
        s.netmap()
            .peers()
            .any(|p| p.name == "y" && p.endpoints == [moved_to])
            && has_peer_online(s, "z")
    })
    .await;
    let mut x = x2;

    // A policy set through B is in force for y on C: y may reach nobody.
    let policy = "default: deny\nrules:\n  - allow: { from: [host:x], to: [host:z] }\n";
    let t = Instant::now();
    match admin(
        &dirs[1],
        AdminCommand::AclSet {
            text: policy.into(),
        },
    )
    .await
    {
        AdminReply::AclAccepted { version, .. } => assert_eq!(version, 1),
        other => panic!("{other:?}"),
    }
    let set = t.elapsed();
    let t = Instant::now();
    wait_for(&mut y.session, Duration::from_secs(1), |s| {
        s.netmap().is_empty()
            && s.netmap()
                .filter()
                .is_some_and(|f| f.default == weft_proto::policy::Action::Deny)
    })
    .await;
    let enforced = t.elapsed();
    eprintln!("policy set via B (took {set:?}) enforced on a host on C after {enforced:?}");
    assert!(enforced < Duration::from_secs(1));
    // Admin commands work against any replica: A lists the policy B set.
    match admin(&dirs[0], AdminCommand::AclGet).await {
        AdminReply::Acl(Some(v)) => assert_eq!(v.version, 1),
        other => panic!("{other:?}"),
    }
    // y cannot relay to z any more (not peers); x still reaches z.
    y.session.datagram_link().send(punch(z.node_id));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), z_in.next())
            .await
            .is_err(),
        "the policy holds across replicas"
    );

    // A node removed through C is gone for x (now on A) and its session
    // on A is closed.
    let t = Instant::now();
    match admin(&dirs[2], AdminCommand::NodeRemove { node: "z".into() }).await {
        AdminReply::NodeRemoved { .. } => {}
        other => panic!("{other:?}"),
    }
    wait_for(&mut x, Duration::from_secs(1), |s| s.netmap().is_empty()).await;
    eprintln!("removal via C seen by x on A after {:?}", t.elapsed());
    let ended = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            if z.session.next_change().await.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the removed node's session on A is closed");

    for c in coords {
        c.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_with_another_identity_is_refused() {
    init_tracing();
    let Some(etcd) = etcd_cluster::start() else {
        return;
    };
    let cfg = etcd_config(&etcd, "/identity");
    let root = tempfile::tempdir().unwrap();
    let dirs = shared_identity_dirs(root.path(), 1);
    let first = Coordinator::start(Config {
        store: StoreConfig::Etcd(cfg.clone()),
        ..Config::new(&dirs[0], "127.0.0.1:0".parse().unwrap())
    })
    .await
    .unwrap();
    let other = root.path().join("stranger");
    let e = match Coordinator::start(Config {
        store: StoreConfig::Etcd(cfg.clone()),
        ..Config::new(&other, "127.0.0.1:0".parse().unwrap())
    })
    .await
    {
        Ok(_) => panic!("a replica with its own identity must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("identity") && e.contains("tls-key.der") && e.contains("coordinator.key"),
        "{e}"
    );
    first.shutdown().await;
}

/// Not a test of its own: run by [`a_killed_replica_loses_no_acknowledged_join`]
/// as a separate process (the replica it kills), configured through
/// [`CHILD_ENV`]. Without it, returns at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    init_tracing();
    // DIR|LISTEN|ADVERTISE,..|ETCD,..|PREFIX
    let parts: Vec<&str> = spec.split('|').collect();
    let mut etcd = EtcdConfig::from_url(&format!("etcd://{}", parts[3])).unwrap();
    etcd.prefix = parts[4].into();
    etcd.timeout = Duration::from_secs(3);
    let mut c = Config::new(parts[0], parts[1].parse().unwrap());
    c.coalesce = Duration::from_millis(10);
    c.store = StoreConfig::Etcd(etcd);
    c.advertise = parts[2].split(',').map(str::to_string).collect();
    let coord = Coordinator::start(c).await.unwrap();
    println!("replica ready {}", coord.local_addr().unwrap());
    std::future::pending::<()>().await;
}

struct ChildReplica(Child);

impl Drop for ChildReplica {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dir: &Path, addrs: &[SocketAddr], etcd: &EtcdConfig) -> ChildReplica {
    let advertise: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let spec = format!(
        "{}|{}|{}|{}|{}",
        dir.display(),
        addrs[0],
        advertise.join(","),
        etcd.endpoints.join(","),
        etcd.prefix
    );
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "replica_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(
            std::fs::File::create(dir.with_extension("log"))
                .map(Stdio::from)
                .unwrap_or_else(|_| Stdio::null()),
        )
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if line.contains("replica ready") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("the replica process did not start");
    ChildReplica(child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_loses_no_acknowledged_join_and_its_hosts_fail_over() {
    init_tracing();
    let Some(etcd) = etcd_cluster::start() else {
        return;
    };
    let cfg = etcd_config(&etcd, "/killed");
    let root = tempfile::tempdir().unwrap();
    let dirs = shared_identity_dirs(root.path(), 3);
    let addrs = free_ports(3);
    // A: a separate process; B and C here.
    let mut a = Some(spawn_child(&dirs[0], &addrs, &cfg));
    let b = Coordinator::start(replica_config(&dirs[1], &addrs, 1, &cfg))
        .await
        .unwrap();
    let c = Coordinator::start(replica_config(&dirs[2], &addrs, 2, &cfg))
        .await
        .unwrap();
    // A watcher on C.
    let (_kw, mut watcher) = join(&c.create_token(None, None, vec![]).await.unwrap(), "w").await;
    // A token from A: its address first, so every join goes to A while it
    // lives.
    let token = match admin(
        &dirs[0],
        AdminCommand::TokenCreate {
            uses: None,
            expires_in_secs: None,
            tags: vec![],
        },
    )
    .await
    {
        AdminReply::TokenCreated { token, .. } => token,
        other => panic!("{other:?}"),
    };

    // A stream of joins, four at a time; A is killed after the first 20
    // are acknowledged.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let stream = {
        let token = token.clone();
        tokio::spawn(async move {
            let mut n = 0;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(14) {
                let mut batch = Vec::new();
                for _ in 0..4 {
                    n += 1;
                    let token = token.clone();
                    let name = format!("h{n}");
                    batch.push(tokio::spawn(async move {
                        let k = key();
                        let out = ControlClient::new()
                            .unwrap()
                            .join(&token, &k, &name, vec!["192.0.2.10:51820".parse().unwrap()])
                            .await;
                        (k, out)
                    }));
                }
                for j in batch {
                    let (k, out) = j.await.unwrap();
                    if let Ok(out) = out {
                        let _ = done_tx.send((k, out, Instant::now()));
                    }
                }
            }
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 20 {
        let got = tokio::time::timeout(Duration::from_secs(20), done_rx.recv())
            .await
            .unwrap()
            .unwrap();
        acked.push(got);
    }
    let killed_at = Instant::now();
    drop(a.take()); // SIGKILL
    eprintln!("killed replica A after {} acknowledged joins", acked.len());

    // The first eight hosts (sessions on A) fail over: each notices A is
    // gone and connects again, to B or C.
    let mut failovers = Vec::new();
    for (k, out, _) in acked.drain(..8).collect::<Vec<_>>() {
        let info = out.coordinator.clone();
        let id = out.node_id;
        let mut session = out.session;
        failovers.push(tokio::spawn(async move {
            loop {
                if session.next_change().await.is_err() {
                    break;
                }
            }
            let client = ControlClient::new().unwrap();
            loop {
                let netmap = session.netmap().clone();
                match client
                    .connect(
                        &info,
                        &k,
                        vec!["192.0.2.11:51820".parse().unwrap()],
                        Some(netmap),
                    )
                    .await
                {
                    Ok(s) => return (id, killed_at.elapsed(), s),
                    Err(e) => {
                        assert!(killed_at.elapsed() < Duration::from_secs(30), "{e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }));
    }
    let mut sessions = Vec::new();
    for f in failovers {
        let (id, took, s) = f.await.unwrap();
        eprintln!(
            "host {id} failed over after {took:?} ({})",
            if s.resumed() { "delta" } else { "full netmap" }
        );
        assert!(took < Duration::from_secs(10), "host {id} took {took:?}");
        sessions.push((id, s));
    }
    stream.await.unwrap();
    while let Ok(got) = done_rx.try_recv() {
        acked.push(got);
    }
    let after: Vec<_> = acked.iter().filter(|(_, _, t)| *t > killed_at).collect();
    eprintln!("{} joins acknowledged after the kill", after.len());
    assert!(!after.is_empty(), "joins go on on the other replicas");

    // Every acknowledged join is in the store, as B sees it.
    let nodes = match admin(&dirs[1], AdminCommand::NodeList).await {
        AdminReply::Nodes(n) => n,
        other => panic!("{other:?}"),
    };
    let have: std::collections::HashSet<_> = nodes.iter().map(|n| n.id).collect();
    for (_, out, _) in &acked {
        assert!(
            have.contains(&out.node_id),
            "acknowledged join {} lost",
            out.node_id
        );
    }
    for (id, _) in &sessions {
        assert!(have.contains(id));
    }
    // The watcher on C sees the failed-over hosts online again, with the
    // endpoints they reported to their new replica.
    let moved: Vec<weft_proto::NodeId> = sessions.iter().map(|(id, _)| *id).collect();
    wait_for(&mut watcher.session, Duration::from_secs(3), |s| {
        moved.iter().all(|id| {
            s.netmap().peer(*id).is_some_and(|p| {
                p.online && p.endpoints == ["192.0.2.11:51820".parse::<SocketAddr>().unwrap()]
            })
        })
    })
    .await;
    // Relayed traffic flows between a failed-over host and the watcher.
    let mut w_in = watcher.session.take_datagrams().unwrap();
    let (id, s) = &sessions[0];
    let took = relayed(s, &mut w_in, *id, watcher.node_id).await;
    eprintln!("relay from a failed-over host after {took:?}");
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_ride_out_an_etcd_outage_and_catch_up() {
    init_tracing();
    let Some(mut etcd) = etcd_cluster::start() else {
        return;
    };
    let cfg = etcd_config(&etcd, "/outage");
    let root = tempfile::tempdir().unwrap();
    let dirs = shared_identity_dirs(root.path(), 2);
    let addrs = free_ports(2);
    let a = Coordinator::start(replica_config(&dirs[0], &addrs, 0, &cfg))
        .await
        .unwrap();
    let b = Coordinator::start(replica_config(&dirs[1], &addrs, 1, &cfg))
        .await
        .unwrap();
    let token_a = a.create_token(None, None, vec![]).await.unwrap();
    let (_kx, mut x) = join(&b.create_token(None, None, vec![]).await.unwrap(), "x").await;
    let (_ky, y) = join(&token_a, "y").await;
    wait_for(&mut x.session, Duration::from_secs(2), |s| {
        has_peer_online(s, "y")
    })
    .await;

    // Quorum lost: sessions stay up, the relay between replicas still
    // works (it does not need etcd), joins are refused.
    etcd.kill(1);
    etcd.kill(2);
    let mut x_in = x.session.take_datagrams().unwrap();
    relayed(&y.session, &mut x_in, y.node_id, x.node_id).await;
    let refused = ControlClient::new()
        .unwrap()
        .join(&token_a, &key(), "z", vec![])
        .await;
    assert!(refused.is_err(), "no join without quorum");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        has_peer_online(&x.session, "y"),
        "a host stays online while etcd is out"
    );

    // Back: the watches are set up again and changes flow again.
    etcd.start_member(1);
    etcd.start_member(2);
    etcd.wait_healthy(&[0, 1, 2], Duration::from_secs(30));
    let t = Instant::now();
    let (_kz, _z) = loop {
        match ControlClient::new()
            .unwrap()
            .join(
                &token_a,
                &key(),
                "z",
                vec!["192.0.2.10:51820".parse().unwrap()],
            )
            .await
        {
            Ok(out) => break (key(), out),
            Err(e) => {
                assert!(t.elapsed() < Duration::from_secs(20), "{e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let t = Instant::now();
    wait_for(&mut x.session, Duration::from_secs(10), |s| {
        has_peer_online(s, "z")
    })
    .await;
    eprintln!(
        "after the outage, a join on A reached B in {:?}",
        t.elapsed()
    );
    drop(y);
    a.shutdown().await;
    b.shutdown().await;
}

/// Lifecycle across replicas: a node that goes offline expires in the view
/// of a host on the other replica, and comes back when an admin on that
/// replica says so; a named admin credential made on one replica works on
/// the other, and its revocation too.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_and_admin_credentials_hold_across_replicas() {
    init_tracing();
    let Some(etcd) = etcd_cluster::start() else {
        return;
    };
    let cfg = etcd_config(&etcd, "/lifecycle");
    let root = tempfile::tempdir().unwrap();
    let dirs = shared_identity_dirs(root.path(), 2);
    let addrs = free_ports(2);
    let mut coords = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut c = replica_config(dir, &addrs, i, &cfg);
        c.expiry = weft_coordinator::expiry::ExpiryRules {
            node_expiry: Some(Duration::from_secs(2)),
            grace: Duration::from_secs(3_600),
        };
        coords.push(Coordinator::start(c).await.unwrap());
    }
    let (_ka, mut a) = join(
        &coords[0].create_token(None, None, vec![]).await.unwrap(),
        "a",
    )
    .await;
    let (_kb, b) = join(
        &coords[1].create_token(None, None, vec![]).await.unwrap(),
        "b",
    )
    .await;
    wait_for(&mut a.session, Duration::from_secs(5), |s| {
        has_peer_online(s, "b")
    })
    .await;
    b.session.close();
    wait_for(&mut a.session, Duration::from_secs(15), |s| {
        s.netmap().peer(b.node_id).is_none()
    })
    .await;
    let AdminReply::Nodes(nodes) = admin(&dirs[1], AdminCommand::NodeList).await else {
        panic!("no nodes")
    };
    let listed = nodes.iter().find(|n| n.name == "b").unwrap();
    assert!(listed.expired_at.is_some(), "{listed:?}");
    admin(
        &dirs[1],
        AdminCommand::NodeSet {
            node: "b".into(),
            expiry: weft_proto::msg::NodeExpiry::Never,
        },
    )
    .await;
    wait_for(&mut a.session, Duration::from_secs(5), |s| {
        s.netmap().peer(b.node_id).is_some()
    })
    .await;

    let AdminReply::AdminCreated { secret, .. } =
        admin(&dirs[0], AdminCommand::AdminCreate { name: "ops".into() }).await
    else {
        panic!("no credential")
    };
    let root_on_1 = AdminCredential::load(&weft_coordinator::state::admin_path(&dirs[1])).unwrap();
    let ops = AdminCredential {
        coordinator: vec![addrs[1].to_string()],
        secret: secret.0,
        ..root_on_1
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while ops.request(AdminCommand::NodeList).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "replica 1 never took the credential made on replica 0"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    admin(&dirs[0], AdminCommand::AdminRevoke { name: "ops".into() }).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while ops.request(AdminCommand::NodeList).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "replica 1 still takes a revoked credential"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for c in coords {
        c.shutdown().await;
    }
}
