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
