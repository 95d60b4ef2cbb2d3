//! The CNI_* environment of one plugin invocation.

use super::error::{self, CniError};

/// A CNI operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Check,
    Del,
    Version,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Add => "ADD",
            Verb::Check => "CHECK",
            Verb::Del => "DEL",
            Verb::Version => "VERSION",
        }
    }
}

/// The CNI_* environment of one invocation, checked for what `verb` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invocation {
    pub verb: Verb,
    pub container_id: String,
    /// Empty on a DEL whose namespace is already gone.
    pub netns: String,
    pub ifname: String,
}

impl Invocation {
    /// Reads the invocation through `var` (the process environment in production).
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let verb = match var("CNI_COMMAND").as_deref() {
            Some("ADD") => Verb::Add,
            Some("CHECK") => Verb::Check,
            Some("DEL") => Verb::Del,
            Some("VERSION") => Verb::Version,
            Some(other) => {
                return Err(CniError::new(
                    error::INVALID_ENV,
                    format!("unknown CNI_COMMAND `{other}`; expected ADD, CHECK, DEL or VERSION"),
                ))
            }
            None => {
                return Err(CniError::new(
                    error::INVALID_ENV,
                    "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime",
                ))
            }
        };
        let get = |k: &str| var(k).unwrap_or_default();
        let inv = Self {
            verb,
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
        };
        if verb == Verb::Version {
            return Ok(inv);
        }
        let mut missing = Vec::new();
        for (name, value) in [
            ("CNI_CONTAINERID", &inv.container_id),
            ("CNI_NETNS", &inv.netns),
            ("CNI_IFNAME", &inv.ifname),
        ] {
            if value.is_empty() && !(name == "CNI_NETNS" && verb == Verb::Del) {
                missing.push(name);
            }
        }
        if get("CNI_PATH").is_empty() {
            missing.push("CNI_PATH");
        }
        if !missing.is_empty() {
            return Err(CniError::new(
                error::INVALID_ENV,
                format!(
                    "required environment variables missing: {}",
                    missing.join(", ")
                ),
            ));
        }
        if !is_cni_name(&inv.container_id) {
            return Err(
                CniError::new(error::INVALID_ENV, "invalid characters in CNI_CONTAINERID")
                    .with_details(inv.container_id),
            );
        }
        if !is_ifname(&inv.ifname) {
            return Err(
                CniError::new(error::INVALID_ENV, "invalid CNI_IFNAME").with_details(inv.ifname)
            );
        }
        Ok(inv)
    }
}

/// A container id or network name as the CNI spec allows them: an
/// alphanumeric, then alphanumerics, `_`, `.` or `-`. Safe as a file name.
pub fn is_cni_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// A Linux interface name (at most 15 bytes, no `/`, `:` or whitespace).
/// Safe as a file name.
pub fn is_ifname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    const FULL: [(&str, &str); 5] = [
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc-123_x.y"),
        ("CNI_NETNS", "/var/run/netns/c1"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ];

    #[test]
    fn invocation_needs_what_the_verb_needs() {
        let inv = Invocation::from_env(env(&FULL)).unwrap();
        assert_eq!(inv.verb, Verb::Add);
        assert_eq!(inv.ifname, "eth0");

        let e = Invocation::from_env(env(&FULL[..3])).unwrap_err();
        assert_eq!(e.code, error::INVALID_ENV);
        assert!(e.msg.contains("CNI_IFNAME, CNI_PATH"), "{e}");

        // DEL may come after the namespace is gone.
        let mut del: Vec<_> = FULL
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .copied()
            .collect();
        del[0] = ("CNI_COMMAND", "DEL");
        assert_eq!(Invocation::from_env(env(&del)).unwrap().netns, "");
        del[0] = ("CNI_COMMAND", "CHECK");
        assert!(Invocation::from_env(env(&del)).is_err());

        let v = Invocation::from_env(env(&[("CNI_COMMAND", "VERSION")])).unwrap();
        assert_eq!(v.verb, Verb::Version);

        let e = Invocation::from_env(env(&[])).unwrap_err();
        assert!(e.msg.contains("CNI_COMMAND is not set"), "{e}");
        let e = Invocation::from_env(env(&[("CNI_COMMAND", "GC")])).unwrap_err();
        assert_eq!(e.code, error::INVALID_ENV);
    }

    #[test]
    fn container_ids_and_ifnames_are_safe_file_names() {
        let mut bad = FULL;
        bad[1] = ("CNI_CONTAINERID", "../etc");
        assert!(Invocation::from_env(env(&bad)).is_err());
        bad = FULL;
        bad[3] = ("CNI_IFNAME", "a/b");
        assert!(Invocation::from_env(env(&bad)).is_err());
        assert!(!is_ifname(".."));
        assert!(!is_ifname("sixteen-chars-xx"));
        assert!(is_ifname("net1"));
        assert!(!is_cni_name("-x"));
        assert!(!is_cni_name(""));
    }
}
