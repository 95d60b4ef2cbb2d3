//! Writes the fuzz targets' seed corpus (fuzz/seeds/TARGET/*) from real
//! encoded messages, so each target starts from inputs that get deep.
//!
//! ```text
//! cargo run -p weft-proto --example fuzz_seeds
//! ```

#![allow(clippy::unwrap_used, clippy::print_stdout, reason = "a generator tool")]

use std::path::Path;

use weft_proto::disco::DiscoMsg;
use weft_proto::msg::{ClientMsg, Hello, HelloRequest, ResumeRequest, ServerMsg, Welcome};
use weft_proto::netmap::NetmapUpdate;
use weft_proto::relay::{fragment, Datagram};
use weft_proto::{codec, HostSubnet, NodeId, Peer, WgPublicKey};

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/seeds")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), bytes).unwrap();
}

fn subnet(i: u8) -> HostSubnet {
    HostSubnet {
        addr: std::net::Ipv4Addr::new(100, 64, i, 0),
        prefix_len: 24,
    }
}

fn main() {
    let hello = Hello {
        protocol_version: weft_proto::PROTOCOL_VERSION,
        request: HelloRequest::Resume(ResumeRequest {
            public_key: WgPublicKey([1; 32]),
            proof: [2; 32],
            endpoints: vec!["203.0.113.5:51820".parse().unwrap()],
            have_epoch: 1,
            have_version: 2,
            have_view: 3,
            have_digest: 0,
        }),
    };
    let welcome = ServerMsg::Welcome(Welcome {
        node_id: NodeId(1),
        name: "a".into(),
        subnet: subnet(1),
        tags: vec!["web".into()],
        pool: HostSubnet {
            addr: std::net::Ipv4Addr::new(100, 64, 0, 0),
            prefix_len: 10,
        },
        domain: "weft.internal".into(),
        keepalive_ms: 1000,
        accepts_leave: true,
        accepts_paths: true,
        keeps_quic_alive: true,
        protocol_version: 4,
    });
    let peer = |i: u8| Peer {
        id: NodeId(u64::from(i)),
        name: format!("h{i}"),
        public_key: WgPublicKey([i; 32]),
        subnet: subnet(i),
        endpoints: vec!["198.18.1.10:51820".parse().unwrap()],
        tags: vec![],
        online: true,
        routes: vec![],
    };
    let full = NetmapUpdate {
        upserts: vec![peer(2), peer(3)],
        ..NetmapUpdate::empty(7, 0, 5, true)
    };
    let delta = NetmapUpdate {
        upserts: vec![peer(4)],
        removed: vec![NodeId(2)],
        ..NetmapUpdate::empty(7, 5, 6, false)
    };
    let frame = |m: &dyn erased::Encode| m.frame();
    write("frames", "hello", &frame(&hello)[codec::HEADER_LEN..]);
    write("frames", "welcome", &frame(&welcome)[codec::HEADER_LEN..]);
    write(
        "frames",
        "netmap",
        &frame(&ServerMsg::Netmap(full.clone()))[codec::HEADER_LEN..],
    );
    write(
        "frames",
        "endpoints",
        &frame(&ClientMsg::SetEndpoints {
            endpoints: vec!["203.0.113.5:1".parse().unwrap()],
        })[codec::HEADER_LEN..],
    );
    write(
        "frames",
        "ping",
        &frame(&ClientMsg::Ping)[codec::HEADER_LEN..],
    );
    write(
        "frames",
        "paths",
        &frame(&ClientMsg::ReportPaths {
            paths: vec![weft_proto::msg::PathReport {
                peer: NodeId(2),
                path: weft_proto::msg::PathClassReport::Relay,
                reason: Some("both sides are behind symmetric NATs".into()),
            }],
        })[codec::HEADER_LEN..],
    );
    write(
        "netmap",
        "full-then-delta",
        &rmp_serde::to_vec_named(&vec![full.clone(), delta.clone()]).unwrap(),
    );
    write(
        "netmap",
        "gap",
        &rmp_serde::to_vec_named(&vec![delta, full]).unwrap(),
    );
    let k = [7u8; 32];
    for (i, m) in [
        DiscoMsg::ReflectRequest { txid: [1; 12] },
        DiscoMsg::ReflectReply {
            txid: [1; 12],
            observed: "203.0.113.5:4000".parse().unwrap(),
        },
        DiscoMsg::Ping {
            txid: [2; 12],
            sender: [3; 32],
            sent_at: 1,
        },
        DiscoMsg::Pong {
            txid: [2; 12],
            sender: [3; 32],
            observed: "[2001:db8::1]:4000".parse().unwrap(),
        },
    ]
    .iter()
    .enumerate()
    {
        write("disco", &format!("msg{i}"), &m.encode(Some(&k)));
    }
    // relay: [len/8, step ms, datagram...] records.
    let mut seq = Vec::new();
    for f in fragment(NodeId(2), 9, &[5u8; 3000], 1200) {
        let mut f = f;
        f.resize(f.len().div_ceil(8) * 8, 0);
        seq.push((f.len() / 8) as u8);
        seq.push(1);
        seq.extend_from_slice(&f);
    }
    let punch = Datagram::Punch { node: NodeId(3) }.encode();
    seq.extend_from_slice(&[2, 0]);
    seq.extend_from_slice(&punch);
    seq.resize(seq.len() + 16 - punch.len(), 0);
    write("relay", "fragments", &seq);
    write(
        "token",
        "shape",
        b"weft1.eyJ2IjoxfQ.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    );
    write(
        "policy",
        "example",
        br#"default: deny
groups:
  web: [tag:web, host:a]
  admins: [group:web, "cidr:100.64.9.0/24"]
rules:
  - allow: { from: [group:web], to: [tag:db], ports: ["tcp/5432"] }
  - allow: { from: ["*"], except: [tag:dev], to: ["cidr:10.20.0.0/16"] }
  - deny:  { from: [tag:dev], to: [service:billing] }
  - allow: { from: ["*"], to: ["*"], ports: ["icmp", "udp/53", "tcp/8000-8100"] }
routes:
  10.20.0.0/16: [tag:web]
tests:
  - { from: tag:web, to: "tag:db:5432/tcp", expect: allow }
  - { from: host:b, to: "host:a:22/tcp", expect: deny }
"#,
    );
    for (i, s) in [
        "100.64.0.0/10",
        "2001:db8::/32",
        "tcp/80",
        "udp/1000-2000",
        "icmp",
        "tag:web",
        "host:db-1",
        "group:x",
        "service:api",
        "*",
    ]
    .iter()
    .enumerate()
    {
        write("specs", &format!("s{i}"), s.as_bytes());
    }
    write(
        "uapi",
        "set",
        b"private_key=0000000000000000000000000000000000000000000000000000000000000001\nlisten_port=51820\nreplace_peers=true\npublic_key=0202020202020202020202020202020202020202020202020202020202020202\nendpoint=192.0.2.1:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=100.64.1.0/24\nallowed_ip=2001:db8::/64\n",
    );
    write(
        "cni",
        "conf",
        br#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni","stateDir":"/var/lib/weft","prevResult":{"cniVersion":"1.0.0","ips":[{"address":"100.64.1.5/24"}]}}"#,
    );
    write(
        "cni",
        "env",
        b"CNI_COMMAND=ADD\nCNI_CONTAINERID=abc123\nCNI_NETNS=/var/run/netns/x\nCNI_IFNAME=eth0\nCNI_PATH=/usr/lib/cni\n",
    );
    // dns: a query for db.weft.internal A, with EDNS.
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1];
    for label in ["db", "weft", "internal"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    write("dns", "query", &q);
    // filter: an IPv4 TCP SYN and an ICMP echo.
    let mut tcp = vec![
        0x45, 0, 0, 40, 0, 1, 0x40, 0, 64, 6, 0, 0, 100, 64, 1, 2, 100, 64, 2, 3,
    ];
    tcp.extend_from_slice(&[
        0x30, 0x39, 0x00, 0x50, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    write("filter", "tcp-syn", &tcp);
    let icmp = [
        0x45, 0, 0, 28, 0, 2, 0, 0, 64, 1, 0, 0, 100, 64, 1, 2, 100, 64, 2, 3, 8, 0, 0, 0, 0, 1, 0,
        1,
    ];
    write("filter", "icmp-echo", &icmp);
    write(
        "records",
        "filter",
        &rmp_serde::to_vec_named(&weft_proto::policy::PacketFilter::allow_all()).unwrap(),
    );
    println!("seeds written to fuzz/seeds/");
}

/// Encodes any message as a frame (the generator's one helper).
mod erased {
    pub trait Encode {
        fn frame(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Encode for T {
        fn frame(&self) -> Vec<u8> {
            weft_proto::codec::encode(self).unwrap()
        }
    }
}
