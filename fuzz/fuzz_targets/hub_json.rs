//! cargo-fuzz target `hub_json`: feeds libFuzzer's input to `harness::hub_json` (see fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::hub_json(data));
