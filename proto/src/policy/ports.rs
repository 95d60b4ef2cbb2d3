//! Protocols and port ranges: `tcp/80`, `udp/53`, `tcp/8000-8100`, `tcp`,
//! `icmp`, `any`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// IP protocol numbers a filter distinguishes.
pub mod ip_proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
}

/// The protocol a rule is about. `Icmp` means ICMP on IPv4 and ICMPv6 on IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Proto {
    Any,
    Tcp,
    Udp,
    Icmp,
}

impl Proto {
    /// Whether a packet of IP protocol `ip_proto` is of this protocol.
    #[inline]
    pub fn matches(self, ip_proto: u8) -> bool {
        match self {
            Proto::Any => true,
            Proto::Tcp => ip_proto == ip_proto::TCP,
            Proto::Udp => ip_proto == ip_proto::UDP,
            Proto::Icmp => ip_proto == ip_proto::ICMP || ip_proto == ip_proto::ICMPV6,
        }
    }

    /// Whether the protocol has ports (TCP and UDP).
    pub fn has_ports(self) -> bool {
        matches!(self, Proto::Tcp | Proto::Udp)
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Any => "any",
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Icmp => "icmp",
        })
    }
}

/// An inclusive range of destination ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortRange {
    #[serde(rename = "l")]
    pub first: u16,
    #[serde(rename = "h")]
    pub last: u16,
}

impl PortRange {
    /// Every port.
    pub const ALL: PortRange = PortRange {
        first: 0,
        last: u16::MAX,
    };

    /// One port.
    pub fn single(port: u16) -> PortRange {
        PortRange {
            first: port,
            last: port,
        }
    }

    #[inline]
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }

    /// Whether every port of `other` is in this range.
    pub fn covers(&self, other: &PortRange) -> bool {
        self.first <= other.first && other.last <= self.last
    }

    /// The ports both ranges hold.
    pub fn intersect(&self, other: &PortRange) -> Option<PortRange> {
        let first = self.first.max(other.first);
        let last = self.last.min(other.last);
        (first <= last).then_some(PortRange { first, last })
    }
}

impl Default for PortRange {
    fn default() -> Self {
        PortRange::ALL
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What traffic a rule is about: a protocol and, for TCP and UDP, the
/// destination ports. The policy file's `ports:` entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortSpec {
    pub proto: Proto,
    /// [`PortRange::ALL`] unless the protocol has ports.
    pub ports: PortRange,
}

impl PortSpec {
    /// Every protocol, every port.
    pub const ANY: PortSpec = PortSpec {
        proto: Proto::Any,
        ports: PortRange::ALL,
    };

    /// Whether a packet matches.
    #[inline]
    pub fn matches(&self, ip_proto: u8, dst_port: u16) -> bool {
        self.proto.matches(ip_proto) && (!self.proto.has_ports() || self.ports.contains(dst_port))
    }

    /// Whether every packet `other` matches, this matches too.
    pub fn covers(&self, other: &PortSpec) -> bool {
        match self.proto {
            Proto::Any => true,
            p if p == other.proto => !p.has_ports() || self.ports.covers(&other.ports),
            _ => false,
        }
    }

    /// The traffic both match.
    pub fn intersect(&self, other: &PortSpec) -> Option<PortSpec> {
        match (self.proto, other.proto) {
            (Proto::Any, _) => Some(*other),
            (_, Proto::Any) => Some(*self),
            (a, b) if a == b => Some(PortSpec {
                proto: a,
                ports: self.ports.intersect(&other.ports)?,
            }),
            _ => None,
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.proto.has_ports() && self.ports != PortRange::ALL {
            write!(f, "{}/{}", self.proto, self.ports)
        } else {
            write!(f, "{}", self.proto)
        }
    }
}

/// Why a port spec was refused. The message says what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PortSpecError(String);

const PORT_FORMS: &str = "write `tcp/80`, `udp/53`, `tcp/8000-8100`, `tcp`, `udp`, `icmp` or `any`";

fn parse_port(s: &str, whole: &str) -> Result<u16, PortSpecError> {
    s.trim().parse().map_err(|_| {
        PortSpecError(format!(
            "`{whole}`: `{s}` is not a port (0 to 65535); {PORT_FORMS}"
        ))
    })
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<PortSpec, PortSpecError> {
        let whole = s.trim();
        let (proto, ports) = match whole.split_once('/') {
            Some((p, r)) => (p, Some(r)),
            None => (whole, None),
        };
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => Proto::Tcp,
            "udp" => Proto::Udp,
            "icmp" => Proto::Icmp,
            "any" => Proto::Any,
            _ if proto.trim().parse::<u16>().is_ok() => {
                return Err(PortSpecError(format!(
                    "port `{whole}` needs a protocol: write `tcp/{whole}` or `udp/{whole}`"
                )))
            }
            _ => {
                return Err(PortSpecError(format!(
                    "unknown protocol in `{whole}`; {PORT_FORMS}"
                )))
            }
        };
        let ports = match ports {
            None => PortRange::ALL,
            Some(_) if !proto.has_ports() => {
                return Err(PortSpecError(format!(
                    "`{whole}`: {proto} has no ports; write `{proto}`"
                )))
            }
            Some(r) => match r.split_once('-') {
                None => PortRange::single(parse_port(r, whole)?),
                Some((a, b)) => {
                    let (first, last) = (parse_port(a, whole)?, parse_port(b, whole)?);
                    if first > last {
                        return Err(PortSpecError(format!(
                            "`{whole}`: the range is backwards; write `{proto}/{last}-{first}`"
                        )));
                    }
                    PortRange { first, last }
                }
            },
        };
        Ok(PortSpec { proto, ports })
    }
}

/// The port of a policy test's target: `5432/tcp`, `53/udp` or `icmp`.
pub(crate) fn parse_test_port(s: &str) -> Option<PortSpec> {
    if s.eq_ignore_ascii_case("icmp") {
        return Some(PortSpec {
            proto: Proto::Icmp,
            ports: PortRange::ALL,
        });
    }
    let (port, proto) = s.split_once('/')?;
    let port: u16 = port.parse().ok()?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        _ => return None,
    };
    Some(PortSpec {
        proto,
        ports: PortRange::single(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PortSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(p("tcp/80").to_string(), "tcp/80");
        assert_eq!(p("udp/53").to_string(), "udp/53");
        assert_eq!(
            p("tcp/8000-8100").ports,
            PortRange {
                first: 8000,
                last: 8100
            }
        );
        assert_eq!(
            p("tcp"),
            PortSpec {
                proto: Proto::Tcp,
                ports: PortRange::ALL
            }
        );
        assert_eq!(p("icmp").proto, Proto::Icmp);
        assert_eq!(p("any"), PortSpec::ANY);
        assert_eq!(p("TCP/443").proto, Proto::Tcp);
    }

    #[test]
    fn refuses_bad_forms_saying_why() {
        let e = |s: &str| s.parse::<PortSpec>().unwrap_err().to_string();
        assert!(e("5432").contains("needs a protocol: write `tcp/5432`"));
        assert!(e("sctp/1").contains("unknown protocol"));
        assert!(e("tcp/70000").contains("not a port"));
        assert!(e("tcp/90-80").contains("backwards"));
        assert!(e("icmp/8").contains("icmp has no ports"));
        assert!(e("tcp/").contains("not a port"));
    }

    #[test]
    fn matching_and_ranges() {
        assert!(p("tcp/8000-8100").matches(ip_proto::TCP, 8050));
        assert!(!p("tcp/8000-8100").matches(ip_proto::TCP, 8101));
        assert!(!p("tcp/8000-8100").matches(ip_proto::UDP, 8050));
        assert!(p("icmp").matches(ip_proto::ICMP, 0));
        assert!(p("icmp").matches(ip_proto::ICMPV6, 0));
        assert!(!p("icmp").matches(ip_proto::TCP, 0));
        assert!(p("any").matches(132, 9));
        assert!(p("udp").matches(ip_proto::UDP, 0));
    }

    #[test]
    fn covers_and_intersects() {
        assert!(p("any").covers(&p("tcp/80")));
        assert!(p("tcp").covers(&p("tcp/80")));
        assert!(!p("tcp/80").covers(&p("tcp")));
        assert!(!p("tcp").covers(&p("any")));
        assert!(p("icmp").covers(&p("icmp")));
        assert_eq!(
            p("tcp/1-100").intersect(&p("tcp/50-200")),
            Some(p("tcp/50-100"))
        );
        assert_eq!(p("tcp/80").intersect(&p("udp/80")), None);
        assert_eq!(p("any").intersect(&p("udp/53")), Some(p("udp/53")));
    }

    #[test]
    fn test_ports() {
        assert_eq!(parse_test_port("5432/tcp"), Some(p("tcp/5432")));
        assert_eq!(parse_test_port("icmp"), Some(p("icmp")));
        assert_eq!(parse_test_port("tcp/5432"), None);
        assert_eq!(parse_test_port("128"), None);
    }
}
