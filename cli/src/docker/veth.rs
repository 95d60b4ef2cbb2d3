//! The veth pair of one endpoint, made with iproute2 the way the agent
//! drives its bridge: the host end on the agent's bridge, the other end
//! handed to Docker, which moves it into the container and names it `eth0`.

use std::process::Command;

use super::wire::PluginError;

/// Longest Linux interface name.
const IFNAMSIZ_MAX: usize = 15;
/// Characters of the endpoint id in each end's name.
const ID_CHARS: usize = 11;

/// The names of an endpoint's two ends: `wd` (host) and `wc` (container)
/// followed by the endpoint id's first characters, 13 bytes in all.
pub fn names(endpoint_id: &str) -> (String, String) {
    let id: String = endpoint_id
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(ID_CHARS)
        .collect::<String>()
        .to_ascii_lowercase();
    let (host, peer) = (format!("wd{id}"), format!("wc{id}"));
    debug_assert!(host.len() <= IFNAMSIZ_MAX && peer.len() <= IFNAMSIZ_MAX);
    (host, peer)
}

/// Creates the pair with `mtu` on both ends and attaches the host end to
/// `bridge`. A pair left by an earlier try is replaced.
pub fn create(host: &str, peer: &str, bridge: &str, mtu: u32) -> Result<(), PluginError> {
    remove(host)?;
    let mtu = mtu.to_string();
    ip(&[
        "link", "add", host, "mtu", &mtu, "type", "veth", "peer", "name", peer, "mtu", &mtu,
    ])?;
    let attached = ip(&["link", "set", host, "master", bridge])
        .and_then(|()| ip(&["link", "set", host, "up"]));
    if let Err(e) = attached {
        let _ = remove(host);
        return Err(e);
    }
    Ok(())
}

/// Removes the pair (deleting one end deletes both). Idempotent.
pub fn remove(host: &str) -> Result<(), PluginError> {
    if !std::path::Path::new("/sys/class/net").join(host).exists() {
        return Ok(());
    }
    ip(&["link", "del", host])
}

fn ip(args: &[&str]) -> Result<(), PluginError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| PluginError::new(format!("cannot run `ip` ({e}); install iproute2")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(PluginError::new(format!(
        "`ip {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_and_differ_per_endpoint() {
        let id = "6f1c2b9e0a4d8c7b5e3f2a1d0c9b8a7f6e5d4c3b2a1f0e9d8c7b6a5f4e3d2c1b";
        let (h, p) = names(id);
        assert_eq!((h.as_str(), p.as_str()), ("wd6f1c2b9e0a4", "wc6f1c2b9e0a4"));
        assert!(h.len() <= IFNAMSIZ_MAX);
        let (h2, _) = names("7f1c2b9e0a4d");
        assert_ne!(h, h2);
        // Whatever the id holds, the names are short and plain.
        let (h, p) = names("A-b_c/../../x y");
        assert_eq!((h.as_str(), p.as_str()), ("wdabcxy", "wcabcxy"));
    }
}
