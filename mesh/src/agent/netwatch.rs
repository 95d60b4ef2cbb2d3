//! Notices when this host's addresses or routes change (a DHCP renewal, a
//! moved VM, a new elastic IP), so the agent re-reports its endpoints and
//! re-announces itself to its peers at once rather than never.
//!
//! The kernel announces such changes on rtnetlink multicast groups. The
//! agent only needs to know *that* something changed, then reads the
//! addresses again itself, so this subscribes with a bare `NETLINK_ROUTE`
//! socket and never parses a message: a netlink crate would bring a message
//! model we have no use for. A slow poll backs it up where netlink is not
//! available (or a message was lost to a full socket buffer).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// Multicast groups: links, IPv4 and IPv6 addresses and routes.
const GROUPS: u32 = (libc::RTMGRP_LINK
    | libc::RTMGRP_IPV4_IFADDR
    | libc::RTMGRP_IPV6_IFADDR
    | libc::RTMGRP_IPV4_ROUTE
    | libc::RTMGRP_IPV6_ROUTE) as u32;

/// Changes come in bursts (an address and its routes); wait this long after
/// the first for the rest.
pub const SETTLE: Duration = Duration::from_millis(50);
/// How often addresses are read again without a netlink message.
pub const POLL_EVERY: Duration = Duration::from_secs(10);

/// A subscription to the kernel's address and route changes.
pub struct NetlinkWatch {
    fd: AsyncFd<OwnedFd>,
}

impl NetlinkWatch {
    /// Subscribes; fails where netlink is unavailable (then poll instead).
    pub fn open() -> io::Result<NetlinkWatch> {
        // SAFETY: socket takes no pointers; a non-negative return is a new fd.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: raw is a fresh fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = GROUPS;
        // SAFETY: addr is a valid sockaddr_nl and the length is its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the OwnedFd, which stays open and the
        // same descriptor until the AsyncFd drops it.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)?;
        Ok(NetlinkWatch { fd })
    }

    /// Waits for the next change notice, then for [`SETTLE`], and drains
    /// everything that arrived meanwhile.
    pub async fn changed(&mut self) -> io::Result<()> {
        self.readable().await?;
        tokio::time::sleep(SETTLE).await;
        self.drain();
        Ok(())
    }

    async fn readable(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            if self.drain() > 0 {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Reads and discards queued messages; how many reads returned data.
    /// An overrun (ENOBUFS) counts as data: something changed.
    fn drain(&self) -> usize {
        let mut buf = [0u8; 8192];
        let mut n = 0;
        loop {
            // SAFETY: reads at most buf.len() bytes into a valid buffer.
            let r = unsafe {
                libc::recv(
                    self.fd.get_ref().as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                )
            };
            if r > 0 {
                n += 1;
                continue;
            }
            if r == 0 {
                return n;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::ENOBUFS) => n += 1,
                Some(libc::EINTR) => {}
                _ => return n,
            }
        }
    }
}
