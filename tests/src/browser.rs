//! A headless Chromium driven over the DevTools protocol (CDP) on a pipe: no
//! websocket, no extra crates. Chromium reads NUL-terminated JSON messages on
//! fd 3 and writes its answers and events on fd 4 (`--remote-debugging-pipe`).
//!
//! A [`Browser`] owns its Chromium process and profile dir; dropping it
//! (also while unwinding from a panic) closes the browser, kills it if it
//! does not go within 2 s, and removes the profile. Every call has a
//! timeout and answers with an error, never a panic, whatever Chromium sends.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use std::time::Duration;
//! use weft_tests::browser::{artifact_dir, Browser, CHROMIUM};
//! if !weft_tests::require_tools(&[CHROMIUM], "chromium") {
//!     return Ok(());
//! }
//! let b = Browser::launch(None)?;
//! b.navigate("http://127.0.0.1:8080/")?;
//! b.wait_for("document.body.dataset.ready === '1'", Duration::from_secs(10))?;
//! b.screenshot(&artifact_dir().join("page.png"))?;
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
use std::os::unix::fs::DirBuilderExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::{json, Value};

/// Where Debian's `chromium` package puts the browser (a shell wrapper that
/// execs `/usr/lib/chromium/chromium`).
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one CDP command may take to be answered.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a navigation may take to fire its load event.
const NAVIGATE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `Drop` waits for Chromium to exit after `Browser.close`.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Page errors and request URLs kept (the oldest are dropped).
const MAX_KEPT: usize = 1000;

/// The directory tests write screenshots and other artifacts to:
/// `$WEFT_ARTIFACTS`, or `<workspace>/target/test-artifacts`; created.
pub fn artifact_dir() -> PathBuf {
    let dir = match std::env::var_os("WEFT_ARTIFACTS") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        // This crate lives one level below the workspace root.
        _ => {
            let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
            manifest
                .parent()
                .unwrap_or(manifest)
                .join("target/test-artifacts")
        }
    };
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create artifact dir {}: {e}", dir.display());
    }
    dir
}

/// A headless Chromium with one page attached.
pub struct Browser {
    child: Child,
    writer: Mutex<File>,
    shared: Arc<Shared>,
    next_id: AtomicU64,
    /// The CDP session of the page target; empty until attached.
    session: String,
    profile: PathBuf,
}

struct Shared {
    state: Mutex<State>,
    cond: Condvar,
}

#[derive(Default)]
struct State {
    /// Answers by command id, until their caller takes them.
    replies: HashMap<u64, Value>,
    /// Why the pipe from Chromium ended, once it has.
    closed: Option<String>,
    /// `Page.loadEventFired` events seen, by session id.
    loads: HashMap<String, u64>,
    /// Uncaught exceptions and `console.error` calls in the page.
    page_errors: VecDeque<String>,
    /// URLs the page requested (`Network.requestWillBeSent`).
    requests: VecDeque<String>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn push_bounded(q: &mut VecDeque<String>, s: String) {
    if q.len() >= MAX_KEPT {
        q.pop_front();
    }
    q.push_back(s);
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe() -> anyhow::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fds into the array we own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A close-on-exec duplicate of `fd` numbered 10 or above, so that moving it
/// onto fd 3 or 4 in the child cannot overwrite the other one.
fn dup_high(fd: &OwnedFd) -> anyhow::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid fd returns a new fd or -1.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        bail!(
            "fcntl(F_DUPFD_CLOEXEC): {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: `new` was just created and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn set_nonblocking(fd: &File) -> anyhow::Result<()> {
    // SAFETY: fcntl on a valid fd we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        bail!("fcntl(O_NONBLOCK): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// A fresh profile dir for one browser (mode 0700).
fn new_profile_dir() -> anyhow::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("weft-chromium-{}-{n}", std::process::id()));
    // A leftover from an earlier process that was killed with our pid.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("create {}", dir.display()))?;
    Ok(dir)
}

/// The last few lines of Chromium's stderr, for an error message.
fn stderr_tail(profile: &Path) -> String {
    let Ok(mut f) = File::open(profile.join("chromium.stderr")) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(4096)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// Whether `v` is truthy as JavaScript would see it.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0 && !f.is_nan()),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// One line describing a `Runtime.ExceptionDetails`.
fn exception_text(details: &Value) -> String {
    let text = details["text"].as_str().unwrap_or("exception");
    let description = details["exception"]["description"]
        .as_str()
        .or_else(|| details["exception"]["value"].as_str())
        .unwrap_or("");
    let at = match (
        details["lineNumber"].as_u64(),
        details["columnNumber"].as_u64(),
    ) {
        (Some(l), Some(c)) => format!(" (at {}:{})", l + 1, c + 1),
        _ => String::new(),
    };
    if description.is_empty() {
        format!("{text}{at}")
    } else {
        format!("{text} {description}{at}")
    }
}

/// The reader thread: splits what Chromium writes into messages and files
/// answers and the events the browser keeps track of.
fn read_loop(file: File, shared: Arc<Shared>) {
    let mut reader = BufReader::new(file);
    let mut buf = Vec::new();
    let why = loop {
        buf.clear();
        match reader.read_until(0, &mut buf) {
            Ok(0) => break "chromium closed the DevTools pipe".to_string(),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break format!("reading the DevTools pipe: {e}"),
        }
        if buf.last() == Some(&0) {
            buf.pop();
        }
        let Ok(msg) = serde_json::from_slice::<Value>(&buf) else {
            continue;
        };
        let mut st = shared.lock();
        if let Some(id) = msg.get("id").and_then(Value::as_u64) {
            st.replies.insert(id, msg);
        } else {
            let session = msg["sessionId"].as_str().unwrap_or("").to_string();
            let params = &msg["params"];
            match msg["method"].as_str().unwrap_or("") {
                "Page.loadEventFired" => *st.loads.entry(session).or_default() += 1,
                "Runtime.exceptionThrown" => {
                    let e = exception_text(&params["exceptionDetails"]);
                    push_bounded(&mut st.page_errors, e);
                }
                "Runtime.consoleAPICalled" if params["type"] == "error" => {
                    let args: Vec<String> = params["args"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|a| match (&a["value"], a["description"].as_str()) {
                            (Value::String(s), _) => s.clone(),
                            (Value::Null, Some(d)) => d.to_string(),
                            (v, _) => v.to_string(),
                        })
                        .collect();
                    push_bounded(
                        &mut st.page_errors,
                        format!("console.error: {}", args.join(" ")),
                    );
                }
                "Network.requestWillBeSent" => {
                    if let Some(url) = params["request"]["url"].as_str() {
                        push_bounded(&mut st.requests, url.to_string());
                    }
                }
                _ => continue,
            }
        }
        drop(st);
        shared.cond.notify_all();
    };
    shared.lock().closed = Some(why);
    shared.cond.notify_all();
}

impl Browser {
    /// Starts a headless Chromium (inside network namespace `netns`, through
    /// `ip netns exec`, when given), opens a blank page and attaches to it
    /// with the Page, Runtime and Network domains enabled.
    pub fn launch(netns: Option<&str>) -> anyhow::Result<Browser> {
        if !Path::new(CHROMIUM).exists() {
            bail!("chromium not found: apt-get install chromium");
        }
        let profile = new_profile_dir()?;
        let stderr = File::create(profile.join("chromium.stderr"))
            .with_context(|| format!("create {}", profile.display()))?;

        // Chromium reads commands from fd 3 and writes to fd 4.
        let (cmd_read, cmd_write) = pipe()?;
        let (out_read, out_write) = pipe()?;
        let child_in = dup_high(&cmd_read)?;
        let child_out = dup_high(&out_write)?;
        drop((cmd_read, out_write));

        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, CHROMIUM]);
                c
            }
            None => Command::new(CHROMIUM),
        };
        cmd.args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--metrics-recording-only",
            "--disable-default-apps",
            "--mute-audio",
            "--hide-scrollbars",
            "--window-size=1400,1000",
            "--remote-debugging-pipe",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        // Keeps what Chromium writes under $HOME (the NSS db, caches) in
        // the profile dir.
        .env("HOME", &profile)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr);
        let (fd_in, fd_out) = (child_in.as_raw_fd(), child_out.as_raw_fd());
        // SAFETY: only dup2 runs between fork and exec (async-signal-safe);
        // dup2 leaves the new fds 3 and 4 without close-on-exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd_in, 3) < 0 || libc::dup2(fd_out, 4) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let spawned = cmd.spawn();
        // Only Chromium holds its ends now: its exit ends our reads.
        drop((child_in, child_out));
        let child = match spawned {
            Ok(c) => c,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&profile);
                bail!("cannot start {CHROMIUM}: {e}");
            }
        };

        let writer = File::from(cmd_write);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            cond: Condvar::new(),
        });
        let reader = File::from(out_read);
        {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("chromium-cdp".into())
                .spawn(move || read_loop(reader, shared))
                .context("spawn the DevTools reader thread")?;
        }
        let mut browser = Browser {
            child,
            writer: Mutex::new(writer),
            shared,
            next_id: AtomicU64::new(1),
            session: String::new(),
            profile,
        };
        // From here on, an error drops `browser`, which cleans up.
        match browser.attach() {
            Ok(()) => Ok(browser),
            Err(e) => {
                let tail = stderr_tail(&browser.profile);
                Err(e.context(format!("starting chromium; its stderr ends with:\n{tail}")))
            }
        }
    }

    fn attach(&mut self) -> anyhow::Result<()> {
        {
            let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            set_nonblocking(&w)?;
        }
        let target = self.call(
            None,
            "Target.createTarget",
            json!({"url": "about:blank"}),
            CALL_TIMEOUT,
        )?;
        let target_id = target["targetId"]
            .as_str()
            .context("Target.createTarget: no targetId")?
            .to_string();
        let attached = self.call(
            None,
            "Target.attachToTarget",
            json!({"targetId": target_id, "flatten": true}),
            CALL_TIMEOUT,
        )?;
        self.session = attached["sessionId"]
            .as_str()
            .context("Target.attachToTarget: no sessionId")?
            .to_string();
        for domain in ["Page", "Runtime", "Network"] {
            self.page_call(&format!("{domain}.enable"), json!({}))?;
        }
        Ok(())
    }

    /// Writes one message, retrying while the pipe is full until `deadline`.
    fn send(&self, msg: &Value, deadline: Instant) -> anyhow::Result<()> {
        let mut bytes = serde_json::to_vec(msg)?;
        bytes.push(0);
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = &bytes[..];
        while !rest.is_empty() {
            match w.write(rest) {
                Ok(0) => bail!("write to chromium: pipe closed"),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        bail!("write to chromium: timed out (it reads nothing)");
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => bail!("write to chromium: {e}"),
            }
        }
        Ok(())
    }

    /// Sends `method` (to the page's session when `session` is given) and
    /// waits for its answer: its `result`, or its `error` as an error.
    fn call(
        &self,
        session: Option<&str>,
        method: &str,
        params: Value,
        timeout: Duration,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = Value::String(s.to_string());
        }
        self.send(&msg, deadline)
            .with_context(|| method.to_string())?;
        let mut st = self.shared.lock();
        let reply = loop {
            if let Some(r) = st.replies.remove(&id) {
                break r;
            }
            if let Some(why) = &st.closed {
                bail!("{method}: {why}");
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("{method}: chromium did not answer within {timeout:?}");
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(st);
        if let Some(err) = reply.get("error") {
            let message = err["message"].as_str().unwrap_or("error");
            match err.get("data") {
                Some(data) => bail!("{method}: {message} ({data})"),
                None => bail!("{method}: {message}"),
            }
        }
        Ok(reply.get("result").cloned().unwrap_or(Value::Null))
    }

    fn page_call(&self, method: &str, params: Value) -> anyhow::Result<Value> {
        self.call(Some(&self.session), method, params, CALL_TIMEOUT)
    }

    fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }

    /// Loads `url` in the page and waits (15 s) for its load event.
    pub fn navigate(&self, url: &str) -> anyhow::Result<()> {
        let loads = |st: &State| st.loads.get(&self.session).copied().unwrap_or(0);
        let before = loads(&self.shared.lock());
        let nav = self.page_call("Page.navigate", json!({"url": url}))?;
        if let Some(err) = nav["errorText"].as_str().filter(|e| !e.is_empty()) {
            bail!("navigate to {url}: {err}");
        }
        if nav.get("loaderId").is_none() {
            // A same-document navigation (a fragment): no load event.
            return Ok(());
        }
        let deadline = Instant::now() + NAVIGATE_TIMEOUT;
        let mut st = self.shared.lock();
        loop {
            if loads(&st) > before {
                return Ok(());
            }
            if let Some(why) = &st.closed {
                bail!("navigate to {url}: {why}");
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            st = self
                .shared
                .cond
                .wait_timeout(st, (deadline - now).min(Duration::from_millis(250)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        drop(st);
        // No load event seen (a page still loading a subresource, say): a
        // complete document will do.
        match self.eval("document.readyState") {
            Ok(Value::String(s)) if s == "complete" => Ok(()),
            other => bail!(
                "navigate to {url}: not loaded after {NAVIGATE_TIMEOUT:?} (readyState {:?})",
                other.map_err(|e| e.to_string())
            ),
        }
    }

    /// Evaluates `js` in the page (awaiting it if it is a promise) and
    /// returns its value as JSON (`null` for `undefined`; NaN, Infinity and
    /// bigints as their text). A thrown exception is an error with its text.
    pub fn eval(&self, js: &str) -> anyhow::Result<Value> {
        let r = self.page_call(
            "Runtime.evaluate",
            json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
        )?;
        if let Some(details) = r.get("exceptionDetails") {
            bail!("eval `{js}`: {}", exception_text(details));
        }
        let obj = &r["result"];
        if let Some(v) = obj.get("value") {
            return Ok(v.clone());
        }
        if let Some(u) = obj["unserializableValue"].as_str() {
            return Ok(Value::String(u.to_string()));
        }
        Ok(Value::Null)
    }

    /// Evaluates `js_predicate` every 100 ms until its value is truthy, and
    /// returns that value. An exception counts as not yet. On timeout the
    /// error names the predicate, its last value or error, and the page's
    /// errors.
    pub fn wait_for(&self, js_predicate: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.eval(js_predicate) {
                Ok(v) if truthy(&v) => return Ok(v),
                Ok(v) => Ok(v),
                Err(e) => {
                    if let Some(why) = self.closed() {
                        bail!("waiting for `{js_predicate}`: {why}");
                    }
                    Err(format!("{e:#}"))
                }
            };
            if Instant::now() >= deadline {
                let last = match last {
                    Ok(v) => format!("last value: {v}"),
                    Err(e) => format!("last error: {e}"),
                };
                let errors = self.page_errors();
                let errors = if errors.is_empty() {
                    String::new()
                } else {
                    format!("; page errors: {}", errors.join(" | "))
                };
                bail!("timed out after {timeout:?} waiting for `{js_predicate}`; {last}{errors}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves a PNG of the whole page (beyond the viewport) to `path`,
    /// creating its parent dirs.
    pub fn screenshot(&self, path: &Path) -> anyhow::Result<()> {
        let r = self.page_call(
            "Page.captureScreenshot",
            json!({"format": "png", "captureBeyondViewport": true}),
        )?;
        let data = r["data"]
            .as_str()
            .context("Page.captureScreenshot: no data")?;
        let png = base64_decode(data).context("Page.captureScreenshot: bad base64")?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// The page's uncaught exceptions and `console.error` calls so far
    /// (the last 1000).
    pub fn page_errors(&self) -> Vec<String> {
        self.shared.lock().page_errors.iter().cloned().collect()
    }

    /// Every URL the page has requested so far (the last 1000), the
    /// documents and `fetch`es included.
    pub fn requests(&self) -> Vec<String> {
        self.shared.lock().requests.iter().cloned().collect()
    }

    /// Chromium's process id (that of the browser itself, also through
    /// `ip netns exec`, which execs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let deadline = Instant::now() + CLOSE_GRACE;
        if self.closed().is_none() {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            let _ = self.send(
                &json!({"id": id, "method": "Browser.close", "params": {}}),
                deadline,
            );
        }
        let mut exited = false;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if !exited {
            // Child::kill signals this child's pid only.
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        // Chromium's helpers may still be writing into the profile for a
        // moment after the browser is gone.
        for _ in 0..20 {
            match std::fs::remove_dir_all(&self.profile) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break,
            }
        }
    }
}

/// Decodes standard base64 (with or without padding; whitespace ignored).
fn base64_decode(s: &str) -> anyhow::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => bail!("invalid base64 byte {c:#04x}"),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, AtomicU8};

    /// An HTTP/1.1 server on 127.0.0.1 answering each request with
    /// `route(path)`: (status, content type, body), or `None` to drop the
    /// connection without an answer.
    struct TestServer {
        addr: SocketAddr,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
    }

    type Route = dyn Fn(&str) -> Option<(u16, &'static str, String)> + Send + Sync;

    impl TestServer {
        fn start(
            route: impl Fn(&str) -> Option<(u16, &'static str, String)> + Send + Sync + 'static,
        ) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            TestServer::start_on(listener, route)
        }

        /// As `start`, on `listener` (one opened inside a namespace, say).
        fn start_on(
            listener: TcpListener,
            route: impl Fn(&str) -> Option<(u16, &'static str, String)> + Send + Sync + 'static,
        ) -> TestServer {
            let addr = listener.local_addr().expect("local addr");
            let stop = Arc::new(AtomicBool::new(false));
            let route: Arc<Route> = Arc::new(route);
            // Non-blocking accepts polled against `stop`: a listener inside a
            // namespace cannot be woken by a connection from out here.
            listener
                .set_nonblocking(true)
                .expect("nonblocking listener");
            let thread = {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        match listener.accept() {
                            Ok((conn, _)) => {
                                let route = route.clone();
                                std::thread::spawn(move || serve_one(conn, &*route));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(10)),
                        }
                    }
                })
            };
            TestServer {
                addr,
                stop,
                thread: Some(thread),
            }
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    fn serve_one(mut conn: TcpStream, route: &Route) {
        let _ = conn.set_nonblocking(false);
        // Chromium opens speculative connections it may never use.
        let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
        let mut req = Vec::new();
        let mut buf = [0u8; 2048];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => req.extend_from_slice(&buf[..n]),
            }
        }
        let head = String::from_utf8_lossy(&req);
        let path = head.split_whitespace().nth(1).unwrap_or("/");
        let path = path.split('?').next().unwrap_or(path);
        let Some((status, ctype, body)) = route(path) else {
            return;
        };
        let reason = match status {
            200 => "OK",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let _ = write!(
            conn,
            "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }

    const SELFTEST_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>weft selftest</title>
<style>body{font:16px system-ui;margin:20px} .b{display:inline-block;width:120px;height:80px;margin:6px}</style></head>
<body><h1 id="x" data-state="before">browser selftest</h1>
<div class="b" style="background:#c33"></div><div class="b" style="background:#3a3"></div><div class="b" style="background:#33c"></div>
<p>Some text so that the screenshot has something to compress.</p>
<script>setTimeout(() => { document.getElementById('x').dataset.state = 'after'; }, 500);</script>
</body></html>"#;

    #[test]
    fn navigates_waits_evaluates_and_screenshots() -> anyhow::Result<()> {
        if !crate::require_tools(&[CHROMIUM], "chromium") {
            return Ok(());
        }
        let server = TestServer::start(|path| match path {
            "/" => Some((200, "text/html; charset=utf-8", SELFTEST_PAGE.to_string())),
            _ => Some((404, "text/plain", "not found".to_string())),
        });
        let started = Instant::now();
        let b = Browser::launch(None)?;
        eprintln!("chromium up in {:?}", started.elapsed());
        b.navigate(&server.url("/"))?;
        assert_eq!(b.eval("document.title")?, "weft selftest");
        let v = b.wait_for(
            "document.getElementById('x').dataset.state === 'after' && document.getElementById('x').textContent",
            Duration::from_secs(5),
        )?;
        assert_eq!(v, "browser selftest");

        assert_eq!(
            b.eval("new Promise(r => setTimeout(() => r(41 + 1), 50))")?,
            42
        );
        assert_eq!(b.eval("undefined")?, Value::Null);
        assert_eq!(b.eval("({a: [1, 'two']})")?, json!({"a": [1, "two"]}));

        let err = b
            .eval("(() => { throw new Error('boom from the test'); })()")
            .unwrap_err();
        assert!(format!("{err:#}").contains("boom from the test"), "{err:#}");
        let err = b.eval("this is not javascript").unwrap_err();
        assert!(format!("{err:#}").contains("SyntaxError"), "{err:#}");

        let err = b
            .wait_for("document.title.length > 1000", Duration::from_millis(300))
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("document.title.length > 1000") && msg.contains("last value: false"),
            "{msg}"
        );

        let path = artifact_dir().join("browser-selftest.png");
        b.screenshot(&path)?;
        let png = std::fs::read(&path)?;
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n"),
            "not a PNG: {:?}",
            &png[..png.len().min(8)]
        );
        assert!(png.len() > 1024, "screenshot is only {} bytes", png.len());

        // A refused connection is an error, not a hang.
        let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let err = b.navigate(&format!("http://{closed}/")).unwrap_err();
        assert!(
            format!("{err:#}").contains("ERR_CONNECTION_REFUSED"),
            "{err:#}"
        );

        assert!(b.page_errors().is_empty(), "{:?}", b.page_errors());
        let pid = b.pid();
        drop(b);
        // SAFETY: signal 0 only checks whether the process exists.
        let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
        assert!(!alive, "chromium {pid} still runs after drop");
        eprintln!("selftest took {:?}", started.elapsed());
        Ok(())
    }

    const INDEX_HTML: &str = include_str!("../../proto/src/web/index.html");
    const HOSTILE: &str = "<img src=x onerror=alert(1)>";
    const RELAY_REASON: &str = "no direct reply from 192.0.2.20:51820 in 5 s";

    /// The cluster as `/api/cluster` reports it; `direct` turns h1's relayed
    /// path to h2 direct.
    fn canned_cluster(direct: bool) -> String {
        let (path, reason, version) = if direct {
            ("direct", Value::Null, 18)
        } else {
            ("relay", json!(RELAY_REASON), 17)
        };
        json!({
            "cluster": {"domain": "weft.internal", "pool": "100.64.0.0/10", "netmap_version": version,
                        "nodes": 3, "online": 2, "now": 1_764_600_000},
            "nodes": [
                {"id": 2, "name": "h2", "subnet": "100.64.2.0/24", "online": true,
                 "endpoints": ["192.0.2.20:51820", "10.0.0.2:51820"], "protocol_version": 3, "tags": ["db"]},
                {"id": 1, "name": "h1", "subnet": "100.64.1.0/24", "online": true,
                 "endpoints": ["192.0.2.10:51820"], "protocol_version": 3, "tags": ["web", HOSTILE]},
                {"id": 3, "name": HOSTILE, "subnet": "100.64.3.0/24", "online": false,
                 "endpoints": [], "protocol_version": null, "tags": []}
            ],
            "paths": [
                {"from": 1, "to": 2, "path": path, "reason": reason, "age_secs": 3},
                {"from": 2, "to": 1, "path": "direct", "reason": null, "age_secs": 2}
            ],
            "peers": [[1, 2], [1, 3]],
            "policy": {"version": 3, "set_at": 1_764_590_000,
                       "history": [{"version": 1, "set_at": 1_764_500_000, "lines": 12},
                                   {"version": 2, "set_at": 1_764_550_000, "lines": 14},
                                   {"version": 3, "set_at": 1_764_590_000, "lines": 15}]},
            "services": [{"name": "web", "node": "h1", "port": 80, "proto": "tcp",
                          "addr": null, "public": null, "gateway": null},
                         {"name": HOSTILE, "node": HOSTILE, "port": 5432, "proto": "tcp",
                          "addr": "100.64.3.5", "public": null, "gateway": null}],
            "routes": [{"node": "h2", "advertised": ["198.18.5.0/24"], "approved": [], "active": []}]
        })
        .to_string()
    }

    /// How the fake coordinator answers `/api/cluster`.
    const UP: u8 = 0;
    const EXPIRED: u8 = 1;
    const DOWN: u8 = 2;

    #[test]
    fn cluster_page_renders_escapes_and_follows_changes() -> anyhow::Result<()> {
        if !crate::require_tools(&[CHROMIUM], "chromium") {
            return Ok(());
        }
        let direct = Arc::new(AtomicBool::new(false));
        let mode = Arc::new(AtomicU8::new(UP));
        let server = {
            let (direct, mode) = (direct.clone(), mode.clone());
            TestServer::start(move |path| match path {
                "/" => Some((200, "text/html; charset=utf-8", INDEX_HTML.to_string())),
                "/api/cluster" => match mode.load(Ordering::Relaxed) {
                    UP => Some((
                        200,
                        "application/json",
                        canned_cluster(direct.load(Ordering::Relaxed)),
                    )),
                    EXPIRED => Some((401, "text/plain", "session expired".to_string())),
                    _ => None,
                },
                _ => Some((404, "text/plain", "not found".to_string())),
            })
        };
        let started = Instant::now();
        let b = Browser::launch(None)?;
        b.navigate(&server.url("/"))?;
        b.wait_for(
            "document.body.dataset.ready === '1'",
            Duration::from_secs(10),
        )?;
        assert_eq!(b.eval("document.body.dataset.version")?, "17");

        let rows = b.eval(
            "[...document.querySelectorAll('#nodes tr[data-node]')].map(r => r.dataset.node)",
        )?;
        assert_eq!(
            rows,
            json!([HOSTILE, "h1", "h2"]),
            "node rows, sorted by name"
        );

        let cell = "document.querySelector('#paths td[data-from=\"h1\"][data-to=\"h2\"]')";
        let relay = b.eval(&format!("(c => ({{path: c.dataset.path, class: c.className, title: c.title, text: c.textContent}}))({cell})"))?;
        assert_eq!(relay["path"], "relay", "{relay}");
        assert!(
            relay["class"]
                .as_str()
                .unwrap_or("")
                .split(' ')
                .any(|c| c == "path-relay"),
            "{relay}"
        );
        assert!(
            relay["title"].as_str().unwrap_or("").contains(RELAY_REASON),
            "{relay}"
        );
        assert!(
            relay["text"].as_str().unwrap_or("").contains(RELAY_REASON),
            "{relay}"
        );

        // Every cell of the 3x3 matrix, by (from, to).
        let cells = b.eval(
            "Object.fromEntries([...document.querySelectorAll('#paths td')].map(c => [c.dataset.from + ' > ' + c.dataset.to, c.dataset.path]))",
        )?;
        let expect = json!({
            "h1 > h1": "self", "h1 > h2": "relay", format!("h1 > {HOSTILE}"): "unknown",
            "h2 > h1": "direct", "h2 > h2": "self", format!("h2 > {HOSTILE}"): "none",
            format!("{HOSTILE} > h1"): "unknown", format!("{HOSTILE} > h2"): "none", format!("{HOSTILE} > {HOSTILE}"): "self",
        });
        assert_eq!(cells, expect);

        // The hostile name is text, everywhere it appears.
        assert_eq!(b.eval("document.querySelectorAll('img').length")?, 0);
        let text = b.eval("document.body.textContent")?;
        assert!(
            text.as_str().unwrap_or("").matches(HOSTILE).count() >= 5,
            "{text}"
        );
        let policy = b.eval("document.getElementById('policy').textContent")?;
        assert!(
            policy.as_str().unwrap_or("").contains("version 3"),
            "{policy}"
        );

        b.screenshot(&artifact_dir().join("cluster-page.png"))?;

        direct.store(true, Ordering::Relaxed);
        b.wait_for(
            &format!("{cell}.dataset.path === 'direct'"),
            Duration::from_secs(5),
        )?;
        assert_eq!(b.eval(&format!("{cell}.className"))?, "path-direct");
        assert_eq!(b.eval("document.body.dataset.version")?, "18");
        assert!(b.page_errors().is_empty(), "{:?}", b.page_errors());

        mode.store(EXPIRED, Ordering::Relaxed);
        b.wait_for(
            "!document.getElementById('banner').hidden && document.getElementById('banner').textContent.includes('Session expired: run `weft web-url`')",
            Duration::from_secs(5),
        )?;
        mode.store(DOWN, Ordering::Relaxed);
        b.wait_for(
            "document.getElementById('banner').textContent.includes('coordinator unreachable, retrying')",
            Duration::from_secs(5),
        )?;
        // The last render stays up (dimmed) while the coordinator is away.
        assert_eq!(
            b.eval("document.querySelectorAll('#nodes tr[data-node]').length")?,
            3
        );
        mode.store(UP, Ordering::Relaxed);
        b.wait_for(
            "document.getElementById('banner').hidden",
            Duration::from_secs(5),
        )?;

        // Nothing but this server was asked for anything (no favicon either).
        let origin = server.url("/");
        let requests = b.requests();
        let outside: Vec<&String> = requests
            .iter()
            .filter(|u| !u.starts_with(&origin))
            .collect();
        assert!(outside.is_empty(), "requests elsewhere: {outside:?}");
        assert!(
            !requests.iter().any(|u| u.contains("favicon")),
            "{requests:?}"
        );
        assert!(
            requests
                .iter()
                .filter(|u| u.ends_with("/api/cluster"))
                .count()
                >= 3,
            "{requests:?}"
        );
        eprintln!("cluster page test took {:?}", started.elapsed());
        Ok(())
    }

    #[test]
    fn launches_inside_a_network_namespace() -> anyhow::Result<()> {
        if !crate::require_root() || !crate::require_tools(&[CHROMIUM], "chromium") {
            return Ok(());
        }
        let lab = crate::Lab::new("brw");
        let ns = lab.netns("b");
        // 127.0.0.1 inside the namespace: only a browser in there reaches it.
        let listener = crate::in_netns(&ns, || TcpListener::bind("127.0.0.1:0"))
            .join()
            .expect("bind thread")?;
        let server = TestServer::start_on(listener, |_| {
            Some((200, "text/html", SELFTEST_PAGE.to_string()))
        });
        let b = Browser::launch(Some(&ns))?;
        // `ip netns exec` and Debian's wrapper both exec: the pid is the browser's.
        let exe = std::fs::read_link(format!("/proc/{}/exe", b.pid()))?;
        assert!(exe.ends_with("chromium"), "{}", exe.display());
        b.navigate(&server.url("/"))?;
        b.wait_for(
            "document.getElementById('x').dataset.state === 'after'",
            Duration::from_secs(5),
        )?;
        drop(b);
        Ok(())
    }

    #[test]
    fn a_browser_that_dies_is_an_error_not_a_hang() -> anyhow::Result<()> {
        if !crate::require_tools(&[CHROMIUM], "chromium") {
            return Ok(());
        }
        let b = Browser::launch(None)?;
        assert_eq!(b.eval("6 * 7")?, 42);
        // SAFETY: kill on the pid of the child this test just started.
        unsafe { libc::kill(b.pid() as libc::pid_t, libc::SIGKILL) };
        let started = Instant::now();
        let err = b.wait_for("false", Duration::from_secs(10)).unwrap_err();
        assert!(
            format!("{err:#}").contains("closed the DevTools pipe"),
            "{err:#}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert!(b.navigate("about:blank").is_err());
        assert!(b.screenshot(&artifact_dir().join("never.png")).is_err());
        drop(b);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "drop took {:?}",
            started.elapsed()
        );
        Ok(())
    }

    #[test]
    fn base64_and_truthiness() {
        assert_eq!(base64_decode("aGVsbG8gd2VmdA==").unwrap(), b"hello weft");
        assert_eq!(base64_decode("aGVsbG8gd2VmdA").unwrap(), b"hello weft");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert_eq!(base64_decode("+/8=").unwrap(), [0xfb, 0xff]);
        assert!(base64_decode("a*b").is_err());
        for v in [json!(null), json!(false), json!(0), json!(0.0), json!("")] {
            assert!(!truthy(&v), "{v}");
        }
        for v in [json!(true), json!(1), json!("x"), json!([]), json!({})] {
            assert!(truthy(&v), "{v}");
        }
    }
}
