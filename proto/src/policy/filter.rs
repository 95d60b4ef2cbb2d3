//! The compiled packet filter one host enforces on inbound packets, and the
//! per-packet decision.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::cidr::Cidr;
use super::ports::{PortRange, PortSpec, Proto};
use super::Action;

/// One compiled rule: packets from `src` to `dst` of `proto` (and, for TCP
/// and UDP, to a port in `ports`). `src` is shared by every host's copy of
/// the same policy rule (at 10,000 hosts a tag's sources are thousands of
/// prefixes, the same for every host that rule reaches).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterRule {
    #[serde(rename = "a")]
    pub action: Action,
    #[serde(rename = "s")]
    pub src: std::sync::Arc<[Cidr]>,
    #[serde(rename = "d")]
    pub dst: Vec<Cidr>,
    #[serde(rename = "p")]
    pub proto: Proto,
    #[serde(rename = "r", default)]
    pub ports: PortRange,
    /// The policy rule this came from (1-based), for per-rule counters and
    /// messages; 0 if none.
    #[serde(rename = "o", default)]
    pub rule: u32,
}

impl FilterRule {
    /// The protocol and ports as one value.
    pub fn spec(&self) -> PortSpec {
        PortSpec {
            proto: self.proto,
            ports: self.ports,
        }
    }

    /// Whether a packet matches. Never allocates.
    #[inline]
    pub fn matches(&self, src: IpAddr, dst: IpAddr, ip_proto: u8, dst_port: u16) -> bool {
        self.spec().matches(ip_proto, dst_port)
            && self.dst.iter().any(|c| c.contains(dst))
            && self.src.iter().any(|c| c.contains(src))
    }
}

/// A host's inbound filter: deny rules win over allow rules whatever their
/// order; packets no rule matches get `default`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketFilter {
    #[serde(rename = "r", default)]
    pub rules: Vec<FilterRule>,
    #[serde(rename = "d")]
    pub default: Action,
}

impl PacketFilter {
    /// The filter of a cluster with no policy: everything passes.
    pub fn allow_all() -> PacketFilter {
        PacketFilter {
            rules: Vec::new(),
            default: Action::Allow,
        }
    }
}

/// What the filter decided and which rule decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub action: Action,
    /// Index into [`PacketFilter::rules`]; `None` when the default decided.
    pub rule: Option<usize>,
}

/// Decides one packet (or the first packet of a flow): any matching deny
/// rule denies; else any matching allow rule allows; else the default.
/// Never allocates.
pub fn evaluate(
    filter: &PacketFilter,
    src: IpAddr,
    dst: IpAddr,
    ip_proto: u8,
    dst_port: u16,
) -> Verdict {
    let find = |action: Action| {
        filter
            .rules
            .iter()
            .position(|r| r.action == action && r.matches(src, dst, ip_proto, dst_port))
    };
    if let Some(i) = find(Action::Deny) {
        return Verdict {
            action: Action::Deny,
            rule: Some(i),
        };
    }
    if let Some(i) = find(Action::Allow) {
        return Verdict {
            action: Action::Allow,
            rule: Some(i),
        };
    }
    Verdict {
        action: filter.default,
        rule: None,
    }
}

/// [`evaluate`], keeping only the action.
#[inline]
pub fn decide(
    filter: &PacketFilter,
    src: IpAddr,
    dst: IpAddr,
    ip_proto: u8,
    dst_port: u16,
) -> Action {
    evaluate(filter, src, dst, ip_proto, dst_port).action
}
