//! The flows this host started, so that their replies pass the inbound
//! filter.
//!
//! Hand-written because nothing maintained fits a packet path: the crates
//! that track connections either wrap the kernel's nf_conntrack (which
//! never sees packets of a userspace tunnel) or are general concurrent maps
//! that allocate, lock or grow. This is a fixed-size, set-associative table
//! of atomics: no allocation after start, no locks, a bounded number of
//! loads per lookup, and under pressure the least recently seen flow of a
//! bucket is forgotten (its replies are then judged by the filter again).
//!
//! A slot holds a 64-bit keyed hash of the flow (the seed is random per
//! process, so nobody outside can aim at a slot or forge a matching key)
//! and the second the flow was last seen. Races between the two threads
//! that write can only mix up the timestamps of flows that were recorded;
//! a flow nobody recorded can never be found.

use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use weft_proto::policy::ip_proto::{ICMP, ICMPV6, TCP, UDP};

/// Buckets in a table (a power of two).
const BUCKET_BITS: u32 = 14;
/// Flows per bucket.
const WAYS: usize = 4;

/// What a slot is about, in the low bits of its key; sets its lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u64)]
pub enum Class {
    Tcp = 1,
    Udp = 2,
    Icmp = 3,
    Other = 4,
    /// A fragmented datagram whose first fragment was admitted.
    Fragment = 5,
}

const CLASS_MASK: u64 = 7;

impl Class {
    pub fn of(proto: u8) -> Class {
        match proto {
            TCP => Class::Tcp,
            UDP => Class::Udp,
            ICMP | ICMPV6 => Class::Icmp,
            _ => Class::Other,
        }
    }

    /// Seconds a flow stays known after its last packet: TCP as long as
    /// RFC 5382 asks of a NAT for an established connection (2 h 4 min),
    /// UDP as Linux's conntrack for a replied stream, ICMP and fragments
    /// about as long as a reassembly or a ping can take.
    pub fn timeout(self) -> u32 {
        match self {
            Class::Tcp => 7440,
            Class::Udp => 120,
            Class::Icmp | Class::Fragment => 30,
            Class::Other => 600,
        }
    }

    fn of_key(key: u64) -> u32 {
        match key & CLASS_MASK {
            1 => Class::Tcp.timeout(),
            2 => Class::Udp.timeout(),
            3 => Class::Icmp.timeout(),
            4 => Class::Other.timeout(),
            5 => Class::Fragment.timeout(),
            _ => 0,
        }
    }
}

/// A flow from this host's side: what identifies it in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    pub local: IpAddr,
    pub remote: IpAddr,
    pub proto: u8,
    pub local_port: u16,
    pub remote_port: u16,
    pub class: Class,
}

impl FlowKey {
    /// The key as three words, for one cheap keyed hash.
    fn words(&self) -> (u128, u128, u64) {
        let bits = |a: IpAddr| match a {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 4u64),
            IpAddr::V6(a) => (u128::from(a), 6u64),
        };
        let (local, family) = bits(self.local);
        let (remote, _) = bits(self.remote);
        let tail = family << 56
            | u64::from(self.proto) << 48
            | u64::from(self.local_port) << 32
            | u64::from(self.remote_port) << 16
            | self.class as u64;
        (local, remote, tail)
    }
}

#[repr(align(64))]
#[derive(Default)]
struct Bucket {
    keys: [AtomicU64; WAYS],
    seen: [AtomicU32; WAYS],
}

/// The table of flows this host started. Shared by the packet threads.
pub struct Conntrack {
    buckets: Box<[Bucket]>,
    shift: u32,
    seed: RandomState,
    base: Instant,
}

impl Default for Conntrack {
    fn default() -> Self {
        Conntrack::with_bucket_bits(BUCKET_BITS)
    }
}

impl Conntrack {
    /// A table of `2^bits` buckets of four flows.
    pub fn with_bucket_bits(bits: u32) -> Conntrack {
        let bits = bits.clamp(1, 24);
        Conntrack {
            buckets: (0..1usize << bits).map(|_| Bucket::default()).collect(),
            shift: 64 - bits,
            seed: RandomState::new(),
            base: Instant::now(),
        }
    }

    /// The table's clock: whole seconds since it was made. Read once per
    /// batch of packets.
    pub fn now(&self) -> u32 {
        u32::try_from(self.base.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    fn slot_key(&self, flow: &FlowKey) -> u64 {
        (self.seed.hash_one(flow.words()) & !CLASS_MASK) | flow.class as u64
    }

    fn bucket(&self, key: u64) -> &Bucket {
        // The top bits choose the bucket (the low ones hold the class).
        let i = usize::try_from(key >> self.shift).unwrap_or(0);
        &self.buckets[i % self.buckets.len()]
    }

    /// Notes a packet of `flow` at second `now`: refreshes it if known,
    /// else takes the slot of an expired or the least recently seen flow.
    /// Stores nothing when the flow was already seen this second.
    pub fn record(&self, flow: &FlowKey, now: u32) {
        let key = self.slot_key(flow);
        let bucket = self.bucket(key);
        let mut victim = 0;
        let mut victim_rank = u32::MAX;
        for way in 0..WAYS {
            let k = bucket.keys[way].load(Relaxed);
            let seen = bucket.seen[way].load(Relaxed);
            if k == key {
                if seen < now {
                    bucket.seen[way].store(now, Relaxed);
                }
                return;
            }
            let age = now.saturating_sub(seen);
            // Empty and expired slots come first, then the oldest.
            let rank = if age >= Class::of_key(k) {
                0
            } else {
                seen.saturating_add(1)
            };
            if rank < victim_rank {
                victim = way;
                victim_rank = rank;
            }
        }
        bucket.seen[victim].store(now, Relaxed);
        bucket.keys[victim].store(key, Relaxed);
    }

    /// Whether `flow` was seen within its timeout; if so, marks it seen now
    /// (at most one store per flow per second).
    pub fn touch(&self, flow: &FlowKey, now: u32) -> bool {
        let key = self.slot_key(flow);
        let bucket = self.bucket(key);
        for way in 0..WAYS {
            if bucket.keys[way].load(Relaxed) != key {
                continue;
            }
            let seen = bucket.seen[way].load(Relaxed);
            if now.saturating_sub(seen) >= Class::of_key(key) {
                return false;
            }
            if seen < now {
                bucket.seen[way].store(now, Relaxed);
            }
            return true;
        }
        false
    }
}
