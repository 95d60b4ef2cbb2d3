//! A steady TCP stream between two namespaces that runs until stopped and
//! counts what arrives: for checking that traffic keeps flowing while
//! something changes underneath (a coordinator outage, a NAT flush).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::in_netns;

/// About 2.5 MB/s: steady traffic, not a benchmark.
const BLOCK: usize = 16 << 10;
const PAUSE: Duration = Duration::from_millis(5);

/// A running stream; see [`SteadyStream::start`].
pub struct SteadyStream {
    received: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl SteadyStream {
    /// Listens on `addr` in namespace `to` and streams to it from `from`.
    pub fn start(from: &str, to: &str, addr: SocketAddr) -> anyhow::Result<SteadyStream> {
        let received = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (r, s) = (received.clone(), stop.clone());
        let server = in_netns(to, move || -> Result<(), String> {
            let l = TcpListener::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
            let _ = tx.send(());
            let (mut c, _) = l.accept().map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(Duration::from_secs(1))).ok();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match c.read(&mut buf) {
                    Ok(0) if s.load(Ordering::Relaxed) => return Ok(()),
                    Ok(0) => return Err("stream closed by the sender".into()),
                    Ok(n) => {
                        r.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) =>
                    {
                        if s.load(Ordering::Relaxed) {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(format!("receive: {e}")),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .context("the stream's listener did not start")?;
        let s = stop.clone();
        let client = in_netns(from, move || -> Result<(), String> {
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                .map_err(|e| format!("connect {addr}: {e}"))?;
            let block = vec![0x5au8; BLOCK];
            while !s.load(Ordering::Relaxed) {
                c.write_all(&block).map_err(|e| format!("send: {e}"))?;
                std::thread::sleep(PAUSE);
            }
            Ok(())
        });
        Ok(SteadyStream {
            received,
            stop,
            threads: vec![server, client],
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Stops the stream; an error if either end failed on the way.
    pub fn finish(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join()
                .map_err(|_| anyhow::anyhow!("a stream thread panicked"))?
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(())
    }
}
