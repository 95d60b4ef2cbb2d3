//! NAT routers for the lab: nftables rulesets that give a router namespace
//! one of the NAT behaviours RFC 4787 names, or a firewall that lets no UDP
//! out.
//!
//! Every ruleset lives in one table, [`TABLE`], written with `nft -f` inside
//! the router's namespace; installing again replaces it. How each behaviour
//! is built:
//!
//! - Endpoint-independent mapping (the three "easy" kinds): UDP from the
//!   `i`-th LAN host is `snat`ed to the WAN address and a port from that
//!   host's own block ([`NatRouter::ports`]: 1000 ports from 20000 + 1000 i).
//!   The block keeps hosts apart (two hosts using the same source port never
//!   share a public port); within it the kernel picks a random port for a
//!   new source and then reuses it for every later destination of that same
//!   source (the NAT core looks up an existing conntrack entry with the same
//!   original source first). So a mapping lives while the kernel holds a
//!   conntrack entry from that LAN endpoint, and a new one (perhaps the same
//!   port) is made on the next send after that, or after [`flush_conntrack`].
//!   Everything else from the LAN is masqueraded (other LAN addresses' UDP
//!   to ports 1024-19999, below every host block).
//! - Filtering: address-and-port-dependent is what conntrack alone gives
//!   (only replies from the exact remote address and port get back in).
//!   For the other two, a chain after source NAT learns every mapping,
//!   public port to LAN endpoint, into the dynamic map `mapped`, and
//!   inbound UDP on the WAN is `dnat`ed through that map: from any source
//!   (endpoint-independent), or only when the pair (public port, remote
//!   address) is in the dynamic set `contacted`, filled by the same chain
//!   from every packet sent out (address-dependent). Learned entries expire
//!   after [`MAPPING_TIMEOUT`] without traffic.
//! - Symmetric: address-and-port-dependent mapping with random ports,
//!   `masquerade fully-random` (the kernel then skips its same-source
//!   reuse, so every new destination address and port gets a fresh random
//!   port); filtering is conntrack's.
//! - UDP blocked: a firewall that forwards no UDP at all and, of new
//!   connections from the LAN, only TCP to the coordinator's address and
//!   port; masqueraded.
//!
//! With every NAT kind, new connections from the WAN reach the LAN only
//! through the `dnat` above, and the router itself drops what arrives on
//! the WAN unasked (it answers ping). There is no hairpin NAT: a LAN host
//! sending to the router's public address and a mapped port reaches the
//! router, not the other host; hosts behind the same NAT must use their LAN
//! addresses.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::ops::RangeInclusive;

use anyhow::Context as _;

use crate::Lab;

/// The nftables table (family `ip`) that holds a router's ruleset.
pub const TABLE: &str = "weft_nat";
/// How long a learned mapping or filter entry lives without traffic: the
/// kernel's conntrack timeout for a UDP flow that has seen replies.
pub const MAPPING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);
/// First port of the first host's block; blocks follow one another.
const FIRST_PORT: u16 = 20000;
/// Ports in each host's block.
const PORTS_PER_HOST: u16 = 1000;
/// Hosts whose blocks fit below 65536.
pub const MAX_HOSTS: usize = ((u16::MAX - FIRST_PORT) / PORTS_PER_HOST) as usize;

/// What stands between a LAN and the internet, named as RFC 4787 names NAT
/// behaviour (mapping, then filtering).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum NatKind {
    /// No NAT: the router routes the LAN, which the internet can reach.
    #[default]
    None,
    /// Endpoint-independent mapping and filtering ("full cone").
    EimEif,
    /// Endpoint-independent mapping, address-dependent filtering
    /// ("restricted cone").
    EimAdf,
    /// Endpoint-independent mapping, address-and-port-dependent filtering
    /// ("port-restricted cone").
    EimApdf,
    /// Address-and-port-dependent mapping with random ports ("symmetric");
    /// address-and-port-dependent filtering.
    Symmetric,
    /// A firewall: no UDP out at all; TCP only to the coordinator.
    UdpBlocked,
}

impl NatKind {
    /// Every kind, routed first.
    pub const ALL: [NatKind; 6] = [
        NatKind::None,
        NatKind::EimEif,
        NatKind::EimAdf,
        NatKind::EimApdf,
        NatKind::Symmetric,
        NatKind::UdpBlocked,
    ];

    /// The behaviour in RFC 4787's words.
    pub fn name(self) -> &'static str {
        match self {
            NatKind::None => "no NAT (routed)",
            NatKind::EimEif => "endpoint-independent mapping, endpoint-independent filtering",
            NatKind::EimAdf => "endpoint-independent mapping, address-dependent filtering",
            NatKind::EimApdf => {
                "endpoint-independent mapping, address-and-port-dependent filtering"
            }
            NatKind::Symmetric => {
                "address-and-port-dependent mapping (random ports), address-and-port-dependent filtering"
            }
            NatKind::UdpBlocked => "firewall: no outbound UDP, TCP to the coordinator only",
        }
    }

    /// A short label, e.g. `eim-adf`.
    pub fn label(self) -> &'static str {
        match self {
            NatKind::None => "routed",
            NatKind::EimEif => "eim-eif",
            NatKind::EimAdf => "eim-adf",
            NatKind::EimApdf => "eim-apdf",
            NatKind::Symmetric => "symmetric",
            NatKind::UdpBlocked => "udp-blocked",
        }
    }

    /// Whether a LAN endpoint keeps one public address and port whatever it
    /// sends to.
    pub fn endpoint_independent_mapping(self) -> bool {
        matches!(self, NatKind::EimEif | NatKind::EimAdf | NatKind::EimApdf)
    }

    /// Whether the LAN is hidden behind the router's public address.
    pub fn translates(self) -> bool {
        !matches!(self, NatKind::None)
    }
}

impl std::str::FromStr for NatKind {
    type Err = String;

    /// Parses a [`NatKind::label`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NatKind::ALL
            .into_iter()
            .find(|k| k.label() == s)
            .ok_or_else(|| {
                let labels: Vec<&str> = NatKind::ALL.iter().map(|k| k.label()).collect();
                format!("unknown NAT kind {s:?}; one of: {}", labels.join(", "))
            })
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// A router namespace to put a NAT in: its WAN side (one public address)
/// and its LAN side with the hosts behind it.
#[derive(Clone, Debug)]
pub struct NatRouter {
    /// The router's namespace.
    pub ns: String,
    /// The interface towards the internet.
    pub wan_if: String,
    /// The router's public address on `wan_if`.
    pub wan_ip: Ipv4Addr,
    /// The interface (or bridge) towards the LAN.
    pub lan_if: String,
    /// The LAN hosts, each given its own block of public UDP ports.
    pub hosts: Vec<Ipv4Addr>,
}

impl NatRouter {
    /// The public UDP ports the `i`-th host's endpoint-independent mappings
    /// come from.
    pub fn port_block(i: usize) -> RangeInclusive<u16> {
        let first = FIRST_PORT + PORTS_PER_HOST * i as u16;
        first..=first + (PORTS_PER_HOST - 1)
    }

    /// The public UDP ports `host`'s endpoint-independent mappings come
    /// from; `None` for an address not in [`NatRouter::hosts`].
    pub fn ports(&self, host: Ipv4Addr) -> Option<RangeInclusive<u16>> {
        let i = self.hosts.iter().position(|h| *h == host)?;
        Some(Self::port_block(i))
    }

    /// The nftables ruleset that makes this router a NAT of `kind`;
    /// `coordinator` is the one TCP destination a [`NatKind::UdpBlocked`]
    /// firewall lets through. Replaces any earlier ruleset in [`TABLE`]; for
    /// [`NatKind::None`] it only removes that.
    pub fn ruleset(&self, kind: NatKind, coordinator: SocketAddr) -> anyhow::Result<String> {
        anyhow::ensure!(
            self.hosts.len() <= MAX_HOSTS,
            "a NAT router holds at most {MAX_HOSTS} hosts, got {}",
            self.hosts.len()
        );
        let (wan, lan, w) = (&self.wan_if, &self.lan_if, self.wan_ip);
        let timeout = MAPPING_TIMEOUT.as_secs();
        let mut s = format!("table ip {TABLE} {{}}\ndelete table ip {TABLE}\n");
        if !kind.translates() {
            return Ok(s);
        }
        let learn = matches!(kind, NatKind::EimEif | NatKind::EimAdf);
        let mut line = |l: &str| {
            s.push_str(l);
            s.push('\n');
        };
        line(&format!("table ip {TABLE} {{"));
        if learn {
            line("  # public port -> the LAN endpoint it maps to");
            line("  map mapped {");
            line("    type inet_service : ipv4_addr . inet_service");
            line(&format!("    flags dynamic,timeout; timeout {timeout}s"));
            line("  }");
        }
        if kind == NatKind::EimAdf {
            line("  # (public port, remote address) pairs the LAN has sent to");
            line("  set contacted {");
            line("    type inet_service . ipv4_addr");
            line(&format!("    flags dynamic,timeout; timeout {timeout}s"));
            line("  }");
        }

        line("  chain prerouting {");
        line("    type nat hook prerouting priority dstnat; policy accept;");
        match kind {
            NatKind::EimEif => line(&format!(
                "    iifname \"{wan}\" meta l4proto udp dnat ip to udp dport map @mapped"
            )),
            NatKind::EimAdf => line(&format!(
                "    iifname \"{wan}\" udp dport . ip saddr @contacted dnat ip to udp dport map @mapped"
            )),
            _ => {}
        }
        line("  }");

        line("  chain postrouting {");
        line("    type nat hook postrouting priority srcnat; policy accept;");
        match kind {
            NatKind::Symmetric => line(&format!("    oifname \"{wan}\" masquerade fully-random")),
            NatKind::UdpBlocked => line(&format!("    oifname \"{wan}\" masquerade")),
            _ => {
                for (i, h) in self.hosts.iter().enumerate() {
                    let b = Self::port_block(i);
                    line(&format!(
                        "    oifname \"{wan}\" ip saddr {h} meta l4proto udp snat ip to {w}:{}-{}",
                        b.start(),
                        b.end()
                    ));
                }
                line(&format!(
                    "    oifname \"{wan}\" meta l4proto udp masquerade to :1024-{}",
                    FIRST_PORT - 1
                ));
                line(&format!("    oifname \"{wan}\" masquerade"));
            }
        }
        line("  }");

        if learn {
            line("  chain learn {");
            line("    type filter hook postrouting priority srcnat + 10; policy accept;");
            let out = format!("oifname \"{wan}\" ip saddr {w} meta l4proto udp");
            line(&format!(
                "    {out} ct direction original update @mapped {{ udp sport : ct original ip saddr . ct original proto-src }}"
            ));
            line(&format!(
                "    {out} ct direction reply update @mapped {{ udp sport : ct reply ip saddr . ct reply proto-src }}"
            ));
            if kind == NatKind::EimAdf {
                line(&format!(
                    "    {out} update @contacted {{ udp sport . ip daddr }}"
                ));
            }
            line("  }");
        }

        line("  chain forward {");
        line("    type filter hook forward priority filter; policy accept;");
        line("    ct state established,related accept");
        if kind == NatKind::UdpBlocked {
            let (cip, cport) = (coordinator.ip(), coordinator.port());
            anyhow::ensure!(cip.is_ipv4(), "the coordinator {coordinator} is not IPv4");
            line(&format!(
                "    iifname \"{lan}\" oifname \"{wan}\" ip daddr {cip} tcp dport {cport} accept"
            ));
            line(&format!("    iifname \"{lan}\" oifname \"{wan}\" drop"));
        }
        line(&format!("    iifname \"{wan}\" ct status dnat accept"));
        line(&format!("    iifname \"{wan}\" drop"));
        line("  }");

        line("  chain input {");
        line("    type filter hook input priority filter; policy accept;");
        line(&format!(
            "    iifname \"{wan}\" ct state established,related accept"
        ));
        line(&format!(
            "    iifname \"{wan}\" icmp type echo-request accept"
        ));
        line(&format!("    iifname \"{wan}\" drop"));
        line("  }");
        line("}");
        Ok(s)
    }
}

/// Makes `router` a NAT of `kind` (or, for [`NatKind::None`], takes any NAT
/// away): writes [`NatRouter::ruleset`] into the lab's temp dir and loads it
/// with `nft -f` in the router's namespace. The router must already forward.
pub fn install(
    lab: &Lab,
    router: &NatRouter,
    kind: NatKind,
    coordinator: SocketAddr,
) -> anyhow::Result<()> {
    let rules = router.ruleset(kind, coordinator)?;
    let path = lab
        .tempdir()
        .join(format!("nat-{}-{}.nft", router.ns, kind.label()));
    std::fs::write(&path, &rules).with_context(|| format!("write {}", path.display()))?;
    lab.try_ok(&router.ns, &["nft", "-f", &path.to_string_lossy()])
        .with_context(|| {
            format!(
                "loading the {kind} ruleset {} into {} (is nftables installed?)",
                path.display(),
                router.ns
            )
        })?;
    Ok(())
}

/// Forgets every mapping of the router in `router_ns`, as a NAT that
/// reboots would: flushes its conntrack table (`conntrack -F`) and the
/// mappings and filter entries its ruleset learned. The next packet out
/// makes a new mapping.
pub fn flush_conntrack(lab: &Lab, router_ns: &str) -> anyhow::Result<()> {
    lab.try_ok(router_ns, &["conntrack", "-F"])
        .context("flushing conntrack (is the conntrack tool installed?)")?;
    let listed = lab.try_ok(router_ns, &["nft", "list", "table", "ip", TABLE]);
    for (kind, name) in [("map", "mapped"), ("set", "contacted")] {
        if listed
            .as_deref()
            .is_ok_and(|t| t.contains(&format!("{kind} {name} ")))
        {
            lab.try_ok(router_ns, &["nft", "flush", kind, "ip", TABLE, name])?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(hosts: usize) -> NatRouter {
        NatRouter {
            ns: "r".into(),
            wan_if: "wan".into(),
            wan_ip: Ipv4Addr::new(203, 0, 113, 10),
            lan_if: "lan".into(),
            hosts: (0..hosts)
                .map(|i| Ipv4Addr::new(198, 18, 0, 11 + i as u8))
                .collect(),
        }
    }

    #[test]
    fn host_port_blocks_are_disjoint_and_fit() {
        let last = NatRouter::port_block(MAX_HOSTS - 1);
        assert!(*last.start() > *NatRouter::port_block(MAX_HOSTS - 2).end());
        assert_eq!(last.len(), PORTS_PER_HOST as usize);
        let r = router(2);
        assert_eq!(r.ports(r.hosts[1]), Some(21000..=21999));
        assert_eq!(r.ports(Ipv4Addr::new(198, 18, 0, 99)), None);
        assert!(router(MAX_HOSTS + 1)
            .ruleset(NatKind::EimEif, "203.0.113.1:7443".parse().unwrap())
            .is_err());
    }

    #[test]
    fn each_kind_uses_its_mechanism() {
        let c: SocketAddr = "203.0.113.1:7443".parse().unwrap();
        let r = router(2);
        let rules = |k| r.ruleset(k, c).unwrap();
        assert!(!rules(NatKind::None).contains("chain"));
        assert!(rules(NatKind::EimEif).contains("dnat ip to udp dport map @mapped"));
        assert!(rules(NatKind::EimAdf).contains("@contacted dnat"));
        assert!(!rules(NatKind::EimApdf).contains("dnat ip to"));
        assert!(rules(NatKind::EimApdf)
            .contains("ip saddr 198.18.0.12 meta l4proto udp snat ip to 203.0.113.10:21000-21999"));
        assert!(rules(NatKind::Symmetric).contains("masquerade fully-random"));
        assert!(rules(NatKind::UdpBlocked).contains("ip daddr 203.0.113.1 tcp dport 7443 accept"));
        for k in NatKind::ALL {
            assert!(!k.name().is_empty() && !k.label().contains(' '));
        }
    }
}
