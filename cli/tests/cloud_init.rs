//! Multi-cloud bootstrap: `weft token create --cloud-init --binary-url`
//! prints a user-data document; a fresh lab VM that runs it (write_files
//! and runcmd, in private overlays of /etc, /usr/local, /var/lib and /run;
//! see `weft_tests::cloud_init`) downloads weft from a server on the
//! simulated internet, checks its SHA-256, writes the token (0600) and the
//! units, starts the agent unit's command, and comes up joined: an existing
//! host reaches it through the mesh. A document whose hash does not match
//! installs nothing. Needs root; in CI (`CI=true`) a missing privilege
//! fails instead of skipping.

use std::os::unix::fs::PermissionsExt as _;
use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest as _;
use weft_tests::cluster::{Cluster, ClusterSpec};
use weft_tests::{cloud_init, ping, require_root, wait_for, Lab, INTERNET_HOST};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// `weft token create --cloud-init` for a binary at `url` with `hash`.
fn document(c: &Cluster, url: &str, hash: &str) -> String {
    c.admin(&[
        "token",
        "create",
        "--cloud-init",
        "--binary-url",
        url,
        "--binary-sha256",
        hash,
    ])
    .expect("cloud-init document")
}

#[test]
fn a_fresh_vm_comes_up_joined_from_its_user_data() {
    if !require_root() {
        return;
    }
    let lab = Lab::new("ci");
    let mut c = Cluster::build(&lab, &weft(), ClusterSpec::hosts_only(1)).expect("cluster");
    // The binary on a web server on the internet, as a release would be.
    let www = c.internet_host();
    let site = lab.tempdir().join("site");
    std::fs::create_dir_all(&site).expect("site");
    std::fs::copy(weft(), site.join("weft")).expect("copy weft");
    let binary = std::fs::read(weft()).expect("read weft");
    let sha = hex::encode(sha2::Sha256::digest(&binary));
    let _server = lab.spawn(
        &www,
        "python3",
        &[
            "-m",
            "http.server",
            "8000",
            "--bind",
            &INTERNET_HOST.to_string(),
            "--directory",
            &site.to_string_lossy(),
        ],
        &[],
    );
    let url = format!("http://{INTERNET_HOST}:8000/weft");
    wait_for(Duration::from_secs(10), "the web server", || {
        lab.try_ok(&www, &["curl", "-fsS", "-o", "/dev/null", &url])
            .ok()
    })
    .expect("serving");

    // A document with the wrong hash installs nothing and joins nothing.
    let bad = document(&c, &url, &"00".repeat(32));
    let v = c.fresh_host(1, 2);
    let vm =
        cloud_init::boot(&lab, &c.hosts[v].ns, &bad, &lab.tempdir().join("vm-bad")).expect("boot");
    wait_for(Duration::from_secs(20), "the bootstrap to give up", || {
        (!vm.proc.is_running()).then_some(())
    })
    .expect("it ends");
    let status = vm.proc.stop();
    assert!(
        status.is_some_and(|s| !s.success()),
        "a binary that does not match must stop the bootstrap: {}",
        vm.proc.stderr()
    );
    assert!(
        vm.proc.stderr().contains("does not match"),
        "{}",
        vm.proc.stderr()
    );
    assert!(!vm.file("/usr/local/bin/weft").exists());

    // The real one.
    let doc = document(&c, &url, &sha);
    let v = c.fresh_host(1, 3);
    let vm = cloud_init::boot(&lab, &c.hosts[v].ns, &doc, &lab.tempdir().join("vm")).expect("boot");
    let peer = wait_for(Duration::from_secs(30), "the VM to join", || {
        if !vm.proc.is_running() {
            return Some(Err(anyhow::anyhow!(
                "the VM's bootstrap ended: {}",
                vm.proc.stderr()
            )));
        }
        let s = c.status(0).ok()?;
        let p = s["peers"].as_array()?.first()?.clone();
        Some(Ok(p))
    })
    .expect("joined")
    .expect("bootstrap");
    let subnet = peer["subnet"].as_str().expect("subnet");
    let addr = subnet.split('/').next().expect("addr");
    let host_addr = {
        let mut o: Vec<u8> = addr.split('.').map(|x| x.parse().expect("octet")).collect();
        o[3] += 1;
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3])
    };
    wait_for(Duration::from_secs(10), "the VM over the mesh", || {
        ping(&c.hosts[0].ns, &host_addr).ok()
    })
    .expect("an existing host reaches the VM through the mesh");

    // What the document left on the VM.
    let token = vm.file("/etc/weft/token");
    let mode = std::fs::metadata(&token)
        .expect("token")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "the token file is private");
    let installed = std::fs::read(vm.file("/usr/local/bin/weft")).expect("binary");
    assert_eq!(hex::encode(sha2::Sha256::digest(&installed)), sha);
    let unit = std::fs::read_to_string(vm.file("/etc/systemd/system/weft-agent.service"))
        .expect("the agent unit");
    assert!(unit.contains("ExecStart=/usr/local/bin/weft up"), "{unit}");
    assert!(vm.file("/var/lib/weft/node.json").exists(), "joined state");
    assert_eq!(c.nodes().expect("nodes").len(), 2);
}
