//! Named admin credentials: `weft admin create NAME`, `list`, `revoke`.
//!
//! The state dir's `admin.json` is the credential named [`ROOT`]: it is
//! made at first start and never stored in the database, so a cluster can
//! always be administered from the coordinator's machine. Named ones are
//! stored (their secret as its SHA-256 only) and shared by replicas.

use super::*;
use crate::store::{AdminRecord, ConfigChange};

/// The name of the state dir's own credential.
pub(super) const ROOT: &str = "root";
/// Most named credentials a cluster holds (revoked ones included).
const MAX_ADMINS: usize = 1_000;

/// The name of the credential whose secret is `secret`; `None` when no
/// credential in force has it.
pub(super) fn who(shared: &Shared, secret: &[u8; 32]) -> Option<String> {
    let hash = secret_hash(secret);
    if ct_eq32(&hash, &shared.admin_hash) {
        return Some(ROOT.to_string());
    }
    let cfg = shared.cluster();
    // Every record is compared, so the time taken says nothing of which.
    let mut found = None;
    for a in cfg.admins.values() {
        if ct_eq32(&hash, &a.secret_hash) && a.revoked_at.is_none() {
            found = Some(a.name.clone());
        }
    }
    found
}

fn check_name(name: &str) -> Result<(), ErrorReply> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    if !ok {
        return Err(refuse(
            ErrorCode::BadRequest,
            format!("`{name}` is not a credential name: use 1 to 64 of a-z, 0-9, -, _ and ."),
        ));
    }
    if name == ROOT {
        return Err(refuse(
            ErrorCode::BadRequest,
            "`root` is the state dir's own admin.json; pick another name",
        ));
    }
    Ok(())
}

pub(super) async fn create(
    shared: &Shared,
    name: String,
    by: &str,
) -> Result<AdminReply, ErrorReply> {
    check_name(&name)?;
    let _change = shared.config_change.lock().await;
    {
        let cfg = shared.cluster();
        if cfg.admins.contains_key(&name) {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("an admin credential named `{name}` exists (names are never reused, revoked or not); pick another name"),
            ));
        }
        if cfg.admins.len() >= MAX_ADMINS {
            return Err(refuse(
                ErrorCode::BadRequest,
                format!("this cluster holds {MAX_ADMINS} admin credentials, the most it keeps"),
            ));
        }
    }
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let rec = AdminRecord {
        name: name.clone(),
        secret_hash: secret_hash(&secret),
        created_at: now_unix(),
        created_by: by.to_string(),
        revoked_at: None,
    };
    shared
        .store
        .write(vec![ConfigChange::CreateAdmin(rec.clone())])
        .await?;
    shared
        .cluster_mut()
        .admins
        .insert(name.clone(), rec.clone());
    info!(admin = %by, credential = %name, "admin credential created");
    Ok(AdminReply::AdminCreated {
        info: rec.info(),
        secret: weft_proto::msg::AdminSecret(hex::encode(secret)),
    })
}

pub(super) fn list(shared: &Shared) -> AdminReply {
    AdminReply::Admins(
        shared
            .cluster()
            .admins
            .values()
            .map(AdminRecord::info)
            .collect(),
    )
}

pub(super) async fn revoke(
    shared: &Shared,
    name: String,
    by: &str,
) -> Result<AdminReply, ErrorReply> {
    if name == ROOT {
        return Err(refuse(
            ErrorCode::BadRequest,
            "the root credential cannot be revoked; to replace it, stop the coordinator, delete admin.json from its state dir and start it again",
        ));
    }
    let _change = shared.config_change.lock().await;
    let Some(mut rec) = shared.cluster().admins.get(&name).cloned() else {
        return Err(refuse(
            ErrorCode::NotFound,
            format!("no admin credential named `{name}`; see them with `weft admin list`"),
        ));
    };
    if rec.revoked_at.is_none() {
        rec.revoked_at = Some(now_unix());
        shared
            .store
            .write(vec![ConfigChange::PutAdmin(rec.clone())])
            .await?;
        shared.cluster_mut().admins.insert(name.clone(), rec);
        info!(admin = %by, credential = %name, "admin credential revoked");
    }
    Ok(AdminReply::AdminRevoked { name })
}
