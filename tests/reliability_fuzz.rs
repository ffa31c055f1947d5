//! Hostile input without libFuzzer (issue 5): every committed fuzz corpus file and every input
//! that once crashed a target (`fuzz/regressions/<target>/`) is replayed through the same
//! harness the cargo-fuzz targets use, and each target also gets a burst of random and mutated
//! inputs on stable. `OT_FUZZ_CASES` sets the random inputs per target (short: 3,000).
//! The long runs use cargo-fuzz: `scripts/fuzz.sh`.

#[path = "../fuzz/harness.rs"]
mod harness;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;

type Target = (&'static str, fn(&[u8]));

const TARGETS: [Target; 6] = [
    ("hub_json", harness::hub_json),
    ("hub_msgpack", harness::hub_msgpack),
    ("handshake", harness::handshake),
    ("negotiate", harness::negotiate),
    ("order_body", harness::order_body),
    ("jwt", harness::jwt),
];

/// The files of `fuzz/<kind>/<target>/`, sorted.
fn inputs(kind: &str, target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .filter_map(|e| {
                    let bytes = std::fs::read(e.path()).ok()?;
                    Some((e.file_name().to_string_lossy().into_owned(), bytes))
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn corpora_and_past_crashes_replay_cleanly() {
    let mut total = 0;
    for (name, run) in TARGETS {
        let corpus = inputs("corpus", name);
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let crashes = inputs("regressions", name);
        for (file, bytes) in corpus.iter().chain(&crashes) {
            let r = std::panic::catch_unwind(|| run(bytes));
            assert!(r.is_ok(), "{name}: input {file} panics");
            total += 1;
        }
    }
    eprintln!("RESULT fuzz replay: {total} corpus and regression inputs, no panic");
}

/// Random bytes, and corpus files with random bytes flipped, inserted, cut and spliced.
fn mutated(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let random = proptest::collection::vec(any::<u8>(), 0..512);
    let edit = (
        proptest::sample::select(seeds),
        proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..4), 1..8),
    )
        .prop_map(|(mut s, edits)| {
            for (at, byte, op) in edits {
                let i = if s.is_empty() { 0 } else { at % s.len() };
                match op {
                    0 if !s.is_empty() => s[i] = byte,
                    1 => s.insert(i, byte),
                    2 if !s.is_empty() => {
                        s.truncate(i);
                    }
                    _ => {
                        let copy = s[i..].to_vec();
                        s.extend_from_slice(&copy);
                    }
                }
            }
            s
        });
    prop_oneof![1 => random, 3 => edit]
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let cases: u32 = std::env::var("OT_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let started = std::time::Instant::now();
    for (name, run) in TARGETS {
        let seeds: Vec<Vec<u8>> = inputs("corpus", name).into_iter().map(|(_, b)| b).collect();
        let mut runner = TestRunner::new(Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&mutated(seeds), |input| {
            let r = std::panic::catch_unwind(|| run(&input));
            prop_assert!(r.is_ok(), "{} panics on {:?}", name, input);
            Ok(())
        });
        if let Err(e) = result {
            panic!("{name}: {e}");
        }
    }
    eprintln!(
        "RESULT stable fuzz: {} inputs per target x {} targets in {:?}, no panic",
        cases,
        TARGETS.len(),
        started.elapsed()
    );
}
