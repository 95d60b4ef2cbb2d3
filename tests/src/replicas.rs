//! Coordinator replicas for a lab [`Cluster`]: its coordinator's store
//! moved into a three-member etcd cluster (`weft coordinator migrate`)
//! running in the coordinator's namespace, then three `weft coordinator`
//! processes on that etcd at [`REPLICA_ADDRS`], sharing the first one's
//! identity (its state dir's key, certificate and admin credential copied
//! to the others).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;

use crate::cluster::{Cluster, COORDINATOR_ADDR};
use crate::{wait_for, Proc};

/// The replicas' addresses: the first is the coordinator's usual one.
pub const REPLICA_ADDRS: [&str; 3] = [COORDINATOR_ADDR, "203.0.113.1:7453", "203.0.113.1:7463"];
pub const ETCD: &str = "/usr/bin/etcd";

pub struct Replicas {
    pub etcd: Vec<Proc>,
    pub replicas: Vec<Option<Proc>>,
    pub dirs: Vec<PathBuf>,
    /// `etcd://...`
    pub store: String,
}

/// Stops `c`'s coordinator, starts etcd, migrates the coordinator's store
/// into it and starts the three replicas.
pub fn replicate(c: &mut Cluster) -> anyhow::Result<Replicas> {
    let lab = c.lab;
    let ns = c.coordinator_ns.clone();
    c.stop_coordinator();
    let clients: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", 23790 + i)).collect();
    let peers: Vec<String> = (0..3).map(|i| format!("127.0.0.1:{}", 23800 + i)).collect();
    let initial: Vec<String> = (0..3)
        .map(|i| format!("m{i}=http://{}", peers[i]))
        .collect();
    let mut etcd = Vec::new();
    for i in 0..3 {
        let data = lab.tempdir().join(format!("etcd-m{i}"));
        let args = [
            "--name".to_string(),
            format!("m{i}"),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
            format!("--listen-client-urls=http://{}", clients[i]),
            format!("--advertise-client-urls=http://{}", clients[i]),
            format!("--listen-peer-urls=http://{}", peers[i]),
            format!("--initial-advertise-peer-urls=http://{}", peers[i]),
            format!("--initial-cluster={}", initial.join(",")),
            "--initial-cluster-state=new".into(),
            "--heartbeat-interval=100".into(),
            "--election-timeout=1000".into(),
            "--log-level=warn".into(),
        ];
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        etcd.push(lab.spawn(
            &ns,
            ETCD,
            &argv,
            &[("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)],
        ));
    }
    let store = format!("etcd://{}", clients.join(","));
    let weft = c.weft.to_string_lossy().into_owned();
    let from = c.coordinator_dir.to_string_lossy().into_owned();
    // Until etcd has a leader, the migration is refused (no quorum).
    wait_for(Duration::from_secs(30), "weft coordinator migrate", || {
        lab.try_ok(
            &ns,
            &[
                &weft,
                "coordinator",
                "migrate",
                "--from",
                &from,
                "--to",
                &store,
            ],
        )
        .ok()
    })?;
    let mut dirs = vec![c.coordinator_dir.clone()];
    for i in 1..3 {
        let d = lab.tempdir().join(format!("replica{i}"));
        std::fs::create_dir_all(&d).context("replica state dir")?;
        for f in [
            "tls-key.der",
            "tls-cert.der",
            "coordinator.key",
            "admin.json",
        ] {
            std::fs::copy(c.coordinator_dir.join(f), d.join(f))
                .with_context(|| format!("copy {f} to replica {i}"))?;
        }
        dirs.push(d);
    }
    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Some(start_replica(c, &dirs, &store, i)?));
    }
    Ok(Replicas {
        etcd,
        replicas,
        dirs,
        store,
    })
}

/// Starts replica `i`: its own address first in the tokens it makes.
fn start_replica(c: &Cluster, dirs: &[PathBuf], store: &str, i: usize) -> anyhow::Result<Proc> {
    let dir = dirs[i].to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "coordinator".into(),
        "--state-dir".into(),
        dir,
        "--listen".into(),
        REPLICA_ADDRS[i].into(),
        "--store".into(),
        store.into(),
    ];
    for k in 0..3 {
        args.push("--advertise".into());
        args.push(REPLICA_ADDRS[(i + k) % 3].into());
    }
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = c.lab.spawn(
        &c.coordinator_ns,
        &c.weft.to_string_lossy(),
        &argv,
        &[("WEFT_LOG", "info")],
    );
    wait_for(Duration::from_secs(15), "a replica to listen", || {
        if !p.is_running() {
            return Some(Err(anyhow::anyhow!("replica {i} exited: {}", p.stderr())));
        }
        p.stderr().contains("coordinator started").then_some(Ok(()))
    })??;
    Ok(p)
}

impl Replicas {
    /// Kills replica `i` with SIGKILL.
    pub fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        let p = self.replicas[i].take().context("replica not running")?;
        p.signal(libc::SIGKILL);
        wait_for(Duration::from_secs(5), "the replica to die", || {
            (!p.is_running()).then_some(())
        })?;
        p.stop();
        Ok(())
    }
}

/// Host `i` of `c` joins again from scratch (a new key and node) with
/// `token`, through `weft join`.
pub fn rejoin(c: &mut Cluster, i: usize, token: &str) -> anyhow::Result<()> {
    c.stop_agent(i);
    let h = &c.hosts[i];
    let _ = std::fs::remove_dir_all(&h.state_dir);
    let token_file = c.lab.tempdir().join(format!("{}.token2", h.name));
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&token_file)
            .context("write the token file")?;
        writeln!(f, "{token}").context("write the token file")?;
    }
    let args = [
        "join".to_string(),
        "--token-file".into(),
        token_file.to_string_lossy().into_owned(),
        "--name".into(),
        format!("{}-r", h.name),
        "--state-dir".into(),
        h.state_dir.to_string_lossy().into_owned(),
        "--interface".into(),
        h.interface.clone(),
    ];
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = c.lab.spawn(
        &h.ns,
        &c.weft.to_string_lossy(),
        &argv,
        &[("WEFT_LOG", "info")],
    );
    let name = h.name.clone();
    wait_for(
        Duration::from_secs(15),
        &format!("agent {name} to join"),
        || {
            if !p.is_running() {
                return Some(Err(anyhow::anyhow!("agent {name} exited: {}", p.stderr())));
            }
            c.status(i).ok().map(|_| Ok(()))
        },
    )??;
    c.hosts[i].agent = Some(p);
    Ok(())
}
