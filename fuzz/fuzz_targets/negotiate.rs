//! cargo-fuzz target `negotiate`: feeds libFuzzer's input to `harness::negotiate` (see fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::negotiate(data));
