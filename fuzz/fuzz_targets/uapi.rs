//! UAPI `set` commands, as a local user (or `wg`) sends them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_mesh::uapi::protocol::parse_set;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_set(s.lines());
    }
});
