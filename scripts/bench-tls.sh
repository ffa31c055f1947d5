#!/usr/bin/env bash
# TLS numbers (issue 13 §1), printed as markdown; run through `scripts/bench.sh tls` or alone:
#   scripts/bench-tls.sh [ROUNDS] [SECONDS]     (defaults 3 rounds of 5 s)
# - full handshakes per second (no resumption), `openssl s_time -new`, for an ECDSA P-256 and an
#   RSA 2048 certificate, with the server's CPU per handshake;
# - the status poll (GET /orders/{id}/status, keep-alive, wrk) over TLS and over plain HTTP: two
#   servers of the same build, alternating rounds, server CPU (utime+stime from /proc) per
#   request; the median round of each is reported.
# Needs openssl, curl and wrk. Uses the release build (built if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
SECS=${2:-5}
OT=${ORDERTRACK_BIN:-target/release/ordertrack}
[ -x "$OT" ] || cargo build --release --quiet --bin ordertrack
for tool in openssl curl wrk; do
  command -v $tool >/dev/null || { echo "bench-tls: $tool is not installed"; exit 1; }
done
SECRET=bench-secret-0123456789abcdef0123456789
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
TCK=$(getconf CLK_TCK)

# A private CA and server certificates for 127.0.0.1: ec (P-256) and rsa (2048).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
  -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
echo "subjectAltName=IP:127.0.0.1" >"$WORK/san.ext"
for kind in ec rsa; do
  if [ $kind = ec ]; then newkey=(-newkey ec -pkeyopt ec_paramgen_curve:P-256); else newkey=(-newkey rsa:2048); fi
  openssl req "${newkey[@]}" -nodes -subj /CN=127.0.0.1 -keyout "$WORK/$kind.key" -out "$WORK/$kind.csr" 2>/dev/null
  openssl x509 -req -days 2 -in "$WORK/$kind.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -extfile "$WORK/san.ext" -out "$WORK/$kind.pem" 2>/dev/null
done

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start NAME SCHEME [serve flags…]: sets PORT_NAME and PID_NAME.
start() {
  local name=$1 scheme=$2; shift 2
  local port; port=$(free_port)
  "$OT" serve --listen 127.0.0.1:$port --data-dir "$WORK/data-$name" --jwt-secret $SECRET "$@" \
    >"$WORK/$name.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 500); do
    curl -sf --cacert "$WORK/ca.pem" "$scheme://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.01
  done
  printf -v "PORT_$name" %s "$port"
  printf -v "PID_$name" %s "$pid"
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start plain http
start tls https --tls-cert "$WORK/ec.pem" --tls-key "$WORK/ec.key"
start rsa https --tls-cert "$WORK/rsa.pem" --tls-key "$WORK/rsa.key"

echo "# TLS report — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores (shared machine: numbers are noisy), $(uname -r)"
echo
echo "### full handshakes (openssl s_time -new, one client, ${SECS} s each)"
echo
echo "| certificate | handshakes/s | server CPU per handshake |"
echo "|---|---|---|"
for kind in tls rsa; do
  port_var=PORT_$kind; pid_var=PID_$kind
  label=$([ $kind = tls ] && echo "ECDSA P-256" || echo "RSA 2048")
  before=$(cpu_ticks "${!pid_var}")
  out=$(openssl s_time -connect "127.0.0.1:${!port_var}" -new -time "$SECS" -CAfile "$WORK/ca.pem" 2>/dev/null)
  after=$(cpu_ticks "${!pid_var}")
  n=$(echo "$out" | awk '/connections in .* real seconds/ {print $1; exit}')
  real=$(echo "$out" | awk '/connections in .* real seconds/ {print $4; exit}')
  awk -v n="$n" -v r="$real" -v t=$((after - before)) -v hz="$TCK" -v l="$label" \
    'BEGIN { printf "| %s | %.0f | %.0f µs |\n", l, n / r, t / hz / n * 1e6 }'
done

# One order and its customer's token on each of the two poll servers.
CUSTOMER=9f54b1a2-0000-4000-8000-0000000000c1
RESTAURANT=9f54b1a2-0000-4000-8000-0000000000e1
SVC=$("$OT" token --jwt-secret $SECRET --sub 9f54b1a2-0000-4000-8000-0000000000a1 --role OrderService)
TOK=$("$OT" token --jwt-secret $SECRET --sub $CUSTOMER)
BODY='{"customerId":"'$CUSTOMER'","restaurantId":"'$RESTAURANT'","restaurantName":"Bench","currency":"USD",
"items":[{"menuItemId":"9f54b1a2-0000-4000-8000-0000000000f1","name":"Pizza","quantity":1,"unitPrice":12,"customizations":[]}],
"paymentMethod":"CashOnDelivery"}'
place() { # SCHEME PORT → order id
  curl -sf --cacert "$WORK/ca.pem" -H "Authorization: Bearer $SVC" -H 'Content-Type: application/json' \
    --data "$BODY" "$1://127.0.0.1:$2/api/v1/orders" | python3 -c 'import json,sys; print(json.load(sys.stdin)["order"]["orderId"])'
}
ID_plain=$(place http "$PORT_plain")
ID_tls=$(place https "$PORT_tls")

# poll NAME SCHEME → "requests cpu_ticks"
poll() {
  local port_var=PORT_$1 pid_var=PID_$1 id_var=ID_$1
  local before after out n
  before=$(cpu_ticks "${!pid_var}")
  out=$(wrk -t1 -c32 -d"${SECS}s" -H "Authorization: Bearer $TOK" \
    "$2://127.0.0.1:${!port_var}/api/v1/orders/${!id_var}/status")
  after=$(cpu_ticks "${!pid_var}")
  n=$(echo "$out" | awk '/requests in/ {print $1; exit}')
  echo "$n $((after - before))"
}
echo
echo "### status poll over TLS vs plain HTTP (wrk -t1 -c32, keep-alive, ${SECS} s rounds, alternating)"
echo
echo "| round | plain req/s | plain CPU/request | TLS req/s | TLS CPU/request |"
echo "|---|---|---|---|---|"
: >"$WORK/rounds"
for r in $(seq 1 "$ROUNDS"); do
  read -r pn pt < <(poll plain http)
  read -r tn tt < <(poll tls https)
  awk -v r="$r" -v pn="$pn" -v pt="$pt" -v tn="$tn" -v tt="$tt" -v s="$SECS" -v hz="$TCK" 'BEGIN {
    pc = pt / hz / pn * 1e6; tc = tt / hz / tn * 1e6
    printf "| %d | %.0f | %.1f µs | %.0f | %.1f µs |\n", r, pn / s, pc, tn / s, tc
    printf "%f %f\n", pc, tc >> "'"$WORK/rounds"'"
  }'
done
sort -n -k1 "$WORK/rounds" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}' >"$WORK/pm"
sort -n -k2 "$WORK/rounds" | awk '{a[NR]=$2} END {print a[int((NR+1)/2)]}' >"$WORK/tm"
awk -v p="$(cat "$WORK/pm")" -v t="$(cat "$WORK/tm")" 'BEGIN {
  printf "\n| median server CPU per status poll | plain %.1f µs | TLS %.1f µs | TLS / plain %.2f× |\n", p, t, t / p
}'
echo
echo "reproduce: \`scripts/bench.sh tls\` (or \`scripts/bench-tls.sh $ROUNDS $SECS\`)"
