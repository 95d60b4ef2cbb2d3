//! What the restart and renumbering tests do to a running [`Cluster`]:
//! kill the coordinator without warning, read who it sees online, and
//! move a host to a new underlay address.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::wait_for;

impl Cluster<'_> {
    /// Kills the coordinator with SIGKILL (no goodbye to any host) and
    /// waits until it is gone.
    pub fn kill_coordinator(&mut self) -> anyhow::Result<()> {
        let p = self.coordinator.take().context("no coordinator running")?;
        p.signal(libc::SIGKILL);
        wait_for(Duration::from_secs(5), "the coordinator to die", || {
            (!p.is_running()).then_some(())
        })?;
        // Reaps it (it is already dead: no signal reaches anyone else).
        p.stop();
        Ok(())
    }

    /// `weft node list --json`.
    pub fn nodes(&self) -> anyhow::Result<Vec<Value>> {
        let out = self.admin(&["node", "list", "--json"])?;
        let v: Value = serde_json::from_str(&out).context("node list --json")?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// How many nodes the coordinator lists online (0 while it is down).
    pub fn online_count(&self) -> usize {
        self.nodes()
            .map(|n| n.iter().filter(|n| n["online"] == true).count())
            .unwrap_or(0)
    }

    /// Moves host `i` from its underlay address to `to` (same LAN), as a
    /// DHCP change would: the old address goes, the new one comes, and the
    /// default route is put back.
    pub fn renumber(&mut self, i: usize, to: Ipv4Addr) -> anyhow::Result<()> {
        let h = &self.hosts[i];
        let (ns, from, cloud) = (h.ns.clone(), h.underlay, h.cloud);
        let lab = self.lab;
        lab.try_ok(
            &ns,
            &["ip", "addr", "del", &format!("{from}/24"), "dev", "eth0"],
        )?;
        lab.try_ok(
            &ns,
            &["ip", "addr", "add", &format!("{to}/24"), "dev", "eth0"],
        )?;
        lab.try_ok(
            &ns,
            &[
                "ip",
                "route",
                "replace",
                "default",
                "via",
                &format!("198.18.{cloud}.1"),
            ],
        )?;
        self.hosts[i].underlay = to;
        Ok(())
    }
}
