#!/usr/bin/env bash
# Retention numbers (docs/performance.md, "Retention"), release build:
#  1. write latency p50/p99 and server CPU per transition with the sweeper busy vs a server
#     without retention: `ordertrack-load write --baseline`, alternating rounds in one run;
#  2. file size over time while N orders (placed, then walked to Delivered) go through a
#     retention window, then `db compact`.
#   scripts/retention-long.sh                 N=1,000,000 orders, 60 s window
#   N=100000 RETAIN=20s CHUNK=10000 scripts/retention-long.sh   (the run in docs/performance.md)
#   NO_BUILD=1 …                              use the release binaries already built
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}        # orders through the retention window
RETAIN=${RETAIN:-60s}  # --retain-finished, --outbox-retention and --idempotency-ttl of run 2
CHUNK=${CHUNK:-20000}  # orders per load step; one file-size sample after each
WRITES=${WRITES:-120000} # transitions of run 1 (over 6 alternating rounds)
[ -n "${NO_BUILD:-}" ] || cargo build --release --quiet --bin ordertrack --bin ordertrack-load
OT=${OT:-target/release/ordertrack}
LOAD=${LOAD:-target/release/ordertrack-load}
SECRET=retention-secret-0123456789abcdef
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n 20000 2>/dev/null || true

start() { # $1 = name, $2 = port, rest = flags; sets PID_<name>
  local name=$1 port=$2; shift 2
  "$OT" serve --listen 127.0.0.1:$port --data-dir "$WORK/$name" --jwt-secret $SECRET "$@" \
    >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  printf -v "PID_$name" %s "$pid"
  for _ in $(seq 1 1000); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  echo "server $name did not start"; cat "$WORK/$name.log"; exit 1
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
series() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1 == k {print $2}'; }
size() { stat -c %s "$WORK/$1/orders.redb"; }

echo "# ordertrack retention report — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores (shared: other work may run)"
echo
echo "## 1. Write latency with the sweeper busy vs without retention (same run, alternating rounds)"
echo
P1=$((20000 + RANDOM % 20000)); P2=$((P1 + 1))
start sweep $P1 --retain-finished 1s --outbox-retention 1s --idempotency-ttl 1s --sweep-interval 1s
start plain $P2 --retain-finished off --outbox-retention off --idempotency-ttl off
C1=$(ticks "$PID_sweep"); C2=$(ticks "$PID_plain")
"$LOAD" --addr 127.0.0.1:$P1 --secret $SECRET write --writers 64 --transitions "$WRITES" --rounds 6 \
  --baseline 127.0.0.1:$P2 --baseline-label "no retention (sweeper off)" | sed 's/^| ordertrack |/| sweeper on (1 s windows) |/'
sleep 3 # the last round's orders are swept too, and counted in the CPU
C1=$(( $(ticks "$PID_sweep") - C1 )); C2=$(( $(ticks "$PID_plain") - C2 ))
HZ=$(getconf CLK_TCK)
echo
echo "server CPU per transition (whole run, sweeping included): sweeper on $(awk -v c=$C1 -v n=$WRITES -v hz=$HZ 'BEGIN{printf "%.1f", c/hz*1e6/n}') µs, off $(awk -v c=$C2 -v n=$WRITES -v hz=$HZ 'BEGIN{printf "%.1f", c/hz*1e6/n}') µs"
echo "swept by the sweeper server: orders $(series $P1 'ordertrack_swept_total{kind="orders"}'), events $(series $P1 'ordertrack_swept_total{kind="outbox_events"}'); kept orders $(series $P1 'ordertrack_kept_rows{kind="orders"}')"
kill -TERM "$PID_sweep" "$PID_plain"; wait "$PID_sweep" "$PID_plain" 2>/dev/null || true

echo
echo "## 2. File size while $N orders go through a $RETAIN window ($CHUNK orders per step, each placed and walked to Delivered)"
echo
P3=$((P2 + 1))
start window $P3 --retain-finished "$RETAIN" --outbox-retention "$RETAIN" --idempotency-ttl "$RETAIN" --sweep-interval 10s
T0=$(date +%s)
echo "| elapsed s | orders through | file MB | kept orders | swept orders | kept events |"
echo "|---|---|---|---|---|---|"
done_n=0
while [ "$done_n" -lt "$N" ]; do
  "$LOAD" --addr 127.0.0.1:$P3 --secret $SECRET write --writers 64 --transitions $((CHUNK * 4)) --rounds 1 >/dev/null
  done_n=$((done_n + CHUNK))
  printf '| %s | %s | %.1f | %s | %s | %s |\n' $(( $(date +%s) - T0 )) $done_n \
    "$(awk -v b="$(size window)" 'BEGIN{print b/1048576}')" \
    "$(series $P3 'ordertrack_kept_rows{kind="orders"}')" \
    "$(series $P3 'ordertrack_swept_total{kind="orders"}')" \
    "$(series $P3 'ordertrack_kept_rows{kind="outbox_events"}')"
done
kill -TERM "$PID_window"; wait "$PID_window" 2>/dev/null || true
echo
echo "db compact afterwards: $("$OT" db compact --data-dir "$WORK/window")"
