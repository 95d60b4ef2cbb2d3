//! Stand-in services for policy tests: a TCP listener in a namespace that
//! answers every connection with a greeting naming itself, a UDP echo, and
//! their clients, with deadlines.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context as _;

use crate::cmd::in_netns;

/// A greeting TCP server; stops when dropped.
pub struct Greeter {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub addr: SocketAddr,
    pub greeting: String,
}

impl Greeter {
    /// Listens on `addr` in namespace `ns`; each connection gets
    /// `greeting` and a newline.
    pub fn start(ns: &str, addr: SocketAddr, greeting: &str) -> anyhow::Result<Greeter> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let line = format!("{greeting}\n");
        let flag = stop.clone();
        let thread = in_netns(ns, move || {
            let l = match TcpListener::bind(addr).and_then(|l| {
                l.set_nonblocking(true)?;
                Ok(l)
            }) {
                Ok(l) => {
                    let _ = tx.send(Ok(()));
                    l
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                        let _ = s.write_all(line.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("greeter thread did not start")?
            .with_context(|| format!("bind {addr} in {ns}"))?;
        Ok(Greeter {
            stop,
            thread: Some(thread),
            addr,
            greeting: greeting.to_string(),
        })
    }
}

impl Drop for Greeter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connects from namespace `ns` to `addr` within `timeout` and returns the
/// first line the server sends; an error if the connection is refused,
/// times out, or nothing arrives.
pub fn greet(ns: &str, addr: SocketAddr, timeout: Duration) -> anyhow::Result<String> {
    in_netns(ns, move || -> anyhow::Result<String> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connect {addr}"))?;
        s.set_read_timeout(Some(timeout.max(Duration::from_secs(1))))?;
        let mut buf = [0u8; 256];
        let mut got = Vec::new();
        while !got.contains(&b'\n') {
            let n = s
                .read(&mut buf)
                .with_context(|| format!("read from {addr}"))?;
            anyhow::ensure!(n > 0, "{addr} closed without a greeting");
            got.extend_from_slice(&buf[..n]);
        }
        Ok(String::from_utf8_lossy(&got).trim().to_string())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}

/// A UDP echo server; stops when dropped.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    /// Echoes every datagram to `addr` in namespace `ns` back to its sender.
    pub fn start(ns: &str, addr: SocketAddr) -> anyhow::Result<UdpEcho> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = in_netns(ns, move || {
            let s = match std::net::UdpSocket::bind(addr).and_then(|s| {
                s.set_read_timeout(Some(Duration::from_millis(50)))?;
                Ok(s)
            }) {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let _ = s.send_to(&buf[..n], from);
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("UDP echo thread did not start")?
            .with_context(|| format!("bind UDP {addr} in {ns}"))?;
        Ok(UdpEcho {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `msg` over UDP from namespace `ns` to `to` (up to 3 tries) and
/// waits for the echo; an error if none comes back within `timeout` each.
pub fn udp_echo(ns: &str, to: SocketAddr, msg: &str, timeout: Duration) -> anyhow::Result<()> {
    let msg = msg.to_string();
    in_netns(ns, move || -> anyhow::Result<()> {
        let s = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("bind")?;
        s.set_read_timeout(Some(timeout))?;
        let mut buf = [0u8; 2048];
        for _ in 0..3 {
            s.send_to(msg.as_bytes(), to).context("send")?;
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                anyhow::ensure!(from == to, "echo from {from}, not {to}");
                anyhow::ensure!(&buf[..n] == msg.as_bytes(), "echo differs");
                return Ok(());
            }
        }
        anyhow::bail!("no UDP echo from {to}")
    })
    .join()
    .map_err(|_| anyhow::anyhow!("client thread panicked"))?
}
