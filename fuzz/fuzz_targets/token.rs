//! Join tokens as users paste them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_proto::token::JoinToken;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = s.parse::<JoinToken>() {
            let again: JoinToken = t.encode().parse().expect("a token's own text parses");
            assert_eq!(again.encode(), t.encode());
        }
    }
});
