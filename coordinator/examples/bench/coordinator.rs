//! The coordinator under test: a child process (so its CPU and RSS are its
//! own, and `kill -9` is real), and admin commands to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use weft_coordinator::admin::AdminCredential;
use weft_coordinator::{Config, Coordinator};
use weft_proto::msg::{AdminCommand, AdminReply};

/// The child process: just a coordinator, on `store`.
pub fn serve(dir: PathBuf, listen: SocketAddr, store: String) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut config = Config::new(dir, listen);
        // To see a larger cluster's keep-alive renewals with fewer hosts.
        if let Some(us) = std::env::var("BENCH_KEEPALIVE_PER_HOST_US")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            config.keepalive_per_host = std::time::Duration::from_micros(us);
        }
        if store != "redb" {
            let mut etcd = weft_coordinator::store::etcd::EtcdConfig::from_url(&store).unwrap();
            // A fresh prefix per run: earlier runs' keys do not count. The
            // parent passes its own pid, so a restarted child finds them.
            etcd.prefix = format!(
                "/weft-bench-{}",
                std::env::var("BENCH_PREFIX").unwrap_or_default()
            );
            config.store = weft_coordinator::StoreConfig::Etcd(etcd);
        }
        let _c = Coordinator::start(config).await.unwrap();
        std::future::pending::<()>().await;
    });
}

/// A running coordinator child; killed (SIGKILL) when dropped.
pub struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    pub fn start(dir: &Path, listen: SocketAddr, store: &str) -> Proc {
        Proc(
            Command::new(std::env::current_exe().unwrap())
                .args(["serve", dir.to_str().unwrap(), &listen.to_string(), store])
                .env("BENCH_PREFIX", std::process::id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }

    /// `kill -9`, then the same coordinator again on the same state.
    pub fn restart(&mut self, dir: &Path, listen: SocketAddr, store: &str) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        *self = Proc::start(dir, listen, store);
    }

    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Resident set size in KiB.
    pub fn rss_kb(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        s.lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// User + system CPU seconds.
    pub fn cpu_secs(&self) -> f64 {
        let s = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        let after = &s[s.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        ticks as f64 / 100.0
    }
}

/// One admin command, or `None` if it failed or took over `within`.
pub async fn admin(dir: &Path, cmd: AdminCommand, within: Duration) -> Option<AdminReply> {
    let cred = AdminCredential::load(&dir.join("admin.json")).ok()?;
    tokio::time::timeout(within, cred.request(cmd))
        .await
        .ok()?
        .ok()
}

/// Waits for the coordinator to answer, then creates a reusable token with
/// `tags`.
pub async fn token(dir: &Path, tags: Vec<String>) -> String {
    loop {
        let cmd = AdminCommand::TokenCreate {
            uses: None,
            expires_in_secs: None,
            tags: tags.clone(),
        };
        if let Some(AdminReply::TokenCreated { token, .. }) =
            admin(dir, cmd, Duration::from_secs(2)).await
        {
            return token;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
