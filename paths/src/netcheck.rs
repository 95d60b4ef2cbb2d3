//! What this host's network does to UDP: whether the coordinator's reflector
//! answers at all, and whether the NAT keeps one public mapping for every
//! destination (endpoint-independent) or a new one per destination.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The latest findings, shown by `weft netcheck`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NetcheckReport {
    /// A reflector answered over UDP from the WireGuard socket.
    pub udp: bool,
    /// The public mapping the first reflector saw.
    pub public: Option<SocketAddr>,
    /// The mapping the second reflector port saw.
    pub public_second: Option<SocketAddr>,
    /// Round-trip time of the QUIC control connection, if connected.
    pub coordinator_rtt_ms: Option<f64>,
    /// Seconds since the reflectors were last asked.
    pub checked_secs_ago: Option<u64>,
}

/// How the NAT maps, from two reflector answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mapping {
    /// The same public address and port for every destination.
    EndpointIndependent,
    /// A different mapping per destination ("hard" or symmetric NAT).
    EndpointDependent,
    Unknown,
}

impl NetcheckReport {
    pub fn mapping(&self) -> Mapping {
        match (self.public, self.public_second) {
            (Some(a), Some(b)) if a == b => Mapping::EndpointIndependent,
            (Some(_), Some(_)) => Mapping::EndpointDependent,
            _ => Mapping::Unknown,
        }
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "UDP: {}\n",
            if self.udp {
                "works (the coordinator's reflector answers)"
            } else {
                "no answer from the coordinator's reflector (UDP blocked, or the reflector ports are filtered)"
            }
        ));
        if let Some(p) = self.public {
            out.push_str(&format!("public mapping: {p}\n"));
        }
        let mapping = match self.mapping() {
            Mapping::EndpointIndependent => {
                "endpoint-independent (one mapping for every destination: direct paths are possible)"
            }
            Mapping::EndpointDependent => {
                "endpoint-dependent (a new mapping per destination, a symmetric NAT: peers behind NATs that map endpoint-independently are reached directly, those that filter by address and port through side sockets and the birthday technique; peers behind symmetric NATs too are relayed)"
            }
            Mapping::Unknown => "unknown (fewer than two reflector answers)",
        };
        out.push_str(&format!("mapping: {mapping}\n"));
        match self.coordinator_rtt_ms {
            Some(r) => out.push_str(&format!("coordinator RTT: {r:.1} ms\n")),
            None => out.push_str("coordinator RTT: not connected\n"),
        }
        out
    }
}

/// The reflector addresses of a coordinator at `quic`: the two UDP ports
/// after its QUIC port.
pub fn reflectors(quic: SocketAddr) -> Vec<SocketAddr> {
    (1..=2u16)
        .filter_map(|i| Some(SocketAddr::new(quic.ip(), quic.port().checked_add(i)?)))
        .collect()
}

/// How long to wait for reflector answers before joining.
pub const FIRST_REFLECT_WAIT: Duration = Duration::from_millis(400);

/// Why a peer is relayed, in words; `was_direct`: it had a direct path
/// before.
pub fn relay_reason(online: bool, was_direct: bool, nc: &NetcheckReport) -> String {
    if !online {
        return "the peer is offline".into();
    }
    if was_direct {
        return "the direct path stopped answering probes; relaying while probing it again".into();
    }
    if !nc.udp {
        return "this host gets no UDP answer from the coordinator's reflector (UDP blocked?)"
            .into();
    }
    match nc.mapping() {
        Mapping::EndpointDependent => "no direct path answered: this host's NAT maps endpoint-dependently (symmetric); only a peer NAT that maps endpoint-independently can meet it (by the birthday technique when it filters by port), and if the peer's NAT is symmetric too the pair stays relayed".into(),
        _ => "no direct path answered: the peer's NAT maps endpoint-dependently or filters strictly (see `weft netcheck` on the peer)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_from_two_answers() {
        let mut r = NetcheckReport::default();
        assert_eq!(r.mapping(), Mapping::Unknown);
        r.public = Some("203.0.113.11:40001".parse().unwrap());
        r.public_second = r.public;
        assert_eq!(r.mapping(), Mapping::EndpointIndependent);
        r.public_second = Some("203.0.113.11:40002".parse().unwrap());
        assert_eq!(r.mapping(), Mapping::EndpointDependent);
        assert!(r.render().contains("symmetric"));
        assert_eq!(
            reflectors("203.0.113.1:7443".parse().unwrap()),
            vec![
                "203.0.113.1:7444".parse().unwrap(),
                "203.0.113.1:7445".parse().unwrap()
            ]
        );
    }
}
