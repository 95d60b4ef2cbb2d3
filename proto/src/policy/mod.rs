//! Access policy: the document an admin writes, its compiled form that each
//! host enforces, and the checks that gate a change (issue 6).
//!
//! Pure library: parsing ([`Policy::parse`]), compiling against a snapshot
//! of the cluster ([`compile`]), the per-packet decision ([`decide`]) and the
//! document's own tests ([`run_tests`]). No I/O.
//!
//! # The document
//!
//! ```yaml
//! default: deny            # allow | deny; omitted means deny
//! groups:
//!   web: [tag:web, host:c1-h1]
//!   admins: [group:web, cidr:100.64.9.0/24]
//! rules:
//!   - allow: { from: [group:web], to: [tag:db], ports: ["tcp/5432"] }
//!   - deny:  { from: [tag:dev], to: [service:billing] }
//!   - allow: { from: ["*"], except: [tag:guest], to: [tag:web], ports: ["tcp/443"] }
//!   - allow: { from: ["*"], to: ["*"], ports: ["icmp"] }
//! routes:                  # routes approved by the policy
//!   "10.20.0.0/16": [tag:gateway]
//! tests:
//!   - from: tag:web
//!     to: tag:db:5432/tcp  # SELECTOR:PORT/PROTO, SELECTOR:icmp, or service:NAME
//!     expect: allow
//! ```
//!
//! - A cluster where no policy was ever set runs [`Policy::allow_all`]. Once
//!   a document is set, `default` applies to what no rule matches; a
//!   document without `default` denies.
//! - Selectors: `*`, `tag:T` (the tags of a node's join token; a tag may
//!   hold `:`, as in `tag:cloud:aws`), `host:NAME`, `group:G` (groups nest;
//!   a cycle is an error), `cidr:ADDR/LEN` (IPv4 or IPv6; host bits must be
//!   zero; a bare address is a `/32` or `/128`), `service:NAME`.
//!   Tags, hosts and services that match nothing in the cluster are not
//!   errors: the cluster changes, the document stays.
//! - Ports: `tcp/80`, `udp/53`, `tcp/8000-8100`, `tcp` (every port), `udp`,
//!   `icmp` (ICMP and ICMPv6), `any`. A rule without `ports` is about all
//!   traffic.
//! - `service:NAME` in `to` means the service's address (its node's own, or
//!   the one it was published with) and only the service's port,
//!   intersected with the rule's ports (`allow: {from: [tag:web],
//!   to: [service:billing]}` opens just billing's port). In `from` it means
//!   the service's address.
//! - A deny rule wins over every allow rule, whatever the order: "a deny
//!   rule overrides a broader allow".
//!
//! Errors name the line and what is wrong, all at once
//! ([`PolicyErrors`]): `line 7: unknown group `webb` in rule 2; groups are:
//! db, web`.
//!
//! # The compiled form
//!
//! Each node receives a [`NodePolicy`]: its inbound [`PacketFilter`] (the
//! rules whose destination lies in its own subnet, destinations cut down to
//! that subnet) and the peers it may talk to in either direction; a host
//! learns nothing of the others. Both serialize with one-letter field names
//! for the netmap.
//!
//! - `except:` in a rule takes sources out of `from` (set subtraction on
//!   addresses).
//! - A host owns its subnet and the routes it advertised that were
//!   approved (by an admin, or by `routes:` when the host matches one of the
//!   selectors of a prefix holding the route; see [`Policy::approves_route`]):
//!   a `cidr:` destination inside an approved route compiles into the
//!   advertising host's filter.
//! - A service published with an allow list is reachable only from those
//!   clients (and from its public gateway), whatever else allows: the
//!   compiler adds a deny for everyone else.
//!
//! Stateful return traffic is the data plane's.
//!
//! YAML is read with `serde-saphyr` (pure Rust, no `unsafe-libyaml`), whose
//! `Spanned` values give every scalar's line for the errors.

mod checks;
mod cidr;
mod compile;
mod document;
mod filter;
mod ports;
mod selector;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use checks::{run_tests, run_tests_compiled, TestFailure};
pub use cidr::{Cidr, CidrError};
pub use compile::{
    compile, with_service_rules, Cluster, ClusterNode, CompiledPolicy, NodePolicy, Service,
};
pub use document::{Policy, PolicyError, PolicyErrors, PolicyTest, Rule};
pub use filter::{decide, evaluate, FilterRule, PacketFilter, Verdict};
pub use ports::{ip_proto, PortRange, PortSpec, PortSpecError, Proto};
pub use selector::Selector;

/// What happens to a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    /// `allowed` or `denied`, for messages.
    pub fn past_tense(self) -> &'static str {
        match self {
            Action::Allow => "allowed",
            Action::Deny => "denied",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        })
    }
}
