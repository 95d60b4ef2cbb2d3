//! Crash safety: `kill -9` a real coordinator process again and again during
//! a stream of joins; after each restart every acknowledged join is present
//! with the same id and subnet, and no subnet is held twice.
//!
//! The coordinator runs in a child process: this same test binary, started
//! with only the `crash_child` test selected and the state dir in the
//! environment.

#![allow(clippy::unwrap_used, reason = "test helpers should panic on failure")]

mod support;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{key, ControlClient};
use weft_coordinator::admin::AdminCredential;
use weft_coordinator::{Config, Coordinator};
use weft_proto::msg::{AdminCommand, AdminReply};
use weft_proto::{HostSubnet, NodeId};

const CHILD_DIR: &str = "WEFT_CRASH_CHILD_DIR";
const CHILD_LISTEN: &str = "WEFT_CRASH_CHILD_LISTEN";

/// The coordinator process. A no-op unless started by the crash test.
#[test]
fn crash_child() {
    let (Some(dir), Some(listen)) = (std::env::var_os(CHILD_DIR), std::env::var_os(CHILD_LISTEN))
    else {
        return;
    };
    let listen: SocketAddr = listen.to_str().unwrap().parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut config = Config::new(dir, listen);
        config.pool = "10.200.0.0/16".parse().unwrap();
        config.subnet_prefix = 28;
        let _c = Coordinator::start(config).await.unwrap();
        std::future::pending::<()>().await;
    });
}

fn spawn_child(dir: &Path, listen: SocketAddr) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR, dir)
        .env(CHILD_LISTEN, listen.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn admin(dir: &Path, cmd: AdminCommand) -> Option<AdminReply> {
    let cred = AdminCredential::load(&dir.join("admin.json")).ok()?;
    tokio::time::timeout(Duration::from_millis(700), cred.request(cmd))
        .await
        .ok()?
        .ok()
}

async fn wait_ready(dir: &Path) -> Vec<weft_proto::msg::NodeInfo> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(AdminReply::Nodes(n)) = admin(dir, AdminCommand::NodeList).await {
            return n;
        }
        assert!(Instant::now() < deadline, "coordinator did not come up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_joins_survive_kill_9() {
    support::init_tracing();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let listen = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap()
    };
    let mut child = spawn_child(&dir, listen);
    wait_ready(&dir).await;
    let Some(AdminReply::TokenCreated { token, .. }) = admin(
        &dir,
        AdminCommand::TokenCreate {
            uses: None,
            expires_in_secs: None,
            tags: vec![],
        },
    )
    .await
    else {
        panic!("token create failed");
    };
    let token = Arc::new(token);
    let acked: Arc<Mutex<HashMap<NodeId, HostSubnet>>> = Arc::default();
    let client = ControlClient::new().unwrap();
    let mut seq = 0u64;

    for round in 0..6 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut joiners = Vec::new();
        for w in 0..6 {
            let (token, acked, client, stop) =
                (token.clone(), acked.clone(), client.clone(), stop.clone());
            seq += 1;
            let base = seq * 10_000;
            joiners.push(tokio::spawn(async move {
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    i += 1;
                    let name = format!("r{round}-w{w}-{}", base + i);
                    let res = tokio::time::timeout(
                        Duration::from_millis(1500),
                        client.join(&token, &key(), &name, vec![]),
                    )
                    .await;
                    match res {
                        Ok(Ok(out)) => {
                            acked.lock().unwrap().insert(out.node_id, out.subnet);
                            out.session.close();
                        }
                        _ => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            }));
        }
        // Let joins flow, then kill at an arbitrary instant.
        let delay = 150 + (round * 97) % 300;
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for j in joiners {
            j.await.unwrap();
        }

        child = spawn_child(&dir, listen);
        let nodes = wait_ready(&dir).await;
        let present: HashMap<NodeId, HostSubnet> = nodes.iter().map(|n| (n.id, n.subnet)).collect();
        let acked_now = acked.lock().unwrap().clone();
        for (id, subnet) in &acked_now {
            assert_eq!(
                present.get(id),
                Some(subnet),
                "round {round}: acknowledged node {id} lost or changed after kill -9"
            );
        }
        let unique: HashSet<HostSubnet> = nodes.iter().map(|n| n.subnet).collect();
        assert_eq!(
            unique.len(),
            nodes.len(),
            "round {round}: a subnet is held twice"
        );
        assert!(
            !acked_now.is_empty(),
            "round {round}: no join was acknowledged"
        );
    }
    child.kill().unwrap();
    child.wait().unwrap();
    eprintln!(
        "{} acknowledged joins survived 6 kill -9",
        acked.lock().unwrap().len()
    );
}
