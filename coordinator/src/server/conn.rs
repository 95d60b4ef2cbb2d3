//! One connection: the hello, the key proof, and dispatch to a host session
//! or an admin command.

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};

use super::admin_ops::admin;
use super::admission::loggable;
use super::link::{FrameSink, Link};
use super::session::session;
use super::view;
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
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("timed out")]
    Timeout,
    #[error("refused: {0:?}")]
    Refused(ErrorCode),
    #[error("frame of {0} bytes is larger than allowed here")]
    TooLarge(usize),
}

pub(super) async fn read_frame<T: serde::de::DeserializeOwned, R: AsyncRead + Unpin>(
    recv: &mut R,
) -> Result<T, ConnError> {
    read_frame_within(recv, codec::MAX_FRAME_LEN).await
}

/// [`read_frame`] of a frame of at most `max` bytes (a hello, from a
/// stranger, gets [`MAX_HELLO`]).
async fn read_frame_within<T: serde::de::DeserializeOwned, R: AsyncRead + Unpin>(
    recv: &mut R,
    max: usize,
) -> Result<T, ConnError> {
    let mut header = [0u8; codec::HEADER_LEN];
    recv.read_exact(&mut header).await?;
    let len = codec::frame_len(header)?;
    if len > max {
        return Err(ConnError::TooLarge(len));
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(codec::decode(&body)?)
}

pub(super) async fn write_msg<T: Serialize, W: AsyncWrite + Unpin>(
    send: &mut W,
    msg: &T,
) -> Result<(), ConnError> {
    let frame = codec::encode(msg)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Sends a refusal, waits (briefly) until the client has it, and ends.
pub(super) async fn refuse_and_close<W: FrameSink>(mut send: W, reply: ErrorReply) -> ConnError {
    let code = reply.code;
    if write_msg(&mut send, &ServerMsg::Error(reply)).await.is_ok() {
        send.finish().await;
    }
    ConnError::Refused(code)
}

pub(super) async fn serve(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    pass: super::admission::Pass,
    keepalive: std::time::Duration,
) -> Result<(), ConnError> {
    let (send, mut recv) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi())
        .await
        .map_err(|_| ConnError::Timeout)??;
    let hello: Hello = read_hello(&shared, &mut recv).await?;
    drop(pass);
    let remote = conn.remote_address().ip();
    let exporter = |key: &WgPublicKey| quic_exporter(&conn, key);
    if let HelloRequest::Admin(req) = hello.request {
        return admin(shared, send, req).await;
    }
    dispatch(
        shared,
        (Link::Quic(conn.clone(), keepalive), remote),
        None,
        send,
        recv,
        hello,
        exporter,
    )
    .await
}

/// The hello, within [`HELLO_TIMEOUT`] and [`MAX_HELLO`] bytes; a late or
/// malformed one is counted as refused.
async fn read_hello<R: AsyncRead + Unpin>(
    shared: &Shared,
    recv: &mut R,
) -> Result<Hello, ConnError> {
    let read = tokio::time::timeout(HELLO_TIMEOUT, read_frame_within(recv, MAX_HELLO)).await;
    match read {
        Ok(Ok(h)) => Ok(h),
        Ok(Err(e)) => {
            shared.metrics.refused(Refusal::BadFrame);
            Err(e)
        }
        Err(_) => {
            shared.metrics.refused(Refusal::Handshake);
            Err(ConnError::Timeout)
        }
    }
}

/// Serves one TLS-over-TCP connection: a host whose UDP is blocked.
pub(super) async fn serve_tcp(
    shared: Arc<Shared>,
    mut tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    pass: super::admission::Pass,
    remote: SocketAddr,
) -> Result<(), ConnError> {
    let hello: Hello = read_hello(&shared, &mut tls).await?;
    drop(pass);
    // The exporter needs the TLS session, so take it before splitting.
    let exported = match &hello.request {
        HelloRequest::Join(j) => tls_exporter(tls.get_ref().1, &j.public_key),
        HelloRequest::Resume(r) => tls_exporter(tls.get_ref().1, &r.public_key),
        _ => None,
    };
    let (recv, send) = tokio::io::split(tls);
    if matches!(hello.request, HelloRequest::Admin(_)) {
        return Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::BadRequest,
                "admin commands are served over QUIC only; run them where UDP to the coordinator works",
            ),
        )
        .await);
    }
    let (link, inbox) = super::link::tcp_link();
    dispatch(
        shared,
        (link, remote.ip()),
        Some(inbox),
        send,
        recv,
        hello,
        |_| exported,
    )
    .await
}

/// The TLS exporter of a server-side TCP connection, keyed like QUIC's.
fn tls_exporter(conn: &rustls::ServerConnection, key: &WgPublicKey) -> Option<[u8; 32]> {
    conn.export_keying_material([0u8; 32], EXPORTER_LABEL, Some(&key.0))
        .ok()
}

fn quic_exporter(conn: &quinn::Connection, key: &WgPublicKey) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, &key.0)
        .ok()
        .map(|()| out)
}

/// Joins or resumes a host session on any link.
async fn dispatch<S: FrameSink, R: AsyncRead + Unpin + Send>(
    shared: Arc<Shared>,
    (link, remote): (Link, std::net::IpAddr),
    inbox: Option<super::link::TcpInbox>,
    send: S,
    recv: R,
    hello: Hello,
    exporter: impl Fn(&WgPublicKey) -> Option<[u8; 32]>,
) -> Result<(), ConnError> {
    let version = hello.protocol_version;
    if let Err(line) = weft_proto::check_version(version) {
        shared
            .metrics
            .refused(Refusal::Code(ErrorCode::VersionMismatch));
        return Err(refuse_and_close(send, refuse(ErrorCode::VersionMismatch, line)).await);
    }
    match hello.request {
        HelloRequest::Join(req) => {
            if !shared
                .joins
                .allow(remote, &req.token_id, std::time::Instant::now())
            {
                debug!(%remote, token = %loggable(&req.token_id), "join rate-limited");
                shared.metrics.join(Err(ErrorCode::RateLimited));
                return Err(refuse_and_close(
                    send,
                    refuse(
                        ErrorCode::RateLimited,
                        "too many join attempts from this address or with this token; wait a few seconds and try again",
                    ),
                )
                .await);
            }
            if !proof_ok(
                &shared,
                exporter(&req.public_key),
                &req.public_key,
                &req.proof,
            ) {
                shared
                    .joins
                    .failed(remote, &req.token_id, std::time::Instant::now());
                shared.metrics.join(Err(ErrorCode::ProofFailed));
                return Err(refuse_and_close(send, proof_failed()).await);
            }
            let args = JoinArgs {
                token_id: req.token_id.clone(),
                token_secret: req.token_secret,
                public_key: req.public_key,
                hostname: req.hostname.clone(),
                now: now_unix(),
            };
            // An expired node with this key, which the join replaces.
            let expired = {
                let reg = shared.read();
                reg.retired_by_key(&req.public_key)
                    .and_then(|id| reg.retired(id).map(|r| r.peer.clone()))
            };
            match shared.store.join(args).await {
                Ok(rec) => {
                    shared.metrics.join(Ok(()));
                    if let Some(old) = expired.filter(|o| shared.read().retired(o.id).is_none()) {
                        // Its services and routes go with it.
                        let why = "replaced by a new join with its key";
                        super::admin_ops::forget_removed(&shared, old.id, &old, why).await;
                    }
                    info!(node = %rec.id, name = %rec.name, subnet = %rec.subnet, token = %rec.token_id, "node joined");
                    session(
                        shared,
                        link,
                        inbox,
                        send,
                        recv,
                        rec.id,
                        req.endpoints,
                        view::Have::default(),
                        version,
                    )
                    .await
                }
                Err(e) => {
                    // Guesses (an unknown id, a wrong secret) use up the
                    // allowance; a real token that is used up does not.
                    if e.code == ErrorCode::TokenInvalid {
                        shared
                            .joins
                            .failed(remote, &req.token_id, std::time::Instant::now());
                    }
                    info!(token = %loggable(&req.token_id), code = ?e.code, "join refused");
                    shared.metrics.join(Err(e.code));
                    Err(refuse_and_close(send, e).await)
                }
            }
        }
        HelloRequest::Resume(req) => {
            if !proof_ok(
                &shared,
                exporter(&req.public_key),
                &req.public_key,
                &req.proof,
            ) {
                shared
                    .metrics
                    .refused(Refusal::Code(ErrorCode::ProofFailed));
                return Err(refuse_and_close(send, proof_failed()).await);
            }
            let mut id = shared.read().by_key(&req.public_key);
            if id.is_none() && shared.replica.is_some() {
                // A host that joined on another replica a moment ago, and
                // failed over before this replica's watch brought it here.
                super::replica::catch_up(&shared).await;
                id = shared.read().by_key(&req.public_key);
            }
            let Some(id) = id else {
                shared
                    .metrics
                    .refused(Refusal::Code(ErrorCode::NotRegistered));
                let expired = {
                    let reg = shared.read();
                    reg.retired_by_key(&req.public_key)
                        .and_then(|id| reg.retired(id).map(|r| (r.peer.name.clone(), id)))
                };
                let reply = match expired {
                    Some((name, id)) => super::expiry_sweep::expired_reply(&name, id),
                    None => not_registered(),
                };
                return Err(refuse_and_close(send, reply).await);
            };
            let have = view::Have {
                epoch: req.have_epoch,
                version: req.have_version,
                view: req.have_view,
                digest: req.have_digest,
            };
            session(
                shared,
                link,
                inbox,
                send,
                recv,
                id,
                req.endpoints,
                have,
                version,
            )
            .await
        }
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
    exporter: Option<[u8; 32]>,
    key: &WgPublicKey,
    proof: &[u8; 32],
) -> bool {
    let Some(exporter) = exporter else {
        return false;
    };
    let shared_secret = shared.secret.diffie_hellman(&PublicKey::from(key.0));
    if !shared_secret.was_contributory() {
        return false;
    }
    verify_key_proof(shared_secret.as_bytes(), &exporter, &key.0, proof)
}
