//! Disco datagrams from anyone on the network: decoding, MAC checks and the
//! replay guard never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_proto::disco::{DiscoMsg, ReplayGuard};

fuzz_target!(|data: &[u8]| {
    let key = [7u8; 32];
    let mut guard = ReplayGuard::default();
    if let Ok(u) = DiscoMsg::decode(data) {
        let _ = u.sender();
        if let Ok(DiscoMsg::Ping { txid, sent_at, .. }) = u.verify(&key) {
            guard.accept(sent_at, &txid);
            assert!(!guard.accept(sent_at, &txid), "a ping counted twice");
        }
    }
    if let Ok(u) = DiscoMsg::decode(data) {
        let _ = u.unauthenticated();
    }
});
