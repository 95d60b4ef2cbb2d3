//! What the restart, renumbering and container tests do to a running
//! [`Cluster`]: kill the coordinator without warning, read who it sees
//! online, move a host to a new underlay address, and put a server on the
//! simulated internet.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::Context as _;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::wait_for;

/// The address of [`Cluster::internet_host`].
pub const INTERNET_HOST: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);

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

    /// A namespace on the simulated internet at `203.0.113.80`, outside the
    /// mesh (like any server on the internet): it knows the way to the
    /// routed clouds' LANs, not to the overlay. Returns its name.
    pub fn internet_host(&self) -> String {
        let lab = self.lab;
        let inet = format!("{}-inet", lab.tag());
        let ns = lab.netns("www");
        lab.veth(&ns, "eth0", &inet, "www");
        lab.attach(&inet, "www", "sw0");
        lab.addr(&ns, "eth0", &format!("{INTERNET_HOST}/24"));
        if let Some(m) = self.spec.internet_mtu.or(self.spec.host_mtu) {
            lab.mtu(&ns, "eth0", m);
            lab.mtu(&inet, "www", m);
        }
        for c in (1..=self.spec.clouds).filter(|c| !self.spec.nat(*c).translates()) {
            lab.route(
                &ns,
                &format!("198.18.{c}.0/24"),
                &format!("203.0.113.{}", 10 + c),
            );
        }
        ns
    }

    /// A new machine on cloud `cloud`'s LAN at `198.18.<cloud>.<10+h>`,
    /// cabled and addressed but running nothing (a VM just booted). Its
    /// index in [`Cluster::hosts`].
    pub fn fresh_host(&mut self, cloud: usize, h: usize) -> usize {
        let lab = self.lab;
        let ns = lab.netns(&format!("c{cloud}h{h}"));
        let r = format!("{}-r{cloud}", lab.tag());
        let port = format!("h{h}");
        lab.veth(&ns, "eth0", &r, &port);
        lab.attach(&r, &port, "lan");
        let underlay = Ipv4Addr::new(198, 18, cloud as u8, 10 + h as u8);
        lab.addr(&ns, "eth0", &format!("{underlay}/24"));
        lab.route(&ns, "default", &format!("198.18.{cloud}.1"));
        self.hosts.push(crate::cluster::Host {
            name: format!("c{cloud}-h{h}"),
            ns,
            cloud,
            underlay,
            state_dir: lab.tempdir().join(format!("c{cloud}h{h}")),
            interface: lab.name(&format!("w{cloud}{h}")),
            agent: None,
            containers: Vec::new(),
        });
        self.hosts.len() - 1
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
