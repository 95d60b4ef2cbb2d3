//! The UAPI unix socket, `/var/run/wireguard/<iface>.sock`, served on one
//! thread. Requests are small and rare; each connection is served in turn
//! with a read timeout so a stuck client cannot wedge the socket.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use super::protocol::{format_errno, format_get, parse_set, UapiError};
use crate::dataplane::wake::{self, Ready, WakeFd};
use crate::dataplane::DeviceHandle;

/// Where `wg` looks for userspace interfaces.
pub const SOCKET_DIR: &str = "/var/run/wireguard";

/// Longest accepted line and request, so a client cannot exhaust memory.
const MAX_LINE: usize = 4096;
const MAX_REQUEST_LINES: usize = 100_000;

/// Why the UAPI socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum UapiServerError {
    #[error("cannot create {path}: {source}; run as root or pick another socket directory")]
    Create { path: PathBuf, source: io::Error },
    #[error("another process already serves {path}; stop it (or pick another interface name)")]
    InUse { path: PathBuf },
}

/// A running UAPI server; dropping it stops it and removes the socket.
pub struct UapiServer {
    path: PathBuf,
    stop: std::sync::Arc<WakeFd>,
    thread: Option<JoinHandle<()>>,
}

/// The socket path for an interface name.
pub fn socket_path(dir: &Path, iface: &str) -> PathBuf {
    dir.join(format!("{iface}.sock"))
}

impl UapiServer {
    /// Opens `<dir>/<iface>.sock` and serves `device` on it.
    pub fn start(dir: &Path, device: DeviceHandle) -> Result<UapiServer, UapiServerError> {
        let path = socket_path(dir, device.name());
        let create = |source| UapiServerError::Create {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(create)?;
        if path.exists() {
            // A live server answers; a stale socket from a crash does not.
            if UnixStream::connect(&path).is_ok() {
                return Err(UapiServerError::InUse { path });
            }
            std::fs::remove_file(&path).map_err(create)?;
        }
        let listener = crate::private_socket::bind(&path).map_err(create)?;
        listener.set_nonblocking(true).map_err(create)?;
        let stop = std::sync::Arc::new(WakeFd::new().map_err(create)?);
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name(format!("uapi-{}", device.name()))
            .spawn(move || serve(listener, device, &stop2))
            .map_err(create)?;
        Ok(UapiServer {
            path,
            stop,
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for UapiServer {
    fn drop(&mut self) {
        self.stop.signal();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

fn serve(listener: UnixListener, device: DeviceHandle, stop: &WakeFd) {
    loop {
        match wake::wait(
            Some(listener.as_raw_fd()),
            libc::POLLIN,
            &[stop, device.stop_fd()],
            -1,
        ) {
            Ok(Ready::Woken(_)) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(error = %e, "UAPI socket wait failed; UAPI stopped");
                return;
            }
        }
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = handle_connection(stream, &device) {
                    tracing::debug!(error = %e, "UAPI connection ended");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => tracing::debug!(error = %e, "UAPI accept failed"),
        }
    }
}

/// Serves requests on one connection until the client closes it.
pub fn handle_connection(stream: UnixStream, device: &DeviceHandle) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(first) = read_line(&mut reader)? else {
            return Ok(());
        };
        let answer = match first.as_str() {
            "get=1" => {
                // The request ends with an empty line.
                match read_line(&mut reader)? {
                    Some(l) if l.is_empty() => format_get(&device.snapshot()),
                    _ => format_errno(&Err(UapiError::protocol(
                        "get=1 must be followed by an empty line",
                    ))),
                }
            }
            "set=1" => {
                let mut lines = Vec::new();
                let mut overflow = false;
                loop {
                    match read_line(&mut reader)? {
                        None => return Ok(()),
                        Some(l) if l.is_empty() => break,
                        Some(l) => {
                            if lines.len() < MAX_REQUEST_LINES {
                                lines.push(l);
                            } else {
                                overflow = true;
                            }
                        }
                    }
                }
                let result = if overflow {
                    Err(UapiError::protocol("request too long"))
                } else {
                    parse_set(lines.iter().map(String::as_str))
                        .and_then(|update| device.apply(&update))
                };
                if let Err(e) = &result {
                    tracing::warn!(interface = device.name(), "UAPI set refused: {e}");
                }
                format_errno(&result)
            }
            "" => continue,
            _ => {
                let e = Err(UapiError::protocol(
                    "unknown operation (expected get=1 or set=1)",
                ));
                writer.write_all(format_errno(&e).as_bytes())?;
                return Ok(());
            }
        };
        writer.write_all(answer.as_bytes())?;
    }
}

/// One line without its newline; `None` at end of stream. Lines longer than
/// [`MAX_LINE`] are an error (and end the connection).
fn read_line<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r
        .by_ref()
        .take(MAX_LINE as u64 + 1)
        .read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if n > MAX_LINE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "UAPI line too long",
        ));
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "UAPI line is not UTF-8"))
}
