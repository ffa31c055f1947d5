//! cargo-fuzz target `hub_msgpack`: feeds libFuzzer's input to `harness::hub_msgpack` (see fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::hub_msgpack(data));
