//! Identifiers and the peer record every host receives in its netmap.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

use base64::Engine;
use serde::{Deserialize, Serialize};

/// A node's id, assigned by the coordinator at join and never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A WireGuard (x25519) public key. Shown as standard base64, as `wg` does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WgPublicKey(#[serde(with = "crate::types::bytes32")] pub [u8; 32]);

impl fmt::Display for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgPublicKey({self})")
    }
}

impl FromStr for WgPublicKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(s.trim())
            .map_err(|e| format!("not a base64 WireGuard key: {e}"))?;
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| "a WireGuard key is 32 bytes".to_string())?;
        Ok(Self(arr))
    }
}

/// The IPv4 subnet the coordinator gave one host, for itself and its
/// containers. The host uses the first address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HostSubnet {
    #[serde(rename = "a")]
    pub addr: Ipv4Addr,
    #[serde(rename = "p")]
    pub prefix_len: u8,
}

impl HostSubnet {
    /// The address the host itself uses: the first after the network address.
    pub fn host_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr).wrapping_add(1))
    }

    /// Whether two subnets share any address.
    pub fn overlaps(&self, other: &HostSubnet) -> bool {
        let p = self.prefix_len.min(other.prefix_len).min(32);
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        (u32::from(self.addr) & mask) == (u32::from(other.addr) & mask)
    }
}

impl fmt::Display for HostSubnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// One other host as the netmap describes it.
///
/// Every host receives every peer, so the wire names are one letter: this
/// record is most of the coordinator's traffic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    #[serde(rename = "i")]
    pub id: NodeId,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "k")]
    pub public_key: WgPublicKey,
    #[serde(rename = "s")]
    pub subnet: HostSubnet,
    /// UDP endpoints where the peer's WireGuard socket may be reached.
    #[serde(rename = "e", default)]
    pub endpoints: Vec<SocketAddr>,
    #[serde(rename = "t", default)]
    pub tags: Vec<String>,
    /// Whether the peer holds a control connection to the coordinator now.
    #[serde(rename = "o", default)]
    pub online: bool,
    /// Networks outside the mesh reached through this peer (advertised by
    /// it and approved).
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<crate::policy::Cidr>,
}

impl Peer {
    /// A digest of what the coordinator keeps of this peer across its own
    /// restarts (everything but `endpoints` and `online`): first 8 bytes of
    /// a SHA-256. A netmap's content digest is the XOR of its peers'
    /// ([`crate::Netmap::content_digest`]), so a host resuming with a
    /// netmap the coordinator cannot give a delta for (it restarted) still
    /// resumes without a snapshot when the two agree.
    pub fn durable_digest(&self) -> u64 {
        use sha2::{Digest as _, Sha256};
        let bytes = rmp_serde::to_vec(&(
            self.id,
            &self.name,
            self.public_key.0,
            self.subnet,
            &self.tags,
            &self.routes,
        ))
        .unwrap_or_default();
        let d = Sha256::digest(&bytes);
        let mut first = [0u8; 8];
        first.copy_from_slice(&d[..8]);
        u64::from_le_bytes(first)
    }
}

/// Serde for 32-byte arrays as one byte string (compact in MessagePack).
pub mod bytes32 {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = [u8; 32];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("32 bytes")
            }
            fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 32], E> {
                v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 32], A::Error> {
                let mut out = [0u8; 32];
                for (i, b) in out.iter_mut().enumerate() {
                    *b = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(i, &self))?;
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}
