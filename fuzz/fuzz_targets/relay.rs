//! Relay datagrams and their reassembly: whatever arrives, memory stays
//! within the reassembler's bounds.
#![no_main]
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_proto::relay::{Datagram, Reassembler, MAX_BYTES, MAX_PARTIAL};

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut r = Reassembler::default();
    // The input is a sequence of datagrams, each prefixed by its length
    // and a time step.
    let mut rest = data;
    let mut now = t0;
    while rest.len() >= 2 {
        let len = usize::from(rest[0]) * 8;
        now += Duration::from_millis(u64::from(rest[1]));
        rest = &rest[2..];
        let (d, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        if let Some(Datagram::Relay { node, id, index, count, payload }) = Datagram::parse(d) {
            if let Some(p) = r.push(node, id, index, count, payload, now) {
                assert!(p.len() <= weft_proto::relay::MAX_DATAGRAM);
            }
        }
        let _ = Datagram::node(d);
        assert!(r.pending() <= MAX_PARTIAL && r.bytes() <= MAX_BYTES);
    }
});
