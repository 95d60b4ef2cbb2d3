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

use std::sync::Arc;

use tokio::io::unix::AsyncFd;
use tokio::sync::watch;

use super::mtu::MtuFollower;
use super::{endpoints, traversal, Shared};

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

/// Watches this host's addresses (netlink, and a slow poll) and, when the
/// ones it reports change, re-announces the host: endpoints to the
/// coordinator, probes and a reflector check from the traversal engine,
/// and a keep-alive to every peer so each roams to the new source.
///
/// With `mtu` set (no `--mtu` given), also follows the uplinks' MTU.
pub async fn watch(
    shared: Arc<Shared>,
    handle: crate::dataplane::DeviceHandle,
    own: [String; 2],
    mut mtu: Option<MtuFollower>,
    mut stop: watch::Receiver<bool>,
) {
    let mut netlink = match NetlinkWatch::open() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch address changes over netlink; polling every {:?}", POLL_EVERY);
            None
        }
    };
    let skip = [own[0].as_str(), own[1].as_str()];
    let addrs = || {
        let id = shared.identity();
        endpoints::local_endpoints(id.listen_port, &skip, id.pool)
    };
    let mut last = addrs();
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.tick().await;
    loop {
        tokio::select! {
            r = async {
                match netlink.as_mut() {
                    Some(w) => w.changed().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "netlink watch failed; polling instead");
                    netlink = None;
                }
            }
            _ = poll.tick() => {}
            _ = stop.changed() => return,
        }
        if let Some(m) = mtu.as_mut() {
            m.check();
        }
        let now = addrs();
        if now == last {
            continue;
        }
        tracing::info!(before = ?last, after = ?now, "this host's addresses changed; re-announcing it");
        last = now;
        shared.endpoints_changed.notify_one();
        let local_nets = traversal::local_networks(&skip);
        let _ = shared
            .traversal
            .requests
            .try_send(traversal::Request::NetworkChanged { local_nets });
        handle.nudge_peers();
    }
}
