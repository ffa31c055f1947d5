//! cargo-fuzz target `jwt`: feeds libFuzzer's input to `harness::jwt` (see fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::jwt(data));
