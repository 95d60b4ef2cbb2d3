//! Running a policy's `tests:` section against its compiled form.

use std::fmt;
use std::net::IpAddr;

use super::cidr::Cidr;
use super::compile::{compile, Cluster, CompiledPolicy};
use super::document::{Policy, PolicyTest};
use super::filter::evaluate;
use super::ports::{ip_proto, PortSpec, Proto};
use super::selector::Selector;
use super::Action;

/// A test of the policy that did not hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestFailure {
    /// The test's line in the document.
    pub line: u64,
    /// 1-based position in the `tests:` section.
    pub test: usize,
    pub message: String,
}

impl fmt::Display for TestFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "line {}: test {}: {}",
            self.line, self.test, self.message
        )
    }
}

/// Compiles `policy` for `cluster` and runs its tests.
pub fn run_tests(policy: &Policy, cluster: &Cluster) -> Vec<TestFailure> {
    run_tests_compiled(policy, cluster, &compile(policy, cluster))
}

/// Runs `policy`'s tests against an already compiled form of it.
pub fn run_tests_compiled(
    policy: &Policy,
    cluster: &Cluster,
    compiled: &CompiledPolicy,
) -> Vec<TestFailure> {
    policy
        .tests
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            check(policy, cluster, compiled, t)
                .err()
                .map(|message| TestFailure {
                    line: t.line,
                    test: i + 1,
                    message: format!("{}: {message}", t.text),
                })
        })
        .collect()
}

/// The addresses a test's end stands for, with a service's traffic.
fn addresses(
    policy: &Policy,
    cluster: &Cluster,
    sel: &Selector,
    depth: u8,
    out: &mut Vec<(IpAddr, Option<PortSpec>)>,
) {
    let hosts = |f: &dyn Fn(&super::compile::ClusterNode) -> bool| {
        cluster
            .nodes
            .iter()
            .filter(|n| f(n))
            .map(|n| (IpAddr::V4(n.subnet.host_addr()), None))
            .collect::<Vec<_>>()
    };
    match sel {
        Selector::Any => out.extend(hosts(&|_| true)),
        Selector::Tag(t) => out.extend(hosts(&|n| n.tags.iter().any(|x| x == t))),
        Selector::Host(h) => out.extend(hosts(&|n| &n.name == h)),
        Selector::Cidr(c) => out.push((c.first_host(), None)),
        Selector::Service(name) => {
            for s in cluster.services.iter().filter(|s| &s.name == name) {
                for n in cluster.nodes.iter().filter(|n| n.id == s.node) {
                    out.push((s.address(&n.subnet), Some(s.spec())));
                }
            }
        }
        Selector::Group(g) => {
            if depth < 8 {
                for m in policy.groups.get(g).into_iter().flatten() {
                    addresses(policy, cluster, m, depth + 1, out);
                }
            }
        }
    }
}

fn describe(spec: &PortSpec) -> String {
    if spec.proto.has_ports() && spec.ports.first == spec.ports.last {
        format!("{}/{}", spec.ports.first, spec.proto)
    } else {
        spec.to_string()
    }
}

fn check(
    policy: &Policy,
    cluster: &Cluster,
    compiled: &CompiledPolicy,
    t: &PolicyTest,
) -> Result<(), String> {
    let mut sources = Vec::new();
    for s in &t.from {
        addresses(policy, cluster, s, 0, &mut sources);
    }
    let mut targets = Vec::new();
    addresses(policy, cluster, &t.to, 0, &mut targets);
    if sources.is_empty() {
        return Err("`from` selects nothing in this cluster".to_string());
    }
    if targets.is_empty() {
        return Err("`to` selects nothing in this cluster".to_string());
    }
    let mut wrong = Vec::new();
    let mut pairs = 0usize;
    for &(dst, service) in &targets {
        let Some(spec) = t.port.or(service) else {
            return Err("the target has no port".to_string());
        };
        let Some(node) = cluster.nodes.iter().find(|n| n.owns(dst)) else {
            return Err(format!("{dst} is no node's address in this cluster"));
        };
        let Some(share) = compiled.node(node.id) else {
            return Err(format!("node {} was not compiled", node.name));
        };
        let (proto, port) = match spec.proto {
            Proto::Tcp => (ip_proto::TCP, spec.ports.first),
            Proto::Udp => (ip_proto::UDP, spec.ports.first),
            _ if dst.is_ipv6() => (ip_proto::ICMPV6, 0),
            _ => (ip_proto::ICMP, 0),
        };
        for &(src, _) in &sources {
            pairs += 1;
            let v = evaluate(&share.filter, src, dst, proto, port);
            let by = match v.rule.and_then(|i| share.filter.rules.get(i)) {
                Some(r) => {
                    match (r.rule as usize)
                        .checked_sub(1)
                        .and_then(|i| policy.rules.get(i))
                    {
                        Some(p) => format!("rule {} (line {})", r.rule, p.line),
                        None => format!("rule {}, a service's allow list", r.rule),
                    }
                }
                None => format!("the default ({})", v.action),
            };
            if v.action != t.expect {
                wrong.push(format!(
                    "expected {}, but {src} -> {dst} {} is {} by {by}",
                    t.expect,
                    describe(&spec),
                    v.action.past_tense()
                ));
                continue;
            }
            // An allowed flow between two hosts needs them to be peers.
            let from_node = cluster
                .nodes
                .iter()
                .find(|n| Cidr::from(n.subnet).contains(src));
            if let (Action::Allow, Some(from)) = (v.action, from_node) {
                if from.id != node.id && !share.peers.contains(&from.id) {
                    wrong.push(format!(
                        "{src} -> {dst} is allowed, but {} is not a peer of {}",
                        from.name, node.name
                    ));
                }
            }
        }
    }
    match wrong.len() {
        0 => Ok(()),
        1 => Err(wrong.swap_remove(0)),
        k => Err(format!(
            "{} (and {} more of {pairs} address pairs)",
            wrong.swap_remove(0),
            k - 1
        )),
    }
}
