//! One connection: the hello, the key proof, and dispatch to a host session
//! or an admin command.

use super::admin_ops::admin;
use super::session::session;
use super::*;

/// Why a connection ended early (for debug logs only).
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("read: {0}")]
    Read(#[from] quinn::ReadExactError),
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    #[error("codec: {0}")]
    Codec(#[from] codec::CodecError),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0:?}")]
    Refused(ErrorCode),
}

pub(super) async fn read_frame<T: serde::de::DeserializeOwned>(
    recv: &mut quinn::RecvStream,
) -> Result<T, ConnError> {
    let mut header = [0u8; codec::HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = codec::frame_len(header)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(codec::decode(&body)?)
}

pub(super) async fn write_msg<T: Serialize>(
    send: &mut quinn::SendStream,
    msg: &T,
) -> Result<(), ConnError> {
    let frame = codec::encode(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Sends a refusal, waits (briefly) until the client has it, and ends.
pub(super) async fn refuse_and_close(mut send: quinn::SendStream, reply: ErrorReply) -> ConnError {
    let code = reply.code;
    if write_msg(&mut send, &ServerMsg::Error(reply)).await.is_ok() {
        let _ = send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
    }
    ConnError::Refused(code)
}

pub(super) async fn serve(shared: Arc<Shared>, conn: quinn::Connection) -> Result<(), ConnError> {
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::Timeout)??;
    let hello: Hello = tokio::time::timeout(HELLO_TIMEOUT, read_frame(&mut recv))
        .await
        .map_err(|_| ConnError::Timeout)??;
    if hello.protocol_version != PROTOCOL_VERSION {
        return Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::VersionMismatch,
                format!(
                    "this coordinator speaks weft protocol {PROTOCOL_VERSION}, the client speaks {}; install matching weft versions",
                    hello.protocol_version
                ),
            ),
        )
        .await);
    }
    match hello.request {
        HelloRequest::Join(req) => {
            if !proof_ok(&shared, &conn, &req.public_key, &req.proof) {
                return Err(refuse_and_close(send, proof_failed()).await);
            }
            let args = JoinArgs {
                token_id: req.token_id.clone(),
                token_secret: req.token_secret,
                public_key: req.public_key,
                hostname: req.hostname.clone(),
                now: now_unix(),
            };
            match shared.store.join(args).await {
                Ok(rec) => {
                    info!(node = %rec.id, name = %rec.name, subnet = %rec.subnet, token = %rec.token_id, "node joined");
                    session(shared, conn, send, recv, rec.id, req.endpoints, 0, 0).await
                }
                Err(e) => {
                    info!(token = %req.token_id, code = ?e.code, "join refused");
                    Err(refuse_and_close(send, e).await)
                }
            }
        }
        HelloRequest::Resume(req) => {
            if !proof_ok(&shared, &conn, &req.public_key, &req.proof) {
                return Err(refuse_and_close(send, proof_failed()).await);
            }
            let Some(id) = shared.read().by_key(&req.public_key) else {
                return Err(refuse_and_close(send, not_registered()).await);
            };
            session(
                shared,
                conn,
                send,
                recv,
                id,
                req.endpoints,
                req.have_epoch,
                req.have_version,
            )
            .await
        }
        HelloRequest::Admin(req) => admin(shared, send, req).await,
        _ => Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::BadRequest,
                "unsupported request; upgrade the coordinator",
            ),
        )
        .await),
    }
}

pub(super) fn proof_failed() -> ErrorReply {
    refuse(
        ErrorCode::ProofFailed,
        "the host could not prove it holds the private key of the WireGuard public key it presented; use the key this host joined with, or join again with a new token",
    )
}

pub(super) fn not_registered() -> ErrorReply {
    refuse(
        ErrorCode::NotRegistered,
        "this host's key is not registered with the coordinator (never joined, or the node was removed); join again with a token from `weft token create`",
    )
}

/// Checks the host's key proof against this TLS session.
pub(super) fn proof_ok(
    shared: &Shared,
    conn: &quinn::Connection,
    key: &WgPublicKey,
    proof: &[u8; 32],
) -> bool {
    let mut exporter = [0u8; 32];
    if conn
        .export_keying_material(&mut exporter, EXPORTER_LABEL, &key.0)
        .is_err()
    {
        return false;
    }
    let shared_secret = shared.secret.diffie_hellman(&PublicKey::from(key.0));
    if !shared_secret.was_contributory() {
        return false;
    }
    verify_key_proof(shared_secret.as_bytes(), &exporter, &key.0, proof)
}
