//! The agent's local API: one JSON request and one JSON reply per line over
//! a unix socket (mode 0600) in the state directory. `weft status` and the
//! other local commands find their agent through it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::status::Status;

/// A request to the local API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApiRequest {
    Status,
    /// Probe a peer (a node name, or an address in its subnet) on its
    /// current path.
    Ping {
        peer: String,
    },
    Netcheck,
    /// Offer routes to these networks (the whole list; empty withdraws).
    AdvertiseRoutes {
        routes: Vec<weft_proto::policy::Cidr>,
    },
    /// Leave the cluster (`weft down`): the coordinator removes this node,
    /// the agent forgets its identity and stops.
    Leave,
    /// The Prometheus metrics text (`weft metrics`).
    Metrics,
}

/// A reply from the local API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ApiReply {
    Status(Box<Status>),
    Pong {
        peer: String,
        address: String,
        pong: super::traversal::PingReply,
    },
    Netcheck(super::traversal::netcheck::NetcheckReport),
    /// The routes now advertised.
    Routes {
        routes: Vec<weft_proto::policy::Cidr>,
    },
    /// The node left the cluster; the agent is stopping.
    Left {
        name: String,
    },
    Metrics {
        text: String,
    },
    Error {
        message: String,
    },
}

/// Answers one request (the handler an agent's [`ApiServer`] runs).
pub type Handler = Arc<
    dyn Fn(ApiRequest) -> std::pin::Pin<Box<dyn std::future::Future<Output = ApiReply> + Send>>
        + Send
        + Sync,
>;

/// The agent's answer to `req`.
pub async fn answer(
    shared: &super::Shared,
    handle: &crate::dataplane::DeviceHandle,
    req: ApiRequest,
) -> ApiReply {
    match req {
        ApiRequest::Status => ApiReply::Status(Box::new(shared.status(handle))),
        ApiRequest::Netcheck => {
            let mut r = shared.traversal.netcheck.borrow().clone();
            r.coordinator_rtt_ms = shared
                .traversal
                .link
                .connection()
                .and_then(|c| c.rtt())
                .map(|r| r.as_secs_f64() * 1000.0);
            ApiReply::Netcheck(r)
        }
        ApiRequest::Metrics => ApiReply::Metrics {
            text: shared.metrics(handle),
        },
        ApiRequest::Leave => {
            if !shared.view().connected {
                return ApiReply::Error {
                    message: "not connected to the coordinator, so this node cannot leave now \
                              (it would stay registered); retry once `weft status` shows it \
                              connected, or remove it at the coordinator with `weft node remove`"
                        .into(),
                };
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            if shared.leave.send(tx).await.is_err() {
                return ApiReply::Error {
                    message: "the agent is shutting down".into(),
                };
            }
            match rx.await {
                Ok(Ok(())) => ApiReply::Left {
                    name: shared.identity().name,
                },
                Ok(Err(message)) => ApiReply::Error { message },
                Err(_) => ApiReply::Error {
                    message: "the agent stopped before the coordinator confirmed".into(),
                },
            }
        }
        ApiRequest::AdvertiseRoutes { mut routes } => {
            routes.sort();
            routes.dedup();
            match shared.state.save_advertised_routes(&routes) {
                Ok(()) => {
                    shared.routes_changed.notify_one();
                    ApiReply::Routes { routes }
                }
                Err(e) => ApiReply::Error {
                    message: e.to_string(),
                },
            }
        }
        ApiRequest::Ping { peer } => {
            let netmap = shared.netmap();
            let ip: Option<std::net::Ipv4Addr> = peer.parse().ok();
            let found = netmap.peers().find(|p| {
                p.name == peer
                    || ip.is_some_and(|ip| {
                        weft_proto::HostSubnet {
                            addr: ip,
                            prefix_len: 32,
                        }
                        .overlaps(&p.subnet)
                    })
            });
            let Some(p) = found else {
                return ApiReply::Error {
                    message: format!(
                        "no peer named {peer} or owning that address; `weft status` lists the peers"
                    ),
                };
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            let sent = shared
                .traversal
                .requests
                .send(super::traversal::Request::Ping {
                    node: p.id,
                    reply: tx,
                })
                .await;
            if sent.is_err() {
                return ApiReply::Error {
                    message: "the agent is shutting down".into(),
                };
            }
            match tokio::time::timeout(Duration::from_secs(2), rx).await {
                Ok(Ok(reply)) => ApiReply::Pong {
                    peer: p.name.clone(),
                    address: p.subnet.host_addr().to_string(),
                    pong: reply,
                },
                _ => ApiReply::Error {
                    message: format!("no pong from {} within 2 s", p.name),
                },
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no weft agent is running with state dir {dir} (no socket at {socket}); start one with `weft join TOKEN` or `weft up`, or pass the right --state-dir")]
    NotRunning { dir: String, socket: String },
    #[error("another weft agent already serves {0}; stop it first or use another --state-dir")]
    InUse(PathBuf),
    #[error("local API at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("local API answered something unreadable: {0}")]
    BadReply(String),
    #[error("{0}")]
    Agent(String),
}

/// Serves the local API until dropped (the socket file is removed then).
pub struct ApiServer {
    path: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl ApiServer {
    /// Binds the socket; `handler` answers each request.
    pub fn start(path: &Path, handler: Handler) -> Result<ApiServer, ApiError> {
        let io = |source| ApiError::Io {
            path: path.to_path_buf(),
            source,
        };
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ApiError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        let std_listener = crate::private_socket::bind(path).map_err(io)?;
        std_listener.set_nonblocking(true).map_err(io)?;
        let listener = UnixListener::from_std(std_listener).map_err(io)?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let handler = handler.clone();
                tokio::spawn(async move {
                    if let Err(e) = serve(stream, handler).await {
                        tracing::debug!(error = %e, "local API client went away");
                    }
                });
            }
        });
        Ok(ApiServer {
            path: path.to_path_buf(),
            task,
        })
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.task.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(stream: UnixStream, handler: Handler) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<ApiRequest>(&line) {
            Ok(req) => handler(req).await,
            Err(e) => ApiReply::Error {
                message: format!("bad request: {e}"),
            },
        };
        let mut bytes = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        w.write_all(&bytes).await?;
    }
    Ok(())
}

/// Sends one request to the agent serving `state_dir` and waits for the
/// reply (blocking; for the CLI).
pub fn request(state_dir: &Path, req: &ApiRequest) -> Result<ApiReply, ApiError> {
    use std::io::{BufRead as _, Write as _};
    let path = state_dir.join(super::state::API_SOCKET);
    let io = |source| ApiError::Io {
        path: path.clone(),
        source,
    };
    let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ApiError::NotRunning {
                dir: state_dir.display().to_string(),
                socket: path.display().to_string(),
            })
        }
        Err(e) => return Err(io(e)),
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(io)?;
    let mut line = serde_json::to_vec(req).map_err(|e| ApiError::BadReply(e.to_string()))?;
    line.push(b'\n');
    stream.write_all(&line).map_err(io)?;
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(io)?;
    match serde_json::from_str(&reply).map_err(|e| ApiError::BadReply(e.to_string()))? {
        ApiReply::Error { message } => Err(ApiError::Agent(message)),
        ok => Ok(ok),
    }
}
