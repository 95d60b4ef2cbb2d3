//! Netmap updates folded into a map: an update that fails leaves the map
//! as it was.
#![no_main]
use libfuzzer_sys::fuzz_target;
use weft_proto::{Netmap, NetmapUpdate};

fuzz_target!(|data: &[u8]| {
    let Ok(updates) = rmp_serde::from_slice::<Vec<NetmapUpdate>>(data) else {
        return;
    };
    let mut map = Netmap::new();
    for u in updates.into_iter().take(64) {
        let before = map.to_snapshot();
        let (v, e) = (map.version(), map.epoch());
        if map.apply(u).is_err() {
            assert_eq!(map.to_snapshot(), before, "a failed update changed the map");
            assert_eq!((map.version(), map.epoch()), (v, e));
        }
    }
});
