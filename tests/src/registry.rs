//! Every live lab's resources, in one process-wide table, so that both a
//! lab's `Drop` and the Ctrl-C handler can tear them down.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, ExitStatus};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

/// What one lab created and must remove.
#[derive(Default)]
pub(crate) struct Resources {
    pub namespaces: Vec<String>,
    pub children: Vec<Child>,
    /// Files and sockets to remove.
    pub paths: Vec<PathBuf>,
    /// Log files of spawned processes: (label, stdout, stderr).
    pub logs: Vec<(String, PathBuf, PathBuf)>,
    /// The lab's private temp dir, removed last.
    pub dir: Option<PathBuf>,
}

static LABS: Mutex<BTreeMap<u64, Resources>> = Mutex::new(BTreeMap::new());

fn labs() -> MutexGuard<'static, BTreeMap<u64, Resources>> {
    // A panic while holding the lock leaves the table as it was; keep using it.
    LABS.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn insert(id: u64, r: Resources) {
    labs().insert(id, r);
}

pub(crate) fn remove(id: u64) -> Option<Resources> {
    labs().remove(&id)
}

/// Runs `f` on lab `id`'s resources; `None` once the lab is gone.
pub(crate) fn with<R>(id: u64, f: impl FnOnce(&mut Resources) -> R) -> Option<R> {
    labs().get_mut(&id).map(f)
}

/// Installs, once per process, a thread that on SIGINT or SIGTERM tears
/// down every live lab and exits with status 130.
pub(crate) fn install_signal_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let mut signals = match signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("lab: cannot install Ctrl-C teardown ({e}); namespaces may leak");
                return;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("lab-teardown".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    eprintln!("lab: signal {sig}; tearing down all labs");
                    let all = std::mem::take(&mut *labs());
                    for r in all.into_values() {
                        teardown(r, Duration::from_secs(1));
                    }
                    std::process::exit(130);
                }
            });
        if let Err(e) = spawned {
            eprintln!("lab: cannot start teardown thread ({e}); namespaces may leak");
        }
    });
}

/// Removes everything in `r`: processes first (they hold namespaces), then
/// files, namespaces and the temp dir.
pub(crate) fn teardown(mut r: Resources, grace: Duration) {
    for c in &mut r.children {
        stop_child(c, grace);
    }
    for p in &r.paths {
        if p.is_dir() {
            let _ = std::fs::remove_dir_all(p);
        } else {
            let _ = std::fs::remove_file(p);
        }
    }
    for ns in r.namespaces.iter().rev() {
        let out = crate::cmd::run(&["ip", "netns", "del", ns]);
        let err = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() && !err.contains("No such file") {
            eprintln!("lab: ip netns del {ns}: {}", err.trim());
        }
    }
    if let Some(dir) = &r.dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Stops a child and its process group: SIGTERM, up to `grace` to exit,
/// then SIGKILL. Reaps it and returns its exit status.
pub(crate) fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    // The child is unreaped, so its pid (and group id) cannot be reused yet.
    let pgid = child.id() as libc::pid_t;
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(-pgid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while !exited_unreaped(pgid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Also sweeps up anything the child left in its group.
    // SAFETY: as above; the leader is at most a zombie, so the group id is ours.
    unsafe { libc::kill(-pgid, libc::SIGKILL) };
    child.wait().ok()
}

/// Whether child `pid` has exited, without reaping it.
fn exited_unreaped(pid: libc::pid_t) -> bool {
    // SAFETY: an all-zero siginfo_t is valid; waitid only writes into it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a siginfo_t we own.
    let rc = unsafe {
        libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: si_pid is set (or left zero) by a successful waitid.
    rc != 0 || unsafe { info.si_pid() } != 0
}
