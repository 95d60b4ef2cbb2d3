//! QUIC datagrams on a host's session connection: the relay and hole
//! punching.
//!
//! A host sends `Relay { node: destination, .. }` and `Punch { node:
//! destination }`; the coordinator forwards each to the destination's
//! session with `node` rewritten to the sender. The relay only ever carries
//! WireGuard ciphertext.
//!
//! A WireGuard datagram can be larger than a QUIC datagram may be (about
//! 1200 bytes before path MTU discovery), so relayed datagrams are split into
//! fragments that share an id; the receiver puts them back together and
//! drops what stays incomplete. Layout: kind(1) node(8, big endian), then
//! for `Relay`: id(2) index(1) count(1) and the fragment bytes.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::types::NodeId;

const KIND_RELAY: u8 = 1;
const KIND_PUNCH: u8 = 2;
/// Bytes before a relay fragment's payload.
pub const RELAY_HEADER: usize = 13;

/// One datagram on the session connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// One fragment of a relayed WireGuard datagram.
    Relay {
        node: NodeId,
        id: u16,
        index: u8,
        count: u8,
        payload: &'a [u8],
    },
    /// Probe the sender's (or, from a host, the destination's) endpoints now.
    Punch { node: NodeId },
}

impl<'a> Datagram<'a> {
    /// Parses a datagram; `None` if malformed.
    pub fn parse(b: &'a [u8]) -> Option<Datagram<'a>> {
        let node = NodeId(u64::from_be_bytes(b.get(1..9)?.try_into().ok()?));
        match *b.first()? {
            KIND_RELAY => {
                let h = b.get(9..RELAY_HEADER)?;
                let (index, count) = (h[2], h[3]);
                (count > 0 && index < count).then_some(Datagram::Relay {
                    node,
                    id: u16::from_be_bytes([h[0], h[1]]),
                    index,
                    count,
                    payload: &b[RELAY_HEADER..],
                })
            }
            KIND_PUNCH => Some(Datagram::Punch { node }),
            _ => None,
        }
    }

    /// Encodes the datagram.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Datagram::Relay {
                node,
                id,
                index,
                count,
                payload,
            } => {
                let mut out = Vec::with_capacity(RELAY_HEADER + payload.len());
                out.push(KIND_RELAY);
                out.extend_from_slice(&node.0.to_be_bytes());
                out.extend_from_slice(&id.to_be_bytes());
                out.push(*index);
                out.push(*count);
                out.extend_from_slice(payload);
                out
            }
            Datagram::Punch { node } => {
                let mut out = Vec::with_capacity(9);
                out.push(KIND_PUNCH);
                out.extend_from_slice(&node.0.to_be_bytes());
                out
            }
        }
    }

    /// Rewrites the node id in an encoded datagram in place (the
    /// coordinator's forwarding step); false if it is too short.
    pub fn set_node(encoded: &mut [u8], node: NodeId) -> bool {
        match encoded.get_mut(1..9) {
            Some(b) => {
                b.copy_from_slice(&node.0.to_be_bytes());
                true
            }
            None => false,
        }
    }

    /// The node id of an encoded datagram.
    pub fn node(encoded: &[u8]) -> Option<NodeId> {
        Some(NodeId(u64::from_be_bytes(
            encoded.get(1..9)?.try_into().ok()?,
        )))
    }
}

/// Splits a WireGuard datagram into relay fragments of at most `max` bytes
/// each (header included).
pub fn fragment(node: NodeId, id: u16, packet: &[u8], max: usize) -> Vec<Vec<u8>> {
    let room = max.saturating_sub(RELAY_HEADER).max(1);
    let count = packet.len().div_ceil(room).clamp(1, 255);
    let room = packet.len().div_ceil(count).max(1);
    (0..count)
        .map(|i| {
            let part = packet
                .get(i * room..((i + 1) * room).min(packet.len()))
                .unwrap_or(&[]);
            Datagram::Relay {
                node,
                id,
                index: i as u8,
                count: count as u8,
                payload: part,
            }
            .encode()
        })
        .collect()
}

/// Fragments of relayed datagrams waiting for their siblings, bounded so
/// that no sender can make a host hold much: at most
/// [`MAX_PARTIAL_PER_NODE`] datagrams and [`MAX_BYTES_PER_NODE`] bytes per
/// sender (a sender over its share loses its own oldest), and
/// [`MAX_PARTIAL`] datagrams and [`MAX_BYTES`] bytes in all (past that, new
/// datagrams are dropped, like lost packets). Sans-IO: the caller passes
/// the time.
#[derive(Debug, Default)]
pub struct Reassembler {
    partial: HashMap<(NodeId, u16), Partial>,
    bytes: usize,
}

#[derive(Debug)]
struct Partial {
    started: Instant,
    parts: Vec<Option<Vec<u8>>>,
    bytes: usize,
}

/// Fragments older than this are dropped.
pub const REASSEMBLY_TIMEOUT: Duration = Duration::from_secs(1);
/// Datagrams being reassembled, in all.
pub const MAX_PARTIAL: usize = 256;
/// Datagrams being reassembled per sender.
pub const MAX_PARTIAL_PER_NODE: usize = 32;
/// Bytes held, in all.
pub const MAX_BYTES: usize = 2 << 20;
/// Bytes held per sender.
pub const MAX_BYTES_PER_NODE: usize = 256 << 10;
/// The largest datagram reassembled (a WireGuard message never exceeds it).
pub const MAX_DATAGRAM: usize = 65_535;

impl Reassembler {
    /// Takes one fragment; the whole datagram once its last fragment is in.
    pub fn push(
        &mut self,
        node: NodeId,
        id: u16,
        index: u8,
        count: u8,
        payload: &[u8],
        now: Instant,
    ) -> Option<Vec<u8>> {
        if count <= 1 {
            return (payload.len() <= MAX_DATAGRAM).then(|| payload.to_vec());
        }
        self.expire(now);
        let key = (node, id);
        if !self.partial.contains_key(&key) {
            self.make_room(node)?;
            self.partial.insert(
                key,
                Partial {
                    started: now,
                    parts: vec![None; usize::from(count)],
                    bytes: 0,
                },
            );
        }
        let total = self.bytes;
        let entry = self.partial.get_mut(&key)?;
        let fits =
            entry.bytes + payload.len() <= MAX_DATAGRAM && total + payload.len() <= MAX_BYTES;
        let same_count = entry.parts.len() == usize::from(count);
        match entry.parts.get_mut(usize::from(index)) {
            Some(slot @ None) if same_count && fits => {
                *slot = Some(payload.to_vec());
                entry.bytes += payload.len();
                self.bytes += payload.len();
            }
            // A duplicate fragment: ignore it.
            Some(Some(_)) if same_count => return None,
            // Inconsistent, or too big: the datagram is lost.
            _ => {
                self.remove(key);
                return None;
            }
        }
        let complete = self
            .partial
            .get(&key)
            .is_some_and(|e| e.parts.iter().all(Option::is_some));
        if complete {
            let done = self.remove(key)?;
            return Some(done.parts.into_iter().flatten().flatten().collect());
        }
        None
    }

    /// Datagrams being reassembled.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn remove(&mut self, key: (NodeId, u16)) -> Option<Partial> {
        let p = self.partial.remove(&key)?;
        self.bytes -= p.bytes;
        Some(p)
    }

    fn expire(&mut self, now: Instant) {
        let old: Vec<(NodeId, u16)> = self
            .partial
            .iter()
            .filter(|(_, p)| now.duration_since(p.started) >= REASSEMBLY_TIMEOUT)
            .map(|(k, _)| *k)
            .collect();
        for k in old {
            self.remove(k);
        }
    }

    /// Makes room for one more datagram from `node`: evicts its own oldest
    /// while it is over its share; `None` when the whole table is full.
    fn make_room(&mut self, node: NodeId) -> Option<()> {
        loop {
            let (count, bytes, oldest) = self.partial.iter().filter(|((n, _), _)| *n == node).fold(
                (0, 0, None::<((NodeId, u16), Instant)>),
                |(c, b, o), (k, p)| {
                    let o = match o {
                        Some((_, t)) if t <= p.started => o,
                        _ => Some((*k, p.started)),
                    };
                    (c + 1, b + p.bytes, o)
                },
            );
            if count < MAX_PARTIAL_PER_NODE && bytes < MAX_BYTES_PER_NODE {
                break;
            }
            self.remove(oldest?.0);
        }
        (self.partial.len() < MAX_PARTIAL && self.bytes < MAX_BYTES).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_reassemble_in_order() {
        let packet: Vec<u8> = (0..1500u32).map(|i| i as u8).collect();
        let frags = fragment(NodeId(7), 9, &packet, 1200);
        assert_eq!(frags.len(), 2);
        let mut out = Vec::new();
        for (i, f) in frags.iter().enumerate() {
            assert!(f.len() <= 1200);
            match Datagram::parse(f).unwrap() {
                Datagram::Relay {
                    node,
                    id,
                    index,
                    count,
                    payload,
                } => {
                    assert_eq!((node, id, index as usize, count), (NodeId(7), 9, i, 2));
                    out.extend_from_slice(payload);
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(out, packet);
        assert_eq!(fragment(NodeId(1), 1, &[1, 2, 3], 1200).len(), 1);
    }

    fn feed(r: &mut Reassembler, frags: &[Vec<u8>], now: Instant) -> Option<Vec<u8>> {
        let mut out = None;
        for f in frags {
            if let Some(Datagram::Relay {
                node,
                id,
                index,
                count,
                payload,
            }) = Datagram::parse(f)
            {
                out = r.push(node, id, index, count, payload, now).or(out);
            }
        }
        out
    }

    #[test]
    fn reassembly_in_any_order_and_duplicates() {
        let now = Instant::now();
        let packet: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let mut frags = fragment(NodeId(2), 5, &packet, 1200);
        frags.reverse();
        frags.insert(1, frags[0].clone());
        let mut r = Reassembler::default();
        assert_eq!(feed(&mut r, &frags, now), Some(packet));
        assert_eq!((r.pending(), r.bytes()), (0, 0));
    }

    #[test]
    fn one_sender_with_65536_fragment_ids_holds_little() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        for id in 0..=u16::MAX {
            // The first of two fragments, never the second.
            let f = fragment(NodeId(66), id, &[7u8; 2000], 1200).remove(0);
            assert_eq!(feed(&mut r, &[f], now), None);
        }
        assert!(r.pending() <= MAX_PARTIAL_PER_NODE, "{}", r.pending());
        assert!(r.bytes() <= MAX_BYTES_PER_NODE, "{}", r.bytes());
        // Another sender is not crowded out.
        let packet = vec![9u8; 2500];
        let frags = fragment(NodeId(3), 1, &packet, 1200);
        assert_eq!(feed(&mut r, &frags, now), Some(packet));
        // And everything old goes.
        let later = now + REASSEMBLY_TIMEOUT;
        let f = fragment(NodeId(4), 1, &[1u8; 2000], 1200).remove(0);
        feed(&mut r, &[f], later);
        assert_eq!(r.pending(), 1);
    }

    #[test]
    fn inconsistent_or_oversized_fragments_lose_the_datagram() {
        let now = Instant::now();
        let mut r = Reassembler::default();
        assert_eq!(r.push(NodeId(1), 1, 0, 3, &[1; 10], now), None);
        assert_eq!(
            r.push(NodeId(1), 1, 1, 2, &[1; 10], now),
            None,
            "count changed"
        );
        assert_eq!(r.pending(), 0);
        let big = vec![0u8; 40_000];
        assert_eq!(r.push(NodeId(1), 2, 0, 3, &big, now), None);
        assert_eq!(r.push(NodeId(1), 2, 1, 3, &big, now), None, "past 64 KiB");
        assert_eq!((r.pending(), r.bytes()), (0, 0));
        assert_eq!(r.push(NodeId(1), 3, 0, 1, &[5; 4], now), Some(vec![5; 4]));
    }

    #[test]
    fn node_rewrite_and_malformed_input() {
        let mut d = Datagram::Punch { node: NodeId(1) }.encode();
        assert!(Datagram::set_node(&mut d, NodeId(99)));
        assert_eq!(
            Datagram::parse(&d),
            Some(Datagram::Punch { node: NodeId(99) })
        );
        assert_eq!(Datagram::parse(&[]), None);
        assert_eq!(Datagram::parse(&[1, 0, 0]), None);
        assert_eq!(Datagram::parse(&[9; 20]), None);
        // index beyond count
        let mut bad = fragment(NodeId(1), 1, &[1; 10], 1200).remove(0);
        bad[11] = 3;
        bad[12] = 2;
        assert_eq!(Datagram::parse(&bad), None);
    }
}
