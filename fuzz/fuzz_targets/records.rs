//! Records read back from the coordinator's database (a damaged or foreign
//! file must be an error, not a crash).
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_coordinator::store::{NodeRecord, TokenRecord};

fuzz_target!(|data: &[u8]| {
    let _ = rmp_serde::from_slice::<NodeRecord>(data);
    let _ = rmp_serde::from_slice::<TokenRecord>(data);
    let _ = rmp_serde::from_slice::<weft_proto::policy::PacketFilter>(data);
});
