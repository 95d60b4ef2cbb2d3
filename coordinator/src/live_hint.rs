//! A lone coordinator's note of its hosts' live state: each node's online
//! flag and endpoints, and the netmap version it last changed at. The
//! registry appends a record for every change before any host can see the
//! version it makes, so after a restart the coordinator knows what every
//! host's cached netmap holds and what it is missing.
//!
//! Without it a restarted coordinator knows only the stored, durable part
//! of each node. Every host that reconnected would then be a change (offline
//! to online, no endpoints to some) sent to every other host: at 10,000
//! hosts, 100 million peer records in one reconnect storm. With it, a host
//! that comes back with the endpoints it had changes nothing, and a host
//! resuming at version `v` gets only the nodes that changed after `v`.
//!
//! It is a hint, not a record: appends are not fsync'd, since endpoints
//! change far too often to put a disk flush in their path (see
//! `store`). A `kill -9` loses nothing (the kernel has every byte written),
//! a machine crash may lose a tail. Each record carries a checksum, reading
//! stops at the first that does not match, and a host that saw a version
//! past the last record read gets what it would without a hint (a delta if
//! its peers match the coordinator's, else a snapshot).
//!
//! Hand-written framing (length, checksum, MessagePack record) because it
//! is an append-only file that must survive `kill -9` without an fsync per
//! append; redb commits without a flush are rolled back on reopen.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tracing::warn;
use weft_proto::{NodeId, Peer};

/// The file in the state dir.
pub const HINT_FILE: &str = "live-hint";
/// A record longer than this is damage, not a record (a node has at most
/// a few dozen endpoints).
const MAX_RECORD: usize = 16 * 1024;
/// Rewritten from the registry when it has grown past this many times its
/// size after the last rewrite (and past [`MIN_COMPACT`]).
const GROWTH: u64 = 4;
const MIN_COMPACT: u64 = 1 << 20;

#[derive(Debug, Serialize, Deserialize, PartialEq)]
enum Record {
    /// First in the file: the epoch its versions belong to, and the
    /// version from which on it holds every change.
    Start {
        epoch: u64,
        floor: u64,
    },
    Node {
        id: NodeId,
        version: u64,
        online: bool,
        endpoints: Vec<SocketAddr>,
    },
    Removed {
        id: NodeId,
        version: u64,
    },
    /// A version that changed no node (policy, services, routes).
    Version {
        version: u64,
    },
}

/// A node's live state as the hint last had it.
#[derive(Debug, Clone, PartialEq)]
pub struct Live {
    pub version: u64,
    pub online: bool,
    pub endpoints: Vec<SocketAddr>,
}

/// What a hint file held.
#[derive(Debug, Default, PartialEq)]
pub struct Loaded {
    /// Every change after this version is in the hint.
    pub floor: u64,
    /// The last version recorded: a host past it saw changes the hint
    /// lost.
    pub last: u64,
    pub nodes: HashMap<NodeId, Live>,
    /// Nodes removed after `floor`, and when.
    pub removed: HashMap<NodeId, u64>,
}

/// The appending end.
#[derive(Debug)]
pub struct LiveHint {
    path: PathBuf,
    file: Option<File>,
    written: u64,
    compacted: u64,
    buf: Vec<u8>,
}

fn frame(rec: &Record, out: &mut Vec<u8>) {
    let Ok(body) = rmp_serde::to_vec(rec) else {
        return;
    };
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(&Sha256::digest(&body)[..8]);
    out.extend_from_slice(&body);
}

/// Reads records until the end or the first damaged one.
fn records(bytes: &[u8]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 12 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len > MAX_RECORD || rest.len() < 12 + len {
            break;
        }
        let body = &rest[12..12 + len];
        if Sha256::digest(body)[..8] != rest[4..12] {
            break;
        }
        match rmp_serde::from_slice(body) {
            Ok(r) => out.push(r),
            Err(_) => break,
        }
        rest = &rest[12 + len..];
    }
    out
}

/// What the hint in `dir` says, if it belongs to `epoch`.
pub fn load(dir: &Path, epoch: u64) -> Option<Loaded> {
    let path = dir.join(HINT_FILE);
    let mut bytes = Vec::new();
    match File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn!(path = %path.display(), error = %e, "cannot read the live hint; hosts resume without it");
            return None;
        }
    }
    let mut recs = records(&bytes).into_iter();
    let Some(Record::Start { epoch: e, floor }) = recs.next() else {
        return None;
    };
    if e != epoch {
        return None;
    }
    let mut l = Loaded {
        floor,
        last: floor,
        ..Loaded::default()
    };
    for r in recs {
        match r {
            Record::Start { .. } => return None,
            Record::Node {
                id,
                version,
                online,
                endpoints,
            } => {
                l.removed.remove(&id);
                l.nodes.insert(
                    id,
                    Live {
                        version,
                        online,
                        endpoints,
                    },
                );
                l.last = l.last.max(version);
            }
            Record::Removed { id, version } => {
                l.nodes.remove(&id);
                l.removed.insert(id, version);
                l.last = l.last.max(version);
            }
            Record::Version { version } => l.last = l.last.max(version),
        }
    }
    Some(l)
}

impl LiveHint {
    /// A hint in `dir`, written from scratch by the first
    /// [`LiveHint::rewrite`].
    pub fn new(dir: &Path) -> Self {
        Self {
            path: dir.join(HINT_FILE),
            file: None,
            written: 0,
            compacted: 0,
            buf: Vec::new(),
        }
    }

    /// Notes a change of node `id` at `version` (`None`: removed).
    pub fn node(&mut self, version: u64, id: NodeId, peer: Option<&Peer>) {
        let rec = match peer {
            Some(p) => Record::Node {
                id,
                version,
                online: p.online,
                endpoints: p.endpoints.clone(),
            },
            None => Record::Removed { id, version },
        };
        self.append(&rec);
    }

    /// Notes a version that changed no node.
    pub fn version(&mut self, version: u64) {
        self.append(&Record::Version { version });
    }

    fn append(&mut self, rec: &Record) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        self.buf.clear();
        frame(rec, &mut self.buf);
        if let Err(e) = f.write_all(&self.buf) {
            self.fail(&e);
            return;
        }
        self.written += self.buf.len() as u64;
    }

    /// Whether it has grown enough to be rewritten.
    pub fn due(&self) -> bool {
        self.file.is_some() && self.written > MIN_COMPACT.max(self.compacted * GROWTH)
    }

    /// Replaces the file with one holding `nodes` (each with the version
    /// it last changed at) and `removed`, complete from `floor` on.
    pub fn rewrite<'a>(
        &mut self,
        epoch: u64,
        floor: u64,
        nodes: impl Iterator<Item = (u64, &'a Peer)>,
        removed: impl Iterator<Item = (u64, NodeId)>,
    ) {
        let mut out = Vec::new();
        frame(&Record::Start { epoch, floor }, &mut out);
        for (version, p) in nodes {
            frame(
                &Record::Node {
                    id: p.id,
                    version,
                    online: p.online,
                    endpoints: p.endpoints.clone(),
                },
                &mut out,
            );
        }
        for (version, id) in removed {
            frame(&Record::Removed { id, version }, &mut out);
        }
        let tmp = self.path.with_extension("tmp");
        let opened = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(&out)?;
                fs::rename(&tmp, &self.path)?;
                OpenOptions::new().append(true).open(&self.path)
            });
        match opened {
            Ok(f) => {
                self.file = Some(f);
                self.written = out.len() as u64;
                self.compacted = out.len() as u64;
            }
            Err(e) => self.fail(&e),
        }
    }

    /// A write failed: the file no longer tells the truth, so it goes, and
    /// nothing more is written (a restart then resumes hosts without it).
    fn fail(&mut self, e: &io::Error) {
        warn!(path = %self.path.display(), error = %e, "cannot write the live hint; after a restart every reconnecting host will be announced to all");
        self.file = None;
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u64, port: u16) -> Peer {
        Peer {
            endpoints: vec![SocketAddr::from(([192, 0, 2, 1], port))],
            online: true,
            ..crate::registry::tests::peer(id)
        }
    }

    #[test]
    fn appends_fold_into_the_latest_state_and_a_damaged_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = LiveHint::new(dir.path());
        let (a, b) = (peer(1, 10), peer(2, 20));
        h.rewrite(
            7,
            100,
            [(90, &a)].into_iter(),
            [(95, NodeId(9))].into_iter(),
        );
        h.node(101, NodeId(2), Some(&b));
        h.node(102, NodeId(1), Some(&peer(1, 11)));
        h.node(103, NodeId(2), None);
        h.version(104);
        let l = load(dir.path(), 7).unwrap();
        assert_eq!((l.floor, l.last), (100, 104));
        assert_eq!(l.nodes.len(), 1);
        assert_eq!(l.nodes[&NodeId(1)].version, 102);
        assert_eq!(l.nodes[&NodeId(1)].endpoints[0].port(), 11);
        assert_eq!(l.removed.get(&NodeId(2)), Some(&103));
        assert_eq!(l.removed.get(&NodeId(9)), Some(&95));
        // Another epoch's hint says nothing.
        assert!(load(dir.path(), 8).is_none());
        // A torn last record: everything before it still reads.
        let path = dir.path().join(HINT_FILE);
        let bytes = fs::read(&path).unwrap();
        fs::write(&path, &bytes[..bytes.len() - 3]).unwrap();
        let l = load(dir.path(), 7).unwrap();
        assert_eq!(l.last, 103);
        // A flipped byte in the middle ends the reading there.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n / 2] ^= 0xff;
        fs::write(&path, &bad).unwrap();
        let l = load(dir.path(), 7).unwrap_or_default();
        assert!(l.last < 104, "{l:?}");
        // Garbage is no hint.
        fs::write(&path, [0xffu8; 64]).unwrap();
        assert!(load(dir.path(), 7).is_none());
    }

    #[test]
    fn it_asks_to_be_rewritten_only_after_growing() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = LiveHint::new(dir.path());
        assert!(!h.due());
        let a = peer(1, 10);
        h.rewrite(1, 1, [(1, &a)].into_iter(), std::iter::empty());
        let mut v = 2;
        while !h.due() {
            h.node(v, NodeId(1), Some(&a));
            v += 1;
            assert!(v < 100_000, "never due");
        }
        assert!(h.written > MIN_COMPACT);
    }
}
