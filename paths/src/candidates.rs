//! Where candidate addresses for a peer come from. Each strategy is a
//! [`CandidateSource`]; the engine asks every source it was built with
//! (see [`default_sources`]) and keeps what they propose, within its own
//! bounds (at most [`MAX_LEARNED`] learned candidates per peer, each
//! dropped after [`LEARNED_TTL`] without an answer). A new strategy (port
//! prediction, say) is one more implementation in one more file.

use std::net::SocketAddr;
use std::time::Duration;

use weft_proto::NodeId;

/// Candidates a peer may have beyond those in the netmap; a probe from one
/// more is answered but not kept.
pub const MAX_LEARNED: usize = 8;
/// A learned candidate that has not answered within this long is dropped.
pub const LEARNED_TTL: Duration = Duration::from_secs(10);

/// How a candidate was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The peer reports it in the netmap: kept while it does.
    Netmap,
    /// Found another way: kept while it answers (see [`LEARNED_TTL`]).
    Learned,
}

/// One address to try for a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub addr: SocketAddr,
    pub origin: Origin,
}

/// A strategy for finding addresses a peer may answer at.
pub trait CandidateSource: Send {
    /// Its name, for logs and tests.
    fn name(&self) -> &'static str;

    /// The netmap says `peer` reports `endpoints`.
    fn on_netmap(&mut self, _peer: NodeId, _endpoints: &[SocketAddr], _out: &mut Vec<Proposal>) {}

    /// An authenticated probe from `peer` arrived from `src` (never a relay).
    fn on_probe(&mut self, _peer: NodeId, _src: SocketAddr, _out: &mut Vec<Proposal>) {}
}

/// The endpoints a peer reports: its interface addresses and the public
/// mapping the reflector saw.
#[derive(Debug, Default)]
pub struct NetmapEndpoints;

impl CandidateSource for NetmapEndpoints {
    fn name(&self) -> &'static str {
        "netmap"
    }

    fn on_netmap(&mut self, _peer: NodeId, endpoints: &[SocketAddr], out: &mut Vec<Proposal>) {
        out.extend(endpoints.iter().map(|&addr| Proposal {
            addr,
            origin: Origin::Netmap,
        }));
    }
}

/// Peer-reflexive candidates: where a peer's probe came from. Behind a NAT
/// that maps per destination, that is the one mapping its NAT opened
/// toward this host, which no reflector can tell.
#[derive(Debug, Default)]
pub struct PeerReflexive;

impl CandidateSource for PeerReflexive {
    fn name(&self) -> &'static str {
        "peer-reflexive"
    }

    fn on_probe(&mut self, _peer: NodeId, src: SocketAddr, out: &mut Vec<Proposal>) {
        out.push(Proposal {
            addr: src,
            origin: Origin::Learned,
        });
    }
}

/// The sources a host uses unless told otherwise.
pub fn default_sources() -> Vec<Box<dyn CandidateSource>> {
    vec![Box::new(NetmapEndpoints), Box::new(PeerReflexive)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_proposes_from_its_own_input() {
        let a: SocketAddr = "203.0.113.5:1".parse().unwrap_or_else(|_| unreachable!());
        let mut out = Vec::new();
        let mut sources = default_sources();
        for s in &mut sources {
            s.on_netmap(NodeId(1), &[a], &mut out);
        }
        assert_eq!(
            out,
            vec![Proposal {
                addr: a,
                origin: Origin::Netmap
            }]
        );
        out.clear();
        for s in &mut sources {
            s.on_probe(NodeId(1), a, &mut out);
        }
        assert_eq!(out[0].origin, Origin::Learned);
        assert_eq!(sources[1].name(), "peer-reflexive");
    }
}
