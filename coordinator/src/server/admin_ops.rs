//! Admin commands: tokens and nodes (the policy, services and routes are
//! in `config_ops`).

use super::config_ops;
use super::conn::{refuse_and_close, write_msg, ConnError};
use super::*;
use crate::store::NodeRecord;
use sha2::Digest as _;
use weft_proto::msg::NodeExpiry;

pub(super) async fn create_token(
    shared: &Shared,
    uses: Option<u32>,
    expires_in_secs: Option<u64>,
    tags: Vec<String>,
    by: &str,
) -> Result<AdminReply, ErrorReply> {
    if uses == Some(0) {
        return Err(refuse(
            ErrorCode::BadRequest,
            "a token must allow at least one join; pass --uses 1 or more, or --reusable",
        ));
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut id);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let now = now_unix();
    let rec = TokenRecord {
        id: hex::encode(id),
        secret_hash: secret_hash(&secret),
        uses_left: uses,
        used: 0,
        created_at: now,
        expires_at: expires_in_secs.map(|s| now.saturating_add(s)),
        revoked: false,
        tags,
        created_by: by.to_string(),
    };
    shared.store.create_token(rec.clone()).await?;
    info!(token = %rec.id, uses = ?rec.uses_left, expires_at = ?rec.expires_at, "token created");
    let token = JoinToken {
        addrs: shared.advertise.clone(),
        pin: shared.pin,
        coordinator_key: shared.public,
        id: rec.id.clone(),
        secret,
        tcp_port: shared.tcp_port,
    };
    Ok(AdminReply::TokenCreated {
        token: token.encode(),
        info: rec.info(),
    })
}

pub(super) async fn admin(
    shared: Arc<Shared>,
    mut send: quinn::SendStream,
    req: AdminRequest,
) -> Result<(), ConnError> {
    let Some(by) = super::admin_creds::who(&shared, &req.secret) else {
        warn!("admin request with a wrong or revoked credential refused");
        return Err(refuse_and_close(
            send,
            refuse(
                ErrorCode::AdminDenied,
                "the admin credential was refused (unknown or revoked); use the admin.json from this coordinator's state dir, or one `weft admin create` made (--admin FILE or WEFT_ADMIN)",
            ),
        )
        .await);
    };
    info!(admin = %by, command = req.command.kind(), "admin request");
    if matches!(req.command, AdminCommand::Backup) {
        return backup(&shared, send).await;
    }
    let result = match req.command {
        AdminCommand::TokenCreate {
            uses,
            expires_in_secs,
            tags,
        } => create_token(&shared, uses, expires_in_secs, tags, &by).await,
        AdminCommand::TokenList => shared
            .store
            .tokens()
            .await
            .map(|t| AdminReply::Tokens(t.iter().map(|r| r.info()).collect())),
        AdminCommand::TokenRevoke { id } => shared.store.revoke_token(id.clone()).await.map(|()| {
            info!(token = %id, "token revoked");
            AdminReply::TokenRevoked { id }
        }),
        AdminCommand::NodeList => node_list(&shared).await,
        AdminCommand::NodeRemove { node } => remove_node(&shared, &node).await,
        AdminCommand::NodeSet { node, expiry } => node_set(&shared, &node, expiry).await,
        AdminCommand::AclGet => Ok(config_ops::acl_get(&shared)),
        AdminCommand::AclSet { text } => config_ops::acl_set(&shared, text, &by).await,
        AdminCommand::AdminCreate { name } => super::admin_creds::create(&shared, name, &by).await,
        AdminCommand::AdminList => Ok(super::admin_creds::list(&shared)),
        AdminCommand::AdminRevoke { name } => super::admin_creds::revoke(&shared, name, &by).await,
        AdminCommand::AclTest { text } => config_ops::acl_test(&shared, &text),
        AdminCommand::AclHistory => config_ops::acl_history(&shared).await,
        AdminCommand::ServiceExpose(s) => config_ops::service_expose(&shared, s).await,
        AdminCommand::ServiceList => Ok(config_ops::service_list(&shared)),
        AdminCommand::ServiceRemove { name } => config_ops::service_remove(&shared, name).await,
        AdminCommand::RouteList => Ok(config_ops::route_list(&shared)),
        AdminCommand::RouteApprove {
            node,
            cidr,
            approve,
        } => config_ops::route_approve(&shared, &node, cidr, approve).await,
        _ => Err(refuse(
            ErrorCode::BadRequest,
            "unsupported admin command; upgrade the coordinator",
        )),
    };
    match result {
        Ok(reply) => {
            write_msg(&mut send, &ServerMsg::Admin(reply)).await?;
            let _ = send.finish();
            let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
            Ok(())
        }
        Err(e) => Err(refuse_and_close(send, e).await),
    }
}

/// Streams a backup ([`crate::backup`]) in parts, then its length and
/// digest.
async fn backup(shared: &Shared, mut send: quinn::SendStream) -> Result<(), ConnError> {
    let taken = match shared.store.export().await {
        Ok(export) => crate::backup::BackupFile::take(&shared.state_dir, shared.pin, export)
            .map_err(|e| refuse(ErrorCode::Internal, format!("cannot take a backup: {e}"))),
        Err(e) => Err(e),
    };
    let file = match taken {
        Ok(f) => f,
        Err(e) => return Err(refuse_and_close(send, e).await),
    };
    let bytes = file.encode();
    info!(
        nodes = file.store.loaded.nodes.len(),
        bytes = bytes.len(),
        "backup taken"
    );
    for part in bytes.chunks(crate::backup::PART_LEN) {
        let part = weft_proto::msg::BackupBytes(serde_bytes::ByteBuf::from(part.to_vec()));
        let msg = ServerMsg::Admin(AdminReply::BackupPart(part));
        write_msg(&mut send, &msg).await?;
    }
    let done = AdminReply::BackupDone {
        len: bytes.len() as u64,
        sha256: sha2::Sha256::digest(&bytes).into(),
    };
    write_msg(&mut send, &ServerMsg::Admin(done)).await?;
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(10), send.stopped()).await;
    Ok(())
}

/// Every node, expired ones included, as stored and as connected now.
async fn node_list(shared: &Shared) -> Result<AdminReply, ErrorReply> {
    let records = shared.store.nodes().await?;
    let reg = shared.read();
    let mut nodes: Vec<NodeInfo> = records.iter().map(|r| node_info(&reg, r)).collect();
    nodes.sort_by_key(|n| n.id);
    Ok(AdminReply::Nodes(nodes))
}

fn node_info(reg: &crate::registry::Registry, r: &NodeRecord) -> NodeInfo {
    let live = reg.get(r.id);
    NodeInfo {
        id: r.id,
        name: r.name.clone(),
        public_key: r.public_key,
        subnet: r.subnet,
        endpoints: live.map(|p| p.endpoints.clone()).unwrap_or_default(),
        tags: r.tags.clone(),
        online: live.is_some_and(|p| p.online),
        created_at: r.created_at,
        last_seen: r.last_seen,
        expiry: r.expiry,
        expired_at: r.expired_at,
    }
}

async fn node_set(
    shared: &Shared,
    selector: &str,
    expiry: NodeExpiry,
) -> Result<AdminReply, ErrorReply> {
    let id = find_node(shared, selector)?;
    let rec = shared
        .store
        .set_expiry(id, Some(expiry), now_unix())
        .await?;
    info!(node = %id, name = %rec.name, %expiry, "node expiry set");
    Ok(AdminReply::NodeSet(node_info(&shared.read(), &rec)))
}

/// A node by id or name, expired ones included.
pub(super) fn find_node(shared: &Shared, selector: &str) -> Result<NodeId, ErrorReply> {
    let reg = shared.read();
    selector
        .parse::<u64>()
        .ok()
        .map(NodeId)
        .filter(|id| reg.get(*id).is_some() || reg.retired(*id).is_some())
        .or_else(|| reg.by_name(selector))
        .or_else(|| reg.retired_by_name(selector))
        .ok_or_else(|| {
            refuse(
                ErrorCode::NotFound,
                format!(
                    "no node with id or name `{selector}`; see the nodes with `weft node list`"
                ),
            )
        })
}

pub(super) async fn remove_node(shared: &Shared, selector: &str) -> Result<AdminReply, ErrorReply> {
    let id = find_node(shared, selector)?;
    let name = remove_node_id(shared, id, "removed by an admin").await?;
    Ok(AdminReply::NodeRemoved { id, name })
}

/// Removes node `id` (its record, its session, its services and routes);
/// `why` goes into the log and the session's close reason. Its name.
pub(super) async fn remove_node_id(
    shared: &Shared,
    id: NodeId,
    why: &str,
) -> Result<String, ErrorReply> {
    let rec = shared.store.remove_node(id).await?;
    Ok(forget_removed(shared, id, &rec, why).await)
}

/// After node `id` (`rec` as it was) is removed from the store: its
/// session, services and routes go; `why` goes into the log and the
/// session's close reason. Its name.
pub(super) async fn forget_removed(
    shared: &Shared,
    id: NodeId,
    rec: &weft_proto::Peer,
    why: &str,
) -> String {
    if let Some((_, conn)) = shared.sessions().remove(&id) {
        conn.close(CLOSE_REMOVED, format!("node {why}").as_bytes());
    }
    info!(node = %id, name = %rec.name, subnet = %rec.subnet, "node {why}");
    config_ops::forget_node(shared, id, &rec.name).await;
    rec.name.clone()
}
