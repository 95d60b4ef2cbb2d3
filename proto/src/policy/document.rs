//! The policy document: YAML in, a validated [`Policy`] out, or errors that
//! name the line and what is wrong.

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::cidr::Cidr;
use super::ports::{parse_test_port, PortSpec};
use super::selector::Selector;
use super::Action;

/// A validated policy. Groups are already expanded: rules and tests hold no
/// [`Selector::Group`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// What happens to traffic no rule matches.
    pub default: Action,
    /// Each group's members, nested groups expanded.
    pub groups: BTreeMap<String, Vec<Selector>>,
    pub rules: Vec<Rule>,
    pub tests: Vec<PolicyTest>,
    /// Routes approved by the policy: a route a host advertises inside one
    /// of these prefixes is in force if the host matches one of its
    /// selectors (no admin approval needed).
    pub routes: Vec<(Cidr, Vec<Selector>)>,
}

/// One `allow` or `deny` rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub from: Vec<Selector>,
    /// Sources taken out of `from` (set subtraction): `from: ["*"],
    /// except: [tag:dev]` is everyone but the dev hosts.
    pub except: Vec<Selector>,
    pub to: Vec<Selector>,
    /// `[PortSpec::ANY]` when the rule names no ports.
    pub ports: Vec<PortSpec>,
    /// Where the rule starts in the document (1-based).
    pub line: u64,
}

/// One entry of the `tests:` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyTest {
    /// The sources (a group in `from` gives several).
    pub from: Vec<Selector>,
    pub to: Selector,
    /// The target's port; `None` only for a service, which has its own.
    pub port: Option<PortSpec>,
    pub expect: Action,
    /// The test as written, `from -> to`, for messages.
    pub text: String,
    pub line: u64,
}

/// One thing wrong with a document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// 1-based; 0 when the problem has no place (an empty document).
    pub line: u64,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.message)
        } else {
            write!(f, "line {}: {}", self.line, self.message)
        }
    }
}

/// Everything wrong with a document, in line order, one per line when shown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

// The document as written. Every scalar is `Spanned` so validation can name
// its line.

type Text = Spanned<String>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Option<Text>,
    #[serde(default)]
    groups: HashMap<Text, Vec<Text>>,
    #[serde(default)]
    rules: Vec<Spanned<RawRule>>,
    #[serde(default)]
    tests: Vec<Spanned<RawTest>>,
    #[serde(default)]
    routes: HashMap<Text, Vec<Text>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum RawRule {
    Allow(RawRuleBody),
    Deny(RawRuleBody),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRuleBody {
    from: Vec<Text>,
    #[serde(default)]
    except: Vec<Text>,
    to: Vec<Text>,
    #[serde(default)]
    ports: Vec<Text>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTest {
    from: Text,
    to: Text,
    expect: Text,
}

fn line(t: &Text) -> u64 {
    t.referenced.line()
}

fn parse_action(t: &Text, what: &str) -> Result<Action, PolicyError> {
    match t.value.trim() {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        other => Err(PolicyError {
            line: line(t),
            message: format!("{what} is `{other}`; write `allow` or `deny`"),
        }),
    }
}

/// Turns the YAML library's error into ours, keeping its line.
fn yaml_error(e: &serde_saphyr::Error) -> PolicyError {
    let plain = e.without_snippet().to_string();
    // The library appends " at line L, column C"; we lead with the line.
    let message = match plain.rsplit_once(" at line ") {
        Some((m, _)) if e.location().is_some() => m.to_string(),
        _ => plain,
    };
    PolicyError {
        line: e.location().map_or(0, |l| l.line()),
        message,
    }
}

/// Resolves group names to flat member lists, or says which are unknown or
/// cyclic.
struct Groups<'a> {
    raw: BTreeMap<&'a str, (&'a Text, &'a [Text])>,
    names: String,
}

impl<'a> Groups<'a> {
    fn new(raw: &'a HashMap<Text, Vec<Text>>) -> Self {
        let raw: BTreeMap<_, _> = raw
            .iter()
            .map(|(k, v)| (k.value.as_str(), (k, v.as_slice())))
            .collect();
        let names = if raw.is_empty() {
            "none are defined".to_string()
        } else {
            format!(
                "groups are: {}",
                raw.keys().copied().collect::<Vec<_>>().join(", ")
            )
        };
        Groups { raw, names }
    }

    fn unknown(&self, name: &str, at: &Text, context: &str) -> PolicyError {
        PolicyError {
            line: line(at),
            message: format!("unknown group `{name}` in {context}; {}", self.names),
        }
    }

    /// Appends the expansion of group `name` to `out`. `stack` holds the
    /// groups being expanded, to report a cycle.
    fn expand(
        &self,
        name: &str,
        stack: &mut Vec<&'a str>,
        out: &mut Vec<Selector>,
        errors: &mut Vec<PolicyError>,
    ) {
        let Some((&key, &(key_text, members))) = self.raw.get_key_value(name) else {
            return; // Reported by the caller, which knows the line.
        };
        if let Some(pos) = stack.iter().position(|g| *g == key) {
            let mut cycle: Vec<&str> = stack[pos..].to_vec();
            // Every member of a cycle finds it; the smallest name reports it.
            if cycle.iter().any(|g| *g < key) {
                return;
            }
            cycle.push(key);
            errors.push(PolicyError {
                line: line(key_text),
                message: format!("group `{key}` includes itself: {}", cycle.join(" -> ")),
            });
            return;
        }
        stack.push(key);
        for m in members {
            match Selector::parse(&m.value) {
                Err(msg) => errors.push(PolicyError {
                    line: line(m),
                    message: format!("{msg} (in group `{key}`)"),
                }),
                Ok(Selector::Group(inner)) => {
                    if self.raw.contains_key(inner.as_str()) {
                        self.expand(&inner, stack, out, errors);
                    } else {
                        errors.push(self.unknown(&inner, m, &format!("group `{key}`")));
                    }
                }
                Ok(sel) => out.push(sel),
            }
        }
        stack.pop();
    }

    /// Parses a list of selectors, expanding groups.
    fn selectors(
        &self,
        list: &[Text],
        context: &str,
        errors: &mut Vec<PolicyError>,
    ) -> Vec<Selector> {
        let mut out = Vec::new();
        for t in list {
            match Selector::parse(&t.value) {
                Err(msg) => errors.push(PolicyError {
                    line: line(t),
                    message: format!("{msg} (in {context})"),
                }),
                Ok(Selector::Group(g)) => {
                    if self.raw.contains_key(g.as_str()) {
                        // Cycles are reported once, from the groups section.
                        self.expand(&g, &mut Vec::new(), &mut out, &mut Vec::new());
                    } else {
                        errors.push(self.unknown(&g, t, context));
                    }
                }
                Ok(sel) => out.push(sel),
            }
        }
        dedup(out)
    }
}

fn dedup(mut v: Vec<Selector>) -> Vec<Selector> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

/// Splits a test target `SELECTOR[:PORT/PROTO]` (or `SELECTOR:icmp`).
fn parse_target(s: &str) -> Result<(Selector, Option<PortSpec>), String> {
    let s = s.trim();
    if let Some((sel, port)) = s.rsplit_once(':') {
        if let Some(port) = parse_test_port(port.trim()) {
            if let Ok(sel) = Selector::parse(sel) {
                return Ok((sel, Some(port)));
            }
        }
    }
    Ok((Selector::parse(s)?, None))
}

impl Policy {
    /// The policy of a cluster where none was ever set: everything allowed.
    pub fn allow_all() -> Policy {
        Policy {
            default: Action::Allow,
            groups: BTreeMap::new(),
            rules: Vec::new(),
            tests: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// Parses and validates a policy document. All problems found are
    /// returned at once, in line order.
    pub fn parse(text: &str) -> Result<Policy, PolicyErrors> {
        let raw: RawPolicy = match serde_saphyr::from_str::<Option<RawPolicy>>(text) {
            Ok(Some(raw)) => raw,
            Ok(None) => {
                return Err(PolicyErrors(vec![PolicyError {
                    line: 0,
                    message: "the policy is empty; it needs at least `default: allow` or \
                              `default: deny`"
                        .to_string(),
                }]))
            }
            Err(e) => return Err(PolicyErrors(vec![yaml_error(&e)])),
        };
        let mut errors = Vec::new();

        let default = match &raw.default {
            // A policy that says nothing else denies what it does not allow.
            None => Action::Deny,
            Some(t) => parse_action(t, "`default`").unwrap_or_else(|e| {
                errors.push(e);
                Action::Deny
            }),
        };

        let groups_view = Groups::new(&raw.groups);
        let mut groups = BTreeMap::new();
        for &name in groups_view.raw.keys() {
            let mut members = Vec::new();
            groups_view.expand(name, &mut Vec::new(), &mut members, &mut errors);
            groups.insert(name.to_string(), dedup(members));
        }

        let mut rules = Vec::new();
        for (i, r) in raw.rules.iter().enumerate() {
            let n = i + 1;
            let (action, body) = match &r.value {
                RawRule::Allow(b) => (Action::Allow, b),
                RawRule::Deny(b) => (Action::Deny, b),
            };
            let context = format!("rule {n}");
            let from = groups_view.selectors(&body.from, &context, &mut errors);
            let except = groups_view.selectors(&body.except, &context, &mut errors);
            let to = groups_view.selectors(&body.to, &context, &mut errors);
            if body.from.is_empty() || body.to.is_empty() {
                errors.push(PolicyError {
                    line: r.referenced.line(),
                    message: format!(
                        "rule {n} has an empty `from` or `to`, so it matches nothing; \
                         use `[\"*\"]` for everything"
                    ),
                });
            }
            let mut ports = Vec::new();
            for p in &body.ports {
                match p.value.parse::<PortSpec>() {
                    Ok(spec) => ports.push(spec),
                    Err(e) => errors.push(PolicyError {
                        line: line(p),
                        message: format!("{e} (in rule {n})"),
                    }),
                }
            }
            if ports.is_empty() {
                ports.push(PortSpec::ANY);
            }
            rules.push(Rule {
                action,
                from,
                except,
                to,
                ports,
                line: r.referenced.line(),
            });
        }

        let mut tests = Vec::new();
        for (i, t) in raw.tests.iter().enumerate() {
            let n = i + 1;
            let t = &t.value;
            let context = format!("test {n}");
            let expect = parse_action(&t.expect, &format!("`expect` of test {n}"));
            let from = groups_view.selectors(std::slice::from_ref(&t.from), &context, &mut errors);
            let to = parse_target(&t.to.value);
            let (expect, to) = match (expect, to) {
                (Err(e), _) => {
                    errors.push(e);
                    continue;
                }
                (_, Err(msg)) => {
                    errors.push(PolicyError {
                        line: line(&t.to),
                        message: format!("{msg} (in test {n})"),
                    });
                    continue;
                }
                (Ok(expect), Ok(to)) => (expect, to),
            };
            let (to, port) = to;
            if port.is_none() && !matches!(to, Selector::Service(_)) {
                errors.push(PolicyError {
                    line: line(&t.to),
                    message: format!(
                        "test {n}: `to: {}` needs a port and protocol, as in `{}:5432/tcp` or \
                         `{}:icmp`",
                        t.to.value.trim(),
                        t.to.value.trim(),
                        t.to.value.trim()
                    ),
                });
                continue;
            }
            if matches!(to, Selector::Group(_)) {
                errors.push(PolicyError {
                    line: line(&t.to),
                    message: format!(
                        "test {n}: a test's `to` is one target; name a tag, host, cidr or service, \
                         not a group"
                    ),
                });
                continue;
            }
            tests.push(PolicyTest {
                from,
                to,
                port,
                expect,
                text: format!("{} -> {}", t.from.value.trim(), t.to.value.trim()),
                line: line(&t.from),
            });
        }

        let mut routes = Vec::new();
        for (k, v) in &raw.routes {
            let context = format!("routes `{}`", k.value.trim());
            let sels = groups_view.selectors(v, &context, &mut errors);
            match k.value.trim().parse::<Cidr>() {
                Ok(c) => routes.push((c, sels)),
                Err(e) => errors.push(PolicyError {
                    line: line(k),
                    message: format!(
                        "`{}` under `routes:` is not an address range: {e}",
                        k.value.trim()
                    ),
                }),
            }
        }
        routes.sort();

        if errors.is_empty() {
            Ok(Policy {
                default,
                groups,
                rules,
                tests,
                routes,
            })
        } else {
            errors.sort_by_key(|e| e.line);
            errors.dedup();
            Err(PolicyErrors(errors))
        }
    }
}
