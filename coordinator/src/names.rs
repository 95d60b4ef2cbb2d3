//! Node names: what a host asks for, made a DNS label and unique.
//!
//! Pure decisions, kept out of the store: the store calls them inside its
//! write transaction with what is already taken.

/// `wanted`, or the first of `wanted-2`, `wanted-3`, … that `taken` says
/// is free (as Tailscale does), each at most 63 characters: a host never
/// gets a name another host holds, however it spells its hostname.
pub fn unique_name(wanted: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(wanted) {
        return wanted.to_string();
    }
    (2u64..)
        .map(|n| {
            let suffix = format!("-{n}");
            let keep = 63usize.saturating_sub(suffix.len());
            let stem: String = wanted.chars().take(keep).collect();
            format!("{}{suffix}", stem.trim_end_matches('-'))
        })
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| wanted.to_string())
}

/// A node name from a hostname: DNS-label characters only, at most 63.
pub fn sanitize_hostname(h: &str) -> String {
    let s: String = h
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() {
        "host".into()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn spellings_of_one_name_normalise_alike() {
        for h in ["DB", "db.", "db!", "-db-", "Db"] {
            assert_eq!(sanitize_hostname(h), "db", "{h}");
        }
        assert_eq!(sanitize_hostname(""), "host");
        assert_eq!(sanitize_hostname("..."), "host");
        assert_eq!(sanitize_hostname(&"x".repeat(100)).len(), 63);
    }

    #[test]
    fn a_taken_name_gets_the_first_free_suffix() {
        let mut taken: HashSet<String> = HashSet::new();
        let mut names = Vec::new();
        for h in ["DB", "db.", "db!", "db-2x"] {
            let n = unique_name(&sanitize_hostname(h), |c| taken.contains(c));
            taken.insert(n.clone());
            names.push(n);
        }
        assert_eq!(names, ["db", "db-2", "db-3", "db-2x"]);
        // A name that already holds the suffix form is skipped over.
        let mut taken: HashSet<String> = ["web", "web-2"].iter().map(|s| s.to_string()).collect();
        let n = unique_name("web", |c| taken.contains(c));
        assert_eq!(n, "web-3");
        taken.insert(n);
    }

    #[test]
    fn suffixed_names_stay_dns_labels() {
        let long = "a".repeat(63);
        let n = unique_name(&long, |c| c == long);
        assert_eq!(n.len(), 63);
        assert!(n.ends_with("-2"));
    }
}
