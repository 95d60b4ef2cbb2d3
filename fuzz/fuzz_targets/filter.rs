//! The inbound packet filter on packets a peer sends after decryption.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_mesh::dataplane::filter::{parse, Conntrack, InboundFilter};
use weft_proto::policy::PacketFilter;

/// One filter and one connection table for every input (the table is big:
/// building it per input would be most of the work).
fn state() -> &'static (InboundFilter, Conntrack) {
    static STATE: std::sync::OnceLock<(InboundFilter, Conntrack)> = std::sync::OnceLock::new();
    STATE.get_or_init(|| {
        let filter = InboundFilter::new(PacketFilter {
            rules: Vec::new(),
            default: weft_proto::policy::Action::Deny,
        });
        (filter, Conntrack::default())
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    let (filter, ct) = state();
    let _ = filter.check(ct, 1, data);
    let _ = filter.check_from(ct, 2, data, |_| false);
});
