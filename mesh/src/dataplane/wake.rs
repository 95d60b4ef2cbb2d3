//! Blocking waits for the data-plane threads: "this fd is ready, or we were
//! woken". Written directly on `poll(2)` and `eventfd(2)` because the threads
//! are plain blocking loops; pulling in an event-loop crate for one readiness
//! call per batch would add more than it saves.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// An eventfd that stays readable once signalled, until [`WakeFd::clear`].
#[derive(Debug)]
pub struct WakeFd(OwnedFd);

impl WakeFd {
    pub fn new() -> io::Result<WakeFd> {
        // SAFETY: eventfd takes no pointers; a non-negative return is a fresh fd we own.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by eventfd and is owned by nobody else.
        Ok(WakeFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes every waiter on this fd return.
    pub fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64 to an eventfd we own.
        // A full counter (EAGAIN) still leaves the fd readable, which is all we need.
        unsafe {
            libc::write(
                self.0.as_raw_fd(),
                (&one as *const u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }

    /// Resets the fd to not-readable.
    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN (already clear) is fine.
        unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut v as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
    }
}

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// What a wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// The awaited fd is ready.
    Io,
    /// One of the wake fds (index into the slice given) fired.
    Woken(usize),
    /// The timeout passed.
    Timeout,
}

/// Waits until `fd` has `events` (POLLIN/POLLOUT), a wake fd fires, or
/// `timeout_ms` passes (-1: no timeout). Wake fds take precedence.
pub fn wait(
    fd: Option<RawFd>,
    events: i16,
    wakers: &[&WakeFd],
    timeout_ms: i32,
) -> io::Result<Ready> {
    let mut fds = [libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    }; 4];
    let mut n = 0;
    for w in wakers.iter().take(3) {
        fds[n] = libc::pollfd {
            fd: w.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        n += 1;
    }
    let io_slot = fd.map(|fd| {
        fds[n] = libc::pollfd {
            fd,
            events,
            revents: 0,
        };
        n += 1;
        n - 1
    });
    loop {
        // SAFETY: fds points to n initialised pollfd structs that live across the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        if rc == 0 {
            return Ok(Ready::Timeout);
        }
        if let Some(i) = fds[..wakers.len().min(3)]
            .iter()
            .position(|p| p.revents != 0)
        {
            return Ok(Ready::Woken(i));
        }
        if io_slot.is_some() {
            return Ok(Ready::Io);
        }
        return Ok(Ready::Timeout);
    }
}
