//! DNS queries to a host's resolver for services.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_mesh::agent::dns::{answer, DnsRecords};

fuzz_target!(|data: &[u8]| {
    let records = DnsRecords::new(
        "weft.internal",
        [
            ("db".to_string(), "100.64.1.7".parse().expect("ip")),
            ("a.b.web".to_string(), "100.64.2.9".parse().expect("ip")),
        ],
    );
    if let Some(reply) = answer(&records, data) {
        assert!(reply.len() <= 1232);
    }
});
