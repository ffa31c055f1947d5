#!/usr/bin/env bash
# Long fuzzing with cargo-fuzz on stable (--sanitizer none): runs every target in fuzz/ for
# FUZZ_SECONDS each (default 300) from a scratch corpus seeded with the committed one
# (fuzz/corpus/<target>, kept small), and prints executions and time per target. A crash stops
# that target; copy its input from fuzz/artifacts/<target>/ to fuzz/regressions/<target>/ so
# `cargo test --test reliability_fuzz` replays it forever.
#   scripts/fuzz.sh                 # all targets, 300 s each
#   FUZZ_SECONDS=60 scripts/fuzz.sh jwt order_body
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz
seconds="${FUZZ_SECONDS:-300}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(hub_json hub_msgpack handshake negotiate order_body jwt)
cargo fuzz build --sanitizer none -O
status=0
for t in "${targets[@]}"; do
  mkdir -p "work/$t"
  log="work/$t.log"
  if cargo fuzz run "$t" --sanitizer none -O "work/$t" "corpus/$t" -- \
      -max_total_time="$seconds" -max_len=8192 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then result=ok; else result=CRASH; status=1; fi
  runs=$(grep -Eo 'Done [0-9]+ runs in [0-9]+ second' "$log" | tail -1 || true)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 || true)
  corpus=$(find "work/$t" -type f | wc -l)
  printf '%-12s %-6s %s, %s, %s inputs in the work corpus\n' "$t" "$result" "${runs:-no stats}" "${cov:-}" "$corpus"
  if [ "$result" = CRASH ]; then grep -E 'panicked|SUMMARY|artifact_prefix|Test unit written' "$log" | head -5; fi
done
exit $status
