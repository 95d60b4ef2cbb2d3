//! `weft token create --cloud-init`: a cloud-init user-data document that
//! joins a new VM in any cloud with no manual step. It writes the token
//! (mode 0600) and a bootstrap script, and runs the script: install the
//! binary (from `--binary-url`, checked against `--binary-sha256` when
//! given), write the systemd units, enable the agent. The agent unit joins
//! with the token on its first start (`weft up --token-file`).

/// Where the document puts things (the agent unit reads the token here).
pub const TOKEN_PATH: &str = "/etc/weft/token";
pub const SCRIPT_PATH: &str = "/usr/local/lib/weft/bootstrap.sh";
pub const BIN_PATH: &str = "/usr/local/bin/weft";

/// Checks a `--binary-url`: http(s), and nothing a shell or YAML would
/// read as syntax (it is pasted into both).
pub fn check_url(url: &str) -> Result<(), String> {
    let scheme_ok = url.starts_with("https://") || url.starts_with("http://");
    let clean = url
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '`' | '$' | '#'));
    if scheme_ok && clean && url.len() <= 2048 {
        Ok(())
    } else {
        Err(format!(
            "--binary-url must be an http:// or https:// URL without quotes, spaces, `$`, `#` \
             or backslashes, not `{url}`"
        ))
    }
}

/// Checks a `--binary-sha256`: 64 hex digits.
pub fn check_sha256(hex: &str) -> Result<(), String> {
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(format!(
            "--binary-sha256 must be 64 hex digits (`sha256sum weft`), not `{hex}`"
        ))
    }
}

/// The document. `about` is one comment line on the token (id, uses,
/// expiry); `url` and `sha256` are checked already.
pub fn user_data(token: &str, about: &str, url: Option<&str>, sha256: Option<&str>) -> String {
    let install = match url {
        Some(url) => {
            let verify = sha256.map_or_else(String::new, |h| {
                format!(
                    "  echo '{h}  '\"$tmp\" | sha256sum -c - >/dev/null || {{ echo \"weft: the binary from {url} does not match --binary-sha256\" >&2; rm -f \"$tmp\"; exit 1; }}\n"
                )
            });
            format!(
                "tmp=$(mktemp {BIN_PATH}.XXXXXX)\n\
                 if command -v curl >/dev/null 2>&1; then\n  curl -fsSL --retry 5 -o \"$tmp\" '{url}'\n\
                 else\n  wget -q -O \"$tmp\" '{url}'\nfi\n{verify}chmod 0755 \"$tmp\"\nmv \"$tmp\" {BIN_PATH}\n"
            )
        }
        None => format!(
            "if ! [ -x {BIN_PATH} ]; then\n  echo \"weft: no binary at {BIN_PATH}; bake it into the image or create \
             this document with --binary-url\" >&2\n  exit 1\nfi\n"
        ),
    };
    let script = format!(
        "#!/bin/sh\n# Installs weft and starts its agent; written by `weft token create --cloud-init`.\n\
         set -eu\nmkdir -p /usr/local/bin\n{install}{BIN_PATH} install-units --agent-only\n\
         systemctl daemon-reload\nsystemctl enable --now weft-agent.service\n"
    );
    let indent = |text: &str| {
        text.lines()
            .map(|l| format!("      {l}\n"))
            .collect::<String>()
    };
    format!(
        "#cloud-config\n# weft: joins this machine to the cluster on first boot. {about}\n\
         # The token is a secret: keep this document as private as the token itself.\n\
         packages: [iproute2, nftables]\n\
         write_files:\n  - path: {TOKEN_PATH}\n    owner: root:root\n    permissions: '0600'\n    content: |\n{}\
         \x20 - path: {SCRIPT_PATH}\n    owner: root:root\n    permissions: '0700'\n    content: |\n{}\
         runcmd:\n  - [sh, {SCRIPT_PATH}]\n",
        indent(token),
        indent(&script)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Doc {
        packages: Vec<String>,
        write_files: Vec<File>,
        runcmd: Vec<Vec<String>>,
    }

    #[derive(serde::Deserialize)]
    struct File {
        path: String,
        permissions: String,
        content: String,
    }

    #[test]
    fn the_document_is_cloud_config_with_a_private_token_and_a_script() {
        let url = "https://example.com/weft-x86_64";
        let hash = "ab".repeat(32);
        let text = user_data("weft1.abc.def", "token t1", Some(url), Some(&hash));
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let doc: Doc = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(doc.packages, ["iproute2", "nftables"]);
        let token = &doc.write_files[0];
        assert_eq!(
            (token.path.as_str(), token.permissions.as_str()),
            (TOKEN_PATH, "0600")
        );
        assert_eq!(token.content, "weft1.abc.def\n");
        let script = &doc.write_files[1].content;
        assert!(script.starts_with("#!/bin/sh\n"), "{script}");
        assert!(script.contains(&format!("'{url}'")), "{script}");
        assert!(script.contains(&hash), "{script}");
        assert!(script.contains("systemctl enable --now weft-agent.service"));
        assert_eq!(
            doc.runcmd,
            [vec!["sh".to_string(), SCRIPT_PATH.to_string()]]
        );
        let baked = user_data("weft1.abc.def", "t", None, None);
        assert!(
            baked.contains("no binary at /usr/local/bin/weft"),
            "{baked}"
        );
    }

    #[test]
    fn urls_and_hashes_that_could_break_out_are_refused() {
        assert!(check_url("https://example.com/weft").is_ok());
        for bad in [
            "ftp://x/weft",
            "https://x/w'; rm -rf /",
            "https://x/$(id)",
            "https://x/a b",
            "https://x/#",
            "file:///etc/passwd",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
        assert!(check_sha256(&"0f".repeat(32)).is_ok());
        assert!(check_sha256("abc").is_err());
        assert!(check_sha256(&"zz".repeat(32)).is_err());
    }
}
