//! `weft service ...`: services published by name, through the
//! coordinator's admin API.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use weft_proto::msg::{AdminCommand, AdminReply, ServiceInfo};
use weft_proto::policy::Proto;

use crate::token::admin_request;

#[derive(Args, Debug)]
pub struct ServiceArgs {
    /// Admin credential file (default: $WEFT_ADMIN, else
    /// /var/lib/weft-coordinator/admin.json).
    #[arg(long, global = true)]
    admin: Option<PathBuf>,
    #[command(subcommand)]
    command: ServiceCommand,
}

#[derive(Subcommand, Debug)]
enum ServiceCommand {
    /// Publish a service: every host resolves NAME.<cluster domain> to it,
    /// and with --allow only those clients may reach it (a policy deny
    /// still wins). Exposing an existing name replaces it.
    Expose {
        /// DNS label: lowercase letters, digits and `-`.
        name: String,
        /// The node it runs on (name or id).
        #[arg(long)]
        node: String,
        /// PORT/tcp or PORT/udp (tcp if omitted).
        #[arg(long, value_parser = parse_port)]
        port: (u16, Proto),
        /// The address it listens on, if not the node's own: a container's,
        /// or a system's on a network the node routes (`weft route`).
        #[arg(long)]
        addr: Option<IpAddr>,
        /// Clients allowed (selector: tag:T, host:H, group:G, cidr:C, *).
        /// Repeat for several.
        #[arg(long = "allow", value_name = "SELECTOR")]
        allow: Vec<String>,
        /// Forward this TCP port on a host's public addresses to the service.
        #[arg(long, value_name = "PORT")]
        public: Option<u16>,
        /// The host that forwards the public port (default: the service's node).
        #[arg(long, value_name = "NODE", requires = "public")]
        via: Option<String>,
    },
    /// List published services.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Stop publishing a service (its name and its rules go).
    Remove { name: String },
}

fn parse_port(s: &str) -> Result<(u16, Proto), String> {
    let (port, proto) = match s.split_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some((_, other)) => return Err(format!("protocol `{other}`: use tcp or udp")),
        None => (s, Proto::Tcp),
    };
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok((p, proto)),
        _ => Err(format!("`{port}` is not a port (1-65535)")),
    }
}

#[expect(clippy::print_stdout, reason = "the CLI prints its results")]
pub fn run(args: ServiceArgs) -> anyhow::Result<()> {
    match args.command {
        ServiceCommand::Expose {
            name,
            node,
            port: (port, proto),
            addr,
            allow,
            public,
            via,
        } => {
            let info = ServiceInfo {
                name,
                node,
                port,
                proto,
                addr,
                allow,
                public,
                gateway: via,
                node_id: None,
                gateway_id: None,
            };
            match admin_request(args.admin, AdminCommand::ServiceExpose(info))? {
                AdminReply::ServiceExposed(s) => {
                    eprintln!("service {} exposed: {}", s.name, describe(&s));
                }
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
        ServiceCommand::List { json } => {
            match admin_request(args.admin, AdminCommand::ServiceList)? {
                AdminReply::Services(list) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&list)?);
                    } else {
                        println!("{:<20}  DETAILS", "NAME");
                        for s in list {
                            println!("{:<20}  {}", s.name, describe(&s));
                        }
                    }
                }
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
        ServiceCommand::Remove { name } => {
            match admin_request(args.admin, AdminCommand::ServiceRemove { name })? {
                AdminReply::ServiceRemoved { name } => eprintln!("service {name} removed"),
                other => anyhow::bail!("unexpected reply from the coordinator: {other:?}"),
            }
        }
    }
    Ok(())
}

fn describe(s: &ServiceInfo) -> String {
    let mut out = format!("node {} port {}/{}", s.node, s.port, s.proto);
    if let Some(a) = s.addr {
        out.push_str(&format!(" addr {a}"));
    }
    if !s.allow.is_empty() {
        out.push_str(&format!(" allow {}", s.allow.join(",")));
    }
    if let Some(p) = s.public {
        let via = s.gateway.as_deref().unwrap_or(&s.node);
        out.push_str(&format!(" public tcp/{p} via {via}"));
    }
    out
}
