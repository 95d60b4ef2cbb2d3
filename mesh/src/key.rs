//! WireGuard keys: 32 bytes, hex on the UAPI, base64 for people and `wg`.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use boringtun::x25519;

/// A 32-byte WireGuard key (public, private or preshared).
///
/// `Debug` never prints the bytes, so a key that slips into a log line
/// leaks nothing; use [`Key::to_base64`] where a key is meant to be shown.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Key(pub [u8; 32]);

/// A key string that is not 32 bytes of hex or base64.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a WireGuard key: expected 32 bytes as 64 hex digits or 44 base64 characters")]
pub struct KeyError;

impl Key {
    pub fn from_hex(s: &str) -> Result<Key, KeyError> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| KeyError)?;
        Ok(Key(out))
    }

    pub fn from_base64(s: &str) -> Result<Key, KeyError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|_| KeyError)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| KeyError)?;
        Ok(Key(arr))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|b| *b == 0)
    }

    /// A fresh random private key (clamped as X25519 requires).
    pub fn generate_private() -> Key {
        let secret = x25519::StaticSecret::random_from_rng(rand::rngs::OsRng);
        Key(secret.to_bytes())
    }

    /// The public key of this private key.
    pub fn public_from_private(&self) -> Key {
        let secret = x25519::StaticSecret::from(self.0);
        Key(x25519::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

impl FromStr for Key {
    type Err = KeyError;

    /// Accepts hex (the UAPI form) or base64 (the `wg` form).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() == 64 {
            Key::from_hex(s)
        } else {
            Key::from_base64(s)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let k = Key::generate_private();
        assert_eq!(Key::from_hex(&k.to_hex()).unwrap(), k);
        assert_eq!(k.to_base64().parse::<Key>().unwrap(), k);
        assert_eq!(k.to_hex().parse::<Key>().unwrap(), k);
        assert!("abcd".parse::<Key>().is_err());
        assert!(Key::from_hex(&"zz".repeat(32)).is_err());
        assert_eq!(format!("{k:?}"), "Key(..)");
        assert_ne!(k.public_from_private(), k);
    }
}
