//! The coordinator, token and node commands through the real `weft` binary.

#![allow(clippy::unwrap_used, reason = "test helpers should panic on failure")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Coordinator {
    child: Child,
    dir: PathBuf,
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn weft(admin: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .env("WEFT_ADMIN", admin)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

fn start() -> (Coordinator, PathBuf) {
    let dir = std::env::temp_dir().join(format!("weft-cli-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = dir.join("state");
    let child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["coordinator", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--state-dir")
        .arg(&state)
        .args(["--pool", "10.50.0.0/16", "--subnet-prefix", "26"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let admin = state.join("admin.json");
    let coordinator = Coordinator { child, dir };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !weft(&admin, &["node", "list"]).status.success() {
        assert!(Instant::now() < deadline, "coordinator did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    (coordinator, admin)
}

#[test]
fn token_and_node_commands() {
    let (_c, admin) = start();
    let out = weft(
        &admin,
        &[
            "token",
            "create",
            "--uses",
            "3",
            "--expires",
            "1h",
            "--tag",
            "cloud:aws",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).unwrap();
    assert!(token.trim().starts_with("weft1."), "{token}");
    assert_eq!(token.trim().lines().count(), 1);

    let out = weft(&admin, &["token", "list", "--json"]);
    assert!(out.status.success());
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = &list[0];
    assert_eq!(t["uses_left"], 3);
    assert_eq!(t["tags"][0], "cloud:aws");
    let id = t["id"].as_str().unwrap().to_string();
    // The listing never carries the secret.
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(token.trim().trim_start_matches("weft1."))
    );

    let out = weft(&admin, &["token", "revoke", &id]);
    assert!(out.status.success());
    let out = weft(&admin, &["token", "list"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"));

    let out = weft(&admin, &["node", "list", "--json"]);
    assert!(out.status.success());
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );

    let out = weft(&admin, &["node", "remove", "ghost"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no node with id or name `ghost`") && err.contains("weft node list"),
        "{err}"
    );

    let out = weft(Path::new("/nonexistent/admin.json"), &["token", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--admin FILE"));
}
