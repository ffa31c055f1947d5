#!/usr/bin/env bash
# The long versions of the cluster trials and the cluster numbers (issue 14; docs/cluster.md).
# Starts its own 3-node NATS JetStream cluster (Debian's nats-server, loopback, storage under a
# temp dir), a region of three ordertrack nodes on it and one single-box ordertrack, and prints
# one markdown report:
#   1. write latency p50/p99 and throughput of the region (through the primary, and through a
#      replica that forwards) against the single box, in alternating rounds of the same run,
#      with server CPU per write (ordertrack and nats-server) from /proc;
#   2. replica lag p99 (records and seconds) while 1. runs, polled from /metrics every 100 ms;
#   3. fan-out: each of the three nodes holds N subscribed sockets (one `ordertrack-load fanout`
#      per node, the three at once), status changes driven through each node, answer ->
#      arrival p99 and lost/duplicated events per node;
#   4. failover: kill -9 of the primary, time until a replica answers /readyz as primary;
#   5. the trials of tests/cluster_trials.rs at long size (repeated kill -9 failovers under
#      write load, 0 acknowledged writes lost), unless --no-trials.
#   scripts/cluster-long.sh            N=19,000 sockets per node, 40,000 transitions, 10 cycles
#   scripts/cluster-long.sh --quick    N=300, 2,000 transitions, 1 cycle: a few minutes
# Sizes: FANOUT_CONNECTIONS, FANOUT_RATE, FANOUT_CHANGES, WRITE_TRANSITIONS, FAILOVER_CYCLES
# override either mode.
# Needs nats-server (scripts/install-test-deps.sh), curl, awk.
set -euo pipefail
cd "$(dirname "$0")/.."

QUICK=0
TRIALS=1
for a in "$@"; do
  case "$a" in
    --quick) QUICK=1 ;;
    --no-trials) TRIALS=0 ;;
    *) echo "usage: $0 [--quick] [--no-trials]" >&2; exit 2 ;;
  esac
done
if [ "$QUICK" = 1 ]; then
  N=${FANOUT_CONNECTIONS:-300}; T=${WRITE_TRANSITIONS:-2000}; CYCLES=${FAILOVER_CYCLES:-1}
  RATE=${FANOUT_RATE:-200}; CHANGES=${FANOUT_CHANGES:-600}
else
  N=${FANOUT_CONNECTIONS:-19000}; T=${WRITE_TRANSITIONS:-40000}; CYCLES=${FAILOVER_CYCLES:-10}
  RATE=${FANOUT_RATE:-2000}; CHANGES=${FANOUT_CHANGES:-40000}
fi
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release --quiet --bin ordertrack --bin ordertrack-load
OT=target/release/ordertrack
LOAD=target/release/ordertrack-load
NATS=$(command -v nats-server || true)
[ -n "$NATS" ] || NATS=/usr/sbin/nats-server
[ -x "$NATS" ] || { echo "nats-server missing: run scripts/install-test-deps.sh" >&2; exit 1; }
SECRET=cluster-bench-secret-0123456789
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  exec 2>/dev/null # no "Killed" job notices
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

BASE=$((20000 + RANDOM % 20000))
# Ports: nats client BASE+i, routes BASE+10+i, monitoring BASE+20+i; ordertrack BASE+30+i
# (3 = the single box).
ROUTES="nats://127.0.0.1:$((BASE + 10)),nats://127.0.0.1:$((BASE + 11)),nats://127.0.0.1:$((BASE + 12))"
NATS_URLS="nats://127.0.0.1:$BASE,nats://127.0.0.1:$((BASE + 1)),nats://127.0.0.1:$((BASE + 2))"
NATS_PIDS=()
for i in 0 1 2; do
  mkdir -p "$WORK/nats$i"
  "$NATS" -js -a 127.0.0.1 -p $((BASE + i)) -m $((BASE + 20 + i)) -sd "$WORK/nats$i" -n "n$i" \
    --cluster_name region -cluster "nats://127.0.0.1:$((BASE + 10 + i))" -routes "$ROUTES" \
    >"$WORK/nats$i.log" 2>&1 &
  PIDS+=($!); NATS_PIDS+=($!)
done
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$((BASE + 20))/jsz" | grep -q '"leader"' && break
  sleep 0.1
done

OT_PIDS=()
# Load clients hold many connections per token: lift the per-user caps, as scripts/bench.sh does.
CAPS=(--max-connections 19900 --max-hub-connections 19500 --hub-max-connections-per-user 19500
      --hub-max-subscriptions-per-user 19500)
start_node() { # $1 = index; cluster flags follow
  local i=$1; shift
  "$OT" serve --listen 127.0.0.1:$((BASE + 30 + i)) --data-dir "$WORK/ot$i" --jwt-secret $SECRET \
    "${CAPS[@]}" "$@" >"$WORK/ot$i.log" 2>&1 &
  PIDS+=($!); OT_PIDS[$i]=$!
}
readyz() { curl -s -m 2 "http://127.0.0.1:$((BASE + 30 + $1))/readyz" || true; }
wait_ready() { # $1 = index
  for _ in $(seq 1 600); do
    readyz "$1" | grep -q '"status":"ready"' && return 0
    sleep 0.05
  done
  echo "node $1 not ready:"; readyz "$1"; tail -20 "$WORK/ot$1.log"; exit 1
}
for i in 0 1 2; do start_node $i --nats "$NATS_URLS" --cluster region; done
start_node 3
for i in 0 1 2 3; do wait_ready $i; done
primary() {
  for i in 0 1 2; do
    readyz $i | grep -q '"role":"primary"' && { echo $i; return 0; }
  done
  return 1
}
P=""
for _ in $(seq 1 200); do P=$(primary) && break; sleep 0.05; done
[ -n "$P" ] || { echo "no primary"; exit 1; }
R=$(( (P + 1) % 3 ))
addr() { echo "127.0.0.1:$((BASE + 30 + $1))"; }

ticks() { # utime + stime of pid $1, in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0
}
HZ=$(getconf CLK_TCK)
sum_ticks() { local s=0 p; for p in "$@"; do s=$((s + $(ticks "$p"))); done; echo $s; }

# Polls the replicas' lag while a command runs; prints "records_p99 seconds_p99 samples".
lag_poll() {
  local out=$1; : >"$out"
  while :; do
    for i in 0 1 2; do
      [ "$i" = "$P" ] && continue
      curl -s -m 1 "http://127.0.0.1:$((BASE + 30 + i))/metrics" |
        awk '/^ordertrack_cluster_lag_records /{r=$2} /^ordertrack_cluster_lag_seconds /{s=$2} END{print r+0, s+0}' >>"$out"
    done
    sleep 0.1
  done
}
p99() { # column $1 of file $2
  sort -g -k"$1","$1" "$2" | awk -v c="$1" '{v[NR]=$c} END{if(NR==0){print "n/a"; exit} i=int(NR*0.99); if(i<1)i=1; print v[i]}'
}

echo "# ordertrack cluster report ($([ $QUICK = 1 ] && echo quick || echo long)) — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores (shared), $(uname -r)"
echo
echo "Region: 3 nats-server $("$NATS" --version | awk '{print $2}') (JetStream, R3 stream and lease) + 3 ordertrack nodes (primary :$((BASE + 30 + P))); single box: one ordertrack without --nats. Everything, the load tool included, on this machine's loopback."

write_run() { # $1 = label, $2 = node index the writes go to
  local lag="$WORK/lag-$2.txt"
  lag_poll "$lag" & local poller=$!
  local c0 s0 n0; c0=$(sum_ticks "${OT_PIDS[0]}" "${OT_PIDS[1]}" "${OT_PIDS[2]}")
  s0=$(ticks "${OT_PIDS[3]}"); n0=$(sum_ticks "${NATS_PIDS[@]}")
  echo; echo "## Writes $1 vs the single box"; echo
  "$LOAD" --addr "$(addr "$2")" --secret $SECRET write --writers 64 --transitions "$T" --rounds 3 \
    --baseline "$(addr 3)" --baseline-label "single box"
  local c1 s1 n1; c1=$(sum_ticks "${OT_PIDS[0]}" "${OT_PIDS[1]}" "${OT_PIDS[2]}")
  s1=$(ticks "${OT_PIDS[3]}"); n1=$(sum_ticks "${NATS_PIDS[@]}")
  kill "$poller" 2>/dev/null || true; wait "$poller" 2>/dev/null || true
  # Each server got T transitions plus T/4 placements.
  local ops=$((T + T / 4))
  echo
  echo "Server CPU per write (placements + transitions, $ops per side): region's three ordertrack nodes $(awk -v t=$((c1 - c0)) -v h="$HZ" -v o=$ops 'BEGIN{printf "%.0f µs", t/h/o*1e6}') + three nats-servers $(awk -v t=$((n1 - n0)) -v h="$HZ" -v o=$ops 'BEGIN{printf "%.0f µs", t/h/o*1e6}'); single box $(awk -v t=$((s1 - s0)) -v h="$HZ" -v o=$ops 'BEGIN{printf "%.0f µs", t/h/o*1e6}') (whole run, both sides idle in the other's rounds)."
  echo "Replica lag while it ran (polled every 100 ms, $(wc -l <"$lag") samples): p99 $(p99 1 "$lag") records, $(p99 2 "$lag") s."
}
write_run "through the primary" "$P"
write_run "through a replica (forwarded to the primary)" "$R"

echo; echo "## Fan-out: three nodes, $N subscribed sockets each, all at once"; echo
for i in 0 1 2; do
  "$LOAD" --addr "$(addr $i)" --secret $SECRET --server-pid "${OT_PIDS[$i]}" fanout \
    --connections "$N" --rate "$RATE" --changes "$CHANGES" --sources 8 >"$WORK/fanout$i.txt" 2>&1 &
  FAN[$i]=$!
done
for i in 0 1 2; do
  role=replica; [ "$i" = "$P" ] && role=primary
  if wait "${FAN[$i]}"; then
    echo "### node $i ($role)"; echo; cat "$WORK/fanout$i.txt"; echo
  else
    echo "### node $i ($role): fanout failed"; tail -5 "$WORK/fanout$i.txt"; echo
  fi
done

echo "## Failover: kill -9 of the primary (lease TTL 3 s, the default)"; echo
start=$(date +%s%N)
kill -9 "${OT_PIDS[$P]}"
wait "${OT_PIDS[$P]}" 2>/dev/null || true
NEW=""
for _ in $(seq 1 600); do
  for i in 0 1 2; do
    [ "$i" = "$P" ] && continue
    readyz $i | grep -q '"role":"primary"' && NEW=$i
  done
  [ -n "$NEW" ] && break
  sleep 0.02
done
took=$(( ($(date +%s%N) - start) / 1000000 ))
if [ -n "$NEW" ]; then
  echo "node $NEW answered /readyz as primary $took ms after the kill."
else
  echo "no replica took over within 12 s."
fi

if [ "$TRIALS" = 1 ]; then
  echo; echo "## Trials (tests/cluster_trials.rs, $CYCLES kill -9 cycles)"; echo
  if [ "$QUICK" = 1 ]; then profile=(); else profile=(--release); fi
  OT_CLUSTER_CYCLES=$CYCLES OT_CLUSTER_WRITES=$([ $QUICK = 1 ] && echo 15 || echo 300) OT_CLUSTER_WRITERS=6 \
    cargo test "${profile[@]}" --quiet --test cluster_trials -- --nocapture 2>&1 |
    grep -E 'RESULT|trial:|test result|panicked|FAILED' || true
fi
echo
echo "reproduce: scripts/cluster-long.sh $*"
