//! The join token: one copyable string, `weft1.<base64url>`, holding where
//! the coordinator is, how to recognise it, and the token's id and secret.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "weft1.";

/// A decoded join token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinToken {
    /// Coordinator addresses, `host:port`, tried in order.
    #[serde(rename = "a")]
    pub addrs: Vec<String>,
    /// SHA-256 of the coordinator's TLS SubjectPublicKeyInfo.
    #[serde(rename = "p", with = "crate::types::bytes32")]
    pub pin: [u8; 32],
    /// The coordinator's x25519 public key, for the host's key proof.
    #[serde(rename = "k", with = "crate::types::bytes32")]
    pub coordinator_key: [u8; 32],
    #[serde(rename = "i")]
    pub id: String,
    #[serde(rename = "s", with = "crate::types::bytes32")]
    pub secret: [u8; 32],
    /// TCP port of the coordinator's TLS fallback (for hosts whose UDP is
    /// blocked); `None`: the same port as QUIC.
    #[serde(rename = "t", default, skip_serializing_if = "Option::is_none")]
    pub tcp_port: Option<u16>,
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinToken")
            .field("addrs", &self.addrs)
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Why a string is not a join token.
#[derive(Debug, thiserror::Error)]
pub enum TokenParseError {
    #[error("not a weft join token (it should start with `weft1.`); copy the whole line printed by `weft token create`")]
    Prefix,
    #[error("the join token is damaged ({0}); copy the whole line printed by `weft token create`")]
    Damaged(String),
}

impl JoinToken {
    /// The token as the one string users copy.
    pub fn encode(&self) -> String {
        let body = rmp_serde::to_vec_named(self).unwrap_or_default();
        format!(
            "{PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(body)
        )
    }
}

impl FromStr for JoinToken {
    type Err = TokenParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let body = s
            .trim()
            .strip_prefix(PREFIX)
            .ok_or(TokenParseError::Prefix)?;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| TokenParseError::Damaged(e.to_string()))?;
        let tok: JoinToken =
            rmp_serde::from_slice(&bytes).map_err(|e| TokenParseError::Damaged(e.to_string()))?;
        if tok.addrs.is_empty() {
            return Err(TokenParseError::Damaged("no coordinator address".into()));
        }
        Ok(tok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        let t = JoinToken {
            addrs: vec!["192.0.2.1:7443".into()],
            pin: [1; 32],
            coordinator_key: [2; 32],
            id: "0123456789abcdef".into(),
            secret: [3; 32],
            tcp_port: None,
        };
        let s = t.encode();
        assert!(s.starts_with("weft1."));
        assert_eq!(s.parse::<JoinToken>().unwrap(), t);
        assert!(!format!("{t:?}").contains("secret"));
        assert!(matches!(
            "x".parse::<JoinToken>(),
            Err(TokenParseError::Prefix)
        ));
        assert!(matches!(
            "weft1.AAAA".parse::<JoinToken>(),
            Err(TokenParseError::Damaged(_))
        ));
        let with_tcp = JoinToken {
            tcp_port: Some(443),
            ..t
        };
        assert_eq!(with_tcp.encode().parse::<JoinToken>().unwrap(), with_tcp);
    }
}
