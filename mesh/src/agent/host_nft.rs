//! The agent's own nftables table: outbound NAT for containers and TCP MSS
//! clamping into the tunnel.
//!
//! - **Masquerade.** Containers are addressed from the overlay, which the
//!   underlay does not route: what they send to the internet (anything that
//!   does not go into the tunnel) leaves with the host's own address.
//!   Traffic inside the mesh, to the pool and to approved routes, goes into
//!   the tunnel and is never translated.
//! - **MSS clamp.** A TCP SYN (or SYN-ACK) that enters the tunnel gets its
//!   MSS lowered to fit the tunnel's MTU (`rt mtu`, only ever lowered), so
//!   a container whose interface MTU is larger than the tunnel's (one made
//!   before the MTU dropped, or by a runtime that ignores ours) never sends
//!   segments the tunnel must drop.
//!
//! One table per agent (`inet weft-<interface>`), replaced whole in one
//! transaction and deleted on exit, so nothing weft adds is mixed into
//! tables other software owns. Driven through the `nft` tool for the same
//! reason [`super::host_net`] drives `ip`: a handful of commands per agent
//! start, in the syntax operators read with `nft list table`.

use std::io::Write as _;
use std::process::{Command, Stdio};

use weft_proto::HostSubnet;

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} nftables table {table}: {reason}")]
pub struct NftError {
    what: &'static str,
    table: String,
    reason: String,
}

/// What goes into the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostRules {
    /// The tunnel interface.
    pub interface: String,
    /// The container bridge.
    pub bridge: String,
    /// This host's container subnet.
    pub subnet: HostSubnet,
    /// The cluster pool (never translated, even if its route is missing).
    pub pool: HostSubnet,
    /// Translate container traffic leaving for the underlay.
    pub masquerade: bool,
}

impl HostRules {
    /// The table's name: one per agent, so two agents in one namespace
    /// (tests do that) keep to their own.
    pub fn table(&self) -> String {
        format!("weft-{}", self.interface)
    }

    /// The whole table as one `nft -f` script: created if missing, then
    /// deleted and written anew in the same transaction.
    pub fn script(&self) -> String {
        let t = self.table();
        let (iface, bridge) = (&self.interface, &self.bridge);
        let (subnet, pool) = (self.subnet, self.pool);
        let mut s = format!("table inet {t}\ndelete table inet {t}\ntable inet {t} {{\n");
        if self.masquerade {
            s += &format!(
                "  chain postrouting {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
                 ip saddr {subnet} ip daddr != {pool} oifname != {{ \"{iface}\", \"{bridge}\" }} masquerade\n  }}\n"
            );
        }
        for hook in ["forward", "output"] {
            s += &format!(
                "  chain mss-{hook} {{\n    type filter hook {hook} priority mangle; policy accept;\n    \
                 oifname \"{iface}\" tcp flags syn / syn,rst tcp option maxseg size set rt mtu\n  }}\n"
            );
        }
        s += "}\n";
        s
    }

    /// Installs (or replaces) the table.
    pub fn install(&self) -> Result<InstalledRules, NftError> {
        nft(&self.script(), "install", &self.table())?;
        tracing::info!(
            table = %self.table(),
            masquerade = self.masquerade,
            "nftables table installed (`nft list table inet {}`)",
            self.table()
        );
        Ok(InstalledRules {
            table: self.table(),
        })
    }
}

/// An installed table; [`InstalledRules::remove`] deletes it.
#[derive(Debug)]
pub struct InstalledRules {
    table: String,
}

impl InstalledRules {
    pub fn remove(self) {
        let script = format!("table inet {0}\ndelete table inet {0}\n", self.table);
        if let Err(e) = nft(&script, "remove", &self.table) {
            tracing::warn!(error = %e, "nftables table left behind");
        }
    }
}

fn nft(script: &str, what: &'static str, table: &str) -> Result<(), NftError> {
    let err = |reason: String| NftError {
        what,
        table: table.to_string(),
        reason,
    };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("cannot run `nft` ({e}); install nftables")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A few hundred bytes: fits the pipe, so this cannot block on nft.
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| err(format!("cannot write to nft: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(format!("nft did not finish: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(masquerade: bool) -> HostRules {
        HostRules {
            interface: "weft0".into(),
            bridge: "weftbr0".into(),
            subnet: HostSubnet {
                addr: [100, 64, 3, 0].into(),
                prefix_len: 24,
            },
            pool: HostSubnet {
                addr: [100, 64, 0, 0].into(),
                prefix_len: 10,
            },
            masquerade,
        }
    }

    #[test]
    fn the_script_replaces_one_table_and_masquerades_only_off_the_mesh() {
        let s = rules(true).script();
        assert!(
            s.starts_with("table inet weft-weft0\ndelete table inet weft-weft0\n"),
            "{s}"
        );
        assert!(
            s.contains(
                "ip saddr 100.64.3.0/24 ip daddr != 100.64.0.0/10 oifname != { \"weft0\", \"weftbr0\" } masquerade"
            ),
            "{s}"
        );
        assert_eq!(s.matches("maxseg size set rt mtu").count(), 2, "{s}");
        let off = rules(false).script();
        assert!(!off.contains("masquerade"), "{off}");
        assert!(
            off.contains("hook forward") && off.contains("hook output"),
            "{off}"
        );
    }
}
