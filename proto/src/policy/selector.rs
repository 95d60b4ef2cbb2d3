//! Selectors: which nodes, addresses or services a rule is about.

use std::fmt;

use super::cidr::Cidr;

/// One entry of a rule's `from` or `to`, a group's members, or a test's ends.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Selector {
    /// `*`: every address.
    Any,
    /// `tag:T`: the nodes carrying tag `T` (from their join token).
    Tag(String),
    /// `host:NAME`: the node of that name.
    Host(String),
    /// `group:G`: the members of a group of the document.
    Group(String),
    /// `cidr:ADDR/LEN`: an address range (host subnets, container CIDRs).
    Cidr(Cidr),
    /// `service:NAME`: a published service: its node and its port.
    Service(String),
}

const FORMS: &str =
    "selectors are `*`, `tag:NAME`, `host:NAME`, `group:NAME`, `cidr:ADDR/LEN`, `service:NAME`";

impl Selector {
    /// Parses one selector; the error says what is accepted.
    pub fn parse(s: &str) -> Result<Selector, String> {
        let s = s.trim();
        if s == "*" {
            return Ok(Selector::Any);
        }
        let Some((kind, name)) = s.split_once(':') else {
            return Err(format!(
                "unknown selector `{s}`; did you mean `tag:{s}` or `group:{s}`? {FORMS}"
            ));
        };
        let name = name.trim();
        if name.is_empty() {
            return Err(format!("selector `{s}` has an empty name; {FORMS}"));
        }
        Ok(match kind.trim() {
            "tag" => Selector::Tag(name.to_string()),
            "host" => Selector::Host(name.to_string()),
            "group" => Selector::Group(name.to_string()),
            "service" => Selector::Service(name.to_string()),
            "cidr" => Selector::Cidr(
                name.parse()
                    .map_err(|e| format!("bad address range in `{s}`: {e}"))?,
            ),
            other => return Err(format!("unknown selector kind `{other}` in `{s}`; {FORMS}")),
        })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Any => f.write_str("*"),
            Selector::Tag(t) => write!(f, "tag:{t}"),
            Selector::Host(h) => write!(f, "host:{h}"),
            Selector::Group(g) => write!(f, "group:{g}"),
            Selector::Cidr(c) => write!(f, "cidr:{c}"),
            Selector::Service(s) => write!(f, "service:{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        for s in [
            "*",
            "tag:web",
            "tag:cloud:aws",
            "host:c1-h1",
            "group:admins",
            "cidr:100.64.9.0/24",
            "cidr:fd00::/64",
            "service:billing",
        ] {
            assert_eq!(Selector::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(
            Selector::parse("tag:cloud:aws").unwrap(),
            Selector::Tag("cloud:aws".into())
        );
    }

    #[test]
    fn unknown_kinds_and_bare_names_are_refused() {
        let e = Selector::parse("team:x").unwrap_err();
        assert!(e.contains("unknown selector kind `team`"), "{e}");
        let e = Selector::parse("web").unwrap_err();
        assert!(e.contains("did you mean `tag:web` or `group:web`"), "{e}");
        assert!(Selector::parse("tag:").unwrap_err().contains("empty name"));
        assert!(Selector::parse("cidr:1.2.3.4/40").is_err());
    }
}
