//! Published services on this host: the names its DNS responder answers,
//! and the public TCP ports it forwards into the mesh.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use weft_proto::ServiceEntry;

use super::dns::{DnsRecords, DnsServer};

/// How long a forwarded connection may take to reach the service.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Most forwarded connections open at once per public port; more wait in
/// the listen backlog.
const MAX_FORWARDED: usize = 512;

/// One public port being forwarded.
struct Forward {
    target: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The DNS records and public forwards, kept in line with the netmap.
pub struct Services {
    domain: String,
    records: Arc<ArcSwap<DnsRecords>>,
    dns: Option<DnsServer>,
    forwards: HashMap<u16, Forward>,
    applied: Vec<ServiceEntry>,
}

impl Services {
    /// Starts the DNS responder on the bridge gateway address, port 53.
    /// Without it (port taken, say) services still work by address.
    pub async fn start(domain: &str, gateway: Ipv4Addr) -> Services {
        let records = Arc::new(ArcSwap::from_pointee(DnsRecords::new(domain, Vec::new())));
        let addr = SocketAddr::new(IpAddr::V4(gateway), 53);
        let dns = match DnsServer::bind(addr, records.clone()).await {
            Ok(d) => {
                tracing::info!(%addr, domain, "DNS for services up");
                Some(d)
            }
            Err(e) => {
                tracing::warn!(%addr, error = %e, "cannot serve DNS for services; names will not resolve (is something else on port 53?)");
                None
            }
        };
        Services {
            domain: domain.to_string(),
            records,
            dns,
            forwards: HashMap::new(),
            applied: Vec::new(),
        }
    }

    /// Whether the DNS responder runs.
    pub fn dns_up(&self) -> bool {
        self.dns.is_some()
    }

    /// How the DNS responder answered, by result (none while it is down).
    pub fn dns_stats(&self) -> Option<[(&'static str, u64); 5]> {
        self.dns.as_ref().map(|d| d.stats().snapshot())
    }

    /// The services as last applied.
    pub fn entries(&self) -> &[ServiceEntry] {
        &self.applied
    }

    /// Applies the services of a netmap: DNS records and public forwards.
    pub fn apply(&mut self, entries: &[ServiceEntry]) {
        if entries != self.applied.as_slice() {
            self.records.store(Arc::new(DnsRecords::new(
                &self.domain,
                entries.iter().map(|e| (e.name.clone(), e.addr)),
            )));
        }
        // Public ports are retried on every netmap until they bind.
        let wanted: HashMap<u16, SocketAddr> = entries
            .iter()
            .filter_map(|e| e.public.map(|p| (p, SocketAddr::new(e.addr, e.port))))
            .collect();
        self.forwards
            .retain(|port, f| wanted.get(port) == Some(&f.target));
        for (port, target) in wanted {
            if self.forwards.contains_key(&port) {
                continue;
            }
            let bind = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port);
            match std::net::TcpListener::bind(bind)
                .and_then(|l| l.set_nonblocking(true).map(|()| l))
                .and_then(TcpListener::from_std)
            {
                Ok(listener) => {
                    tracing::info!(port, %target, "forwarding a public port to a service");
                    let task = tokio::spawn(forward(listener, target));
                    self.forwards.insert(port, Forward { target, task });
                }
                Err(e) => {
                    tracing::warn!(port, error = %e, "cannot listen on the public port of a service; free the port")
                }
            }
        }
        self.applied = entries.to_vec();
    }
}

/// Accepts on a public port and splices each connection to `target`, at
/// most [`MAX_FORWARDED`] at once.
async fn forward(listener: TcpListener, target: SocketAddr) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_FORWARDED));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (mut inbound, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "accept on a public port failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _slot = slot;
            let out = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await;
            let mut outbound = match out {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%from, %target, error = %e, "service refused a forwarded connection");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%from, %target, "service did not answer a forwarded connection");
                    return;
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                tracing::debug!(%from, %target, error = %e, "forwarded connection ended");
            }
        });
    }
}
