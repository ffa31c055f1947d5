//! cargo-fuzz target `order_body`: feeds libFuzzer's input to `harness::order_body` (see fuzz/harness.rs).
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::order_body(data));
