//! Operating weft: `--log-level` and `--log-format json` on a long-running
//! command (the coordinator, on loopback), and `weft completions` for
//! bash, zsh and fish. No root needed.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn weft() -> Command {
    Command::new(env!("CARGO_BIN_EXE_weft"))
}

/// Runs a coordinator on loopback with `flags` until it says it started
/// (or 20 s pass); its stderr lines.
fn coordinator_log(flags: &[&str]) -> Vec<String> {
    let dir = std::env::temp_dir().join(format!(
        "weft-oplog-{}-{}",
        std::process::id(),
        flags.join("").replace(['-', ' ', ','], "")
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = weft()
        .args(flags)
        .args(["coordinator", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(&dir)
        .env_remove("WEFT_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the coordinator");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Up to 20 s for either of the two start lines, then 500 ms for the
    // rest (the other one may be filtered out).
    let mut lines = Vec::new();
    let mut deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while let Ok(l) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        if !seen && (l.contains("admin credential written") || l.contains("coordinator started")) {
            seen = true;
            deadline = Instant::now() + Duration::from_millis(500);
        }
        lines.push(l);
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    lines
}

#[test]
fn json_logs_are_one_object_a_line_with_level_and_message() {
    let lines = coordinator_log(&["--log-format", "json"]);
    assert!(!lines.is_empty());
    let mut started = false;
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["level"].is_string() && v["timestamp"].is_string(), "{l}");
        started |= v["fields"]["message"] == "coordinator started";
    }
    assert!(started, "{lines:?}");
}

#[test]
fn log_level_filters_what_is_written() {
    let has = |lines: &[String], what: &str| lines.iter().any(|l| l.contains(what));
    let (started, credential) = ("coordinator started", "admin credential written");
    let all = coordinator_log(&[]);
    assert!(has(&all, started) && has(&all, credential), "{all:?}");
    // A filter: the coordinator library at info, the binary's own lines off.
    let library = coordinator_log(&["--log-level", "weft_coordinator=info"]);
    assert!(
        has(&library, started) && !has(&library, credential),
        "{library:?}"
    );
    let binary = coordinator_log(&["--log-level", "warn,weft::coordinator_cmd=info"]);
    assert!(
        !has(&binary, started) && has(&binary, credential),
        "{binary:?}"
    );
    let out = weft()
        .args(["--log-level", "weft=loud", "status"])
        .output()
        .expect("run weft");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--log-level"));
}

#[test]
fn completions_for_bash_zsh_and_fish() {
    let script = |shell: &str| {
        let out = weft()
            .args(["completions", shell])
            .output()
            .expect("run weft");
        assert!(out.status.success(), "{shell}");
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let bash = script("bash");
    assert!(bash.contains("complete -F _weft"), "bash");
    for sub in ["join", "docker-plugin", "install-units", "down"] {
        assert!(bash.contains(sub), "bash completes {sub}");
    }
    let f = std::env::temp_dir().join(format!("weft-completion-{}.bash", std::process::id()));
    std::fs::write(&f, &bash).expect("write");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&f)
        .output()
        .expect("bash");
    let _ = std::fs::remove_file(&f);
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    assert!(script("zsh").starts_with("#compdef weft"));
    assert!(script("fish").contains("complete -c weft"));
    let out = weft()
        .args(["completions", "tcsh"])
        .output()
        .expect("run weft");
    assert!(!out.status.success(), "an unknown shell is refused");
}
