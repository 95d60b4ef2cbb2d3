//! CIDR, port and selector specs as users write them.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_proto::policy::{Cidr, PortSpec, Selector};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = s.parse::<Cidr>() {
        let again: Cidr = c.to_string().parse().expect("a CIDR's own text parses");
        assert_eq!(again, c);
        let _ = Cidr::subtract(&[c], &[Cidr::host(c.addr())]);
    }
    let _ = s.parse::<PortSpec>();
    let _ = Selector::parse(s);
});
