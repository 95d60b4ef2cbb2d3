//! Two namespaces joined by a veth pair, each running `weft wg`, configured
//! with the stock `wg` tool: ping crosses the tunnel and `wg show` reports a
//! handshake and rising byte counters. Needs root; in CI (`CI=true`) a
//! missing privilege fails the test instead of skipping it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn")
}

fn ok(args: &[&str]) {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Tears down namespaces and kills our children on drop (and on panic).
struct Lab {
    names: Vec<String>,
    children: Vec<Child>,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in &self.names {
            let _ = sh(&["ip", "netns", "del", n]);
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn wg_dump(iface: &str) -> Vec<String> {
    let out = sh(&["wg", "show", iface, "dump"]);
    assert!(
        out.status.success(),
        "wg show failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn weft_to_weft_ping_and_wg_show() {
    if !is_root() {
        assert!(
            std::env::var("CI").is_err(),
            "namespace tests need root in CI"
        );
        eprintln!("skipping: needs root");
        return;
    }
    let tag = format!("wt{}", std::process::id() % 100000);
    let (a, b) = (format!("{tag}a"), format!("{tag}b"));
    let mut lab = Lab {
        names: vec![a.clone(), b.clone()],
        children: vec![],
    };
    ok(&["ip", "netns", "add", &a]);
    ok(&["ip", "netns", "add", &b]);
    let (va, vb) = (format!("{tag}x"), format!("{tag}y"));
    ok(&[
        "ip", "link", "add", &va, "netns", &a, "type", "veth", "peer", "name", &vb, "netns", &b,
    ]);
    ok(&["ip", "-n", &a, "addr", "add", "192.0.2.1/24", "dev", &va]);
    ok(&["ip", "-n", &b, "addr", "add", "192.0.2.2/24", "dev", &vb]);
    for (ns, v) in [(&a, &va), (&b, &vb)] {
        ok(&["ip", "-n", ns, "link", "set", v, "up"]);
        ok(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    let (ia, ib) = (format!("{tag}a0"), format!("{tag}b0"));
    for (ns, i) in [(&a, &ia), (&b, &ib)] {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_weft"), "wg", i])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start weft wg");
        lab.children.push(child);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in [&ia, &ib] {
        let sock = format!("/var/run/wireguard/{i}.sock");
        while !std::path::Path::new(&sock).exists() {
            assert!(Instant::now() < deadline, "{sock} never appeared");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let dir = std::env::temp_dir().join(&tag);
    std::fs::create_dir_all(&dir).unwrap();
    let ka = weft_mesh::key::Key::generate_private();
    let kb = weft_mesh::key::Key::generate_private();
    let (fa, fb) = (dir.join("a.key"), dir.join("b.key"));
    std::fs::write(&fa, ka.to_base64()).unwrap();
    std::fs::write(&fb, kb.to_base64()).unwrap();
    let (pa, pb) = (
        ka.public_from_private().to_base64(),
        kb.public_from_private().to_base64(),
    );
    ok(&[
        "wg",
        "set",
        &ia,
        "private-key",
        fa.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &pb,
        "endpoint",
        "192.0.2.2:51820",
        "allowed-ips",
        "100.64.0.2/32",
    ]);
    ok(&[
        "wg",
        "set",
        &ib,
        "private-key",
        fb.to_str().unwrap(),
        "listen-port",
        "51820",
        "peer",
        &pa,
        "endpoint",
        "192.0.2.1:51820",
        "allowed-ips",
        "100.64.0.1/32",
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    ok(&["ip", "-n", &a, "addr", "add", "100.64.0.1/24", "dev", &ia]);
    ok(&["ip", "-n", &a, "link", "set", &ia, "up"]);
    ok(&["ip", "-n", &b, "addr", "add", "100.64.0.2/24", "dev", &ib]);
    ok(&["ip", "-n", &b, "link", "set", &ib, "up"]);

    ok(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c",
        "3",
        "-W",
        "2",
        "100.64.0.2",
    ]);
    // dump: interface line, then per peer: key psk endpoint allowed handshake rx tx keepalive
    let peer_line = |iface: &str| -> Vec<String> {
        let d = wg_dump(iface);
        d[1].split('\t').map(str::to_string).collect()
    };
    let first = peer_line(&ia);
    assert_eq!(first[2], "192.0.2.2:51820");
    assert_ne!(first[4], "0", "wg show reports no handshake");
    let (rx1, tx1): (u64, u64) = (first[5].parse().unwrap(), first[6].parse().unwrap());
    assert!(rx1 > 0 && tx1 > 0);
    ok(&[
        "ip",
        "netns",
        "exec",
        &a,
        "ping",
        "-c",
        "2",
        "-W",
        "2",
        "100.64.0.2",
    ]);
    let second = peer_line(&ia);
    let (rx2, tx2): (u64, u64) = (second[5].parse().unwrap(), second[6].parse().unwrap());
    assert!(
        rx2 > rx1 && tx2 > tx1,
        "counters did not rise: {rx1}->{rx2}, {tx1}->{tx2}"
    );
    drop(lab);
    for i in [&ia, &ib] {
        let sock = format!("/var/run/wireguard/{i}.sock");
        let _ = std::fs::remove_file(&sock);
    }
}
