//! NAT models named the RFC 4787 way: how a NAT maps an inside endpoint to
//! an outside port (endpoint-independent, address-dependent, address- and
//! port-dependent), what it lets back in (the same three for filtering),
//! whether it hairpins, and how long an idle mapping lives.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::Rng as _;

/// RFC 4787 section 4.1 (mapping) and 5 (filtering).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dependence {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatKind {
    pub mapping: Dependence,
    pub filtering: Dependence,
    pub hairpin: bool,
    /// Mapped ports: preserved where free (false), or drawn at random.
    pub random_ports: bool,
}

impl NatKind {
    pub const FULL_CONE: NatKind = NatKind::new(
        Dependence::EndpointIndependent,
        Dependence::EndpointIndependent,
    );
    pub const RESTRICTED: NatKind = NatKind::new(
        Dependence::EndpointIndependent,
        Dependence::AddressDependent,
    );
    pub const PORT_RESTRICTED: NatKind = NatKind::new(
        Dependence::EndpointIndependent,
        Dependence::AddressAndPortDependent,
    );
    pub const SYMMETRIC: NatKind = NatKind {
        random_ports: true,
        ..NatKind::new(
            Dependence::AddressAndPortDependent,
            Dependence::AddressAndPortDependent,
        )
    };

    pub const fn new(mapping: Dependence, filtering: Dependence) -> NatKind {
        NatKind {
            mapping,
            filtering,
            hairpin: false,
            random_ports: false,
        }
    }

    /// Maps one inside endpoint to one outside port for every destination.
    pub fn easy(&self) -> bool {
        self.mapping == Dependence::EndpointIndependent
    }
}

struct Mapping {
    inside: SocketAddr,
    /// What it sent to, for filtering: (address, port), last time.
    sent_to: HashMap<SocketAddr, Instant>,
    last_used: Instant,
}

/// One NAT box with one public address.
pub struct Nat {
    pub kind: NatKind,
    pub public: Ipv4Addr,
    pub timeout: Duration,
    /// Outside port → mapping.
    by_port: HashMap<u16, Mapping>,
    /// (inside, destination key) → outside port.
    by_key: HashMap<(SocketAddr, Option<SocketAddr>), u16>,
}

impl Nat {
    pub fn new(kind: NatKind, public: Ipv4Addr, timeout: Duration) -> Nat {
        Nat {
            kind,
            public,
            timeout,
            by_port: HashMap::new(),
            by_key: HashMap::new(),
        }
    }

    /// Forgets every mapping (a NAT reboot, or a table flush).
    pub fn flush(&mut self) {
        self.by_port.clear();
        self.by_key.clear();
    }

    /// Forgets the mapping on `port` if it idled past the timeout (checked
    /// per mapping as it is used: a table of thousands costs nothing).
    fn expire(&mut self, port: u16, now: Instant) {
        let idle = self
            .by_port
            .get(&port)
            .is_some_and(|m| now.duration_since(m.last_used) >= self.timeout);
        if idle {
            self.by_port.remove(&port);
            self.by_key.retain(|_, p| *p != port);
        }
    }

    /// Translates a datagram from `inside` to `dst` going out: its outside
    /// source address.
    pub fn outbound(
        &mut self,
        inside: SocketAddr,
        dst: SocketAddr,
        now: Instant,
        rng: &mut StdRng,
    ) -> SocketAddr {
        let key_dst = match self.kind.mapping {
            Dependence::EndpointIndependent => None,
            Dependence::AddressDependent => Some(SocketAddr::new(dst.ip(), 0)),
            Dependence::AddressAndPortDependent => Some(dst),
        };
        let key = (inside, key_dst);
        if let Some(p) = self.by_key.get(&key).copied() {
            self.expire(p, now);
        }
        let port = match self.by_key.get(&key) {
            Some(p) => *p,
            None => {
                let mut p = if self.kind.random_ports {
                    rng.gen_range(1024..=65535)
                } else {
                    inside.port()
                };
                while self.by_port.contains_key(&p) {
                    p = if self.kind.random_ports {
                        rng.gen_range(1024..=65535)
                    } else {
                        p.wrapping_add(1).max(1024)
                    };
                }
                self.by_key.insert(key, p);
                self.by_port.insert(
                    p,
                    Mapping {
                        inside,
                        sent_to: HashMap::new(),
                        last_used: now,
                    },
                );
                p
            }
        };
        if let Some(m) = self.by_port.get_mut(&port) {
            m.last_used = now;
            m.sent_to.insert(dst, now);
        }
        SocketAddr::V4(SocketAddrV4::new(self.public, port))
    }

    /// Where a datagram from `src` to outside port `port` goes inside, if
    /// the filter lets it in.
    pub fn inbound(&mut self, src: SocketAddr, port: u16, now: Instant) -> Option<SocketAddr> {
        self.expire(port, now);
        let m = self.by_port.get_mut(&port)?;
        let allowed = match self.kind.filtering {
            Dependence::EndpointIndependent => true,
            Dependence::AddressDependent => m.sent_to.keys().any(|d| d.ip() == src.ip()),
            Dependence::AddressAndPortDependent => m.sent_to.contains_key(&src),
        };
        if !allowed {
            return None;
        }
        m.last_used = now;
        Some(m.inside)
    }
}
