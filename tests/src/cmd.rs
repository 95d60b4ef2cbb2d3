//! Running commands and closures inside namespaces.

use std::os::fd::AsRawFd as _;
use std::process::{Command, Output};

use anyhow::Context as _;

/// Runs `args[0]` with the rest as arguments and returns its output,
/// whatever its exit status. Panics only if it cannot be started.
pub fn run(args: &[&str]) -> Output {
    let (prog, rest) = args.split_first().expect("run: empty command line");
    Command::new(prog)
        .args(rest)
        .output()
        .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"))
}

/// Runs a command; its stdout on success, an error with its stderr otherwise.
pub fn try_run(args: &[&str]) -> anyhow::Result<String> {
    let out = run(args);
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command that must succeed; panics with its stderr otherwise.
pub fn run_ok(args: &[&str]) -> String {
    try_run(args).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Runs `f` on a new thread that has entered network namespace `ns` (a name
/// under `/run/netns`); sockets it opens belong to that namespace and keep
/// it after the thread ends.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        if let Err(e) = enter_netns(&path) {
            panic!("{e:#}");
        }
        f()
    })
}

/// Moves the calling thread into the network namespace at `path`.
pub(crate) fn enter_netns(path: &str) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
    // SAFETY: setns on a valid namespace fd; affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        anyhow::bail!("setns {path}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}
