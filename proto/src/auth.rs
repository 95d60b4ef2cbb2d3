//! The cryptographic checks both sides compute: the coordinator's key pin and
//! a host's proof that it holds its WireGuard private key.
//!
//! The proof binds the key to one TLS session: it is an HMAC-SHA256 keyed by
//! X25519(host key, coordinator key) over TLS exporter material, so it cannot
//! be replayed on another connection and cannot be made by anyone who knows
//! only the host's public key. The X25519 itself happens in the callers (they
//! hold the private keys); this module takes the shared secret.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The TLS exporter label for the key proof (RFC 5705 / RFC 8446 7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-weft-key-proof-v1";

/// The SHA-256 pin of a DER-encoded SubjectPublicKeyInfo.
pub fn spki_pin(spki_der: &[u8]) -> [u8; 32] {
    Sha256::digest(spki_der).into()
}

/// SHA-256 of a secret, the only form in which the coordinator stores one.
pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Constant-time equality of two 32-byte values.
pub fn ct_eq32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// The key proof for `host_public_key` given the X25519 shared secret and the
/// 32 bytes exported from the TLS session with [`EXPORTER_LABEL`] and the host
/// public key as context.
pub fn key_proof(
    shared_secret: &[u8; 32],
    exporter: &[u8; 32],
    host_public_key: &[u8; 32],
) -> [u8; 32] {
    let mut mac = match <Hmac<Sha256> as Mac>::new_from_slice(shared_secret) {
        Ok(m) => m,
        // HMAC accepts keys of any length; this arm is unreachable.
        Err(_) => return [0u8; 32],
    };
    mac.update(b"weft key proof v1");
    mac.update(exporter);
    mac.update(host_public_key);
    mac.finalize().into_bytes().into()
}

/// Checks a proof in constant time.
pub fn verify_key_proof(
    shared_secret: &[u8; 32],
    exporter: &[u8; 32],
    host_public_key: &[u8; 32],
    proof: &[u8; 32],
) -> bool {
    ct_eq32(&key_proof(shared_secret, exporter, host_public_key), proof)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proof_depends_on_every_input() {
        let p = key_proof(&[1; 32], &[2; 32], &[3; 32]);
        assert!(verify_key_proof(&[1; 32], &[2; 32], &[3; 32], &p));
        assert!(!verify_key_proof(&[9; 32], &[2; 32], &[3; 32], &p));
        assert!(!verify_key_proof(&[1; 32], &[9; 32], &[3; 32], &p));
        assert!(!verify_key_proof(&[1; 32], &[2; 32], &[9; 32], &p));
    }
}
