//! The HTTP side: hyper on a unix socket, one request at a time into
//! [`Plugin::dispatch`], bounded in size, time and connections.

use std::convert::Infallible;
use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Semaphore;

use super::wire::{PluginError, CONTENT_TYPE};
use super::Plugin;

/// Largest request body; Docker's are a few hundred bytes.
pub const MAX_BODY: usize = 1 << 20;
/// How long a client may take to send a request's headers, or its body.
const READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 64;

/// Serves `socket` until SIGTERM or SIGINT, then removes it.
pub async fn serve(socket: PathBuf, plugin: Plugin) -> anyhow::Result<()> {
    let listener = bind(&socket)?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tracing::info!(socket = %socket.display(), "docker plugin listening");
    weft_mesh::agent::tell_service_manager(&[sd_notify::NotifyState::Ready]);
    let plugin = Arc::new(Mutex::new(plugin));
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        // A lasting error (out of fds) must not spin.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!("too many connections; closing one");
                    continue;
                };
                let plugin = plugin.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(req, plugin.clone()));
                    let conn = http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(READ_TIMEOUT)
                        .serve_connection(TokioIo::new(stream), service);
                    if let Err(e) = conn.await {
                        tracing::debug!("connection ended: {e}");
                    }
                    drop(slot);
                });
            }
        }
    }
    let _ = std::fs::remove_file(&socket);
    tracing::info!(socket = %socket.display(), "docker plugin stopped");
    Ok(())
}

/// Binds `socket` (mode 0600), replacing a stale socket but not a live one.
fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    match std::fs::symlink_metadata(socket) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                anyhow::bail!(
                    "another plugin is serving {}; stop it first (or pass another --socket)",
                    socket.display()
                );
            }
            std::fs::remove_file(socket).map_err(|e| {
                anyhow::anyhow!("cannot remove the stale {}: {e}", socket.display())
            })?;
        }
        Ok(_) => anyhow::bail!(
            "{} exists and is not a socket; remove it or pass another --socket",
            socket.display()
        ),
        Err(_) => {}
    }
    let listener = UnixListener::bind(socket)
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", socket.display()))?;
    // Only root (dockerd) may talk to the plugin.
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

async fn handle(
    req: Request<Incoming>,
    plugin: Arc<Mutex<Plugin>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::POST {
        return Ok(error(
            StatusCode::METHOD_NOT_ALLOWED,
            "plugin calls are POSTs",
        ));
    }
    let method = req.uri().path().trim_start_matches('/').to_string();
    let body = Limited::new(req.into_body(), MAX_BODY).collect();
    let body = match tokio::time::timeout(READ_TIMEOUT, body).await {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(e)) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return Ok(if too_big {
                error(StatusCode::PAYLOAD_TOO_LARGE, "request body over 1 MiB")
            } else {
                error(
                    StatusCode::BAD_REQUEST,
                    &format!("cannot read the request: {e}"),
                )
            });
        }
        Err(_) => return Ok(error(StatusCode::REQUEST_TIMEOUT, "request body too slow")),
    };
    tracing::debug!(method, bytes = body.len(), "request");
    let name = method.clone();
    // Handlers run host-local and `ip`: off the async thread, one at a time.
    let reply = tokio::task::spawn_blocking(move || {
        plugin
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .dispatch(&method, &body)
    })
    .await;
    Ok(match reply {
        Ok(Some(Ok(v))) => respond(StatusCode::OK, &v),
        Ok(Some(Err(e))) => {
            tracing::warn!(method = name, "{e}");
            respond(StatusCode::INTERNAL_SERVER_ERROR, &e.to_json())
        }
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            &format!("unknown plugin call {name:?}: this is weft's network and IPAM driver"),
        ),
        Err(e) => {
            tracing::error!(method = name, "handler failed: {e}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error; see the plugin's log",
            )
        }
    })
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    respond(status, &PluginError::new(msg).to_json())
}

fn respond(status: StatusCode, v: &Value) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(v.to_string())));
    *res.status_mut() = status;
    res.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(CONTENT_TYPE),
    );
    res
}
