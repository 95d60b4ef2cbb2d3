//! The offload paths of the data plane (issue 7), weft on both ends of a
//! two-namespace tunnel configured with the stock `wg` tool:
//!
//! - large TCP writes leave the sender's TUN as TSO super-packets, are split
//!   by weft, and reach the receiver's TUN re-coalesced (GRO), byte-identical
//!   (SHA-256), over the IPv4 and the IPv6 overlay;
//! - UDP datagrams of many sizes up to the path MTU, plain and as UDP GSO
//!   (`UDP_SEGMENT`) sends that reach weft as USO super-packets, arrive
//!   byte-identical, each exactly once;
//! - a TCP stream, a UDP burst and a ping flood at once (TCP, UDP and ICMP
//!   in the same batches) all arrive;
//! - the receiving kernels verify the checksums: their `InCsumErrors`
//!   counters (TCP, UDP, ICMP; IPv4 and IPv6) stay where they were.
//!
//! Needs root; in CI (`CI=true`) a missing privilege fails the test instead
//! of skipping it.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers: a failed setup step should fail the test loudly"
)]

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::time::{Duration, Instant};

use weft_tests::wg::{configure_pair, wait_for_uapi, WgEnd};
use weft_tests::{in_netns, ping, run_ok, snmp_counter, tcp_transfer, Capture, Lab, Packet, Proc};

const A_UNDERLAY: &str = "192.0.2.1";
const B_UNDERLAY: &str = "192.0.2.2";
const PORT: u16 = 51820;
/// weft's default tunnel MTU.
const MTU: usize = 1420;
const A4: &str = "100.64.0.1";
const B4: &str = "100.64.0.2";
const A6: &str = "fd00:64::1";
const B6: &str = "fd00:64::2";
/// `UDP_SEGMENT` (linux/udp.h): the GSO segment size of a UDP socket.
const UDP_SEGMENT: libc::c_int = 103;

/// Two namespaces `a` and `b` joined by `eth0`, each running `weft wg`
/// (`ia`, `ib`), configured, with IPv4 and IPv6 overlay addresses.
struct Tunnel {
    _lab: Lab,
    a: String,
    b: String,
    ia: String,
    ib: String,
    procs: [Proc; 2],
}

fn tunnel(prefix: &str) -> Tunnel {
    let lab = Lab::new(prefix);
    let (a, b) = (lab.netns("a"), lab.netns("b"));
    lab.veth(&a, "eth0", &b, "eth0");
    lab.addr(&a, "eth0", &format!("{A_UNDERLAY}/24"));
    lab.addr(&b, "eth0", &format!("{B_UNDERLAY}/24"));
    let (ia, ib) = (lab.name("a0"), lab.name("b0"));
    let start = |ns: &str, iface: &str| {
        lab.register_path(format!("/var/run/wireguard/{iface}.sock"));
        lab.spawn(
            ns,
            env!("CARGO_BIN_EXE_weft"),
            &["wg", iface],
            &[("NO_COLOR", "1")],
        )
    };
    let procs = [start(&a, &ia), start(&b, &ib)];
    wait_for_uapi(&ia).unwrap();
    wait_for_uapi(&ib).unwrap();
    let (own_a, own_b) = (format!("{A4}/32,{A6}/128"), format!("{B4}/32,{B6}/128"));
    configure_pair(
        &lab,
        PORT,
        &WgEnd {
            iface: &ia,
            underlay: A_UNDERLAY,
            allowed_ips: &own_a,
        },
        &WgEnd {
            iface: &ib,
            underlay: B_UNDERLAY,
            allowed_ips: &own_b,
        },
    )
    .unwrap();
    for (ns, iface, v4, v6) in [(&a, &ia, A4, A6), (&b, &ib, B4, B6)] {
        lab.addr(ns, iface, &format!("{v4}/24"));
        lab.addr(ns, iface, &format!("{v6}/64"));
        lab.link_up(ns, iface);
    }
    ping(&a, B4).unwrap();
    ping(&a, B6).unwrap();
    Tunnel {
        _lab: lab,
        a,
        b,
        ia,
        ib,
        procs,
    }
}

impl Tunnel {
    /// Stops both weft processes and checks they exited cleanly and that
    /// neither counted a malformed outbound packet or an invalid message.
    fn finish(self) {
        for p in &self.procs {
            let status = p.stop().expect("weft was already stopped");
            let log = p.stderr();
            assert!(status.success(), "weft exited with {status}:\n{log}");
            assert!(!log.contains("panicked"), "weft panicked:\n{log}");
            let line = log
                .lines()
                .find(|l| l.contains("final counters"))
                .unwrap_or_else(|| panic!("no final counters line:\n{log}"));
            for name in ["tx_malformed", "rx_invalid", "rx_src_not_allowed"] {
                assert_eq!(counter(line, name), 0, "{name} in {line:?}");
            }
        }
    }
}

/// The value of ` name=N` in a `final counters` log line.
fn counter(line: &str, name: &str) -> u64 {
    let key = format!(" {name}=");
    let at = line
        .find(&key)
        .unwrap_or_else(|| panic!("no {name} in {line:?}"));
    line[at + key.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// The checksum-error counters of namespace `ns`: TCP (both families), UDP
/// and ICMP from `/proc/net/snmp`, UDP and ICMP over IPv6 from
/// `/proc/net/snmp6`.
fn csum_errors(ns: &str) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = ["Tcp", "Udp", "Icmp"]
        .iter()
        .map(|g| {
            (
                format!("{g}.InCsumErrors"),
                snmp_counter(ns, g, "InCsumErrors").unwrap(),
            )
        })
        .collect();
    let snmp6 = run_ok(&["ip", "netns", "exec", ns, "cat", "/proc/net/snmp6"]);
    for name in ["Udp6InCsumErrors", "Icmp6InCsumErrors"] {
        let value = snmp6
            .lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(name)).then(|| f.next().unwrap().parse::<u64>().unwrap())
            })
            .unwrap_or_else(|| panic!("no {name} in /proc/net/snmp6 of {ns}"));
        v.push((name.to_string(), value));
    }
    v
}

/// IP version, transport protocol and total length (from the IP header) of
/// a captured packet.
fn ip_summary(data: &[u8]) -> Option<(u8, u8, usize)> {
    match data.first()? >> 4 {
        4 => Some((
            4,
            *data.get(9)?,
            usize::from(u16::from_be_bytes([*data.get(2)?, *data.get(3)?])),
        )),
        6 => Some((
            6,
            *data.get(6)?,
            40 + usize::from(u16::from_be_bytes([*data.get(4)?, *data.get(5)?])),
        )),
        _ => None,
    }
}

/// Watches `dev` in `ns` on a thread for up to `timeout` for an IPv`version`
/// packet of transport `proto` longer than the MTU (a GSO super-packet),
/// sent (`outgoing`) or received by the namespace. Joins to its total length.
fn watch_super_packet(
    ns: &str,
    dev: &str,
    outgoing: bool,
    version: u8,
    proto: u8,
    timeout: Duration,
) -> std::thread::JoinHandle<Option<usize>> {
    let cap = Capture::open(ns, dev).unwrap();
    std::thread::spawn(move || {
        let is_super = |p: &Packet| {
            p.outgoing == outgoing
                && ip_summary(&p.data)
                    .is_some_and(|(v, pr, len)| v == version && pr == proto && len > MTU)
        };
        cap.find_packet(timeout, is_super)
            .unwrap()
            .map(|p| p.data.len())
    })
}

/// Issue 7: large TCP writes become TSO super-packets on A's TUN, weft
/// splits and encrypts them, and B's weft writes them to its TUN
/// re-coalesced; the stream arrives byte-identical over both overlays and
/// both directions, and no kernel counts a checksum error.
#[test]
fn tcp_super_packets_split_and_recoalesced_arrive_intact() {
    if !weft_tests::require_root() {
        return;
    }
    let t = tunnel("ot");
    let before = [csum_errors(&t.a), csum_errors(&t.b)];
    for (version, dst, port) in [(4u8, B4, 5201u16), (6, B6, 5202)] {
        let tx = watch_super_packet(&t.a, &t.ia, true, version, 6, Duration::from_secs(8));
        let rx = watch_super_packet(&t.b, &t.ib, false, version, 6, Duration::from_secs(8));
        tcp_transfer(&t.a, &t.b, dst.parse().unwrap(), port, 48 << 20).unwrap();
        let (tx, rx) = (tx.join().unwrap(), rx.join().unwrap());
        eprintln!("IPv{version}: first TSO packet {tx:?} bytes on A's TUN, first GRO packet {rx:?} on B's");
        assert!(
            tx.is_some(),
            "IPv{version}: no TCP super-packet left A's TUN (TSO off?)"
        );
        assert!(
            rx.is_some(),
            "IPv{version}: weft B wrote no coalesced TCP packet to its TUN (GRO off?)"
        );
    }
    // The other direction, without watching.
    tcp_transfer(&t.b, &t.a, A4.parse().unwrap(), 5203, 16 << 20).unwrap();
    tcp_transfer(&t.b, &t.a, A6.parse().unwrap(), 5204, 16 << 20).unwrap();
    assert_eq!(csum_errors(&t.a), before[0], "checksum errors in A");
    assert_eq!(csum_errors(&t.b), before[1], "checksum errors in B");
    t.finish();
}

/// The bytes of UDP datagram `seq` of `len` bytes: the sequence number
/// (little-endian), then a pattern that depends on it and on the offset.
fn datagram(seq: u32, len: usize) -> Vec<u8> {
    let s = seq.to_le_bytes();
    (0..len)
        .map(|i| match s.get(i) {
            Some(b) => *b,
            None => (seq.wrapping_mul(131) as usize ^ i.wrapping_mul(7) ^ (i >> 8)) as u8,
        })
        .collect()
}

/// One send call of a UDP plan: the datagrams `(seq, len)` it carries. More
/// than one means a GSO send with the first length as segment size (all but
/// the last are that long, the last no longer).
type Send = Vec<(u32, usize)>;

/// Datagram sizes from 4 bytes up to `max` (the largest payload the MTU
/// allows), `reps` of each, as single sends; then `uso_reps` GSO sends per
/// segment size in `gso`, with up to 64 segments and a short tail.
fn udp_plan(max: usize, reps: usize, uso_reps: usize, seq0: u32) -> Vec<Send> {
    let mut sizes: Vec<usize> = vec![
        4,
        5,
        8,
        16,
        47,
        64,
        100,
        128,
        255,
        256,
        512,
        576,
        999,
        1024,
        1200,
        1279,
        1280,
        max - 1,
        max,
    ];
    sizes.retain(|&s| s <= max);
    let mut seq = seq0;
    let mut next = || {
        seq += 1;
        seq
    };
    let mut plan = Vec::new();
    for _ in 0..reps {
        for &s in &sizes {
            plan.push(vec![(next(), s)]);
        }
    }
    for r in 0..uso_reps {
        for gso in [max, 1000, 600, 256, 100, 37] {
            let segments = (60_000 / gso).min(63 - r);
            let mut send: Send = (0..segments).map(|_| (next(), gso)).collect();
            send.push((next(), (gso / 3).max(4)));
            plan.push(send);
        }
    }
    plan
}

/// Sends `plan` from namespace `from` to `to`, paced, while namespace
/// `to_ns` receives; returns how many datagrams arrived intact, after
/// checking each against the plan (right length, right bytes, once).
fn udp_exchange(from: &str, to_ns: &str, to: SocketAddr, plan: Vec<Send>) -> usize {
    let expected: HashMap<u32, usize> = plan.iter().flatten().copied().collect();
    let total = expected.len();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = in_netns(to_ns, move || {
        let s = UdpSocket::bind(to).unwrap();
        set_int(&s, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, 16 << 20);
        s.set_read_timeout(Some(Duration::from_millis(1500)))
            .unwrap();
        ready_tx.send(()).unwrap();
        let mut seen = HashMap::new();
        let mut buf = vec![0u8; 65536];
        while seen.len() < total {
            let Ok(n) = s.recv(&mut buf) else { break };
            let d = &buf[..n];
            assert!(n >= 4, "a {n}-byte datagram arrived; none was sent");
            let seq = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
            let len = *expected
                .get(&seq)
                .unwrap_or_else(|| panic!("datagram {seq} ({n} bytes) was never sent"));
            assert_eq!(n, len, "datagram {seq}: {n} bytes arrived, {len} were sent");
            assert!(d == datagram(seq, len), "datagram {seq} arrived changed");
            assert!(
                seen.insert(seq, ()).is_none(),
                "datagram {seq} arrived twice"
            );
        }
        seen.len()
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    in_netns(from, move || {
        let bind: SocketAddr = match to {
            SocketAddr::V4(_) => "0.0.0.0:0".parse().unwrap(),
            SocketAddr::V6(_) => "[::]:0".parse().unwrap(),
        };
        let s = UdpSocket::bind(bind).unwrap();
        set_int(&s, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, 4 << 20);
        let mut since_pause = 0usize;
        for send in plan {
            let gso = send.first().map_or(0, |d| d.1);
            let bytes: Vec<u8> = send.iter().flat_map(|&(q, l)| datagram(q, l)).collect();
            if send.len() > 1 {
                set_int(&s, libc::SOL_UDP, UDP_SEGMENT, gso as libc::c_int);
            }
            s.send_to(&bytes, to).unwrap();
            if send.len() > 1 {
                set_int(&s, libc::SOL_UDP, UDP_SEGMENT, 0);
            }
            // Paced so no socket buffer on the way overflows.
            since_pause += send.len();
            if since_pause >= 32 {
                since_pause = 0;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    })
    .join()
    .unwrap();
    receiver.join().unwrap()
}

fn set_int(s: &UdpSocket, level: libc::c_int, opt: libc::c_int, value: libc::c_int) {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "setsockopt {level}/{opt}: {}",
        std::io::Error::last_os_error()
    );
}

/// Issue 7: UDP datagrams of many sizes up to the MTU, and UDP GSO sends
/// that leave A's TUN as USO super-packets, arrive byte-identical and each
/// exactly once, over IPv4 and IPv6; B's weft writes coalesced UDP to its
/// TUN; no kernel counts a checksum error.
#[test]
fn udp_sizes_and_uso_arrive_intact() {
    if !weft_tests::require_root() {
        return;
    }
    let t = tunnel("ou");
    let before = [csum_errors(&t.a), csum_errors(&t.b)];
    for (version, dst, max) in [(4u8, B4, MTU - 28), (6, B6, MTU - 48)] {
        let to = SocketAddr::new(dst.parse::<IpAddr>().unwrap(), 6000);
        let tx = watch_super_packet(&t.a, &t.ia, true, version, 17, Duration::from_secs(4));
        let rx = watch_super_packet(&t.b, &t.ib, false, version, 17, Duration::from_secs(4));
        let plan = udp_plan(max, 8, 3, u32::from(version) << 24);
        let sent: usize = plan.iter().map(Vec::len).sum();
        let started = Instant::now();
        let got = udp_exchange(&t.a, &t.b, to, plan);
        let (tx, rx) = (tx.join().unwrap(), rx.join().unwrap());
        eprintln!(
            "IPv{version}: {got} of {sent} datagrams intact in {:?}; first USO packet {tx:?} bytes \
             on A's TUN, first coalesced UDP {rx:?} on B's",
            started.elapsed()
        );
        assert_eq!(got, sent, "IPv{version}: datagrams lost");
        assert!(
            tx.is_some(),
            "IPv{version}: no UDP super-packet left A's TUN (USO off?)"
        );
        assert!(
            rx.is_some(),
            "IPv{version}: weft B wrote no coalesced UDP packet to its TUN"
        );
    }
    assert_eq!(csum_errors(&t.a), before[0], "checksum errors in A");
    assert_eq!(csum_errors(&t.b), before[1], "checksum errors in B");
    t.finish();
}

/// Runs `ping` in `ns` with `args` and returns (transmitted, received).
fn ping_count(ns: &str, args: &[&str]) -> (u32, u32) {
    let mut v = vec!["ip", "netns", "exec", ns, "ping", "-q"];
    v.extend_from_slice(args);
    let out = weft_tests::run(&v);
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .unwrap_or_else(|| panic!("no ping summary: {text}"));
    let num = |word: &str| -> u32 {
        let at = line.find(word).unwrap();
        line[..at]
            .split_whitespace()
            .last()
            .unwrap()
            .parse()
            .unwrap()
    };
    (num(" packets transmitted"), num(" received"))
}

/// Issue 7: TCP, UDP and ICMP through the tunnel at once, so the batches
/// weft reads from its TUN and its socket mix them: a TCP stream arrives
/// byte-identical, every UDP datagram arrives intact, every ping (IPv4 and
/// IPv6, small and MTU-sized) is answered; no checksum errors.
#[test]
fn tcp_udp_and_icmp_in_one_batch_all_arrive() {
    if !weft_tests::require_root() {
        return;
    }
    let t = tunnel("om");
    let before = [csum_errors(&t.a), csum_errors(&t.b)];
    let (a, b) = (t.a.clone(), t.b.clone());
    let tcp = std::thread::spawn(move || tcp_transfer(&a, &b, B4.parse().unwrap(), 5301, 48 << 20));
    let pings: Vec<_> = [(B4, "56"), (B4, "1392"), (B6, "56"), (B6, "1372")]
        .into_iter()
        .map(|(dst, size)| {
            let a = t.a.clone();
            std::thread::spawn(move || {
                ping_count(
                    &a,
                    &["-c", "300", "-i", "0.003", "-W", "2", "-s", size, dst],
                )
            })
        })
        .collect();
    let (a, b) = (t.a.clone(), t.b.clone());
    let udp = std::thread::spawn(move || {
        let to = SocketAddr::new(B6.parse::<IpAddr>().unwrap(), 6001);
        let plan = udp_plan(MTU - 48, 4, 1, 7 << 24);
        let sent: usize = plan.iter().map(Vec::len).sum();
        (udp_exchange(&a, &b, to, plan), sent)
    });
    let (got, sent) = udp.join().unwrap();
    for p in pings {
        let (tx, rx) = p.join().unwrap();
        assert_eq!(rx, tx, "{rx} of {tx} pings answered under load");
    }
    tcp.join().unwrap().unwrap();
    assert_eq!(got, sent, "UDP datagrams lost under mixed load");
    assert_eq!(csum_errors(&t.a), before[0], "checksum errors in A");
    assert_eq!(csum_errors(&t.b), before[1], "checksum errors in B");
    t.finish();
}
