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
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weft-cli-test-{}-{n}", std::process::id()));
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

/// Issue 12: tokens expire after 24 h unless told otherwise.
#[test]
fn tokens_expire_by_default() {
    let (_c, admin) = start();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(weft(&admin, &["token", "create"]).status.success());
    assert!(weft(&admin, &["token", "create", "--expires", "never"])
        .status
        .success());
    let out = weft(&admin, &["token", "create", "--expires", "soon"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("never"));
    let out = weft(&admin, &["token", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut expiries: Vec<Option<u64>> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["expires_at"].as_u64())
        .collect();
    expiries.sort();
    assert_eq!(expiries.len(), 2, "{list}");
    assert_eq!(expiries[0], None, "--expires never");
    let e = expiries[1].unwrap();
    assert!(
        (now + 24 * 3600 - 5..=now + 24 * 3600 + 60).contains(&e),
        "default expiry {e}, now {now}"
    );
}

/// Issue 12: `weft join` takes its token from a file, standard input or
/// the environment, and checks it before it creates anything.
#[test]
fn join_checks_its_token_before_creating_anything() {
    let dir = std::env::temp_dir().join(format!("weft-join-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let file = dir.join("token");
    std::fs::write(&file, "weft1.garbage\n").unwrap();
    let join = |extra: &[&str], env: Option<&str>, stdin: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
        cmd.arg("join")
            .args(extra)
            .arg("--state-dir")
            .arg(&state)
            .args(["--interface", "weftjointest0"])
            .env_remove("WEFT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some(v) = env {
            cmd.env("WEFT_TOKEN", v);
        }
        let mut child = cmd.spawn().unwrap();
        if let Some(s) = stdin {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let file_arg = file.to_string_lossy().into_owned();
    for err in [
        join(&["not-a-token"], None, None),
        join(&["--token-file", &file_arg], None, None),
        join(&[], Some("weft1.nope"), None),
        join(&["-"], None, Some("garbage\n")),
    ] {
        assert!(err.contains("not a valid join token"), "{err}");
        assert!(!state.exists(), "a state dir was created for a bad token");
        assert!(
            !Path::new("/sys/class/net/weftjointest0").exists(),
            "an interface was created for a bad token"
        );
    }
    let err = join(&[], None, None);
    assert!(
        err.contains("--token-file") && err.contains("WEFT_TOKEN"),
        "{err}"
    );
    let err = join(&["--token-file", "/nonexistent/token"], None, None);
    assert!(
        err.contains("cannot read the join token from /nonexistent/token"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `weft admin create` writes a working credential (to a bare file name in
/// the current directory by default), and `weft coordinator backup` to a
/// bare file name writes a backup `restore` reads; both through the binary.
#[test]
fn admin_credentials_and_backups_through_the_binary() {
    let (c, admin) = start();
    let run_in = |dir: &Path, admin: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_weft"))
            .args(args)
            .env("WEFT_ADMIN", admin)
            .current_dir(dir)
            .output()
            .unwrap()
    };
    let work = c.dir.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let out = run_in(&work, &admin, &["admin", "create", "ci"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ci = work.join("admin-ci.json");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&ci).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let out = weft(&ci, &["token", "create", "--uses", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = weft(&ci, &["admin", "list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("ci") && text.contains("root"),
        "{text}"
    );

    let out = run_in(&work, &ci, &["coordinator", "backup", "cluster.bak"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_in(
        &work,
        &ci,
        &[
            "coordinator",
            "restore",
            "cluster.bak",
            "--state-dir",
            "restored",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(work.join("restored/weft.redb").exists());
    let out = run_in(
        &work,
        &ci,
        &[
            "coordinator",
            "restore",
            "cluster.bak",
            "--state-dir",
            "restored",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));

    let out = weft(&admin, &["admin", "revoke", "ci"]);
    assert!(out.status.success());
    let out = weft(&ci, &["node", "list"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("revoked"));
    let scratch = c.dir.join("never-started").to_string_lossy().into_owned();
    let out = weft(
        &admin,
        &[
            "coordinator",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            &scratch,
            "--node-expiry",
            "5s",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 1m"));
}
