//! A real `dockerd` in a lab host's network namespace, for the Docker
//! plugin tests. Each daemon has its own data root, exec root, pid file
//! and API socket, and a private mount namespace in which a per-host
//! directory is bind-mounted over `/run/docker/plugins` (where dockerd
//! looks for plugin sockets), so two daemons on one machine each find
//! their own host's `weft docker-plugin`. Only the network namespace is
//! entered (`nsenter --net`): `ip netns exec` would remount `/sys` and hide
//! the cgroup mounts dockerd needs.
//!
//! [`Dockerd`] removes its containers and stops the daemon (and the
//! containerd it started) when dropped, also while a panic unwinds.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cluster::seen_source;
use crate::wait_for;

/// Debian's docker.io daemon.
pub const DOCKERD: &str = "/usr/sbin/dockerd";
/// The name of the image [`Dockerd::import_busybox`] makes.
pub const BUSYBOX_IMAGE: &str = "weft-busybox";
/// How long dockerd gets to stop its containers and exit before SIGKILL.
const DOCKERD_GRACE: Duration = Duration::from_secs(30);

/// One dockerd; see the module docs.
pub struct Dockerd {
    pub ns: String,
    /// Holds data-root, exec-root, the API socket and the log.
    pub dir: PathBuf,
    /// Mounted over `/run/docker/plugins` for this daemon only.
    pub plugins_dir: PathBuf,
    child: Option<Child>,
    args: Vec<String>,
}

impl Dockerd {
    /// Starts a daemon in `ns` with its files under `dir` and waits for its API.
    pub fn start(ns: &str, dir: &Path) -> anyhow::Result<Dockerd> {
        let plugins_dir = dir.join("plugins");
        for d in [dir.join("data"), dir.join("exec"), plugins_dir.clone()] {
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
        // The mount point must exist on the host for the bind mount.
        std::fs::create_dir_all("/run/docker/plugins").context("create /run/docker/plugins")?;
        let p = |x: &str| dir.join(x).to_string_lossy().into_owned();
        let args = vec![
            format!("--data-root={}", p("data")),
            format!("--exec-root={}", p("exec")),
            format!("--pidfile={}", p("docker.pid")),
            format!("--host=unix://{}", p("docker.sock")),
            "--bridge=none".into(),
            "--iptables=false".into(),
            "--ip6tables=false".into(),
            "--ip-masq=false".into(),
            // No overlay filesystem needed: plain copies are fine for a few small containers.
            "--storage-driver=vfs".into(),
        ];
        let mut d = Dockerd {
            ns: ns.to_string(),
            dir: dir.to_path_buf(),
            plugins_dir,
            child: None,
            args,
        };
        d.spawn()?;
        Ok(d)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("dockerd.log"))
            .context("open the dockerd log")?;
        // `unshare` and `sh` exec into nsenter and then dockerd: the child's
        // pid is dockerd's.
        let script = format!(
            "mount --bind \"$0\" /run/docker/plugins && exec nsenter --net=/run/netns/{} {DOCKERD} \"$@\"",
            self.ns
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .arg(&self.plugins_dir)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("cannot start dockerd")?;
        self.child = Some(child);
        let sock = self.dir.join("docker.sock");
        wait_for(Duration::from_secs(30), "dockerd to answer", || {
            if let Some(c) = self.child.as_mut() {
                if !matches!(c.try_wait(), Ok(None)) {
                    return Some(Err(anyhow::anyhow!("dockerd exited: {}", self.log_tail())));
                }
            }
            (sock.exists() && self.docker(&["version"]).is_ok()).then_some(Ok(()))
        })?
    }

    /// Runs `docker ARGS` against this daemon; its stdout.
    pub fn docker(&self, args: &[&str]) -> anyhow::Result<String> {
        let host = format!("unix://{}", self.dir.join("docker.sock").display());
        let out = Command::new("docker")
            .arg("-H")
            .arg(&host)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run docker")?;
        if !out.status.success() {
            bail!(
                "`docker {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Imports an image of busybox ([`crate::images::busybox_rootfs_tar`],
    /// made under `dir`); no registry needed.
    pub fn import_busybox(&self, dir: &Path) -> anyhow::Result<()> {
        let tar = crate::images::busybox_rootfs_tar(dir)?;
        let host = format!("unix://{}", self.dir.join("docker.sock").display());
        let out = Command::new("docker")
            .args(["-H", &host, "import"])
            .arg(&tar)
            .arg(BUSYBOX_IMAGE)
            .stdin(Stdio::null())
            .output()
            .context("run docker import")?;
        if !out.status.success() {
            bail!("docker import: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The main pid of running container `name`.
    pub fn container_pid(&self, name: &str) -> anyhow::Result<u32> {
        let pid = self.docker(&["inspect", "-f", "{{.State.Pid}}", name])?;
        let pid: u32 = pid.parse().with_context(|| format!("pid {pid:?}"))?;
        anyhow::ensure!(pid != 0, "container {name} is not running");
        Ok(pid)
    }

    /// Stops the daemon (SIGTERM: it stops its containers and containerd),
    /// SIGKILL after a grace period; then any containerd or shim it left.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), libc::SIGTERM);
            let deadline = Instant::now() + DOCKERD_GRACE;
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(c.try_wait(), Ok(None)) {
                eprintln!("dockerd {}: did not stop; killing it", c.id());
                let _ = c.kill();
            }
            let _ = c.wait();
        }
        // Processes our dockerd started name our exec root: only those.
        let exec_root = self.dir.join("exec").to_string_lossy().into_owned();
        for pid in pids_mentioning(&exec_root) {
            eprintln!("dockerd {}: killing leftover process {pid}", self.ns);
            signal(pid, libc::SIGKILL);
        }
    }

    /// Stops and starts the daemon again with the same files.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        let _ = std::fs::remove_file(self.dir.join("docker.pid"));
        self.spawn()
    }

    /// The last lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("module=grpc"))
            .collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- dockerd in {}:\n{}", self.ns, self.log_tail());
        }
        if self.child.is_some() {
            if let Ok(ids) = self.docker(&["ps", "-aq"]) {
                for id in ids.split_whitespace() {
                    let _ = self.docker(&["rm", "-f", id]);
                }
            }
        }
        self.stop();
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(pid, sig) };
    }
}

/// Processes whose command line contains `needle`.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .collect()
}

/// Starts `weft docker-plugin` for lab host `host`, its socket in `d`'s
/// plugin directory, and waits for the socket.
pub fn start_plugin(
    lab: &crate::Lab,
    weft: &Path,
    host: &crate::cluster::Host,
    d: &Dockerd,
) -> crate::Proc {
    let socket = d.plugins_dir.join("weft.sock");
    let p = lab.spawn(
        &host.ns,
        &weft.to_string_lossy(),
        &[
            "docker-plugin",
            "--state-dir",
            &host.state_dir.to_string_lossy(),
            "--socket",
            &socket.to_string_lossy(),
            "--cni-path",
            crate::cluster::CNI_PATH,
        ],
        &[("WEFT_LOG", "info")],
    );
    wait_for(Duration::from_secs(10), "the plugin's socket", || {
        socket.exists().then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}: {}", p.stderr()));
    p
}

/// A dockerd for lab host `host` (files under `dir`) with its
/// `weft docker-plugin`, the busybox image, and the network the README
/// makes: `docker network create -d weft --ipam-driver weft weft`.
pub fn with_weft_network(
    lab: &crate::Lab,
    weft: &Path,
    host: &crate::cluster::Host,
    dir: &Path,
) -> anyhow::Result<(Dockerd, crate::Proc)> {
    let d = Dockerd::start(&host.ns, dir)?;
    let plugin = start_plugin(lab, weft, host, &d);
    d.import_busybox(lab.tempdir())?;
    d.docker(&[
        "network",
        "create",
        "-d",
        "weft",
        "--ipam-driver",
        "weft",
        "weft",
    ])
    .with_context(|| format!("the plugin said: {}", plugin.stderr()))?;
    Ok((d, plugin))
}

/// A container's network namespace, named under `/run/netns` (so lab
/// helpers such as [`crate::cluster::seen_source`] can enter it) until dropped.
pub struct NamedNetns {
    pub name: String,
}

impl NamedNetns {
    pub fn attach(name: &str, pid: u32) -> anyhow::Result<NamedNetns> {
        crate::try_run(&["ip", "netns", "attach", name, &pid.to_string()])?;
        Ok(NamedNetns {
            name: name.to_string(),
        })
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        // Removes the name only; the namespace lives on with its container.
        let _ = crate::try_run(&["ip", "netns", "del", &self.name]);
    }
}

// Container helpers for the tests; like the lab's methods they panic with
// the failing command's output.

/// Runs a long-lived container `name` on `d` (restarted with its daemon),
/// with the host's gateway as DNS server; its address.
pub fn run_container(d: &Dockerd, name: &str, gateway: Ipv4Addr) -> Ipv4Addr {
    let gw = gateway.to_string();
    d.docker(&[
        "run",
        "-d",
        "--name",
        name,
        "--network",
        "weft",
        "--dns",
        &gw,
        "--restart",
        "always",
        "--stop-timeout",
        "2",
        BUSYBOX_IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; while true; do sleep 1; done",
    ])
    .unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    container_addr(d, name)
}

/// The address of container `name` on its (one) network.
pub fn container_addr(d: &Dockerd, name: &str) -> Ipv4Addr {
    let a = d
        .docker(&[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            name,
        ])
        .expect("inspect");
    a.parse()
        .unwrap_or_else(|_| panic!("{name} has address {a:?}"))
}

/// Sends `msg` from container `from` (on `df`) to container `to` (on `dt`,
/// at `to_addr`, or a name) over TCP with busybox `nc`; the receiver
/// writes what it got to a file, which must then hold `msg`.
pub fn exchange(df: &Dockerd, from: &str, dt: &Dockerd, to: &str, target: &str, msg: &str) {
    let port = 7001;
    let got = format!("/tmp/got-{msg}");
    dt.docker(&[
        "exec",
        "-d",
        to,
        "sh",
        "-c",
        &format!("nc -l -p {port} > {got}"),
    ])
    .expect("start the receiver");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let sent = df.docker(&[
            "exec",
            from,
            "sh",
            "-c",
            &format!("echo {msg} | nc -w 3 {target} {port}"),
        ]);
        std::thread::sleep(Duration::from_millis(300));
        let received = dt.docker(&["exec", to, "cat", &got]).unwrap_or_default();
        if received.trim() == msg {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{from} -> {to} ({target}): {msg:?} not received (send: {sent:?}, got {received:?})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The source address container `to` sees for a connection from `from`.
pub fn source_seen(
    df: &Dockerd,
    from: &str,
    dt: &Dockerd,
    to: &str,
    to_addr: Ipv4Addr,
    tag: &str,
) -> IpAddr {
    let a = NamedNetns::attach(
        &format!("wdk{}-{tag}-a", std::process::id()),
        df.container_pid(from).expect("pid"),
    )
    .expect("attach");
    let b = NamedNetns::attach(
        &format!("wdk{}-{tag}-b", std::process::id()),
        dt.container_pid(to).expect("pid"),
    )
    .expect("attach");
    wait_for(
        Duration::from_secs(15),
        "a connection between the containers",
        || seen_source(&a.name, &b.name, to_addr, 7002).ok(),
    )
    .expect("connect")
}

/// The addresses host-local has leased in `dir` (one file per address).
pub fn leases(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default()
}
