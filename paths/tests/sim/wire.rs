//! The simulated wire: loss and delay, NAT translation on the way out and
//! filtering on the way in, LANs reachable only from themselves, and the
//! coordinator's reflector, relay and punch forwarding.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use rand::Rng as _;
use weft_paths::Dest;
use weft_proto::disco::DiscoMsg;

use super::{lan_of, Place, Sim, Wire, COORDINATOR};

impl Sim {
    pub(super) fn schedule(&mut self, wire: Wire, payload: Vec<u8>, hops: u32) {
        if self.rng.gen::<f64>() < self.loss {
            return;
        }
        let (lo, hi) = self.delay;
        let d = if hi > lo {
            lo + Duration::from_micros(self.rng.gen_range(0..(hi - lo).as_micros() as u64))
        } else {
            lo
        };
        self.seq += 1;
        self.queue
            .insert((self.now + d * hops, self.seq), (wire, payload));
    }

    /// Host `i` sends from its socket on `port` to `dst`: through its NAT,
    /// if any.
    pub(super) fn send_udp(&mut self, i: usize, port: u16, dst: SocketAddr, payload: Vec<u8>) {
        let h = &self.hosts[i];
        let me = SocketAddr::new(h.inside.ip(), port);
        // A LAN address is reachable from its own LAN only.
        if lan_of(dst).is_some_and(|l| h.place != Place::Behind(l)) {
            return;
        }
        let src = match h.place {
            Place::UdpBlocked => return,
            Place::Public => me,
            Place::Behind(n) => {
                if lan_of(dst) == Some(n) {
                    // On the same LAN: no NAT in between.
                    me
                } else if Some(n) == self.nat_of(dst.ip()) && !self.nats[n].kind.hairpin {
                    return;
                } else {
                    self.nats[n].outbound(me, dst, self.now, &mut self.rng)
                }
            }
        };
        if std::env::var_os("SIM_DEBUG").is_some() {
            eprintln!("{:?} host {i} sends {src} -> {dst}", self.elapsed());
        }
        self.schedule(Wire::Udp { src, dst }, payload, 1);
    }

    fn nat_of(&self, ip: IpAddr) -> Option<usize> {
        self.nats.iter().position(|n| IpAddr::V4(n.public) == ip)
    }

    pub(super) fn deliver(&mut self, wire: Wire, payload: &[u8]) {
        let now = self.now;
        match wire {
            Wire::Relay { from, to } => {
                if !self.coordinator_up {
                    return;
                }
                if let Some(j) = self.index(to) {
                    self.hosts[j]
                        .engine
                        .handle_disco(Dest::Relay(from), payload, now);
                    self.drain(j);
                }
            }
            Wire::Punch { from, to } => {
                if !self.coordinator_up {
                    return;
                }
                if let Some(j) = self.index(to) {
                    self.hosts[j].engine.handle_punch(from, now);
                    self.drain(j);
                }
            }
            Wire::Udp { src, dst } => {
                if dst.ip() == COORDINATOR.ip() {
                    self.reflect(src, dst, payload);
                    return;
                }
                let inside = match self.nat_of(dst.ip()) {
                    Some(n) => match self.nats[n].inbound(src, dst.port(), now) {
                        Some(a) => a,
                        None => {
                            if std::env::var_os("SIM_DEBUG").is_some() {
                                eprintln!("{:?} NAT {n} drops {src} -> {dst}", self.elapsed());
                            }
                            return;
                        }
                    },
                    None => dst,
                };
                let Some(j) = self.hosts.iter().position(|h| h.inside.ip() == inside.ip()) else {
                    return;
                };
                if self.hosts[j].place == Place::UdpBlocked {
                    return;
                }
                // The WireGuard socket, or an open side socket.
                let from = if inside.port() == self.hosts[j].inside.port() {
                    src
                } else {
                    let slot = self.hosts[j]
                        .side
                        .iter()
                        .find(|s| super::side_port(**s) == inside.port());
                    match (slot, src) {
                        (Some(&slot), SocketAddr::V4(v4)) => weft_paths::side::side_addr(slot, v4),
                        _ => return,
                    }
                };
                self.hosts[j]
                    .engine
                    .handle_disco(Dest::Addr(from), payload, now);
                self.drain(j);
            }
        }
    }

    /// The coordinator's reflector ports answer with what they saw.
    fn reflect(&mut self, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
        if !(dst.port() == COORDINATOR.port() + 1 || dst.port() == COORDINATOR.port() + 2) {
            return;
        }
        let Ok(msg) = DiscoMsg::decode(payload) else {
            return;
        };
        if let Some(DiscoMsg::ReflectRequest { txid }) = msg.unauthenticated() {
            let reply = DiscoMsg::ReflectReply {
                txid,
                observed: src,
            }
            .encode(None);
            self.schedule(Wire::Udp { src: dst, dst: src }, reply, 1);
        }
    }
}
