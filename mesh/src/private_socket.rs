//! Unix sockets that are private from the moment they exist: bound under a
//! umask that leaves only the owner's read and write bits, rather than
//! chmod-ed after `bind`, which leaves a window where anyone may connect.

use std::io;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Mutex;

/// The umask is per process: one bind at a time changes it.
static UMASK: Mutex<()> = Mutex::new(());

/// Binds a listening socket at `path` with mode 0600.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    let _one = UMASK.lock().unwrap_or_else(|p| p.into_inner());
    // SAFETY: umask only swaps the process's file mode mask.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    bound
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn the_socket_is_owner_only_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _l = super::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
    }
}
