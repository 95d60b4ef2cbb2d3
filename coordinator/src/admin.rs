//! The admin credential (a small JSON file, like a kubeconfig) and the client
//! side of admin commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weft_proto::msg::{
    AdminCommand, AdminReply, AdminRequest, BackupBytes, ErrorCode, Hello, HelloRequest, ServerMsg,
};
use weft_proto::{codec, PROTOCOL_VERSION};

use crate::CoordinatorError;

/// Environment variable naming the admin credential file.
pub const ADMIN_ENV: &str = "WEFT_ADMIN";

/// What an admin tool needs to reach and authenticate to a coordinator.
#[derive(Clone, Serialize, Deserialize)]
pub struct AdminCredential {
    /// Coordinator addresses, `host:port`, tried in order.
    pub coordinator: Vec<String>,
    /// Hex SHA-256 pin of the coordinator's TLS public key.
    pub pin: String,
    /// Hex admin secret.
    pub secret: String,
    /// `host:port` of the coordinator's web page, when it serves one
    /// (`--web-listen`); `weft web-url` links there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web: Option<String>,
}

impl std::fmt::Debug for AdminCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminCredential")
            .field("coordinator", &self.coordinator)
            .field("pin", &self.pin)
            .finish_non_exhaustive()
    }
}

/// Why an admin command failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot read the admin credential {path}: {reason}; pass --admin FILE or set WEFT_ADMIN to the admin.json in the coordinator's state dir")]
    Credential { path: String, reason: String },
    #[error("coordinator identity does not match the admin credential; the coordinator at {addr} is not the one this admin.json was made for")]
    IdentityMismatch { addr: String },
    #[error("cannot reach the coordinator at {addrs}: {reason}; check that `weft coordinator` is running and the address in the admin credential is right")]
    Unreachable { addrs: String, reason: String },
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    #[error("protocol error talking to the coordinator: {0}")]
    Protocol(String),
}

impl AdminCredential {
    pub fn load(path: &Path) -> Result<Self, AdminError> {
        let err = |reason: String| AdminError::Credential {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    }

    /// Writes the credential with mode 0600.
    pub fn save(&self, path: &Path) -> Result<(), CoordinatorError> {
        let text = serde_json::to_string_pretty(self).unwrap_or_default();
        crate::state::write_private(path, text.as_bytes())
    }

    /// Where to find the credential: the explicit path, else `WEFT_ADMIN`,
    /// else the default state dir.
    pub fn locate(explicit: Option<&Path>) -> PathBuf {
        if let Some(p) = explicit {
            return p.to_path_buf();
        }
        if let Some(p) = std::env::var_os(ADMIN_ENV) {
            return PathBuf::from(p);
        }
        Path::new(crate::DEFAULT_STATE_DIR).join(crate::state::ADMIN_FILE)
    }

    fn bytes32(&self, field: &str, hex_str: &str) -> Result<[u8; 32], AdminError> {
        hex::decode(hex_str)
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| AdminError::Credential {
                path: "(admin credential)".into(),
                reason: format!("field `{field}` is not 32 hex-encoded bytes"),
            })
    }

    /// Sends one admin command and returns the reply.
    pub async fn request(&self, command: AdminCommand) -> Result<AdminReply, AdminError> {
        let pin = self.bytes32("pin", &self.pin)?;
        let secret = self.bytes32("secret", &self.secret)?;
        let (tls, outcome) = weft_proto::tls::pinned_client_config(pin)
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let qcfg = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| AdminError::Protocol(e.to_string()))?;
        let client_cfg = quinn::ClientConfig::new(Arc::new(qcfg));
        let all = self.coordinator.join(", ");
        let mut last = String::from("no address in the credential");
        for addr in &self.coordinator {
            let resolved = match tokio::net::lookup_host(addr.as_str()).await {
                Ok(mut it) => it.next(),
                Err(e) => {
                    last = format!("{addr}: {e}");
                    continue;
                }
            };
            let Some(sa) = resolved else { continue };
            let bind: std::net::SocketAddr = if sa.is_ipv4() {
                ([0, 0, 0, 0], 0).into()
            } else {
                ([0u16; 8], 0).into()
            };
            let endpoint = quinn::Endpoint::client(bind).map_err(|e| AdminError::Unreachable {
                addrs: all.clone(),
                reason: e.to_string(),
            })?;
            let connecting =
                match endpoint.connect_with(client_cfg.clone(), sa, weft_proto::SERVER_NAME) {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        continue;
                    }
                };
            let conn = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    if outcome.mismatched_pin().is_some() {
                        return Err(AdminError::IdentityMismatch { addr: addr.clone() });
                    }
                    last = format!("{addr}: {e}");
                    continue;
                }
                Err(_) => {
                    last = format!("{addr}: timed out");
                    continue;
                }
            };
            let res = exchange(&conn, secret, command.clone()).await;
            conn.close(0u32.into(), b"done");
            endpoint.wait_idle().await;
            return res;
        }
        Err(AdminError::Unreachable {
            addrs: all,
            reason: last,
        })
    }
}

async fn exchange(
    conn: &quinn::Connection,
    secret: [u8; 32],
    command: AdminCommand,
) -> Result<AdminReply, AdminError> {
    let proto = |e: &dyn std::fmt::Display| AdminError::Protocol(e.to_string());
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| proto(&e))?;
    // The version the handshake chose: an admin of this version speaks to
    // a coordinator one version older too.
    let chosen = conn
        .handshake_data()
        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|d| d.protocol);
    let protocol_version = weft_proto::negotiated_version(chosen.as_deref(), PROTOCOL_VERSION);
    let hello = Hello {
        protocol_version,
        request: HelloRequest::Admin(AdminRequest { secret, command }),
    };
    let frame = codec::encode(&hello).map_err(|e| proto(&e))?;
    send.write_all(&frame).await.map_err(|e| proto(&e))?;
    let _ = send.finish();
    let msg: ServerMsg = read_frame(&mut recv).await?;
    match msg {
        ServerMsg::Admin(AdminReply::BackupPart(first)) => {
            read_backup(&mut recv, first.0.into_vec()).await
        }
        ServerMsg::Admin(r) => Ok(r),
        ServerMsg::Error(e) => Err(AdminError::Refused {
            code: e.code,
            message: e.message,
        }),
        other => Err(AdminError::Protocol(format!("unexpected reply {other:?}"))),
    }
}

/// The rest of a backup after its first part: every part joined into one
/// [`AdminReply::BackupPart`], checked against the closing length and
/// digest.
async fn read_backup(
    recv: &mut quinn::RecvStream,
    mut all: Vec<u8>,
) -> Result<AdminReply, AdminError> {
    loop {
        let msg: ServerMsg = read_frame(recv).await?;
        match msg {
            ServerMsg::Admin(AdminReply::BackupPart(part)) => {
                if (all.len() + part.0.len()) as u64 > crate::backup::MAX_BACKUP_LEN {
                    return Err(AdminError::Protocol(
                        "the backup is larger than 1 GiB; refusing to hold it".into(),
                    ));
                }
                all.extend_from_slice(&part.0);
            }
            ServerMsg::Admin(AdminReply::BackupDone { len, sha256 }) => {
                use sha2::Digest as _;
                let digest: [u8; 32] = sha2::Sha256::digest(&all).into();
                if len != all.len() as u64 || digest != sha256 {
                    return Err(AdminError::Protocol(
                        "the backup arrived damaged (length or SHA-256 differ); take it again"
                            .into(),
                    ));
                }
                return Ok(AdminReply::BackupPart(BackupBytes(
                    serde_bytes::ByteBuf::from(all),
                )));
            }
            ServerMsg::Error(e) => {
                return Err(AdminError::Refused {
                    code: e.code,
                    message: e.message,
                })
            }
            other => return Err(AdminError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }
}

async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, AdminError> {
    let proto = |e: &dyn std::fmt::Display| AdminError::Protocol(e.to_string());
    let mut header = [0u8; codec::HEADER_LEN];
    recv.read_exact(&mut header).await.map_err(|e| proto(&e))?;
    let len = codec::frame_len(header).map_err(|e| proto(&e))?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| proto(&e))?;
    codec::decode(&body).map_err(|e| proto(&e))
}
