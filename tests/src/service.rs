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

/// A server thread in a namespace (a TCP greeter or a UDP echo); stops
/// when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds with `bind` inside `ns`, then calls `serve` (which should
    /// return within ~50 ms) until dropped.
    fn spawn<S: 'static>(
        ns: &str,
        what: String,
        bind: impl FnOnce() -> std::io::Result<S> + Send + 'static,
        mut serve: impl FnMut(&S) + Send + 'static,
    ) -> anyhow::Result<Server> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let flag = stop.clone();
        let thread = in_netns(ns, move || {
            let s = match bind() {
                Ok(s) => {
                    let _ = tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            while !flag.load(Ordering::Relaxed) {
                serve(&s);
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .with_context(|| format!("{what}: server thread did not start"))?
            .with_context(|| format!("{what}: bind in {ns}"))?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }

    /// A TCP server on `addr` in `ns` that answers each connection with
    /// `greeting` and a newline.
    pub fn greeter(ns: &str, addr: SocketAddr, greeting: &str) -> anyhow::Result<Server> {
        let line = format!("{greeting}\n");
        let bind = move || {
            let l = TcpListener::bind(addr)?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        Server::spawn(ns, format!("TCP {addr}"), bind, move |l| match l.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
                let _ = s.write_all(line.as_bytes());
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        })
    }

    /// A UDP server on `addr` in `ns` that echoes every datagram.
    pub fn udp_echo(ns: &str, addr: SocketAddr) -> anyhow::Result<Server> {
        let bind = move || {
            let s = std::net::UdpSocket::bind(addr)?;
            s.set_read_timeout(Some(Duration::from_millis(50)))?;
            Ok(s)
        };
        let mut buf = [0u8; 2048];
        Server::spawn(ns, format!("UDP {addr}"), bind, move |s| {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        })
    }
}

impl Drop for Server {
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

/// Resolves `name` inside namespace `ns` the way a program there would
/// (`getent hosts`, through its resolver from [`crate::Lab::resolver`]);
/// getent's output line(s).
pub fn resolve(ns: &str, name: &str) -> anyhow::Result<String> {
    crate::try_run(&["ip", "netns", "exec", ns, "getent", "hosts", name])
}
