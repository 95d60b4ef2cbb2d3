//! [`Lab`]: namespaces, links, addresses and processes of one test, removed
//! together.

use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;

use crate::cmd::{run, run_ok, try_run};
use crate::registry::{self, Resources};

/// How long a stopped process gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// Longest Linux interface name.
const IFNAMSIZ_MAX: usize = 15;

/// One test's namespaces, processes, files and temp dir. Everything is
/// removed when the lab is dropped (also while a panic unwinds) or when the
/// process gets SIGINT/SIGTERM. Methods panic with the failing command's
/// stderr when a setup step fails.
///
/// Interface names inside a lab namespace are private to it (`eth0` in
/// every host is fine); names that are global on the machine, such as a
/// userspace WireGuard interface (its UAPI socket lives in
/// `/var/run/wireguard`), come from [`Lab::name`].
pub struct Lab {
    id: u64,
    tag: String,
    dir: PathBuf,
}

/// The sysctls every lab namespace starts with, whatever the host has.
const NAMESPACE_SYSCTLS: [(&str, &str); 4] = [
    ("net.ipv4.ip_forward", "0"),
    ("net.ipv6.conf.all.forwarding", "0"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

impl Lab {
    /// A new, empty lab. `prefix` (1-4 ASCII alphanumerics) names what it is
    /// for; the lab's tag adds the process id and a counter.
    pub fn new(prefix: &str) -> Lab {
        assert!(
            (1..=4).contains(&prefix.len()) && prefix.chars().all(|c| c.is_ascii_alphanumeric()),
            "lab prefix must be 1-4 ASCII alphanumerics, got {prefix:?}"
        );
        registry::install_signal_handler();
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{prefix}{}-{id}", std::process::id() % 100_000);
        let dir = std::env::temp_dir().join(format!("weft-lab-{tag}"));
        // A leftover from an earlier process that was SIGKILLed with our pid.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .unwrap_or_else(|e| panic!("cannot create lab dir {}: {e}", dir.display()));
        registry::insert(
            id,
            Resources {
                dir: Some(dir.clone()),
                ..Resources::default()
            },
        );
        Lab { id, tag, dir }
    }

    /// The lab's unique tag, e.g. `wt1234-0`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// A machine-wide unique name: the tag followed by `suffix`. Panics if
    /// it would not fit an interface name (15 bytes).
    pub fn name(&self, suffix: &str) -> String {
        let name = format!("{}{suffix}", self.tag);
        assert!(
            name.len() <= IFNAMSIZ_MAX,
            "interface name {name:?} is longer than {IFNAMSIZ_MAX} bytes; use a shorter suffix or prefix"
        );
        name
    }

    /// The lab's private temp dir (mode 0700), removed at teardown.
    pub fn tempdir(&self) -> &Path {
        &self.dir
    }

    /// Creates network namespace `<tag>-<name>` with loopback up, and
    /// returns its full name.
    pub fn netns(&self, name: &str) -> String {
        let ns = format!("{}-{name}", self.tag);
        self.register(|r| r.namespaces.push(ns.clone()));
        run_ok(&["ip", "netns", "add", &ns]);
        run_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        // A new namespace inherits IPv4 settings such as `ip_forward` from
        // the host (on for a host that runs Docker): set every one the lab
        // relies on, so a namespace is a plain host until told otherwise.
        for (key, value) in NAMESPACE_SYSCTLS {
            self.sysctl(&ns, key, value);
        }
        ns
    }

    /// Joins `if_a` in `ns_a` and `if_b` in `ns_b` with a veth pair, both
    /// ends up. The ends are created directly in their namespaces.
    pub fn veth(&self, ns_a: &str, if_a: &str, ns_b: &str, if_b: &str) {
        run_ok(&[
            "ip", "link", "add", if_a, "netns", ns_a, "type", "veth", "peer", "name", if_b,
            "netns", ns_b,
        ]);
        self.link_up(ns_a, if_a);
        self.link_up(ns_b, if_b);
    }

    /// Sets the MTU of `dev` in `ns`.
    pub fn mtu(&self, ns: &str, dev: &str, mtu: u16) {
        self.ip(ns, &["link", "set", dev, "mtu", &mtu.to_string()]);
    }

    /// Creates bridge `name` in `ns`, up.
    pub fn bridge(&self, ns: &str, name: &str) {
        self.ip(ns, &["link", "add", name, "type", "bridge"]);
        self.link_up(ns, name);
    }

    /// Attaches `dev` to bridge `bridge` in `ns`.
    pub fn attach(&self, ns: &str, dev: &str, bridge: &str) {
        self.ip(ns, &["link", "set", dev, "master", bridge]);
    }

    /// Sets `dev` up in `ns`.
    pub fn link_up(&self, ns: &str, dev: &str) {
        self.ip(ns, &["link", "set", dev, "up"]);
    }

    /// Adds address `cidr` (e.g. `192.0.2.1/24`) to `dev` in `ns`; IPv6
    /// addresses skip duplicate address detection so they work at once.
    pub fn addr(&self, ns: &str, dev: &str, cidr: &str) {
        let mut args = vec!["addr", "add", cidr, "dev", dev];
        if cidr.contains(':') {
            args.push("nodad");
        }
        self.ip(ns, &args);
    }

    /// Removes address `cidr` from `dev` in `ns`.
    pub fn del_addr(&self, ns: &str, dev: &str, cidr: &str) {
        self.ip(ns, &["addr", "del", cidr, "dev", dev]);
    }

    /// Adds a route to `dst` (a prefix or `default`) via gateway `via` in `ns`.
    pub fn route(&self, ns: &str, dst: &str, via: &str) {
        self.ip(ns, &["route", "add", dst, "via", via]);
    }

    /// Runs `ip -n <ns> <args>`, which must succeed; returns its stdout.
    pub fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut v = vec!["ip", "-n", ns];
        v.extend_from_slice(args);
        run_ok(&v)
    }

    /// Sets sysctl `key` (dotted, e.g. `net.ipv4.ip_forward`) to `value`
    /// inside `ns`.
    pub fn sysctl(&self, ns: &str, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        let res = crate::cmd::in_netns(ns, move || std::fs::write(&path, value))
            .join()
            .expect("sysctl thread panicked");
        if let Err(e) = res {
            panic!("sysctl {key} in {ns}: {e}");
        }
    }

    /// Turns on IPv4 and IPv6 forwarding in `ns` (a router).
    pub fn forwarding(&self, ns: &str) {
        self.sysctl(ns, "net.ipv4.ip_forward", "1");
        self.sysctl(ns, "net.ipv6.conf.all.forwarding", "1");
    }

    /// Runs `args` inside `ns` and returns its output, whatever its status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs `args` inside `ns`; its stdout, or an error with its stderr.
    pub fn try_ok(&self, ns: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut v = vec!["ip", "netns", "exec", ns];
        v.extend_from_slice(args);
        try_run(&v)
    }

    /// Runs `args` inside `ns`, which must succeed; returns its stdout.
    pub fn ok(&self, ns: &str, args: &[&str]) -> String {
        self.try_ok(ns, args).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Starts `program args` in the background inside `ns` with extra
    /// environment `env`. Its stdout and stderr go to files in the lab's
    /// temp dir (shown if the test panics); it runs in its own process
    /// group, and is stopped at teardown unless [`Proc::stop`]ped earlier.
    /// `ip netns exec` execs the program, so [`Proc::pid`] is the program's.
    pub fn spawn(&self, ns: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let n = self.register(|r| r.logs.len()).unwrap_or(0);
        let base = Path::new(program)
            .file_name()
            .map_or_else(|| program.to_string(), |s| s.to_string_lossy().into_owned());
        let label = format!("{n}-{base}");
        let stdout_path = self.dir.join(format!("{label}.stdout"));
        let stderr_path = self.dir.join(format!("{label}.stderr"));
        let open = |p: &Path| {
            std::fs::File::create(p)
                .unwrap_or_else(|e| panic!("cannot create log {}: {e}", p.display()))
        };
        let child = Command::new("ip")
            .args(["netns", "exec", ns, program])
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(open(&stdout_path))
            .stderr(open(&stderr_path))
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {program} in {ns}: {e}"));
        let pid = child.id();
        let logs = (label.clone(), stdout_path.clone(), stderr_path.clone());
        let registered = self.register(move |r| {
            r.children.push(child);
            r.logs.push(logs);
        });
        assert!(
            registered.is_some(),
            "lab {} is already torn down",
            self.tag
        );
        Proc {
            lab: self.id,
            pid,
            label,
            stdout_path,
            stderr_path,
        }
    }

    /// Removes `path` (a file, socket or directory something in the lab
    /// creates) at teardown.
    pub fn register_path(&self, path: impl Into<PathBuf>) {
        let path = path.into();
        self.register(|r| r.paths.push(path));
    }

    /// Points namespace `ns` at `nameserver` for DNS: `ip netns exec`
    /// programs read `/etc/netns/NS/resolv.conf` (removed at teardown).
    pub fn resolver(&self, ns: &str, nameserver: &str) -> anyhow::Result<()> {
        let dir = PathBuf::from("/etc/netns").join(ns);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        self.register_path(&dir);
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {nameserver}\noptions timeout:1 attempts:2\n"),
        )
        .with_context(|| format!("write {}/resolv.conf", dir.display()))
    }

    /// Prints the last lines of every spawned process's stderr (and
    /// stdout) to stderr.
    pub fn dump_logs(&self) {
        let logs = self.register(|r| r.logs.clone()).unwrap_or_default();
        for (label, out, err) in logs {
            for (stream, path) in [("stdout", out), ("stderr", err)] {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                if text.is_empty() {
                    continue;
                }
                let lines: Vec<&str> = text.lines().collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!(
                    "----- {} {label} {stream} (last {} lines)",
                    self.tag,
                    tail.len()
                );
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }

    fn register<R>(&self, f: impl FnOnce(&mut Resources) -> R) -> Option<R> {
        registry::with(self.id, f)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        // Stop processes while the namespaces are still registered, so a
        // Ctrl-C during the (slowest) first step still removes them.
        let children = self
            .register(|r| std::mem::take(&mut r.children))
            .unwrap_or_default();
        for mut c in children {
            registry::stop_child(&mut c, STOP_GRACE);
        }
        if let Some(r) = registry::remove(self.id) {
            registry::teardown(r, STOP_GRACE);
        }
    }
}

/// A process started by [`Lab::spawn`]. Dropping the handle leaves the
/// process running until the lab is torn down.
#[derive(Debug, Clone)]
pub struct Proc {
    lab: u64,
    pid: u32,
    label: String,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
}

impl Proc {
    /// The program's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Its log label (counter and program name).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Sends `signal` to the process if it is still running (and unreaped,
    /// so the pid is still ours).
    pub fn signal(&self, signal: libc::c_int) -> bool {
        self.with_child(|c| {
            if matches!(c.try_wait(), Ok(None)) {
                // SAFETY: kill has no memory-safety preconditions; the pid is an unreaped child.
                unsafe { libc::kill(c.id() as libc::pid_t, signal) == 0 }
            } else {
                false
            }
        })
        .unwrap_or(false)
    }

    /// Whether the process is still running.
    pub fn is_running(&self) -> bool {
        self.with_child(|c| matches!(c.try_wait(), Ok(None)))
            .unwrap_or(false)
    }

    /// Stops it (SIGTERM to its group, SIGKILL after [`STOP_GRACE`]) and
    /// returns its exit status; `None` if it was already stopped or the lab
    /// is gone.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.stop_within(STOP_GRACE)
    }

    /// As [`Proc::stop`], with `grace` between SIGTERM and SIGKILL.
    pub fn stop_within(&self, grace: Duration) -> Option<ExitStatus> {
        let pid = self.pid;
        let mut child = registry::with(self.lab, |r| {
            let i = r.children.iter().position(|c| c.id() == pid)?;
            Some(r.children.swap_remove(i))
        })??;
        registry::stop_child(&mut child, grace)
    }

    /// What it has written to stdout so far.
    pub fn stdout(&self) -> String {
        read_log(&self.stdout_path)
    }

    /// What it has written to stderr so far.
    pub fn stderr(&self) -> String {
        read_log(&self.stderr_path)
    }

    fn with_child<R>(&self, f: impl FnOnce(&mut std::process::Child) -> R) -> Option<R> {
        let pid = self.pid;
        registry::with(self.lab, |r| {
            r.children.iter_mut().find(|c| c.id() == pid).map(f)
        })?
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}
