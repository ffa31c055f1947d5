#!/usr/bin/env bash
# Runs the SignalR interop suite (official @microsoft/signalr client, Node + Chromium)
# against the ordertrack binary. The runner starts and stops the server itself.
#
#   scripts/interop.sh [run.mjs arguments, e.g. --only a,e]
#
# Environment:
#   ORDERTRACK_BIN          binary to test (default: target/debug/ordertrack, built with
#                           `cargo build` if it does not exist yet)
#   INTEROP_SKIP_BROWSER=1  skip the Chromium scenarios and the chromium install
#                           (local debugging only; CI runs everything)
# See scripts/interop/run.mjs for the other INTEROP_* variables.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

bin="${ORDERTRACK_BIN:-$repo/target/debug/ordertrack}"
if [ ! -x "$bin" ]; then
    if [ -n "${ORDERTRACK_BIN:-}" ]; then
        echo "interop: ORDERTRACK_BIN=$bin is not an executable file" >&2
        exit 1
    fi
    echo "interop: $bin not found; running cargo build" >&2
    cargo build --quiet --bin ordertrack
fi
export ORDERTRACK_BIN="$bin"

bash "$repo/scripts/install-test-deps.sh"

set +e
node "$repo/scripts/interop/run.mjs" "$@"
status=$?
set -e
exit "$status"
