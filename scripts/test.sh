#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit/property/integration tests through the real
# binary, the loom model checks of the subscription table, and the interop suite with the
# official SignalR clients (Node and headless Chromium), and the README's own commands run as
# written (scripts/readme-check.sh). CI runs this line as the README shows it (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }

step "test dependencies (npm packages, chromium)"
bash scripts/install-test-deps.sh

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings

step "cargo test (unit, property, integration; benches run once in test mode)"
cargo test --all-targets


step "interop with the official @microsoft/signalr client (Node + Chromium)"
ORDERTRACK_BIN="$PWD/target/debug/ordertrack" bash scripts/interop.sh

step "the README's own commands, as written (fresh copy of the tree, release build)"
bash scripts/readme-check.sh

step "load tools at a tiny size (the full run is scripts/bench.sh)"
bash scripts/bench.sh tiny >/dev/null

# Last: building with the `loom` feature also rebuilds target/debug/ordertrack with loom's
# mutexes, which only work inside a loom model; nothing after this step may run that binary.
step "loom model checks of the subscription table"
cargo test --quiet --features loom --test loom_subscriptions

step "all green"
