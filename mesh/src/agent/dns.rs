//! Authoritative DNS for published services: every host answers A and AAAA
//! queries for `NAME.<cluster domain>` on its bridge gateway address, so a
//! container anywhere resolves a service by name.
//!
//! [`answer`] is the protocol, pure; [`DnsServer`] is the UDP and TCP shell
//! around it, reading the current [`DnsRecords`] from an `ArcSwap` per query.
//!
//! This is not a recursive resolver: names outside the cluster domain get
//! REFUSED. Containers that need internet names list another resolver after
//! ours in `resolv.conf`.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

/// TTL of every answer: short, since services move between hosts.
const TTL: u32 = 5;
/// The UDP payload we advertise and send at most when EDNS allows more than
/// 512 bytes (the size the 2020 DNS flag day settled on).
const MAX_UDP_PAYLOAD: u16 = 1232;
/// How long one TCP connection may last, whatever it sends.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP connections served at once; more wait in the listen backlog.
const MAX_TCP_CONNECTIONS: usize = 64;
/// Pause after a failed receive or accept, so a lasting error does not spin.
const ERROR_PAUSE: Duration = Duration::from_millis(20);

/// The names one host answers for: `NAME.DOMAIN` and its addresses.
#[derive(Clone, Debug)]
pub struct DnsRecords {
    /// The cluster domain, fully qualified; `None` when it was not a valid
    /// domain, and then every query is refused.
    domain: Option<Name>,
    /// Fully qualified names (`Name` compares and hashes case-insensitively)
    /// to their addresses; empty for names that only have names below them.
    names: HashMap<Name, Vec<IpAddr>>,
}

/// Where a query name stands in [`DnsRecords`].
enum Lookup<'a> {
    Outside,
    Missing,
    Found(&'a [IpAddr]),
}

impl DnsRecords {
    /// Records for `domain` (e.g. `weft.internal`; trailing dot optional)
    /// holding each `(service name, address)` entry as `NAME.DOMAIN`. Entries
    /// whose name is not a valid DNS name are skipped; an invalid or root
    /// domain makes records that refuse every query (both logged).
    pub fn new(domain: &str, entries: impl IntoIterator<Item = (String, IpAddr)>) -> DnsRecords {
        let domain = match Name::from_ascii(domain) {
            Ok(mut d) if d.iter().next().is_some() => {
                d.set_fqdn(true);
                Some(d)
            }
            _ => {
                tracing::warn!(
                    domain,
                    "not a valid cluster domain; DNS refuses every query"
                );
                None
            }
        };
        let mut names: HashMap<Name, Vec<IpAddr>> = HashMap::new();
        let Some(zone) = &domain else {
            return DnsRecords { domain, names };
        };
        for (service, addr) in entries {
            let name = Name::from_ascii(&service)
                .ok()
                .filter(|n| n.iter().next().is_some())
                .and_then(|n| n.append_domain(zone).ok());
            let Some(name) = name else {
                tracing::debug!(service, "not a valid DNS name; not published in DNS");
                continue;
            };
            // Names between a multi-label service name and the domain exist
            // (NODATA), they are not NXDOMAIN.
            let mut parent = name.base_name();
            while parent.iter().len() > zone.iter().len() {
                names.entry(parent.clone()).or_default();
                parent = parent.base_name();
            }
            let addrs = names.entry(name).or_default();
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
        DnsRecords { domain, names }
    }

    fn lookup(&self, name: &Name) -> Lookup<'_> {
        let Some(domain) = &self.domain else {
            return Lookup::Outside;
        };
        let mut name = name.clone();
        name.set_fqdn(true);
        if !domain.zone_of(&name) {
            Lookup::Outside
        } else if name == *domain {
            Lookup::Found(&[])
        } else {
            self.names
                .get(&name)
                .map_or(Lookup::Missing, |a| Lookup::Found(a))
        }
    }
}

/// The response to one DNS query received over UDP, encoded: at most 512
/// bytes, or what the query's EDNS allows up to 1232, else truncated (TC).
/// `None` when `query` is not a DNS query message and must be dropped.
pub fn answer(records: &DnsRecords, query: &[u8]) -> Option<Vec<u8>> {
    respond(records, query, false)
}

/// [`answer`] for UDP (`tcp == false`) or TCP (64 KiB limit).
fn respond(records: &DnsRecords, query: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(query).ok()?;
    // Never answer a response: two servers must not bounce errors forever.
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata = Metadata::response_from_request(&request.metadata);
    // One question at most is echoed (a query with several is refused as
    // FormErr anyway): echoing them all could make even a truncated reply
    // larger than the client's limit. Found by the `dns` fuzz target.
    response.queries = request.queries.iter().take(1).cloned().collect();
    if request.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(MAX_UDP_PAYLOAD);
        response.edns = Some(edns);
    }
    resolve(records, &request, &mut response);
    let limit = if tcp {
        usize::from(u16::MAX)
    } else {
        usize::from(request.max_payload().min(MAX_UDP_PAYLOAD))
    };
    match response.to_vec() {
        Ok(bytes) if bytes.len() <= limit => Some(bytes),
        // Too long (or too many records to encode): the question alone,
        // with TC set, so the client retries over TCP.
        _ => response.truncate().to_vec().ok(),
    }
}

/// Sets the response code, AA and answers of `response` for `request`.
fn resolve(records: &DnsRecords, request: &Message, response: &mut Message) {
    let meta = &mut response.metadata;
    if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
        meta.response_code = ResponseCode::BADVERS;
        return;
    }
    if request.metadata.op_code != OpCode::Query {
        meta.response_code = ResponseCode::NotImp;
        return;
    }
    let [query] = request.queries.as_slice() else {
        meta.response_code = ResponseCode::FormErr;
        return;
    };
    if query.query_class() != DNSClass::IN {
        meta.response_code = ResponseCode::Refused;
        return;
    }
    match records.lookup(query.name()) {
        Lookup::Outside => meta.response_code = ResponseCode::Refused,
        Lookup::Missing => {
            meta.authoritative = true;
            meta.response_code = ResponseCode::NXDomain;
        }
        Lookup::Found(addrs) => {
            meta.authoritative = true;
            response.answers = addrs
                .iter()
                .filter_map(|addr| match (addr, query.query_type()) {
                    (IpAddr::V4(a), RecordType::A) => Some(RData::A(A(*a))),
                    (IpAddr::V6(a), RecordType::AAAA) => Some(RData::AAAA(AAAA(*a))),
                    _ => None,
                })
                .map(|rdata| Record::from_rdata(query.name().clone(), TTL, rdata))
                .collect();
        }
    }
}

mod stats;
pub use stats::DnsStats;

/// Serves DNS over UDP and TCP on one address until dropped.
pub struct DnsServer {
    local_addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
    stats: Arc<DnsStats>,
}

impl DnsServer {
    /// Binds UDP and TCP port `addr` (e.g. `100.64.1.1:53`; port 0 picks one
    /// free for both) and serves until dropped, answering from whatever
    /// `records` holds when each query arrives.
    pub async fn bind(
        addr: SocketAddr,
        records: Arc<ArcSwap<DnsRecords>>,
    ) -> io::Result<DnsServer> {
        let (udp, tcp) = bind_pair(addr).await?;
        let local_addr = udp.local_addr()?;
        let stats = Arc::new(DnsStats::default());
        let tasks = vec![
            tokio::spawn(serve_udp(udp, records.clone(), stats.clone())),
            tokio::spawn(serve_tcp(tcp, records, stats.clone())),
        ];
        Ok(DnsServer {
            local_addr,
            tasks,
            stats,
        })
    }

    /// How queries were answered so far.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Binds UDP, then TCP on the same port; with port 0 the port the kernel
/// picked for UDP may be taken for TCP, so that case tries a few times.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener)> {
    let mut tries = if addr.port() == 0 { 8 } else { 1 };
    loop {
        let udp = UdpSocket::bind(addr).await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if tries > 1 && e.kind() == io::ErrorKind::AddrInUse => tries -= 1,
            Err(e) => return Err(e),
        }
    }
}

async fn serve_udp(socket: UdpSocket, records: Arc<ArcSwap<DnsRecords>>, stats: Arc<DnsStats>) {
    // Queries are small; a longer datagram is cut and then fails to parse.
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: UDP receive failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let reply = buf.get(..len).and_then(|q| answer(&records.load(), q));
        stats.count(reply.as_deref());
        let Some(reply) = reply else {
            tracing::debug!(%peer, "DNS: dropped a malformed UDP query");
            continue;
        };
        if let Err(e) = socket.send_to(&reply, peer).await {
            tracing::debug!(%peer, error = %e, "DNS: UDP send failed");
        }
    }
}

async fn serve_tcp(listener: TcpListener, records: Arc<ArcSwap<DnsRecords>>, stats: Arc<DnsStats>) {
    let slots = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    // Dropped with this task when the server is: that aborts every connection.
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return; // the semaphore is never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "DNS: TCP accept failed");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let records = records.clone();
        let stats = stats.clone();
        connections.spawn(async move {
            let _slot = slot;
            match tokio::time::timeout(TCP_TIMEOUT, serve_connection(stream, &records, &stats))
                .await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "DNS: TCP connection closed"),
                Err(_) => tracing::debug!(%peer, "DNS: TCP connection timed out"),
            }
        });
    }
}

/// Answers length-prefixed queries on one connection until the client
/// closes it; a malformed one closes it from this side.
async fn serve_connection(
    mut stream: TcpStream,
    records: &ArcSwap<DnsRecords>,
    stats: &DnsStats,
) -> io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match stream.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e),
        }
        let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut query).await?;
        let reply = respond(&records.load(), &query, true);
        stats.count(reply.as_deref());
        let reply = reply
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed DNS query"))?;
        let reply_len = u16::try_from(reply.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "DNS reply over 64 KiB"))?;
        let mut framed = Vec::with_capacity(reply.len() + 2);
        framed.extend_from_slice(&reply_len.to_be_bytes());
        framed.extend_from_slice(&reply);
        stream.write_all(&framed).await?;
    }
}

#[cfg(test)]
mod tests;
