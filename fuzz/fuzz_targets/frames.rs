//! The frame codec and every message a peer can send before or after it
//! is authenticated.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_proto::codec;
use weft_proto::msg::{ClientMsg, Hello, ServerMsg};

fuzz_target!(|data: &[u8]| {
    if let Some(header) = data.get(..codec::HEADER_LEN) {
        let mut h = [0u8; codec::HEADER_LEN];
        h.copy_from_slice(header);
        if let Ok(len) = codec::frame_len(h) {
            assert!(len <= codec::MAX_FRAME_LEN);
        }
    }
    let _ = codec::decode::<Hello>(data);
    let _ = codec::decode::<ClientMsg>(data);
    if let Ok(m) = codec::decode::<ServerMsg>(data) {
        // What decodes encodes again.
        let _ = codec::encode(&m);
    }
});
