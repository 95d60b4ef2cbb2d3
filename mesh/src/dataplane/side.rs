//! Side sockets: extra IPv4 UDP sockets the path engine asks for (the
//! birthday technique, see `weft_paths::birthday`), each of which may
//! carry one peer's WireGuard traffic through its own NAT mapping.
//!
//! A peer reached through side socket `s` has a marker endpoint
//! (`weft_paths::side`), so the packet paths keep one `SocketAddr` per peer
//! and only the final send looks at it ([`super::Shared::send_wire`]).
//! What arrives on side socket `s` is received by one thread for all of
//! them (`wg-side`), with plain `recv_from`: these are rare paths, a few
//! per host at most, and keep the main socket's batched path untouched.
//! Disco goes to the agent with the marker as its source; WireGuard
//! messages go through the same handling as the main socket's.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use weft_paths::side::side_addr;

use super::hooks::is_disco;
use super::rx::{handle_datagram, TunBatch};
use super::Shared;

/// Side sockets at most, whatever the engine asks for.
pub const MAX_SIDE_SOCKETS: usize = weft_paths::birthday::SLOTS as usize;
/// Datagrams read from one socket before looking at the others.
const READS_PER_SOCKET: usize = 64;
/// Bytes per receive: one WireGuard message (no GRO on side sockets).
const RECV_BUF: usize = 65536;

/// The open side sockets, by slot, in slot order.
#[derive(Default)]
pub(crate) struct SideSockets {
    slots: Vec<(u16, Arc<UdpSocket>)>,
}

impl SideSockets {
    fn get(&self, slot: u16) -> Option<&UdpSocket> {
        self.slots
            .binary_search_by_key(&slot, |(s, _)| *s)
            .ok()
            .map(|i| &*self.slots[i].1)
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

/// Makes exactly `slots` open: keeps those already open, binds the others
/// on free ports, closes the rest. Returns the slots that could not be
/// bound, with the first error.
pub(crate) fn set(shared: &Shared, slots: &[u16]) -> Result<(), (Vec<u16>, io::Error)> {
    let current = shared.side.load_full();
    let fwmark = shared
        .config
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .fwmark;
    let mut wanted: Vec<u16> = slots.to_vec();
    wanted.sort_unstable();
    wanted.dedup();
    wanted.truncate(MAX_SIDE_SOCKETS);
    let mut next = Vec::with_capacity(wanted.len());
    let mut failed = Vec::new();
    let mut first_error = None;
    for slot in wanted {
        let kept = current
            .slots
            .binary_search_by_key(&slot, |(s, _)| *s)
            .ok()
            .map(|i| current.slots[i].1.clone());
        match kept.map_or_else(|| bind(fwmark).map(Arc::new), Ok) {
            Ok(sock) => next.push((slot, sock)),
            Err(e) => {
                failed.push(slot);
                first_error.get_or_insert(e);
            }
        }
    }
    shared.side.store(Arc::new(SideSockets { slots: next }));
    shared.side_changed.signal();
    match first_error {
        None => Ok(()),
        Some(e) => Err((failed, e)),
    }
}

fn bind(fwmark: u32) -> io::Result<UdpSocket> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_nonblocking(true)?;
    if fwmark != 0 {
        socket2::SockRef::from(&sock).set_mark(fwmark)?;
    }
    Ok(sock)
}

/// Sends `buf` (`segment`-sized datagrams when batched) from side socket
/// `slot` to `remote`.
pub(crate) fn send(
    shared: &Shared,
    slot: u16,
    remote: SocketAddrV4,
    buf: &[u8],
    segment: Option<usize>,
) -> io::Result<()> {
    let sockets = shared.side.load();
    let Some(sock) = sockets.get(slot) else {
        return Err(io::Error::new(
            io::ErrorKind::NotConnected,
            format!("side socket {slot} is not open"),
        ));
    };
    let step = segment.filter(|s| *s > 0).unwrap_or(buf.len().max(1));
    for dgram in buf.chunks(step) {
        // A full send buffer drops the datagram, as a congested link would.
        match sock.send_to(dgram, remote) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The `wg-side` thread: receives on every side socket until the device
/// stops.
pub(super) fn run(shared: Arc<Shared>) {
    let mut buf = vec![0u8; RECV_BUF];
    let mut scratch = vec![0u8; RECV_BUF];
    // Made on the first datagram: most hosts never open a side socket.
    let mut tun: Option<TunBatch> = None;
    loop {
        if shared.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let sockets = shared.side.load_full();
        let mut fds: Vec<libc::pollfd> = [shared.stop.as_raw_fd(), shared.side_changed.as_raw_fd()]
            .into_iter()
            .chain(sockets.slots.iter().map(|(_, s)| s.as_raw_fd()))
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds points to fds.len() initialised pollfd structs that
        // live across the call.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %err, "waiting on the side sockets failed; they receive nothing more");
            return;
        }
        if fds[0].revents != 0 {
            return;
        }
        if fds[1].revents != 0 {
            shared.side_changed.clear();
            continue;
        }
        let table = shared.table.load();
        let udp = shared.udp.load();
        let tun = tun.get_or_insert_with(TunBatch::new);
        tun.begin(&shared);
        for (pfd, (slot, sock)) in fds[2..].iter().zip(sockets.slots.iter()) {
            if pfd.revents == 0 {
                continue;
            }
            for _ in 0..READS_PER_SOCKET {
                let (n, src) = match sock.recv_from(&mut buf) {
                    Ok((n, SocketAddr::V4(src))) => (n, src),
                    Ok(_) => continue,
                    Err(_) => break,
                };
                let from = side_addr(*slot, src);
                let dgram = &buf[..n];
                if is_disco(dgram) {
                    if let Some(sink) = shared.disco.load().as_ref() {
                        sink(from, dgram);
                    }
                    continue;
                }
                if tun.is_full() {
                    tun.flush(&shared);
                }
                handle_datagram(&shared, &table, &udp, from, dgram, tun, &mut scratch);
            }
        }
        tun.flush(&shared);
    }
}
