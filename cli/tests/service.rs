//! Running weft as a service: the systemd units verify with
//! `systemd-analyze verify`; the agent and the coordinator tell a
//! `NOTIFY_SOCKET` they are ready only once they are (and that they stop);
//! `weft up --token-file` (the unit's command) joins once and resumes
//! after; `weft down` leaves the cluster (after `--yes`), and the node is
//! gone everywhere. Needs root; in CI (`CI=true`) a missing privilege fails
//! instead of skipping.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{require_root, wait_for, Lab};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn weft_cmd(args: &[&str]) -> std::process::Output {
    Command::new(weft()).args(args).output().expect("run weft")
}

#[test]
fn the_units_pass_systemd_analyze_verify() {
    let dir = tempdir("units");
    let dir_s = dir.to_string_lossy().into_owned();
    let out = weft_cmd(&["install-units", "--dir", &dir_s]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let units = [
        dir.join("weft-agent.service"),
        dir.join("weft-docker-plugin.service"),
        dir.join("weft-coordinator.service"),
    ];
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (apt-get install systemd)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    // Unknown keys and bad values are warnings, not failures: none allowed.
    assert!(stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("weft-svc-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tempdir");
    d
}

/// A fake service manager: the socket `NOTIFY_SOCKET` names.
struct Notify {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).expect("bind the notify socket");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Notify {
            sock,
            path: path.to_path_buf(),
        }
    }

    /// The next notification (its lines).
    fn next(&self) -> String {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }
}

#[test]
fn agent_and_coordinator_notify_readiness_once_ready() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("sdn");
    let mut c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(1)).expect("cluster");

    // The coordinator: READY=1 once it serves (an admin command works at
    // once), STOPPING=1 on SIGTERM.
    let ns = lab.netns("co2");
    let dir = lab.tempdir().join("co2");
    let n = Notify::bind(&lab.tempdir().join("co.notify"));
    let path = n.path.to_string_lossy().into_owned();
    let co = lab.spawn(
        &ns,
        &weft().to_string_lossy(),
        &[
            "coordinator",
            "--state-dir",
            &dir.to_string_lossy(),
            "--listen",
            "127.0.0.1:7443",
        ],
        &[("NOTIFY_SOCKET", &path)],
    );
    assert!(n.next().contains("READY=1"), "{}", co.stderr());
    let admin = dir.join("admin.json").to_string_lossy().into_owned();
    lab.try_ok(
        &ns,
        &[&weft().to_string_lossy(), "node", "list", "--admin", &admin],
    )
    .expect("the coordinator answers as soon as it says it is ready");
    assert!(co.signal(libc::SIGTERM));
    assert!(n.next().contains("STOPPING=1"));

    // The agent: READY=1 once the tunnel and local API are up.
    assert!(c.stop_agent(0), "stopped");
    let h = &c.hosts[0];
    let n = Notify::bind(&lab.tempdir().join("agent.notify"));
    let path = n.path.to_string_lossy().into_owned();
    let state = h.state_dir.to_string_lossy().into_owned();
    let agent = lab.spawn(
        &h.ns,
        &weft().to_string_lossy(),
        &["up", "--state-dir", &state, "--interface", &h.interface],
        &[("NOTIFY_SOCKET", &path)],
    );
    let ready = n.next();
    assert!(ready.contains("READY=1"), "{ready}");
    assert!(ready.contains("STATUS=c1-h1 "), "{ready}");
    // Ready means ready: the interface exists and status answers now.
    lab.try_ok(&h.ns, &["ip", "link", "show", &h.interface])
        .expect("the tunnel is up when READY=1 arrives");
    c.status(0).expect("status answers when READY=1 arrives");
    assert!(agent.signal(libc::SIGTERM));
    assert!(n.next().contains("STOPPING=1"));
    agent.stop();
}

#[test]
fn up_with_a_token_file_joins_once_and_down_leaves_the_cluster() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("down");
    let mut c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(2)).expect("cluster");
    let state = c.hosts[0].state_dir.to_string_lossy().into_owned();

    // Without a terminal and without --yes, nothing happens.
    let out = lab.exec(
        &c.hosts[0].ns,
        &[&weft().to_string_lossy(), "down", "--state-dir", &state],
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--yes"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.nodes().expect("nodes").len(), 2);

    // On a terminal it asks; anything but yes leaves nothing changed.
    // (`script` gives the command a pseudo-terminal; the answer comes
    // through it.)
    let ask = format!(
        "ip netns exec {} {} down --state-dir {state}",
        c.hosts[0].ns,
        weft().display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &ask, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    {
        use std::io::Write as _;
        std::thread::sleep(Duration::from_millis(500));
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(b"n\n").expect("answer");
    }
    let out = child.wait_with_output().expect("script");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("Leave the cluster as node c1-h1"), "{said}");
    assert!(said.contains("not leaving"), "{said}");
    assert!(!out.status.success());
    assert_eq!(
        c.nodes().expect("nodes").len(),
        2,
        "answered no: nothing changed"
    );

    let out = lab.ok(
        &c.hosts[0].ns,
        &[
            &weft().to_string_lossy(),
            "down",
            "--state-dir",
            &state,
            "--yes",
        ],
    );
    assert!(out.contains("c1-h1 left the cluster"), "{out}");
    let agent = c.hosts[0].agent.take().expect("agent");
    let status = agent.stop().expect("exited");
    assert!(status.success(), "the agent exits cleanly after leaving");
    let names: Vec<String> = c
        .nodes()
        .expect("nodes")
        .iter()
        .map(|n| n["name"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(names, ["c2-h1"], "the coordinator forgot the node");
    wait_for(Duration::from_secs(5), "the peer to drop the node", || {
        let s = c.status(1).ok()?;
        s["peers"].as_array()?.is_empty().then_some(())
    })
    .expect("peer dropped it");
    assert!(!c.hosts[0].state_dir.join("node.json").exists());
    assert!(c.up(0).is_err(), "nothing to `weft up` from any more");

    // The unit's command: with no node yet, `up --token-file` joins...
    let token = c
        .admin(&["token", "create", "--expires", "1h"])
        .expect("token");
    let file = lab.tempdir().join("again.token");
    std::fs::write(&file, token.trim()).expect("token file");
    let file_s = file.to_string_lossy().into_owned();
    c.up_with(0, &["--token-file", &file_s, "--name", "c1-h1b"])
        .expect("joins with the token file");
    c.wait_for_mesh(Duration::from_secs(20)).expect("mesh");
    let joined = c.status(0).expect("status")["host"]["node_id"].clone();
    // ...and after a restart it resumes the same node (the single-use
    // token is spent, so joining again would fail).
    assert!(c.stop_agent(0));
    c.up_with(0, &["--token-file", &file_s])
        .expect("resumes from the stored node");
    assert_eq!(c.status(0).expect("status")["host"]["node_id"], joined);
    assert_eq!(c.nodes().expect("nodes").len(), 2);
}
