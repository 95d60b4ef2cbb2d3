//! Two WireGuard interfaces configured as each other's peer with the stock
//! `wg` tool, whatever implementation serves them (weft, wireguard-go).

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;

use crate::{run_ok, wait_for, Lab};

/// One side of a pair: its interface, underlay address and the overlay
/// addresses it owns (the other side's allowed IPs for it).
pub struct WgEnd<'a> {
    pub iface: &'a str,
    pub underlay: &'a str,
    pub allowed_ips: &'a str,
}

/// Waits until `iface`'s UAPI socket exists (its daemon is ready for `wg`).
pub fn wait_for_uapi(iface: &str) -> anyhow::Result<()> {
    let sock = format!("/var/run/wireguard/{iface}.sock");
    wait_for(Duration::from_secs(10), &sock, || {
        std::path::Path::new(&sock).exists().then_some(())
    })
}

/// Gives both ends fresh keys (`wg genkey`), listen port `port`, and each
/// other as the one peer, with `wg set`. Key files live in the lab's
/// private temp dir only while `wg` reads them.
pub fn configure_pair(lab: &Lab, port: u16, a: &WgEnd<'_>, b: &WgEnd<'_>) -> anyhow::Result<()> {
    let key = |name: &str| -> anyhow::Result<(std::path::PathBuf, String)> {
        let private = run_ok(&["wg", "genkey"]);
        let path = lab.tempdir().join(format!("{name}.key"));
        std::fs::write(&path, &private).with_context(|| format!("write {}", path.display()))?;
        let mut child = Command::new("wg")
            .arg("pubkey")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot run `wg pubkey`")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(private.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "`wg pubkey` failed");
        Ok((
            path,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    };
    let (fa, pa) = key(a.iface)?;
    let (fb, pb) = key(b.iface)?;
    let port_s = port.to_string();
    for (me, file, other, other_key) in [(a, &fa, b, &pb), (b, &fb, a, &pa)] {
        let endpoint = format!("{}:{port}", other.underlay);
        crate::try_run(&[
            "wg",
            "set",
            me.iface,
            "private-key",
            &file.to_string_lossy(),
            "listen-port",
            &port_s,
            "peer",
            other_key,
            "endpoint",
            &endpoint,
            "allowed-ips",
            other.allowed_ips,
        ])?;
    }
    let _ = std::fs::remove_file(&fa);
    let _ = std::fs::remove_file(&fb);
    Ok(())
}
