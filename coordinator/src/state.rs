//! The coordinator's identity on disk: TLS key and certificate, its x25519
//! key, and the admin credential. Created at first start, reused after.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x25519_dalek::{PublicKey, StaticSecret};

use crate::CoordinatorError;

/// The files that make a coordinator's identity; replicas share them
/// (copy them from the first replica's state dir).
pub const IDENTITY_FILES: [&str; 3] = [TLS_KEY, TLS_CERT, COORDINATOR_KEY];
const TLS_KEY: &str = "tls-key.der";
const TLS_CERT: &str = "tls-cert.der";
const COORDINATOR_KEY: &str = "coordinator.key";
/// The admin credential file in the state dir.
pub const ADMIN_FILE: &str = "admin.json";
/// The database file in the state dir.
pub const DB_FILE: &str = "weft.redb";
/// The epoch of a lone coordinator's netmap versions, kept across restarts
/// so hosts resume after one (see [`load_or_create_epoch`]).
const EPOCH_FILE: &str = "epoch";

/// Keys and certificate loaded from (or created in) the state dir. It has
/// no `Debug`: it holds the coordinator's secrets.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    pub key: PrivateKeyDer<'static>,
    /// SHA-256 of the certificate's SubjectPublicKeyInfo.
    pub pin: [u8; 32],
    pub secret: StaticSecret,
    pub public: [u8; 32],
}

fn io_err(path: &Path) -> impl Fn(std::io::Error) -> CoordinatorError + '_ {
    move |source| CoordinatorError::StateDir {
        path: path.display().to_string(),
        source,
    }
}

/// Writes a file readable only by its owner, durably: temp file, fsync,
/// rename, fsync of the directory.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), CoordinatorError> {
    let err = io_err(path);
    let tmp = path.with_extension("tmp");
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(&err)?;
        f.write_all(bytes).map_err(&err)?;
        f.sync_all().map_err(&err)?;
    }
    fs::rename(&tmp, path).map_err(&err)?;
    // A bare file name's parent is "": the current directory.
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(&err)?;
    }
    Ok(())
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>, CoordinatorError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// The epoch of this state dir's netmap versions, created at first start:
/// the same after a restart, so a host's cached netmap still names this
/// coordinator's version sequence. Never 0.
pub fn load_or_create_epoch(dir: &Path) -> Result<u64, CoordinatorError> {
    let path = dir.join(EPOCH_FILE);
    if let Some(bytes) = read_opt(&path)? {
        let text = String::from_utf8_lossy(&bytes);
        if let Some(e) = u64::from_str_radix(text.trim(), 16)
            .ok()
            .filter(|e| *e != 0)
        {
            return Ok(e);
        }
    }
    use rand::RngCore as _;
    let epoch = rand::rngs::OsRng.next_u64() | 1;
    write_private(&path, format!("{epoch:016x}\n").as_bytes())?;
    Ok(epoch)
}

/// Loads the identity from `dir`, creating whatever is missing.
pub fn load_or_create(dir: &Path) -> Result<Identity, CoordinatorError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    // Keys, database and admin credential: for the coordinator's user only.
    {
        use std::os::unix::fs::PermissionsExt as _;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_err(dir))?;
    }
    let key_path = dir.join(TLS_KEY);
    let cert_path = dir.join(TLS_CERT);
    let (key_der, cert_der) = match (read_opt(&key_path)?, read_opt(&cert_path)?) {
        (Some(k), Some(c)) => (k, c),
        _ => {
            let kp =
                rcgen::KeyPair::generate().map_err(|e| CoordinatorError::Tls(e.to_string()))?;
            let params = rcgen::CertificateParams::new(vec![weft_proto::SERVER_NAME.to_string()])
                .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
            let cert = params
                .self_signed(&kp)
                .map_err(|e| CoordinatorError::Tls(e.to_string()))?;
            let k = kp.serialize_der();
            let c = cert.der().to_vec();
            write_private(&key_path, &k)?;
            write_private(&cert_path, &c)?;
            (k, c)
        }
    };
    let cert = CertificateDer::from(cert_der);
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let pin = weft_proto::tls::cert_pin(&cert).map_err(|e| CoordinatorError::StateFile {
        path: cert_path.display().to_string(),
        reason: e.to_string(),
    })?;

    let ck_path = dir.join(COORDINATOR_KEY);
    let secret_bytes: [u8; 32] = match read_opt(&ck_path)? {
        Some(b) => b.try_into().map_err(|_| CoordinatorError::StateFile {
            path: ck_path.display().to_string(),
            reason: "expected 32 bytes".into(),
        })?,
        None => {
            let s = StaticSecret::random_from_rng(rand::rngs::OsRng);
            write_private(&ck_path, s.as_bytes())?;
            s.to_bytes()
        }
    };
    let secret = StaticSecret::from(secret_bytes);
    let public = PublicKey::from(&secret).to_bytes();
    Ok(Identity {
        cert,
        key,
        pin,
        secret,
        public,
    })
}

/// The key quinn derives stateless-reset tokens from, derived from the
/// coordinator's persistent x25519 secret (RFC 9000 §10.3: an endpoint that
/// restarts must be able to reset the connections of its previous life).
/// A restarted coordinator thus answers a host's first packet on a dead
/// connection with a reset the host accepts, and the host reconnects at
/// once instead of waiting for its idle timeout. Replicas that share the
/// identity share the key.
pub fn reset_key(secret: &StaticSecret) -> ring::hmac::Key {
    ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &derive(secret, b"weft quic stateless reset key v1"),
    )
}

/// The key of quinn's connection-id signatures, derived like
/// [`reset_key`]: a restarted coordinator must still recognise the
/// connection ids it issued before, or it drops their packets as invalid
/// instead of resetting them.
pub fn connection_id_key(secret: &StaticSecret) -> u64 {
    let d = derive(secret, b"weft quic connection id key v1");
    u64::from_le_bytes([d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
}

/// The key replicas sharing this identity prove it with on the links
/// they forward relayed datagrams over (see `server::replica`).
pub fn replica_link_key(secret: &StaticSecret) -> ring::hmac::Key {
    ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &derive(secret, b"weft replica link key v1"),
    )
}

/// A hash of the secret under its own label: what is derived reveals
/// nothing of the secret, and no two uses share a value.
fn derive(secret: &StaticSecret, label: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    sha2::Sha256::new()
        .chain_update(label)
        .chain_update(secret.as_bytes())
        .finalize()
        .into()
}

/// The admin credential path in a state dir.
pub fn admin_path(dir: &Path) -> PathBuf {
    dir.join(ADMIN_FILE)
}
