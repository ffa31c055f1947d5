#!/bin/bash
# Server CPU per GET /status with a static HS256 key (the cached-token path) for two builds,
# alternating rounds, from /proc/PID/stat utime+stime over the load window divided by the requests
# the server counted. Written to show the JWKS work did not make the static-key check dearer.
# Usage: scripts/auth-cpu.sh BASE_BIN NEW_BIN LOAD_BIN [ROUNDS]  (release builds; ports from the OS)
set -u
BASE=$1; NEW=$2; LOAD=$3; ROUNDS=${4:-3}
SECRET=measure-secret-0123456789abcdef-0123456789
TCK=$(getconf CLK_TCK)
one() {
  local bin=$1 tmp port pid t0 t1 r0 r1
  tmp=$(mktemp -d); port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  ORDERTRACK_LOG=warn $bin serve --listen 127.0.0.1:$port --data-dir $tmp/data --jwt-secret $SECRET 2>$tmp/log & pid=$!
  for i in $(seq 100); do curl -sf http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
  cpu() { awk '{print $14+$15}' /proc/$pid/stat; }
  reqs() { curl -s http://127.0.0.1:$port/metrics | awk '/^ordertrack_http_requests_total\{route="order_status",status="200"\}/{print $2}'; }
  t0=$(cpu); r0=$(reqs); r0=${r0:-0}
  $LOAD --addr 127.0.0.1:$port --secret $SECRET poll --connections 16 --seconds 4 >/dev/null 2>&1
  t1=$(cpu); r1=$(reqs)
  kill $pid; wait $pid 2>/dev/null; rm -rf $tmp
  python3 -c "print(f'{($t1-$t0)/$TCK/($r1-$r0)*1e6:.2f} us/req over {$r1-$r0} req')"
}
for r in $(seq $ROUNDS); do
  echo "round $r base: $(one $BASE)"
  echo "round $r new:  $(one $NEW)"
done
