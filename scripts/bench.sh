#!/usr/bin/env bash
# Load scenarios against the real server, printed as one markdown report that ends with one
# summary table (every scenario against its target).
#   scripts/bench.sh            full size (19,000 hub connections, 1,000,000 orders on disk)
#   scripts/bench.sh tiny       a few seconds, for CI: proves the tools keep working
#   scripts/bench.sh tls        only the TLS numbers (handshakes/s, status poll CPU over TLS vs
#                               plain): scripts/bench-tls.sh
# fanout + hold also runs against a socket.io 4.8 peer (scripts/peer/, Node) with the same sizes,
# printed side by side with ordertrack; its npm packages come from scripts/install-test-deps.sh.
# Speeds are reported next to a baseline measured in the same run (see ordertrack-load).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE=${1:-full}
if [ "$SIZE" = tls ]; then
  cargo build --release --quiet --bin ordertrack
  exec bash scripts/bench-tls.sh
fi
if [ "$SIZE" = tiny ]; then
  CONNS=200; RATE=200; CHANGES=400; POLL_S=2; WRITES=800; STORM=200; SEED=5000
  CPU_S=1; CPU_ROUNDS=1; FAN_SUBS=100; FAN_CHANGES=10; E2E_CONNS=200; E2E_RATE=200; E2E_CHANGES=400
else
  CONNS=19000; RATE=2000; CHANGES=40000; POLL_S=10; WRITES=24000; STORM=19000; SEED=1000000
  CPU_S=3; CPU_ROUNDS=3; FAN_SUBS=2000; FAN_CHANGES=20; E2E_CONNS=10000; E2E_RATE=1000; E2E_CHANGES=20000
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
if [ "$SIZE" = tiny ]; then
  # Only proves the tools work: the debug build the test suite already made is enough.
  cargo build --quiet --bin ordertrack --bin ordertrack-load
  OT=target/debug/ordertrack
  LOAD=target/debug/ordertrack-load
else
  cargo build --release --quiet --bin ordertrack --bin ordertrack-load
  OT=target/release/ordertrack
  LOAD=target/release/ordertrack-load
fi
SECRET=bench-secret-0123456789
WORK=$(mktemp -d)
PORT=$((20000 + RANDOM % 20000))
SERVER_PID=
PEER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true
  [ -n "$PEER_PID" ] && kill "$PEER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Load clients hold many connections per token (one staff token, a few hundred customers),
# so the per-user hub cap is lifted here: these scenarios measure fan-out, not that cap.
start_server() { # $1 = data dir
  "$OT" serve --listen 127.0.0.1:$PORT --data-dir "$1" --jwt-secret $SECRET \
    --max-connections 19900 --max-hub-connections 19500 --hub-max-connections-per-user 19500 --hub-max-subscriptions-per-user 19500 \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 500); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && return 0
    sleep 0.01
  done
  echo "server did not start"; cat "$WORK/server.log"; exit 1
}
stop_server() { kill -TERM "$SERVER_PID"; wait "$SERVER_PID" || true; SERVER_PID=; }
run() { echo; echo "### $1"; echo; shift; "$LOAD" --addr 127.0.0.1:$PORT --secret $SECRET "$@"; }

# The socket.io peer: one Node process, in-memory orders, the same secret.
PEER_PORT=$((PORT + 1))
start_peer() {
  if [ ! -d scripts/peer/node_modules/socket.io ]; then
    echo "scripts/peer/node_modules is missing: run scripts/install-test-deps.sh"; exit 1
  fi
  node scripts/peer/socketio-peer.mjs --port $PEER_PORT --secret $SECRET >"$WORK/peer.log" 2>&1 &
  PEER_PID=$!
  for _ in $(seq 1 500); do
    if grep -q '^listening' "$WORK/peer.log"; then
      # The pid Node reports itself (for RSS), in case $! is a wrapper.
      PEER_NODE_PID=$(awk '/^listening/ {print $NF; exit}' "$WORK/peer.log")
      return 0
    fi
    sleep 0.01
  done
  echo "socket.io peer did not start"; cat "$WORK/peer.log"; exit 1
}
stop_peer() { kill -TERM "$PEER_PID"; wait "$PEER_PID" || true; PEER_PID=; }
# The value of row $2 in the markdown table saved in file $1.
row() { awk -F' [|] ' -v k="$2" '$1 == "| " k {sub(/ [|]$/, "", $2); print $2; exit}' "$1"; }

echo "# ordertrack load report ($SIZE) — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r)"
start_server "$WORK/data"
FANOUT=(fanout --connections $CONNS --rate $RATE --changes $CHANGES --sources 8)
run "fanout + hold: $CONNS subscribed hub connections, $RATE changes/s" \
  --server-pid "$SERVER_PID" "${FANOUT[@]}" | tee "$WORK/fanout-ordertrack.md"
stop_server
start_peer
echo; echo "### fanout + hold against the socket.io 4.8 peer (Node $(node --version)), same sizes"; echo
"$LOAD" --addr 127.0.0.1:$PEER_PORT --secret $SECRET --server-pid "$PEER_NODE_PID" --peer socketio \
  "${FANOUT[@]}" | tee "$WORK/fanout-socketio.md"
stop_peer
echo; echo "### side by side: ordertrack vs socket.io 4.8 ($CONNS connections, $RATE changes/s)"; echo
echo "| metric | ordertrack (SignalR JSON) | socket.io 4.8 (Node, one process) |"
echo "|---|---|---|"
for k in "hub connections (subscribed)" "connect+handshake+subscribe rate" \
  "server RSS before / after connections" "server RSS per subscribed connection" \
  "status changes answered 2xx" "events received" \
  "latency HTTP answer → arrival p50 / p99 / max" "lost / duplicated"; do
  echo "| $k | $(row "$WORK/fanout-ordertrack.md" "$k") | $(row "$WORK/fanout-socketio.md" "$k") |"
done
# hold: the same number of connections opened by 2 client processes (each far under its
# open-file limit) over 8 source addresses, on a fresh server so memory freed by the fanout run
# does not flatter the RSS per connection; full size holds 20 s (past a keep-alive round).
if [ "$SIZE" = tiny ]; then HOLD_S=0; else HOLD_S=20; fi
start_server "$WORK/hold"
run "hold: $CONNS subscribed hub connections from 2 client processes" --server-pid "$SERVER_PID" \
  hold --connections $CONNS --processes 2 --sources 8 --hold-secs $HOLD_S | tee "$WORK/hold.md"
stop_server
start_server "$WORK/data2"
# Server CPU per operation on the REST paths (issue 15): wrk drives the server and a bare hyper
# server answering the same status and body size, in alternating rounds; medians of the rounds.
command -v wrk >/dev/null || { echo "wrk is missing: run scripts/install-test-deps.sh"; exit 1; }
run "cpu: server CPU per operation vs a bare hyper server, same run (wrk)" --server-pid "$SERVER_PID" \
  cpu --connections 32 --seconds $CPU_S --rounds $CPU_ROUNDS | tee "$WORK/cpu.md"
# The hub rows, measured the same way: a connect (negotiate + WebSocket + handshake + subscribe
# + close) and an event delivered to each of many subscribers, against a bare hyper +
# tokio-tungstenite server doing the same round trips / sending the same frames.
run "hubcpu: server CPU per hub operation vs a bare WebSocket server, same run" --server-pid "$SERVER_PID" \
  hub-cpu --connectors 16 --seconds $CPU_S --rounds $CPU_ROUNDS --subscribers $FAN_SUBS --changes $FAN_CHANGES \
  | tee "$WORK/hubcpu.md"
# One status change end to end (HTTP write → commit → event to its one subscriber): server CPU
# per change at the issue's rate and size.
run "e2e: $E2E_CONNS subscribers, $E2E_RATE status changes/s, server CPU per change" --server-pid "$SERVER_PID" \
  fanout --connections $E2E_CONNS --rate $E2E_RATE --changes $E2E_CHANGES --sources 8 | tee "$WORK/e2e.md"
run "poll: GET /status vs a bare hyper server, same run (throughput, tokio client)" poll --connections 32 --seconds $POLL_S \
  | tee "$WORK/poll.md"
# The write baseline: a second server committing every request alone (no group commit, no
# commit log), given the same workload in alternating rounds of the same run.
BASE_PORT=$((PORT + 2))
"$OT" serve --listen 127.0.0.1:$BASE_PORT --data-dir "$WORK/base" --jwt-secret $SECRET \
  --writer-max-batch 1 --commit-log-mb 0 >"$WORK/base.log" 2>&1 &
BASE_PID=$!
for _ in $(seq 1 500); do
  curl -sf "http://127.0.0.1:$BASE_PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.01
done
run "write: durable transitions from 64 concurrent writers vs one commit per request" \
  write --writers 64 --transitions $WRITES --rounds 3 \
  --baseline 127.0.0.1:$BASE_PORT --baseline-label "one commit per request" | tee "$WORK/write.md"
kill -TERM $BASE_PID; wait $BASE_PID || true
run "storm: $STORM clients drop and come back at once" storm --connections $STORM --sources 8 \
  | tee "$WORK/storm.md"
stop_server

echo; echo "### restart: $SEED orders on disk"; echo
"$LOAD" seed --data-dir "$WORK/big" --orders $SEED
T0=$(date +%s%N)
start_server "$WORK/big"
T1=$(date +%s%N)
RSS=$(awk '/VmRSS/ {print $2}' /proc/$SERVER_PID/status)
SIZE_MB=$(( $(stat -c %s "$WORK/big/orders.redb") / 1048576 ))
echo "| metric | value |"
echo "|---|---|"
READY_MS=$(( (T1 - T0) / 1000000 ))
echo "| start to /readyz with $SEED orders (${SIZE_MB} MiB file) | $READY_MS ms |"
echo "| server RSS after start | ${RSS} KiB |"
stop_server

# One table with every scenario against its target (issue 4), from the tables above.
W=$(awk -F' [|] ' '$1 == "| ordertrack" {sub(/ [|]$/, "", $4); print $3 "/s, p50 / p99 / max " $4; exit}' "$WORK/write.md")
WB=$(awk -F' [|] ' '$1 == "| one commit per request" {print $3 "/s"; exit}' "$WORK/write.md")
WR=$(grep -o '\*\*[0-9.]*×\*\*' "$WORK/write.md" | tr -d '*')
echo; echo "## Summary ($SIZE)"; echo
echo "| scenario | result | target at full size |"
echo "|---|---|---|"
echo "| hold: $CONNS connections, 2 client processes | $(row "$WORK/hold.md" "server RSS per subscribed connection") per connection; $(row "$WORK/hold.md" "connect+handshake+subscribe rate") | 19,000 at ≤ 8 KiB each |"
echo "| fanout: $CONNS subscribers, $RATE changes/s | answer → arrival p50 / p99 / max $(row "$WORK/fanout-ordertrack.md" "latency HTTP answer → arrival p50 / p99 / max"); lost / dup $(row "$WORK/fanout-ordertrack.md" "lost / duplicated") | p99 ≤ 50 ms, 0 lost, 0 duplicated |"
echo "| peer (socket.io 4.8), same fanout | $(row "$WORK/fanout-socketio.md" "server RSS per subscribed connection") per connection; p50 / p99 / max $(row "$WORK/fanout-socketio.md" "latency HTTP answer → arrival p50 / p99 / max"); lost / dup $(row "$WORK/fanout-socketio.md" "lost / duplicated") | side by side |"
# The CPU ratio column (median of the rounds) of each path in the cpu table.
cpu_ratio() { awk -F' [|] ' -v k="$1" 'index($1, "| " k) == 1 {print $5; exit}' "$WORK/cpu.md" | tr -d '*'; }
echo "| server CPU per request vs bare hyper: status 200 / 304 / details / history page 1 | $(cpu_ratio "GET /status, 200") / $(cpu_ratio "GET /status, 304") / $(cpu_ratio "GET /orders/{id}") / $(cpu_ratio "GET /orders/my") | ≤ 1.3× / 1.2× / 1.6× / 2.0× |"
# Median µs per operation (ordertrack / bare) and the ratio of a row of the hub table.
hub_row() { awk -F' [|] ' -v k="$1" 'index($1, "| " k) == 1 {print $2 " / " $3 " µs, " $4; exit}' "$WORK/hubcpu.md" | tr -d '*'; }
echo "| server CPU vs a bare WebSocket server: hub connect / delivered event ($FAN_SUBS subscribers) | $(hub_row "hub connect") / $(hub_row "delivered event") | stated |"
echo "| one status change end to end, $E2E_CONNS subscribers, $E2E_RATE changes/s: server CPU per change | $(row "$WORK/e2e.md" "server CPU per delivered event") | ≤ 250 µs |"
echo "| poll: GET /status, 32 connections (throughput; the tokio client is the limit) | $(row "$WORK/poll.md" "ratio") ($(row "$WORK/poll.md" "ordertrack GET /status (JWT + redb read + JSON)") vs $(row "$WORK/poll.md" "bare hyper, same body, same run")) | ≥ 0.8 × bare hyper |"
echo "| write: 64 writers, durable transitions | $W; one commit per request $WB: $WR | ≥ 10,000/s, ≥ 20×, p99 ≤ 20 ms |"
echo "| storm: $STORM clients | $(row "$WORK/storm.md" "storm: all reconnect + resubscribe at once") | 19,000 in ≤ 10 s |"
echo "| restart: $SEED orders (${SIZE_MB} MiB) | /readyz in $READY_MS ms, RSS ${RSS} KiB | ≤ 1 s, RSS flat |"
echo "| history, store vs SQLite | \`cargo bench --bench store\` (docs/performance.md, Benches) | page 1 at 100k ≤ 1.2 × at 10; redb ahead |"
echo; echo "reproduce: \`scripts/bench.sh $SIZE\`"
