//! The lab itself: namespaces join and talk, processes stop, and
//! everything is gone after drop, after a panic and after Ctrl-C.

use std::path::Path;
use std::time::Duration;

use weft_tests::{ping, require_root, snmp_counter, tcp_transfer, wait_for, Lab};

fn netns_exists(ns: &str) -> bool {
    Path::new("/run/netns").join(ns).exists()
}

#[test]
fn two_hosts_and_a_router_talk_and_vanish_on_drop() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("lt");
    let (a, r, b) = (lab.netns("a"), lab.netns("r"), lab.netns("b"));
    // Same interface names in every namespace: they are private to it.
    lab.veth(&a, "eth0", &r, "eth0");
    lab.veth(&r, "eth1", &b, "eth0");
    lab.addr(&a, "eth0", "192.0.2.2/24");
    lab.addr(&r, "eth0", "192.0.2.1/24");
    lab.addr(&r, "eth1", "198.51.100.1/24");
    lab.addr(&b, "eth0", "198.51.100.2/24");
    lab.route(&a, "default", "192.0.2.1");
    lab.route(&b, "default", "198.51.100.1");
    assert!(
        ping(&a, "198.51.100.2").is_err(),
        "routed without forwarding"
    );
    lab.forwarding(&r);
    assert_eq!(
        lab.ok(&r, &["cat", "/proc/sys/net/ipv4/ip_forward"]).trim(),
        "1"
    );
    ping(&a, "198.51.100.2").unwrap();
    snmp_counter(&b, "Udp", "RcvbufErrors").unwrap();
    tcp_transfer(&a, &b, "198.51.100.2".parse().unwrap(), 5000, 1 << 20).unwrap();

    let sleeper = lab.spawn(&b, "sleep", &["600"], &[]);
    let ignores_term = lab.spawn(&b, "sh", &["-c", "trap '' TERM; echo up; sleep 600"], &[]);
    wait_for(Duration::from_secs(5), "sh to start", || {
        ignores_term.stdout().contains("up").then_some(())
    })
    .unwrap();
    assert!(sleeper.is_running());
    let st = sleeper.stop().unwrap();
    assert_eq!(st.code(), None, "sleep ends by SIGTERM");
    assert!(!sleeper.is_running());
    assert!(sleeper.stop().is_none(), "stopped twice");
    let t = std::time::Instant::now();
    ignores_term
        .stop_within(Duration::from_millis(300))
        .unwrap();
    assert!(t.elapsed() < Duration::from_secs(2));

    let left_running = lab.spawn(&a, "sleep", &["600"], &[]);
    let pid = left_running.pid();
    let dir = lab.tempdir().to_path_buf();
    let names = [a.clone(), r.clone(), b.clone()];
    assert!(dir.exists());
    drop(lab);
    for ns in &names {
        assert!(!netns_exists(ns), "{ns} survived drop");
    }
    assert!(!dir.exists(), "temp dir survived drop");
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "child survived drop"
    );
}

#[test]
fn panic_tears_down() {
    if !require_root() {
        return;
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let lab = Lab::new("lp");
        let ns = lab.netns("x");
        let p = lab.spawn(&ns, "sleep", &["600"], &[]);
        tx.send((ns, p.pid())).unwrap();
        panic!("deliberate");
    })
    .join();
    assert!(r.is_err());
    let (ns, pid) = rx.recv().unwrap();
    assert!(!netns_exists(&ns), "{ns} survived a panic");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}

/// Run by `ctrl_c_tears_down` in a child process: builds a lab, says what
/// it made, and waits to be interrupted.
#[test]
fn ctrl_c_helper() {
    if std::env::var_os("WEFT_LAB_CTRL_C_HELPER").is_none() {
        return;
    }
    let lab = Lab::new("lc");
    let ns = lab.netns("x");
    let p = lab.spawn(&ns, "sleep", &["600"], &[]);
    println!("READY {ns} {} {}", p.pid(), lab.tempdir().display());
    std::thread::sleep(Duration::from_secs(60));
    panic!("not interrupted");
}

#[test]
fn ctrl_c_tears_down() {
    use std::io::BufRead as _;
    if !require_root() {
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "ctrl_c_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEFT_LAB_CTRL_C_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let line = std::io::BufReader::new(out)
        .lines()
        .map(Result::unwrap)
        .find_map(|l| Some(l.split_once("READY ")?.1.to_string()))
        .expect("helper never got ready");
    let f: Vec<&str> = line.split(' ').collect();
    let (ns, pid, dir) = (f[0], f[1], f[2]);
    assert!(netns_exists(ns));
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert!(!netns_exists(ns), "{ns} survived Ctrl-C");
    assert!(!Path::new(dir).exists(), "{dir} survived Ctrl-C");
    assert!(!Path::new(&format!("/proc/{pid}")).exists());
}
