//! cargo-fuzz target `handshake`: feeds libFuzzer's input to `harness::handshake` (see fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::handshake(data));
