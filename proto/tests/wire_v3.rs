//! Recorded wire transcripts of protocol version 3: frames a version-3
//! agent and coordinator send each other, encoded by the version-3 code
//! (`tests/golden/v3/*.hex`, recorded 2026-12-02 at 777b115) and decoded
//! here by the current code. A change that makes the current code misread
//! the previous version's messages fails here: the coordinator must keep
//! serving N-1 agents (see the crate docs, "Compatibility").
//!
//! The files are never rewritten by a normal run. `WEFT_RECORD_GOLDEN=1`
//! writes them from the current code; do that only to record a new
//! version's transcripts (in a new directory), never over an old one.

#![allow(clippy::unwrap_used, reason = "tests")]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use weft_proto::msg::{
    ClientMsg, ErrorCode, ErrorReply, Hello, HelloRequest, JoinRequest, PathClassReport,
    PathReport, ResumeRequest, ServerMsg, Welcome,
};
use weft_proto::policy::{Action, Cidr, FilterRule, PacketFilter, PortRange, Proto};
use weft_proto::{codec, HostSubnet, NetmapUpdate, NodeId, Peer, ServiceEntry, WgPublicKey};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/v3")
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> Cidr {
    Cidr::parse_truncating(s).unwrap()
}

fn subnet(s: &str) -> HostSubnet {
    let (a, p) = s.split_once('/').unwrap();
    HostSubnet {
        addr: a.parse().unwrap(),
        prefix_len: p.parse().unwrap(),
    }
}

/// The messages of the transcripts, as version 3 built them.
fn hello_join() -> Hello {
    Hello {
        protocol_version: 3,
        request: HelloRequest::Join(JoinRequest {
            token_id: "tok-1".into(),
            token_secret: [1; 32],
            public_key: WgPublicKey([2; 32]),
            proof: [3; 32],
            hostname: "web-1".into(),
            endpoints: vec![addr("198.51.100.7:51820")],
        }),
    }
}

fn hello_resume() -> Hello {
    Hello {
        protocol_version: 3,
        request: HelloRequest::Resume(ResumeRequest {
            public_key: WgPublicKey([4; 32]),
            proof: [5; 32],
            endpoints: vec![addr("198.18.0.9:51820"), addr("203.0.113.4:40000")],
            have_epoch: 7,
            have_version: 42,
            have_view: 9,
            have_digest: 0xdead_beef,
        }),
    }
}

fn welcome() -> Welcome {
    Welcome {
        node_id: NodeId(12),
        name: "web-1".into(),
        subnet: subnet("100.64.12.0/24"),
        tags: vec!["web".into()],
        pool: subnet("100.64.0.0/10"),
        domain: "weft.internal".into(),
        keepalive_ms: 3000,
        accepts_leave: true,
        accepts_paths: true,
        keeps_quic_alive: true,
        // Not in version 3: decoded as the default.
        protocol_version: 0,
    }
}

fn peer() -> Peer {
    Peer {
        id: NodeId(13),
        name: "db-1".into(),
        public_key: WgPublicKey([6; 32]),
        subnet: subnet("100.64.13.0/24"),
        endpoints: vec![addr("203.0.113.5:51820")],
        tags: vec!["db".into()],
        online: true,
        routes: vec![cidr("198.18.40.0/24")],
    }
}

fn netmap_full() -> ServerMsg {
    ServerMsg::Netmap(NetmapUpdate {
        upserts: vec![peer()],
        filter: Some(PacketFilter {
            rules: vec![FilterRule {
                action: Action::Allow,
                src: Arc::from(vec![cidr("100.64.13.0/24")]),
                dst: vec![cidr("100.64.12.0/24")],
                proto: Proto::Tcp,
                ports: PortRange {
                    first: 5432,
                    last: 5432,
                },
                rule: 2,
            }],
            default: Action::Deny,
        }),
        services: Some(vec![ServiceEntry {
            name: "db".into(),
            addr: "100.64.13.1".parse().unwrap(),
            port: 5432,
            proto: Proto::Tcp,
            public: None,
        }]),
        view: Some(9),
        routes: Some(vec![cidr("198.18.50.0/24")]),
        keepalive_ms: Some(3000),
        ..NetmapUpdate::empty(7, 0, 42, true)
    })
}

fn netmap_delta() -> ServerMsg {
    let mut moved = peer();
    moved.endpoints = vec![addr("203.0.113.5:41000")];
    ServerMsg::Netmap(NetmapUpdate {
        upserts: vec![moved],
        removed: vec![NodeId(14)],
        keepalive_ms: Some(3000),
        ..NetmapUpdate::empty(7, 42, 43, false)
    })
}

fn refusal() -> ServerMsg {
    ServerMsg::Error(ErrorReply {
        code: ErrorCode::TokenExpired,
        message: "the token expired; ask for a new one with `weft token create`".into(),
    })
}

fn client_msgs() -> Vec<(&'static str, ClientMsg)> {
    vec![
        (
            "client_set_endpoints",
            ClientMsg::SetEndpoints {
                endpoints: vec![addr("203.0.113.4:40001")],
            },
        ),
        (
            "client_advertise_routes",
            ClientMsg::AdvertiseRoutes {
                routes: vec![cidr("198.18.50.0/24")],
            },
        ),
        ("client_ping", ClientMsg::Ping),
        ("client_leave", ClientMsg::Leave),
        (
            "client_report_paths",
            ClientMsg::ReportPaths {
                paths: vec![PathReport {
                    peer: NodeId(13),
                    path: PathClassReport::Relay,
                    reason: Some("symmetric NAT on both sides".into()),
                }],
            },
        ),
    ]
}

fn server_msgs() -> Vec<(&'static str, ServerMsg)> {
    vec![
        ("server_welcome", ServerMsg::Welcome(welcome())),
        ("server_netmap_full", netmap_full()),
        ("server_netmap_delta", netmap_delta()),
        ("server_refusal", refusal()),
        ("server_pong", ServerMsg::Pong),
    ]
}

/// The frame's body (without its length header), as recorded.
fn recorded(name: &str) -> Vec<u8> {
    let path = dir().join(format!("{name}.hex"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    hex::decode(text.split_whitespace().collect::<String>()).unwrap()
}

fn record(name: &str, frame: &[u8]) {
    std::fs::create_dir_all(dir()).unwrap();
    let body = &frame[codec::HEADER_LEN..];
    let lines: Vec<String> = body.chunks(32).map(hex::encode).collect();
    std::fs::write(dir().join(format!("{name}.hex")), lines.join("\n") + "\n").unwrap();
}

#[test]
fn record_when_asked() {
    if std::env::var_os("WEFT_RECORD_GOLDEN").is_none() {
        return;
    }
    record("hello_join", &codec::encode(&hello_join()).unwrap());
    record("hello_resume", &codec::encode(&hello_resume()).unwrap());
    for (name, m) in client_msgs() {
        record(name, &codec::encode(&m).unwrap());
    }
    for (name, m) in server_msgs() {
        record(name, &codec::encode(&m).unwrap());
    }
}

#[test]
fn version_3_hellos_decode() {
    let join: Hello = codec::decode(&recorded("hello_join")).unwrap();
    assert_eq!(join.protocol_version, 3);
    let want = hello_join();
    match (join.request, want.request) {
        (HelloRequest::Join(got), HelloRequest::Join(want)) => {
            assert_eq!(got.token_id, want.token_id);
            assert_eq!(got.token_secret, want.token_secret);
            assert_eq!(got.public_key, want.public_key);
            assert_eq!(got.proof, want.proof);
            assert_eq!(got.hostname, want.hostname);
            assert_eq!(got.endpoints, want.endpoints);
        }
        (got, _) => panic!("not a join: {got:?}"),
    }
    let resume: Hello = codec::decode(&recorded("hello_resume")).unwrap();
    assert_eq!(resume.protocol_version, 3);
    match (resume.request, hello_resume().request) {
        (HelloRequest::Resume(got), HelloRequest::Resume(want)) => {
            assert_eq!(got.public_key, want.public_key);
            assert_eq!(got.proof, want.proof);
            assert_eq!(got.endpoints, want.endpoints);
            assert_eq!(
                (
                    got.have_epoch,
                    got.have_version,
                    got.have_view,
                    got.have_digest
                ),
                (
                    want.have_epoch,
                    want.have_version,
                    want.have_view,
                    want.have_digest
                )
            );
        }
        (got, _) => panic!("not a resume: {got:?}"),
    }
}

#[test]
fn version_3_client_messages_decode() {
    for (name, want) in client_msgs() {
        let got: ClientMsg = codec::decode(&recorded(name)).unwrap();
        // ClientMsg has no PartialEq: its Debug form names every field.
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{name}");
    }
}

#[test]
fn version_3_server_messages_decode() {
    for (name, want) in server_msgs() {
        let got: ServerMsg = codec::decode(&recorded(name)).unwrap();
        assert_eq!(format!("{got:?}"), format!("{want:?}"), "{name}");
    }
    // And a version-3 netmap folds into the current reducer.
    let mut map = weft_proto::Netmap::new();
    for name in ["server_netmap_full", "server_netmap_delta"] {
        let ServerMsg::Netmap(u) = codec::decode(&recorded(name)).unwrap() else {
            panic!("{name} is not a netmap");
        };
        map.apply(u).unwrap().unwrap();
    }
    assert_eq!(map.version(), 43);
    let p = map.peer(NodeId(13)).unwrap();
    assert_eq!(p.endpoints, vec![addr("203.0.113.5:41000")]);
    assert_eq!(p.routes, vec![cidr("198.18.40.0/24")]);
    assert_eq!(map.filter().unwrap().rules[0].ports.first, 5432);
    assert_eq!(map.services()[0].name, "db");
    assert_eq!(map.own_routes(), Some(&[cidr("198.18.50.0/24")][..]));
}
