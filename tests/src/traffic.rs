//! Traffic checks a user would make: ping, a TCP stream that must arrive
//! intact, and the memory a process holds.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

use crate::cmd::{in_netns, try_run};

/// Pings `target` from `ns` three times, 200 ms apart, 2 s timeout each;
/// errors unless replies come back.
pub fn ping(ns: &str, target: &str) -> anyhow::Result<()> {
    ping_with(ns, &["-c", "3", "-i", "0.2", "-W", "2", target])
}

/// Runs `ping <args>` in `ns`; `args` holds the options and the target
/// (`-6` is added for an IPv6 target).
pub fn ping_with(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut v = vec!["ip", "netns", "exec", ns, "ping"];
    if args.last().is_some_and(|t| t.contains(':')) && !args.contains(&"-6") {
        v.push("-6");
    }
    v.extend_from_slice(args);
    try_run(&v).map(|_| ())
}

/// How long a transfer may stall before it counts as failed.
const STALL: Duration = Duration::from_secs(30);

/// Streams `bytes` of pseudo-random data over TCP from namespace `from` to
/// `to_ip:port` in namespace `to`, and checks that the byte count and the
/// SHA-256 match on arrival.
pub fn tcp_transfer(
    from: &str,
    to: &str,
    to_ip: IpAddr,
    port: u16,
    bytes: usize,
) -> anyhow::Result<()> {
    let addr = SocketAddr::new(to_ip, port);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server = in_netns(to, move || -> anyhow::Result<(usize, Vec<u8>)> {
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        let _ = ready_tx.send(());
        l.set_nonblocking(true)?;
        let deadline = Instant::now() + STALL;
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    anyhow::ensure!(Instant::now() < deadline, "no connection to {addr}");
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_read_timeout(Some(STALL))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        loop {
            let k = s.read(&mut buf).context("read")?;
            if k == 0 {
                break;
            }
            h.update(&buf[..k]);
            n += k;
        }
        Ok((n, h.finalize().to_vec()))
    });
    let client = match ready_rx.recv_timeout(Duration::from_secs(5)) {
        Ok(()) => Some(in_netns(from, move || -> anyhow::Result<Vec<u8>> {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .with_context(|| format!("connect {addr}"))?;
            s.set_write_timeout(Some(STALL))?;
            let mut h = Sha256::new();
            let mut block = vec![0u8; 1 << 16];
            let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
            let mut sent = 0usize;
            while sent < bytes {
                fill_xorshift(&mut block, &mut seed);
                let k = block.len().min(bytes - sent);
                s.write_all(&block[..k]).context("write")?;
                h.update(&block[..k]);
                sent += k;
            }
            Ok(h.finalize().to_vec())
        })),
        Err(_) => None,
    };
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("transfer server panicked"))?;
    let (n, got_hash) = got.context("transfer server")?;
    let client = client.context("transfer server never listened")?;
    let sent_hash = client
        .join()
        .map_err(|_| anyhow::anyhow!("transfer client panicked"))?
        .context("transfer client")?;
    anyhow::ensure!(n == bytes, "{n} of {bytes} bytes arrived at {addr}");
    anyhow::ensure!(
        got_hash == sent_hash,
        "SHA-256 differs after a {bytes}-byte transfer to {addr}"
    );
    Ok(())
}

/// Fills `buf` from a xorshift64 generator (fast, reproducible).
fn fill_xorshift(buf: &mut [u8], seed: &mut u64) {
    for c in buf.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        c.copy_from_slice(&seed.to_le_bytes()[..c.len()]);
    }
}

/// A kernel protocol counter of namespace `ns` from `/proc/net/snmp`, e.g.
/// `("Udp", "RcvbufErrors")`: datagrams dropped because a socket's receive
/// buffer was full.
pub fn snmp_counter(ns: &str, group: &str, field: &str) -> anyhow::Result<u64> {
    let text = try_run(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"])?;
    let prefix = format!("{group}:");
    let mut rows = text.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (rows.next(), rows.next());
    let (Some(names), Some(values)) = (names, values) else {
        anyhow::bail!("no {group} counters in /proc/net/snmp of {ns}");
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .with_context(|| format!("no counter {group}.{field}"))?;
    values
        .split_whitespace()
        .nth(i)
        .with_context(|| format!("no value for {group}.{field}"))?
        .parse()
        .with_context(|| format!("{group}.{field} is not a number"))
}

/// Resident memory of process `pid` in KiB (`VmRSS` in /proc/PID/status).
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_rss_is_readable() {
        let kib = vm_rss_kib(std::process::id()).unwrap();
        assert!(kib > 0);
    }

    #[test]
    fn xorshift_is_reproducible() {
        let (mut a, mut b) = ([0u8; 20], [0u8; 20]);
        let (mut s1, mut s2) = (7u64, 7u64);
        fill_xorshift(&mut a, &mut s1);
        fill_xorshift(&mut b, &mut s2);
        assert_eq!(a, b);
        assert_ne!(a, [0u8; 20]);
    }
}
