//! A three-member etcd cluster on loopback for the etcd store's tests:
//! distinct client and peer ports, data dirs in a temp dir, every member a
//! child process this harness started. Dropping the cluster (at the end of
//! a test, or while a failing test unwinds) kills those children, by their
//! own handles, and removes the temp dir.
//!
//! Without `/usr/bin/etcd` (Debian's `etcd-server`) a test is skipped,
//! unless `CI` is set: then it fails.

#![allow(dead_code, reason = "each test binary uses part of the harness")]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ETCD: &str = "/usr/bin/etcd";
pub const MEMBERS: usize = 3;

pub struct Member {
    pub name: String,
    pub client: SocketAddr,
    pub peer: SocketAddr,
    child: Option<Child>,
}

pub struct Cluster {
    dir: tempfile::TempDir,
    pub members: Vec<Member>,
}

/// The cluster, or `None` (the test should return) when etcd is not
/// installed outside CI.
pub fn start() -> Option<Cluster> {
    if !Path::new(ETCD).exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{ETCD} is missing; install Debian's etcd-server (.ci/run does)"
        );
        eprintln!("skipped: {ETCD} is missing (apt-get install etcd-server)");
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ports = free_ports(2 * MEMBERS);
    let members: Vec<Member> = (0..MEMBERS)
        .map(|i| Member {
            name: format!("m{i}"),
            client: ports[2 * i],
            peer: ports[2 * i + 1],
            child: None,
        })
        .collect();
    let mut cluster = Cluster { dir, members };
    for i in 0..MEMBERS {
        cluster.start_member(i);
    }
    cluster.wait_healthy(&(0..MEMBERS).collect::<Vec<_>>(), Duration::from_secs(30));
    Some(cluster)
}

/// Ports free now (bound and released at once; the kernel does not hand
/// them out again soon).
fn free_ports(n: usize) -> Vec<SocketAddr> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    held.iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect()
}

impl Cluster {
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client.to_string()).collect()
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.members[i].name)
    }

    /// Starts member `i` (again, after [`Cluster::kill`]: it keeps its
    /// data dir and rejoins).
    pub fn start_member(&mut self, i: usize) {
        assert!(self.members[i].child.is_none(), "member {i} runs already");
        let initial: Vec<String> = self
            .members
            .iter()
            .map(|m| format!("{}=http://{}", m.name, m.peer))
            .collect();
        let m = &self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("{}.log", m.name)))
            .expect("member log");
        let child = Command::new(ETCD)
            .arg("--name")
            .arg(&m.name)
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .arg(format!("--listen-client-urls=http://{}", m.client))
            .arg(format!("--advertise-client-urls=http://{}", m.client))
            .arg(format!("--listen-peer-urls=http://{}", m.peer))
            .arg(format!("--initial-advertise-peer-urls=http://{}", m.peer))
            .arg(format!("--initial-cluster={}", initial.join(",")))
            .arg("--initial-cluster-state=new")
            .arg(format!(
                "--initial-cluster-token=weft-test-{}",
                std::process::id()
            ))
            .args(["--heartbeat-interval=100", "--election-timeout=1000"])
            .args(["--logger=zap", "--log-level=warn"])
            .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start etcd");
        self.members[i].child = Some(child);
    }

    /// Kills member `i` (SIGKILL) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits until every member in `which` says it is healthy (it has a
    /// leader, so the cluster has quorum).
    pub fn wait_healthy(&mut self, which: &[usize], within: Duration) {
        let deadline = Instant::now() + within;
        for &i in which {
            loop {
                if healthy(self.members[i].client) {
                    break;
                }
                if let Some(c) = self.members[i].child.as_mut() {
                    if let Ok(Some(status)) = c.try_wait() {
                        panic!("etcd member {i} exited ({status}): {}", self.log(i));
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {i} not healthy within {within:?}: {}",
                    self.log(i)
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }

    /// The tail of member `i`'s log, for failure messages.
    pub fn log(&self, i: usize) -> String {
        let text = std::fs::read_to_string(
            self.dir
                .path()
                .join(format!("{}.log", self.members[i].name)),
        )
        .unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or_default().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// `GET /health` on a member's client port.
fn healthy(client: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&client, Duration::from_millis(300)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.contains("\"health\":\"true\"")
}
