//! A stand-in service for policy tests: a TCP listener in a namespace that
//! answers every connection with a greeting naming itself, and the client
//! that connects to it with a deadline.

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
