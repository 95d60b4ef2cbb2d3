//! Backups: `weft coordinator backup FILE` asks the running coordinator for
//! a snapshot of its store and identity; `weft coordinator restore FILE`
//! puts one into a stopped coordinator's state dir (redb) or an empty etcd
//! prefix. The same file moves a cluster from redb to etcd.
//!
//! The snapshot is read by the store's writer thread between two batches,
//! so on a lone coordinator it is one consistent state: no join, removal
//! or policy change is half in it. It holds the coordinator's private keys
//! (hosts pin its TLS identity, so a restored coordinator must keep it):
//! the file is written readable by its owner only, and must be kept as
//! secret as the state dir.
//!
//! The format is MessagePack with named fields ([`BackupFile`]), versioned
//! by [`BACKUP_FORMAT`], so records gain fields the way the store's do.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::state;
use crate::store::etcd::{EtcdBackend, EtcdConfig, Export};
use crate::store::redb::RedbBackend;
use crate::store::StoreBackend as _;
use crate::CoordinatorError;

/// The format this code writes and reads.
pub const BACKUP_FORMAT: u32 = 1;
/// The bytes of a backup per admin reply frame (under the 1 MiB frame cap).
pub const PART_LEN: usize = 512 * 1024;
/// The largest backup a client accepts (a bound on what a coordinator can
/// make it hold): far above 100,000 nodes.
pub const MAX_BACKUP_LEN: u64 = 1 << 30;

/// One backup.
#[derive(Clone, Serialize, Deserialize)]
pub struct BackupFile {
    pub format: u32,
    /// Unix seconds.
    pub taken_at: u64,
    /// Hex SHA-256 pin of the coordinator's TLS key (what join tokens and
    /// hosts hold).
    pub pin: String,
    /// The identity files of the state dir ([`state::IDENTITY_FILES`]),
    /// by name.
    pub identity: BTreeMap<String, serde_bytes::ByteBuf>,
    pub store: Export,
}

impl std::fmt::Debug for BackupFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackupFile")
            .field("format", &self.format)
            .field("taken_at", &self.taken_at)
            .field("pin", &self.pin)
            .field("nodes", &self.store.loaded.nodes.len())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path} is not a weft coordinator backup ({reason}); pass the file `weft coordinator backup` wrote")]
    NotABackup { path: String, reason: String },
    #[error("{path} is a backup of format {found}, newer than this weft reads ({BACKUP_FORMAT}); restore it with the weft version that wrote it, or a newer one")]
    TooNew { path: String, found: u32 },
    #[error("{what} already exists in {dir}; restore into a new state dir, or pass --force to replace it")]
    Exists { what: String, dir: String },
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Coordinator(#[from] CoordinatorError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl BackupFile {
    /// A backup of `store` with the identity files of `state_dir`.
    pub fn take(state_dir: &Path, pin: [u8; 32], store: Export) -> Result<Self, BackupError> {
        let mut identity = BTreeMap::new();
        for name in state::IDENTITY_FILES {
            let path = state_dir.join(name);
            let bytes = std::fs::read(&path).map_err(|source| BackupError::Io {
                what: "read",
                path: path.display().to_string(),
                source,
            })?;
            identity.insert(name.to_string(), serde_bytes::ByteBuf::from(bytes));
        }
        Ok(Self {
            format: BACKUP_FORMAT,
            taken_at: crate::now_unix(),
            pin: hex::encode(pin),
            identity,
            store,
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        rmp_serde::to_vec_named(self).unwrap_or_default()
    }

    /// Reads a backup file; `path` names it in errors.
    pub fn decode(path: &str, bytes: &[u8]) -> Result<Self, BackupError> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
        }
        let not = |e: rmp_serde::decode::Error| BackupError::NotABackup {
            path: path.to_string(),
            reason: e.to_string(),
        };
        let head: Head = rmp_serde::from_slice(bytes).map_err(not)?;
        if head.format > BACKUP_FORMAT {
            return Err(BackupError::TooNew {
                path: path.to_string(),
                found: head.format,
            });
        }
        rmp_serde::from_slice(bytes).map_err(not)
    }

    /// Puts the identity into `state_dir` and the store into its redb
    /// database. Refuses a state dir that already holds either unless
    /// `force`. The coordinator must be stopped.
    pub fn restore_redb(&self, state_dir: &Path, force: bool) -> Result<(), BackupError> {
        let db = state_dir.join(state::DB_FILE);
        self.check_free(state_dir, force)?;
        if db.exists() {
            if !force {
                return Err(BackupError::Exists {
                    what: state::DB_FILE.into(),
                    dir: state_dir.display().to_string(),
                });
            }
            std::fs::remove_file(&db).map_err(|source| BackupError::Io {
                what: "remove",
                path: db.display().to_string(),
                source,
            })?;
        }
        self.write_identity(state_dir)?;
        let mut be = RedbBackend::open(&db)?;
        be.import(&self.store)?;
        Ok(())
    }

    /// Puts the identity into `state_dir` and the store under `etcd`'s
    /// prefix, which must be empty unless `force` (which clears it).
    pub fn restore_etcd(
        &self,
        state_dir: &Path,
        etcd: &EtcdConfig,
        force: bool,
    ) -> Result<(), BackupError> {
        self.check_free(state_dir, force)?;
        let mut be = EtcdBackend::connect(etcd)?;
        be.clear_prefix(force)?;
        self.write_identity(state_dir)?;
        be.import(&self.store)?;
        // Read back what was written: a restore that cannot be loaded is
        // no restore.
        be.load()?;
        Ok(())
    }

    /// Refuses to replace another identity unless `force`.
    fn check_free(&self, state_dir: &Path, force: bool) -> Result<(), BackupError> {
        for name in state::IDENTITY_FILES {
            let path = state_dir.join(name);
            let same = std::fs::read(&path)
                .ok()
                .is_some_and(|b| self.identity.get(name).is_some_and(|i| **i == b));
            if path.exists() && !same && !force {
                return Err(BackupError::Exists {
                    what: format!("another coordinator identity ({name})"),
                    dir: state_dir.display().to_string(),
                });
            }
        }
        Ok(())
    }

    fn write_identity(&self, state_dir: &Path) -> Result<(), BackupError> {
        std::fs::create_dir_all(state_dir).map_err(|source| BackupError::Io {
            what: "create",
            path: state_dir.display().to_string(),
            source,
        })?;
        for name in state::IDENTITY_FILES {
            let Some(bytes) = self.identity.get(name) else {
                return Err(BackupError::NotABackup {
                    path: "(backup)".into(),
                    reason: format!("it holds no {name}"),
                });
            };
            state::write_private(&state_dir.join(name), bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests")]

    use super::*;

    fn sample(dir: &Path) -> BackupFile {
        let id = state::load_or_create(dir).unwrap();
        let mut store = Export::default();
        store.loaded.next_node_id = 7;
        BackupFile::take(dir, id.pin, store).unwrap()
    }

    #[test]
    fn a_backup_round_trips_and_refuses_to_overwrite_another_identity() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let backup = sample(a.path());
        let bytes = backup.encode();
        let back = BackupFile::decode("f", &bytes).unwrap();
        assert_eq!(back.store, backup.store);
        assert_eq!(back.pin, backup.pin);
        // Another coordinator's state dir is not replaced without --force.
        state::load_or_create(b.path()).unwrap();
        let e = back.restore_redb(b.path(), false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        back.restore_redb(b.path(), true).unwrap();
        let restored = state::load_or_create(b.path()).unwrap();
        assert_eq!(hex::encode(restored.pin), backup.pin);
        let mut db = RedbBackend::open(&b.path().join(state::DB_FILE)).unwrap();
        assert_eq!(db.load().unwrap().next_node_id, 7);
    }

    #[test]
    fn garbage_and_future_formats_are_clear_errors() {
        let e = BackupFile::decode("x.bak", b"not a backup").unwrap_err();
        assert!(
            e.to_string().contains("not a weft coordinator backup"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let mut future = sample(dir.path());
        future.format = BACKUP_FORMAT + 1;
        let e = BackupFile::decode("x.bak", &future.encode()).unwrap_err();
        assert!(e.to_string().contains("newer than this weft reads"), "{e}");
    }
}
