//! The CNI plugin's input: its network configuration on stdin and its
//! environment. The plugin is part of the `weft` binary, so its pure
//! modules are compiled in from their source.
#![no_main]
use libfuzzer_sys::fuzz_target;

mod plugin;
use plugin as cni;

fuzz_target!(|data: &[u8]| {
    let _ = cni::config::NetConf::parse(data);
    // The rest of the input as environment lines, NAME=value.
    let text = String::from_utf8_lossy(data);
    let env: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let _ = cni::invocation::Invocation::from_env(|k| {
        env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    });
});
