#!/usr/bin/env bash
# The long versions of the reliability tests (issue 5; docs/reliability.md). Each step is the
# same test `scripts/test.sh` runs short, scaled up by environment variables, in release mode.
# Prints every RESULT line at the end. Takes about 30 minutes plus FUZZ_SECONDS x 6 (the
# 1,000,000-order recovery file needs ~1.3 GB of disk in $TMPDIR). Needs root for the tmpfs
# full-disk test (it says SKIPPED otherwise).
#   scripts/reliability-long.sh             # everything
#   STEPS="kill storm" scripts/reliability-long.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ulimit -n 20000 2>/dev/null || true
log="${RELIABILITY_LOG:-target/reliability-long.log}"
mkdir -p "$(dirname "$log")"
: >"$log"
steps="${STEPS:-kill powercut sigterm clock disk limits slow storm tokens authz roundtrip fuzz-stable recovery fuzz}"

run() {
  local name="$1"; shift
  printf '\n== %s: %s\n' "$name" "$*" | tee -a "$log"
  local started=$SECONDS
  "$@" 2>&1 | tee -a "$log" | grep -E 'RESULT|test result|panicked|FAILED|SKIPPED' || true
  printf '   (%s s)\n' $((SECONDS - started)) | tee -a "$log"
}

cargo build --release --tests --quiet
for step in $steps; do
  case "$step" in
    kill) run "kill -9 cycles" env OT_KILL_CYCLES=20 OT_KILL_WRITERS=6 \
            cargo test --release --quiet --test reliability_crash kill9 -- --nocapture ;;
    powercut) run "power cuts (only synced state kept)" env OT_POWERCUT_CYCLES=30 OT_POWERCUT_MS=3000 \
            OT_POWERCUT_WRITERS=6 cargo test --release --quiet --test reliability_powercut -- --nocapture ;;
    sigterm) run "SIGTERM under load" \
            cargo test --release --quiet --test reliability_crash sigterm -- --nocapture ;;
    clock) run "clock going back" \
            cargo test --release --quiet --test reliability_crash last_update -- --nocapture ;;
    disk) run "full disk" cargo test --release --quiet --test reliability_disk -- --nocapture ;;
    limits) run "caps and deadlines" \
            cargo test --release --quiet --test reliability_limits -- --nocapture ;;
    slow) run "silent subscribers" env OT_SLOW_CLIENTS=5000 OT_SLOW_EVENTS=1000 \
            cargo test --release --quiet --test reliability_flood thousand -- --nocapture ;;
    storm) run "reconnect storm" env OT_STORM_CLIENTS=10000 \
            cargo test --release --quiet --test reliability_flood storm -- --nocapture ;;
    tokens) run "tokens" cargo test --release --quiet --test reliability_tokens -- --nocapture ;;
    authz) run "authorization" env OT_AUTHZ_CASES=400 \
            cargo test --release --quiet --test reliability_authz -- --nocapture ;;
    roundtrip) run "round trips" env PROPTEST_CASES=20000 \
            cargo test --release --quiet --test reliability_roundtrip -- --nocapture ;;
    fuzz-stable) run "stable fuzz" env OT_FUZZ_CASES=200000 \
            cargo test --release --quiet --test reliability_fuzz -- --nocapture ;;
    recovery) run "crash recovery, 1,000,000 orders" env OT_RECOVERY_ORDERS=1000000 \
            cargo test --release --quiet --test reliability_recovery -- --nocapture ;;
    fuzz) run "cargo-fuzz" env FUZZ_SECONDS="${FUZZ_SECONDS:-600}" scripts/fuzz.sh ;;
    *) echo "unknown step $step" >&2; exit 2 ;;
  esac
done
printf '\n== summary (full log: %s)\n' "$log"
grep -Eo 'RESULT.*' "$log" || true
grep -E '^[a-z_]+ +(ok|CRASH) ' "$log" || true
