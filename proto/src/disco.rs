//! Disco: the small datagrams weft sends on the WireGuard UDP socket to find
//! paths through NATs. They start with [`MAGIC`], which no WireGuard message
//! starts with.
//!
//! - `ReflectRequest` / `ReflectReply`: a host asks the coordinator's
//!   reflector which address its WireGuard socket appears to come from (its
//!   public mapping). Unauthenticated: a forged reply can only add a
//!   candidate that then fails its authenticated probe.
//! - `Ping` / `Pong`: probes between two hosts, authenticated with a MAC
//!   keyed from the X25519 secret the two hosts' WireGuard keys share, so a
//!   spoofed probe cannot make a host move its traffic. A pong says where the
//!   ping came from (the sender's mapping as the receiver saw it).
//!
//! Layout: magic(4) kind(1) txid(12), then for ping/pong the sender's public
//! key (32); for a ping the sender's clock (8, microseconds, only ever
//! compared with the same sender's earlier pings); for reflect-reply/pong an
//! address (family 1, ip 16, port 2); for ping/pong a 16-byte MAC over
//! everything before it. A reflect request is padded with zeros to
//! [`REFLECT_REQUEST_LEN`], so the reflector's reply is never the larger:
//! a reflector cannot be used to amplify traffic toward a spoofed source.
//!
//! - `ScanMe`: sent through the relay by a host behind a NAT that maps per
//!   destination ("hard"), after it opened `sockets` new mappings toward
//!   the receiver: probe my public address (given) at random ports (the birthday
//!   technique; see `weft-paths`' `birthday` module). Authenticated and
//!   replay-guarded like a ping; a receiver bounds what one costs it.
//!
//! A ping is accepted once ([`ReplayGuard`]): a captured ping replayed from
//! other addresses is ignored, so it cannot make a host send pongs to, or
//! probe, addresses of an attacker's choosing.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The first four bytes of every disco datagram.
pub const MAGIC: [u8; 4] = *b"WFT\xd1";
const MAC_LEN: usize = 16;
const ADDR_LEN: usize = 19;
/// Length of a reflect request with its padding: at least the reply's 36.
pub const REFLECT_REQUEST_LEN: usize = 40;
/// Length of a reflect reply.
pub const REFLECT_REPLY_LEN: usize = 5 + 12 + ADDR_LEN;

/// A transaction id: matches a reply to its request.
pub type TxId = [u8; 12];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiscoMsg {
    ReflectRequest {
        txid: TxId,
    },
    ReflectReply {
        txid: TxId,
        observed: SocketAddr,
    },
    Ping {
        txid: TxId,
        sender: [u8; 32],
        /// The sender's clock in microseconds, increasing from ping to ping.
        sent_at: u64,
    },
    Pong {
        txid: TxId,
        sender: [u8; 32],
        observed: SocketAddr,
    },
    ScanMe {
        txid: TxId,
        sender: [u8; 32],
        /// The sender's clock, as in a ping (the same replay guard).
        sent_at: u64,
        /// How many sockets it opened toward the receiver.
        sockets: u16,
        /// Its public mapping as the coordinator's reflector saw it: the
        /// address to scan (a receiver scans it only if the netmap lists
        /// that address for the sender too).
        public: SocketAddr,
    },
}

/// How much older than the newest ping seen from a sender a ping may be
/// and still count (pings to several candidates cross on the way).
pub const REPLAY_WINDOW_US: u64 = 2_000_000;
/// Transaction ids remembered per sender.
const REPLAY_MEMORY: usize = 64;

/// Accepts each ping of one sender once: not older than
/// [`REPLAY_WINDOW_US`] before the newest accepted, and not a transaction
/// id seen recently. Compares the sender's clock only with itself (like
/// WireGuard's handshake timestamps), so hosts need no common clock.
#[derive(Debug, Default, Clone)]
pub struct ReplayGuard {
    newest: u64,
    recent: std::collections::VecDeque<TxId>,
}

impl ReplayGuard {
    /// Whether the ping (`sent_at`, `txid`), already authenticated, is
    /// fresh; records it if so.
    pub fn accept(&mut self, sent_at: u64, txid: &TxId) -> bool {
        if sent_at.saturating_add(REPLAY_WINDOW_US) < self.newest || self.recent.contains(txid) {
            return false;
        }
        if self.recent.len() == REPLAY_MEMORY {
            self.recent.pop_front();
        }
        self.recent.push_back(*txid);
        self.newest = self.newest.max(sent_at);
        true
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DiscoError {
    #[error("not a disco datagram")]
    NotDisco,
    #[error("disco datagram of unknown kind {0}")]
    UnknownKind(u8),
    #[error("disco datagram too short")]
    Truncated,
    #[error("bad address family {0}")]
    BadFamily(u8),
    #[error("disco MAC does not verify")]
    BadMac,
}

/// The key two hosts use to authenticate probes, from their X25519 shared
/// secret (the same on both sides).
pub fn probe_key(shared_secret: &[u8; 32]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(shared_secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(b"weft disco probe key v1");
    mac.finalize().into_bytes().into()
}

fn tag(key: &[u8; 32], data: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(data);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full[..MAC_LEN]);
    out
}

fn put_addr(out: &mut Vec<u8>, a: SocketAddr) {
    match a.ip() {
        IpAddr::V4(v4) => {
            out.push(4);
            out.extend_from_slice(&v4.to_ipv6_mapped().octets());
        }
        IpAddr::V6(v6) => {
            out.push(6);
            out.extend_from_slice(&v6.octets());
        }
    }
    out.extend_from_slice(&a.port().to_be_bytes());
}

fn get_addr(b: &[u8]) -> Result<SocketAddr, DiscoError> {
    if b.len() < ADDR_LEN {
        return Err(DiscoError::Truncated);
    }
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&b[1..17]);
    let v6 = Ipv6Addr::from(ip);
    let ip = match b[0] {
        4 => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED)),
        6 => IpAddr::V6(v6),
        f => return Err(DiscoError::BadFamily(f)),
    };
    Ok(SocketAddr::new(ip, u16::from_be_bytes([b[17], b[18]])))
}

impl DiscoMsg {
    fn kind(&self) -> u8 {
        match self {
            DiscoMsg::ReflectRequest { .. } => 1,
            DiscoMsg::ReflectReply { .. } => 2,
            DiscoMsg::Ping { .. } => 3,
            DiscoMsg::Pong { .. } => 4,
            DiscoMsg::ScanMe { .. } => 5,
        }
    }

    /// Whether the message carries a MAC (everything between two hosts).
    fn signed(&self) -> bool {
        matches!(
            self,
            DiscoMsg::Ping { .. } | DiscoMsg::Pong { .. } | DiscoMsg::ScanMe { .. }
        )
    }

    /// Encodes the message; ping, pong and scan-me need the probe key.
    pub fn encode(&self, key: Option<&[u8; 32]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(96);
        out.extend_from_slice(&MAGIC);
        out.push(self.kind());
        match self {
            DiscoMsg::ReflectRequest { txid } => {
                out.extend_from_slice(txid);
                out.resize(REFLECT_REQUEST_LEN, 0);
            }
            DiscoMsg::ReflectReply { txid, observed } => {
                out.extend_from_slice(txid);
                put_addr(&mut out, *observed);
            }
            DiscoMsg::Ping {
                txid,
                sender,
                sent_at,
            } => {
                out.extend_from_slice(txid);
                out.extend_from_slice(sender);
                out.extend_from_slice(&sent_at.to_be_bytes());
            }
            DiscoMsg::Pong {
                txid,
                sender,
                observed,
            } => {
                out.extend_from_slice(txid);
                out.extend_from_slice(sender);
                put_addr(&mut out, *observed);
            }
            DiscoMsg::ScanMe {
                txid,
                sender,
                sent_at,
                sockets,
                public,
            } => {
                out.extend_from_slice(txid);
                out.extend_from_slice(sender);
                out.extend_from_slice(&sent_at.to_be_bytes());
                out.extend_from_slice(&sockets.to_be_bytes());
                put_addr(&mut out, *public);
            }
        }
        if self.signed() {
            let t = key.map_or([0u8; MAC_LEN], |k| tag(k, &out));
            out.extend_from_slice(&t);
        }
        out
    }

    /// Decodes a datagram. Ping and pong come back unverified together with
    /// what to verify: call [`Unverified::verify`] with the sender's probe
    /// key before trusting them.
    pub fn decode(b: &[u8]) -> Result<Unverified<'_>, DiscoError> {
        if b.len() < 5 || b[..4] != MAGIC {
            return Err(DiscoError::NotDisco);
        }
        let kind = b[4];
        let body = &b[5..];
        let txid = |b: &[u8]| -> Result<TxId, DiscoError> {
            b.get(..12)
                .and_then(|s| s.try_into().ok())
                .ok_or(DiscoError::Truncated)
        };
        let sender = |b: &[u8]| -> Result<[u8; 32], DiscoError> {
            b.get(12..44)
                .and_then(|s| s.try_into().ok())
                .ok_or(DiscoError::Truncated)
        };
        let (msg, signed_len) = match kind {
            1 => (DiscoMsg::ReflectRequest { txid: txid(body)? }, None),
            2 => (
                DiscoMsg::ReflectReply {
                    txid: txid(body)?,
                    observed: get_addr(body.get(12..).ok_or(DiscoError::Truncated)?)?,
                },
                None,
            ),
            3 => (
                DiscoMsg::Ping {
                    txid: txid(body)?,
                    sender: sender(body)?,
                    sent_at: body
                        .get(44..52)
                        .and_then(|s| s.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or(DiscoError::Truncated)?,
                },
                Some(5 + 52),
            ),
            4 => (
                DiscoMsg::Pong {
                    txid: txid(body)?,
                    sender: sender(body)?,
                    observed: get_addr(body.get(44..).ok_or(DiscoError::Truncated)?)?,
                },
                Some(5 + 44 + ADDR_LEN),
            ),
            5 => (
                DiscoMsg::ScanMe {
                    txid: txid(body)?,
                    sender: sender(body)?,
                    sent_at: body
                        .get(44..52)
                        .and_then(|s| s.try_into().ok())
                        .map(u64::from_be_bytes)
                        .ok_or(DiscoError::Truncated)?,
                    sockets: body
                        .get(52..54)
                        .map(|s| u16::from_be_bytes([s[0], s[1]]))
                        .ok_or(DiscoError::Truncated)?,
                    public: get_addr(body.get(54..).ok_or(DiscoError::Truncated)?)?,
                },
                Some(5 + 54 + ADDR_LEN),
            ),
            k => return Err(DiscoError::UnknownKind(k)),
        };
        let signed = match signed_len {
            Some(n) => {
                if b.len() < n + MAC_LEN {
                    return Err(DiscoError::Truncated);
                }
                Some((&b[..n], &b[n..n + MAC_LEN]))
            }
            None => None,
        };
        Ok(Unverified { msg, signed })
    }
}

/// A decoded disco message whose MAC (if it has one) is not checked yet.
#[derive(Debug)]
pub struct Unverified<'a> {
    msg: DiscoMsg,
    signed: Option<(&'a [u8], &'a [u8])>,
}

impl Unverified<'_> {
    /// The sender's public key, for ping and pong.
    pub fn sender(&self) -> Option<[u8; 32]> {
        match &self.msg {
            DiscoMsg::Ping { sender, .. }
            | DiscoMsg::Pong { sender, .. }
            | DiscoMsg::ScanMe { sender, .. } => Some(*sender),
            _ => None,
        }
    }

    /// The message, if it needs no MAC (reflector traffic).
    pub fn unauthenticated(self) -> Option<DiscoMsg> {
        self.signed.is_none().then_some(self.msg)
    }

    /// The message, if its MAC verifies under `key`.
    pub fn verify(self, key: &[u8; 32]) -> Result<DiscoMsg, DiscoError> {
        let Some((data, mac)) = self.signed else {
            return Ok(self.msg);
        };
        if bool::from(tag(key, data).ct_eq(mac)) {
            Ok(self.msg)
        } else {
            Err(DiscoError::BadMac)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: [u8; 32] = [7; 32];

    fn all() -> Vec<DiscoMsg> {
        vec![
            DiscoMsg::ReflectRequest { txid: [1; 12] },
            DiscoMsg::ReflectReply {
                txid: [2; 12],
                observed: "203.0.113.11:40001".parse().unwrap(),
            },
            DiscoMsg::Ping {
                txid: [3; 12],
                sender: [9; 32],
                sent_at: 1_764_578_000_000_000,
            },
            DiscoMsg::Pong {
                txid: [4; 12],
                sender: [9; 32],
                observed: "[2001:db8::1]:51820".parse().unwrap(),
            },
            DiscoMsg::ScanMe {
                txid: [5; 12],
                sender: [9; 32],
                sent_at: 1_764_578_000_000_001,
                sockets: 256,
                public: "203.0.113.12:40002".parse().unwrap(),
            },
        ]
    }

    #[test]
    fn round_trips() {
        for m in all() {
            let b = m.encode(Some(&K));
            assert_eq!(&b[..4], &MAGIC);
            assert_eq!(DiscoMsg::decode(&b).unwrap().verify(&K).unwrap(), m);
        }
    }

    #[test]
    fn a_wrong_key_or_a_flipped_bit_fails_the_mac() {
        let ping = DiscoMsg::Ping {
            txid: [3; 12],
            sender: [9; 32],
            sent_at: 42,
        }
        .encode(Some(&K));
        assert_eq!(
            DiscoMsg::decode(&ping).unwrap().verify(&[8; 32]),
            Err(DiscoError::BadMac)
        );
        for i in 5..ping.len() {
            let mut b = ping.clone();
            b[i] ^= 1;
            let r = DiscoMsg::decode(&b).and_then(|u| u.verify(&K));
            assert!(r.is_err(), "flipping byte {i} went unnoticed");
        }
    }

    #[test]
    fn truncations_are_errors_not_panics() {
        for m in all() {
            let b = m.encode(Some(&K));
            for n in 0..b.len() {
                let _ = DiscoMsg::decode(&b[..n]).map(|u| u.verify(&K));
            }
            assert!(
                DiscoMsg::decode(&b[..b.len() - 1])
                    .and_then(|u| u.verify(&K))
                    .is_err()
                    || matches!(
                        m,
                        DiscoMsg::ReflectRequest { .. } | DiscoMsg::ReflectReply { .. }
                    )
            );
        }
    }

    #[test]
    fn the_reflector_never_amplifies() {
        let req = DiscoMsg::ReflectRequest { txid: [1; 12] }.encode(None);
        let reply = DiscoMsg::ReflectReply {
            txid: [1; 12],
            observed: "[2001:db8::1]:65535".parse().unwrap(),
        }
        .encode(None);
        assert_eq!(req.len(), REFLECT_REQUEST_LEN);
        assert_eq!(reply.len(), REFLECT_REPLY_LEN);
        assert!(reply.len() <= req.len());
    }

    #[test]
    fn a_ping_counts_once_and_not_when_stale() {
        let mut g = ReplayGuard::default();
        let t = 10_000_000;
        assert!(g.accept(t, &[1; 12]));
        assert!(!g.accept(t, &[1; 12]), "replayed");
        // Pings to other candidates may cross: a little older is fine.
        assert!(g.accept(t - 500_000, &[2; 12]));
        assert!(g.accept(t + 1, &[3; 12]));
        assert!(!g.accept(t - REPLAY_WINDOW_US - 2, &[4; 12]), "stale");
        // A replay of 10,000 copies of one ping counts once.
        let mut g = ReplayGuard::default();
        let accepted = (0..10_000).filter(|_| g.accept(t, &[5; 12])).count();
        assert_eq!(accepted, 1);
        // Memory stays bounded however many pings pass.
        for i in 0..10_000u64 {
            let mut id = [0u8; 12];
            id[..8].copy_from_slice(&i.to_be_bytes());
            g.accept(t + i, &id);
        }
        assert!(g.recent.len() <= REPLAY_MEMORY);
    }

    #[test]
    fn probe_key_is_symmetric_input_derived() {
        assert_eq!(probe_key(&[1; 32]), probe_key(&[1; 32]));
        assert_ne!(probe_key(&[1; 32]), probe_key(&[2; 32]));
    }
}
