#!/usr/bin/env bash
# User-space instructions per status poll, counted by callgrind: unlike CPU time, the count is
# the same whatever else the machine is doing, so two builds (or ordertrack and the bare hyper
# baseline) can be compared on a busy machine. The server runs under valgrind; after one order
# is placed, the counters are zeroed, wrk polls for 8 s, and the window is dumped.
# Usage: scripts/callgrind-poll.sh BIN|bare PORT [status|304]
#   BIN: an ordertrack binary (e.g. target/release/ordertrack); bare: the load tool's bare
#   hyper server answering 158 bytes. Needs valgrind and wrk (scripts/install-test-deps.sh).
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BIN=$1; PORT=$2; KIND=${3:-status}
S=callgrind-poll-secret-0123456789abcdef
D=${TMPDIR:-/tmp}/ordertrack-callgrind-$PORT; rm -rf $D; mkdir -p $D; cd $D
SUB=7f000000-0000-4000-8000-000000000001
REST=7f000000-0000-4000-8000-0000000000aa
TOK=$($ROOT/target/release/ordertrack token --jwt-secret $S --sub $SUB --data-dir $D 2>/dev/null)
SVC=$($ROOT/target/release/ordertrack token --jwt-secret $S --sub 7f000000-0000-4000-8000-0000000000cc --role OrderService --data-dir $D 2>/dev/null)
if [ "$BIN" = bare ]; then
  valgrind --tool=callgrind --callgrind-out-file=$D/cg.out $ROOT/target/release/ordertrack-load bare-server --port $PORT --body-size 158 >$D/log 2>&1 &
else
  valgrind --tool=callgrind --callgrind-out-file=$D/cg.out $BIN serve --listen 127.0.0.1:$PORT --jwt-secret $S --data-dir $D/d >$D/log 2>&1 &
fi
VP=$!
for i in $(seq 100); do curl -s -o /dev/null 127.0.0.1:$PORT/healthz && break; sleep 0.2; done
PATH_=/healthz
if [ "$BIN" != bare ]; then
  BODY="{\"customerId\":\"$SUB\",\"restaurantId\":\"$REST\",\"restaurantName\":\"L\",\"currency\":\"USD\",\"items\":[{\"menuItemId\":\"7f000000-0000-4000-8000-0000000000bb\",\"name\":\"Pizza\",\"quantity\":1,\"unitPrice\":12.0,\"customizations\":[]}],\"deliveryFee\":2.99,\"tip\":4.0,\"tax\":0,\"discount\":0,\"paymentMethod\":\"Cash\"}"
  ORDER=$(curl -s -X POST 127.0.0.1:$PORT/api/v1/orders -H "authorization: Bearer $SVC" -H 'content-type: application/json' -d "$BODY" | python3 -c 'import sys,json;print(json.load(sys.stdin)["order"]["orderId"])')
  PATH_=/api/v1/orders/$ORDER/status
fi
H=()
if [ "$KIND" = 304 ] && [ "$BIN" != bare ]; then
  ET=$(curl -s -D - -o /dev/null 127.0.0.1:$PORT$PATH_ -H "authorization: Bearer $TOK" | awk -F': ' 'tolower($1)=="etag"{print $2}' | tr -d '\r')
  H=(-H "If-None-Match: $ET")
fi
CODE=$(curl -s 127.0.0.1:$PORT$PATH_ -H "authorization: Bearer $TOK" "${H[@]}" -o /dev/null -w "%{http_code}")
callgrind_control --zero $VP >/dev/null
N=$(wrk -t1 -c8 -d8s http://127.0.0.1:$PORT$PATH_ -H "authorization: Bearer $TOK" "${H[@]}" | awk '/requests in/{print $1}')
callgrind_control --dump=window $VP >/dev/null
sleep 1
if [ "$BIN" = bare ]; then kill -KILL $VP; else kill -INT $VP; fi; wait $VP 2>/dev/null
F=$(ls -t $D/cg.out* | grep -v "^$D/cg.out$" | head -1)
IR=$(awk '/^summary:|^totals:/{print $2; exit}' $F)
echo "$BIN $KIND code=$CODE requests=$N Ir=$IR per_request=$(( IR / N ))"
rm -rf "$D"
