//! Probing: disco pings and pongs, punches, `weft ping`.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::RngCore as _;
use weft_proto::disco::{DiscoMsg, TxId};
use weft_proto::NodeId;

use super::{kind_of, PathEngine, Pending, MAX_DISCO_LEN, PING_BACK_AFTER};
use crate::candidates::MAX_LEARNED;
use crate::peer::Candidate;
use crate::{Dest, Event, PingReply, Transmit};

impl PathEngine {
    /// `weft ping`: probe `node` on its current path; the answer comes as
    /// [`Event::PingReply`] with this `request` number.
    pub fn ping_peer(&mut self, node: NodeId, request: u64, now: Instant) {
        let Some(peer) = self.peers.get(&node) else {
            return;
        };
        let to = peer.current.map_or(Dest::Relay(node), Dest::Addr);
        self.ping(node, to, Some(request), now);
    }

    /// A punch request from `node`: probe all its candidates now.
    pub fn handle_punch(&mut self, node: NodeId, now: Instant) {
        let Some(peer) = self.peers.get(&node) else {
            return;
        };
        let targets: Vec<SocketAddr> = peer.candidates.keys().copied().collect();
        for t in targets {
            self.ping(node, Dest::Addr(t), None, now);
        }
    }

    /// A datagram that may be disco, from an address or the relay.
    pub fn handle_disco(&mut self, from: Dest, bytes: &[u8], now: Instant) {
        if bytes.len() > MAX_DISCO_LEN {
            return;
        }
        let Ok(msg) = DiscoMsg::decode(bytes) else {
            return;
        };
        if let Some(sender) = msg.sender() {
            let Some((&node, peer)) = self.peers.iter_mut().find(|(_, p)| p.key == sender) else {
                return;
            };
            let Ok(msg) = msg.verify(&peer.probe_key) else {
                return;
            };
            match msg {
                DiscoMsg::Ping { txid, sent_at, .. } if peer.replay.accept(sent_at, &txid) => {
                    self.on_ping(node, from, txid, now);
                }
                DiscoMsg::Pong { txid, .. } => self.on_pong(node, from, txid, now),
                DiscoMsg::ScanMe {
                    txid,
                    sent_at,
                    public,
                    ..
                } if peer.replay.accept(sent_at, &txid) => {
                    self.on_scan_me(node, public.ip(), now);
                }
                _ => {}
            }
            return;
        }
        if let Some(DiscoMsg::ReflectReply { txid, observed }) = msg.unauthenticated() {
            self.on_reflect_reply(txid, observed, now);
        }
    }

    pub(super) fn txid(&mut self) -> TxId {
        let mut txid = [0u8; 12];
        self.rng.fill_bytes(&mut txid);
        txid
    }

    /// The clock a ping carries: wall-clock microseconds, but always past
    /// the last one sent, so the peer's replay guard sees it increase.
    pub(super) fn sent_at(&mut self, now: Instant) -> u64 {
        let (base, base_us) = self.clock;
        let elapsed = u64::try_from(now.duration_since(base).as_micros()).unwrap_or(u64::MAX);
        self.last_sent_at = base_us
            .saturating_add(elapsed)
            .max(self.last_sent_at.saturating_add(1));
        self.last_sent_at
    }

    pub(super) fn on_ping(&mut self, node: NodeId, from: Dest, txid: TxId, now: Instant) {
        let public = self.public;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let observed = match from {
            Dest::Addr(a) => crate::side::real_addr(a),
            // What a relayed ping was "observed" from does not matter.
            Dest::Relay(_) => SocketAddr::new(IpAddr::from([0, 0, 0, 0]), 0),
        };
        let pong = DiscoMsg::Pong {
            txid,
            sender: public,
            observed,
        }
        .encode(Some(&peer.probe_key));
        let mut due = false;
        if let Dest::Addr(src) = from {
            if !peer.candidates.contains_key(&src) && peer.learned_count() < MAX_LEARNED {
                self.proposals.clear();
                for s in &mut self.sources {
                    s.on_probe(node, src, &mut self.proposals);
                }
                for prop in &self.proposals {
                    if peer.learned_count() >= MAX_LEARNED {
                        break;
                    }
                    peer.candidates.entry(prop.addr).or_insert(Candidate {
                        learned: Some(now),
                        ..Candidate::default()
                    });
                }
            }
            // An idle peer's sweep is answered, not probed back.
            due = peer.active(now)
                && peer.candidates.get(&src).is_some_and(|c| {
                    c.last_ping
                        .is_none_or(|t| now.duration_since(t) >= PING_BACK_AFTER)
                });
        }
        self.transmits.push_back(Transmit {
            dest: from,
            payload: pong,
        });
        if due {
            self.ping(node, from, None, now);
        }
    }

    pub(super) fn on_pong(&mut self, node: NodeId, from: Dest, txid: TxId, now: Instant) {
        let Some(p) = self.pending.remove(&txid) else {
            return;
        };
        if p.node != node {
            return;
        }
        let rtt = now.duration_since(p.sent);
        if let Some(request) = p.request {
            let endpoint = match p.to {
                Dest::Addr(a) => Some(crate::side::real_addr(a)),
                Dest::Relay(_) => None,
            };
            self.events.push_back(Event::PingReply {
                request,
                reply: PingReply {
                    kind: kind_of(&self.local_nets, endpoint),
                    endpoint,
                    rtt_ms: rtt.as_secs_f64() * 1000.0,
                },
            });
        }
        let Dest::Addr(to) = p.to else {
            return;
        };
        // The pong must come from where the ping went.
        if from != p.to {
            return;
        }
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let c = peer.candidates.entry(to).or_default();
        c.last_pong = Some(now);
        c.rtt = Some(rtt);
        self.evaluate(node, now);
    }

    pub(super) fn ping(&mut self, node: NodeId, to: Dest, request: Option<u64>, now: Instant) {
        if !self.peers.contains_key(&node) {
            return;
        }
        let txid = self.txid();
        let sent_at = self.sent_at(now);
        let public = self.public;
        let Some(peer) = self.peers.get_mut(&node) else {
            return;
        };
        let bytes = DiscoMsg::Ping {
            txid,
            sender: public,
            sent_at,
        }
        .encode(Some(&peer.probe_key));
        if let Dest::Addr(a) = to {
            if let Some(c) = peer.candidates.get_mut(&a) {
                c.last_ping = Some(now);
            }
        }
        self.pending.insert(
            txid,
            Pending {
                node,
                to,
                sent: now,
                request,
            },
        );
        self.transmits.push_back(Transmit {
            dest: to,
            payload: bytes,
        });
    }
}
