//! The simulated hosts: real control clients (QUIC, TLS, the real codec
//! and netmap reducer) on loopback, spread over a few UDP sockets, each
//! folding every update into a digest netmap (which peers there are; the
//! full record of host 0 only), so 10,000 of them fit in one process. Each
//! notes when it first sees what the benchmark is timing, and reconnects
//! with its cached netmap when its session ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use weft_control::{ControlClient, CoordinatorInfo, Session};
use weft_proto::{Netmap, NodeId};
use x25519_dalek::StaticSecret;

/// Client UDP sockets the simulated hosts are spread over, each on its own
/// loopback address (127.0.0.2, ...): a source address is limited to 64
/// connections in their hello at a time.
pub const CLIENT_SOCKETS: usize = 16;

/// First sight of something, per host.
pub type Sightings = Vec<Option<Instant>>;

/// What the benchmark is timing; every host writes when it first saw it.
pub struct Probe {
    /// The endpoint port host 0 announces in the current round (0: none).
    pub port: AtomicU64,
    /// First sight of the current endpoint round, per host.
    pub ep_seen: Mutex<Vec<Option<Instant>>>,
    /// Node ids whose appearance is timed, and first sight of each, per
    /// host.
    pub newcomers: Mutex<(Vec<NodeId>, Vec<Sightings>)>,
    /// While set, a changed packet filter is timed.
    pub policy_round: AtomicBool,
    pub policy_seen: Mutex<Vec<Option<Instant>>>,
    /// Hosts whose netmap holds at least `expect` peers.
    pub expect: AtomicU64,
    pub converged: AtomicU64,
    /// Sessions resumed after their coordinator went away, and when each.
    pub resumed: Mutex<Vec<Option<Instant>>>,
    pub resumed_count: AtomicU64,
    /// Sessions that resumed with a delta (not a full snapshot).
    pub resumed_delta: AtomicU64,
    /// Sessions renewed at the keep-alive interval the coordinator asked
    /// for.
    pub renewed: AtomicU64,
    /// The keep-alive interval host 0 was last asked for (ms).
    pub keepalive_ms: AtomicU64,
    /// Each host's current session's traffic counters (a renewed or
    /// reconnected session starts from zero).
    pub wire: Mutex<Vec<Option<weft_control::WireStats>>>,
    /// Host 0's current session, to announce endpoints through.
    pub updater0: Mutex<Option<weft_control::EndpointUpdater>>,
}

impl Probe {
    pub fn new(capacity: usize) -> Arc<Probe> {
        Arc::new(Probe {
            port: AtomicU64::new(0),
            ep_seen: Mutex::new(vec![None; capacity]),
            newcomers: Mutex::new((Vec::new(), Vec::new())),
            policy_round: AtomicBool::new(false),
            policy_seen: Mutex::new(vec![None; capacity]),
            expect: AtomicU64::new(u64::MAX),
            converged: AtomicU64::new(0),
            resumed: Mutex::new(vec![None; capacity]),
            resumed_count: AtomicU64::new(0),
            resumed_delta: AtomicU64::new(0),
            renewed: AtomicU64::new(0),
            keepalive_ms: AtomicU64::new(0),
            wire: Mutex::new(vec![None; capacity]),
            updater0: Mutex::new(None),
        })
    }
}

/// A client endpoint on loopback address 127.0.0.`2 + i` with large
/// buffers: hundreds of simulated hosts share each socket.
pub fn client_socket(i: usize) -> ControlClient {
    let sock = socket2::Socket::new(
        socket2::Domain::IPV4,
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .unwrap();
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    let ip = [127, 0, 0, 2 + u8::try_from(i).unwrap()];
    sock.bind(&SocketAddr::from((ip, 0)).into()).unwrap();
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        sock.into(),
        Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    ControlClient::with_endpoint(endpoint)
}

/// The digest netmap every simulated host folds into.
pub fn netmap(host0: NodeId) -> Netmap {
    Netmap::digest(vec![host0])
}

/// Joins as `name`, retrying as a real host would (a handshake can time out
/// under a join storm on two shared cores). Returns the session, the
/// coordinator to reconnect to, and the retries.
pub async fn join(
    client: &ControlClient,
    token: &str,
    key: &StaticSecret,
    name: &str,
    endpoint: SocketAddr,
    host0: NodeId,
) -> (NodeId, CoordinatorInfo, Session, usize) {
    let mut tries = 0;
    loop {
        match client
            .join_into(token, key, name, vec![endpoint], netmap(host0))
            .await
        {
            Ok(out) => return (out.node_id, out.coordinator, out.session, tries),
            // An attempt that timed out here had registered the node: as
            // the error says, reconnect instead.
            Err(e) if e.code() == Some(weft_control::ErrorCode::KeyInUse) => {
                let parsed: weft_proto::token::JoinToken = token.parse().unwrap();
                let info = CoordinatorInfo::from(&parsed);
                if let Ok(s) = client
                    .connect(&info, key, vec![endpoint], Some(netmap(host0)))
                    .await
                {
                    return (s.welcome().node_id, info, s, tries + 1);
                }
                tries += 1;
            }
            Err(e) if tries < 20 => {
                tries += 1;
                if tries == 1 {
                    eprintln!("join {name} retrying: {e}");
                }
                tokio::time::sleep(Duration::from_millis(100 * tries as u64)).await;
            }
            Err(e) => panic!("join {name} failed: {e}"),
        }
    }
}

/// One simulated host, for as long as the benchmark runs.
pub struct Host {
    pub idx: usize,
    pub host0: NodeId,
    pub client: ControlClient,
    pub info: CoordinatorInfo,
    pub key: StaticSecret,
    pub endpoint: SocketAddr,
}

impl Host {
    /// Folds updates and notes what is timed; when the session ends,
    /// reconnects with the netmap it has.
    pub async fn run(self, mut session: Session, probe: Arc<Probe>) {
        let mut converged = false;
        self.current(&session, &probe);
        loop {
            self.check_converged(&session, &probe, &mut converged);
            let renew_at = session.renew_at();
            let change = tokio::select! {
                c = session.next_change() => c,
                // As an agent does: a new session at the keep-alive
                // interval the coordinator asks for, before this one
                // closes.
                () = weft_control::renewal_due(renew_at) => {
                    match self.client.renew(&session, &self.info, &self.key, vec![self.endpoint]).await {
                        Ok(new) => {
                            probe.renewed.fetch_add(1, Ordering::Relaxed);
                            session = new;
                            self.current(&session, &probe);
                        }
                        Err(_) => session.renewal_failed(),
                    }
                    continue;
                }
            };
            match change {
                Ok(change) => self.note(&session, &change, &probe),
                Err(_) => {
                    let cached = session.into_netmap();
                    session = self.reconnect(cached).await;
                    self.current(&session, &probe);
                    let mut r = probe.resumed.lock().unwrap();
                    if r[self.idx].is_none() {
                        r[self.idx] = Some(Instant::now());
                        probe.resumed_count.fetch_add(1, Ordering::Relaxed);
                        if session.resumed() {
                            probe.resumed_delta.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
        }
    }

    /// Points the probe at this host's session now in use. A new session's
    /// first update was folded inside `connect`: what it brought is noted
    /// from the netmap.
    fn current(&self, session: &Session, probe: &Probe) {
        // A resumed or renewed session's first delta may hold what is timed
        // (a digest map keeps only host 0's record).
        self.note(session, session.first_change(), probe);
        let now = Instant::now();
        let port = probe.port.load(Ordering::Relaxed);
        let hit = session
            .netmap()
            .peer(self.host0)
            .is_some_and(|p| p.endpoints.iter().any(|e| u64::from(e.port()) == port));
        if port != 0 && hit {
            probe.ep_seen.lock().unwrap()[self.idx].get_or_insert(now);
        }
        {
            let mut nc = probe.newcomers.lock().unwrap();
            let (ids, seen) = &mut *nc;
            for (k, id) in ids.iter().enumerate() {
                if session.netmap().peer(*id).is_some() {
                    seen[k][self.idx].get_or_insert(now);
                }
            }
        }
        probe.wire.lock().unwrap()[self.idx] = Some(session.wire_stats());
        if self.idx == 0 {
            *probe.updater0.lock().unwrap() = Some(session.updater());
        }
    }

    fn check_converged(&self, session: &Session, probe: &Probe, converged: &mut bool) {
        if !*converged && session.netmap().len() as u64 >= probe.expect.load(Ordering::Relaxed) {
            *converged = true;
            probe.converged.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn note(&self, session: &Session, change: &weft_proto::NetmapChange, probe: &Probe) {
        let now = Instant::now();
        if self.idx == 0 {
            let ms = u64::try_from(session.keepalive().as_millis()).unwrap_or(u64::MAX);
            probe.keepalive_ms.store(ms, Ordering::Relaxed);
        }
        let port = probe.port.load(Ordering::Relaxed);
        if port != 0 {
            let hit = session
                .netmap()
                .peer(self.host0)
                .is_some_and(|p| p.endpoints.iter().any(|e| u64::from(e.port()) == port));
            if hit {
                probe.ep_seen.lock().unwrap()[self.idx].get_or_insert(now);
            }
        }
        if !change.upserted.is_empty() {
            let mut nc = probe.newcomers.lock().unwrap();
            let (ids, seen) = &mut *nc;
            for (k, id) in ids.iter().enumerate() {
                if change.upserted.contains(id) {
                    seen[k][self.idx].get_or_insert(now);
                }
            }
        }
        if change.filter && probe.policy_round.load(Ordering::Relaxed) {
            probe.policy_seen.lock().unwrap()[self.idx].get_or_insert(now);
        }
    }

    /// Reconnects until it works, backing off from 200 ms to 3 s with
    /// jitter, as an agent does.
    async fn reconnect(&self, cached: Netmap) -> Session {
        let mut wait = Duration::from_millis(200);
        loop {
            match self
                .client
                .connect(
                    &self.info,
                    &self.key,
                    vec![self.endpoint],
                    Some(cached.clone()),
                )
                .await
            {
                Ok(s) => return s,
                Err(_) => {
                    let jitter = rand::random::<u64>() % (wait.as_millis() as u64 + 1);
                    tokio::time::sleep(wait / 2 + Duration::from_millis(jitter / 2)).await;
                    wait = (wait * 2).min(Duration::from_secs(3));
                }
            }
        }
    }
}
