//! The inbound packet filter: what the coordinator's policy lets reach this
//! host through the tunnel.
//!
//! Stateful: every packet this host sends into the tunnel is recorded in a
//! [`Conntrack`], and inbound packets of a recorded flow pass as replies, as
//! do ICMP errors about it from the peer the flow went to; everything else is
//! judged by the host's [`PacketFilter`](weft_proto::policy::PacketFilter)
//! and dropped packets are counted per policy rule. A TCP SYN and an ICMP
//! echo request are never replies. Since the host's answers are recorded
//! too, an established flow, whoever opened it, survives a filter change
//! until it has been idle for its timeout (like a firewall's ESTABLISHED
//! state): a tightened policy stops new flows at once, not live ones. Flows are recorded only while a filter is
//! installed: replies of a flow opened before pass again once this host
//! sends on it.
//!
//! Fragments: the first fragment of an IP datagram carries the ports and is
//! judged like a whole packet; when it is admitted, the later fragments of
//! the same datagram pass too. A later fragment whose first fragment was not
//! seen (yet) has no ports: it is judged with destination port 0, so only
//! rules that cover every port (or ICMP, or any protocol) let it through.
//!
//! Driving it: the configuration path installs filters in a [`FilterSlot`];
//! each packet thread keeps a [`FilterView`] and refreshes it once per batch
//! (one atomic load while nothing changes). With no filter installed, or one
//! that allows everything, nothing is parsed and nothing is recorded.

mod conntrack;
mod packet;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use serde::{Deserialize, Serialize};
use weft_proto::policy::{evaluate, Action, PacketFilter};

pub use conntrack::{Class, Conntrack, FlowKey};
pub use packet::{parse, Flow, Kind, Packet};

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Whether a filter lets every packet in, so that it need not run at all.
pub fn passes_all(filter: &PacketFilter) -> bool {
    filter.default == Action::Allow && filter.rules.iter().all(|r| r.action == Action::Allow)
}

/// A [`PacketFilter`] being enforced, with its drop counters.
pub struct InboundFilter {
    filter: PacketFilter,
    passes_all: bool,
    /// Drops by the rule at the same index of `filter.rules`.
    drops: Box<[AtomicU64]>,
    default_drops: AtomicU64,
    malformed: AtomicU64,
}

impl InboundFilter {
    pub fn new(filter: PacketFilter) -> InboundFilter {
        InboundFilter {
            passes_all: passes_all(&filter),
            drops: filter.rules.iter().map(|_| AtomicU64::new(0)).collect(),
            filter,
            default_drops: AtomicU64::new(0),
            malformed: AtomicU64::new(0),
        }
    }

    pub fn filter(&self) -> &PacketFilter {
        &self.filter
    }

    pub fn passes_all(&self) -> bool {
        self.passes_all
    }

    /// Whether the inbound IP packet `packet` may be delivered, at second
    /// `now` of `ct`'s clock. Counts what it drops. Never allocates.
    pub fn check(&self, ct: &Conntrack, now: u32, packet: &[u8]) -> bool {
        self.check_from(ct, now, packet, |_| true)
    }

    /// [`check`](Self::check) for a packet from the peer whose allowed IPs
    /// `via` recognizes: an ICMP error about one of this host's flows must
    /// come from the peer that flow went to (or through), so a peer cannot
    /// forge errors about this host's flows with other peers.
    pub fn check_from(
        &self,
        ct: &Conntrack,
        now: u32,
        packet: &[u8],
        via: impl Fn(std::net::IpAddr) -> bool,
    ) -> bool {
        if self.passes_all {
            return true;
        }
        let Some(p) = packet::parse(packet) else {
            bump(&self.malformed);
            return false;
        };
        let from_flow_peer = match p.kind {
            Kind::IcmpError(quoted) => via(quoted.dst),
            _ => true,
        };
        let admitted = (from_flow_peer && is_reply(ct, now, &p)) || self.allows(&p.flow);
        if admitted {
            if let Some(id) = p.first_fragment {
                ct.record(&fragment_key(&p.flow, id), now);
            }
        }
        admitted
    }

    /// Judges a packet that is not a reply by the rules.
    fn allows(&self, flow: &Flow) -> bool {
        let verdict = evaluate(&self.filter, flow.src, flow.dst, flow.proto, flow.dst_port);
        if verdict.action == Action::Allow {
            return true;
        }
        match verdict.rule.and_then(|i| self.drops.get(i)) {
            Some(counter) => bump(counter),
            None => bump(&self.default_drops),
        }
        false
    }

    /// The counters, one entry per policy rule that denies (several
    /// compiled rules of one policy rule are added up).
    pub fn stats(&self) -> FilterStats {
        let mut by_rule: BTreeMap<(u32, Action), u64> = BTreeMap::new();
        for (rule, drops) in self.filter.rules.iter().zip(self.drops.iter()) {
            if rule.action != Action::Allow {
                *by_rule.entry((rule.rule, rule.action)).or_default() +=
                    drops.load(Ordering::Relaxed);
            }
        }
        FilterStats {
            rules: by_rule
                .into_iter()
                .map(|((rule, action), drops)| RuleDrops {
                    rule,
                    action,
                    drops,
                })
                .collect(),
            default_drops: self.default_drops.load(Ordering::Relaxed),
            malformed: self.malformed.load(Ordering::Relaxed),
            active: !self.passes_all,
        }
    }
}

/// Whether an inbound packet belongs to a flow this host started.
fn is_reply(ct: &Conntrack, now: u32, p: &Packet) -> bool {
    let f = &p.flow;
    match p.kind {
        Kind::Transport | Kind::EchoReply => ct.touch(&inbound_key(f), now),
        // About a packet this host sent: it must have come from here.
        Kind::IcmpError(quoted) => quoted.src == f.dst && ct.touch(&outbound_key(&quoted), now),
        Kind::Fragment(id) => ct.touch(&fragment_key(f, id), now),
        Kind::TcpSyn | Kind::EchoRequest | Kind::IcmpOther => false,
    }
}

/// The flow of a packet this host sends, from this host's side.
pub fn outbound_key(f: &Flow) -> FlowKey {
    FlowKey {
        local: f.src,
        remote: f.dst,
        proto: f.proto,
        local_port: f.src_port,
        remote_port: f.dst_port,
        class: Class::of(f.proto),
    }
}

/// The flow of a packet this host receives, from this host's side.
pub fn inbound_key(f: &Flow) -> FlowKey {
    FlowKey {
        local: f.dst,
        remote: f.src,
        proto: f.proto,
        local_port: f.dst_port,
        remote_port: f.src_port,
        class: Class::of(f.proto),
    }
}

/// An inbound fragmented datagram whose first fragment was admitted.
fn fragment_key(f: &Flow, id: u32) -> FlowKey {
    let [a, b, c, d] = id.to_be_bytes();
    FlowKey {
        local: f.dst,
        remote: f.src,
        proto: f.proto,
        local_port: u16::from_be_bytes([a, b]),
        remote_port: u16::from_be_bytes([c, d]),
        class: Class::Fragment,
    }
}

/// Records the flows of outbound packets, one read from the TUN at a time;
/// the packets of a split super-packet cost one table update.
pub struct Recorder<'a> {
    ct: &'a Conntrack,
    now: u32,
    last: Option<FlowKey>,
}

impl<'a> Recorder<'a> {
    pub fn new(ct: &'a Conntrack, now: u32) -> Recorder<'a> {
        Recorder {
            ct,
            now,
            last: None,
        }
    }

    /// Notes one outbound IP packet if it opens or continues a flow.
    pub fn packet(&mut self, packet: &[u8]) {
        let Some(p) = packet::parse(packet) else {
            return;
        };
        if !matches!(p.kind, Kind::Transport | Kind::TcpSyn | Kind::EchoRequest) {
            return;
        }
        let key = outbound_key(&p.flow);
        if self.last != Some(key) {
            self.ct.record(&key, self.now);
            self.last = Some(key);
        }
    }
}

/// Drops of one policy rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleDrops {
    /// The policy rule's number (1-based; 0 for rules from no policy rule).
    pub rule: u32,
    pub action: Action,
    pub drops: u64,
}

/// What the inbound filter dropped since it was installed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterStats {
    #[serde(default)]
    pub rules: Vec<RuleDrops>,
    /// Packets no rule matched, under a default of deny.
    #[serde(default)]
    pub default_drops: u64,
    /// Packets that are not readable IP packets.
    #[serde(default)]
    pub malformed: u64,
    /// Whether a filter that can drop anything is installed.
    #[serde(default)]
    pub active: bool,
}

/// The installed filter: replaced by the configuration path, read by the
/// packet threads through a [`FilterView`].
#[derive(Default)]
pub struct FilterSlot {
    current: ArcSwapOption<InboundFilter>,
    /// Bumped after every change, so readers can notice with one load.
    generation: AtomicU64,
}

impl FilterSlot {
    /// Installs `filter`; `None` or a filter that allows everything turns
    /// filtering off. Installing the filter already installed keeps its
    /// counters.
    /// Returns whether anything changed; the filter is copied only then.
    pub fn set(&self, filter: Option<&PacketFilter>) -> bool {
        let filter = filter.filter(|f| !passes_all(f));
        if self.current.load().as_deref().map(InboundFilter::filter) == filter {
            return false;
        }
        self.current
            .store(filter.map(|f| Arc::new(InboundFilter::new(f.clone()))));
        self.generation.fetch_add(1, Ordering::Release);
        true
    }

    pub fn stats(&self) -> FilterStats {
        self.current
            .load()
            .as_deref()
            .map(InboundFilter::stats)
            .unwrap_or_default()
    }
}

/// One packet thread's copy of the installed filter.
#[derive(Default)]
pub struct FilterView {
    generation: u64,
    filter: Option<Arc<InboundFilter>>,
}

impl FilterView {
    /// The filter to apply to the next batch: one atomic load unless it
    /// changed since the last call.
    pub fn refresh(&mut self, slot: &FilterSlot) -> Option<&InboundFilter> {
        let generation = slot.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.filter = slot.current.load_full();
            self.generation = generation;
        }
        self.filter.as_deref()
    }

    /// The filter [`refresh`](Self::refresh) last returned.
    pub fn current(&self) -> Option<&InboundFilter> {
        self.filter.as_deref()
    }
}
