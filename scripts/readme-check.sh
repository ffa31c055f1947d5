#!/usr/bin/env bash
# Runs the README's own commands, taken from its text, the way a newcomer would: in a fresh copy
# of the tree (the build cache is shared through a symlinked target/), on the embedded defaults
# (127.0.0.1:8080, ./data). If someone edits the README into something that does not run, this
# fails. The blocks it reads are the fenced blocks right after these markers in README.md:
#   <!-- readme-check: commands -->     line 1 serves (run here), line 2 is the suite (.ci/run runs it)
#   <!-- readme-check: walkthrough -->  run with bash while the server from line 1 runs
#   <!-- readme-check: answers -->      one line per line the walk-through prints; `…` = anything
#   <!-- readme-check: demo -->         the demo line; the `watch` command it prints is then run
# Usage: scripts/readme-check.sh            (scripts/test.sh runs it)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
README="$ROOT/README.md"
PORT=8080
BUILD_WAIT_S=${README_CHECK_BUILD_WAIT_S:-1500}

fail() { echo "readme-check: FAIL: $*" >&2; exit 1; }

# The fenced block after `<!-- readme-check: $1 -->`.
block() {
  awk -v name="$1" '
    $0 == "<!-- readme-check: " name " -->" { armed = 1; next }
    armed && /^```/ { if (inside) exit; inside = 1; next }
    inside { print }
  ' "$README"
}

COMMANDS="$(block commands)"
WALK="$(block walkthrough)"
ANSWERS="$(block answers)"
DEMO="$(block demo)"
for b in COMMANDS WALK ANSWERS DEMO; do
  [ -n "${!b}" ] || fail "README.md has no block after its readme-check marker for $b"
done
SERVE_LINE="$(sed -n 1p <<<"$COMMANDS")"
SUITE_LINE="$(sed -n 2p <<<"$COMMANDS")"
[ "$(wc -l <<<"$COMMANDS")" -eq 2 ] || fail "the two-commands block must hold exactly two lines"

# Command 2 is what CI runs (.ci/run reads it from the README); here it is only checked to name
# an executable file of the tree, since running the suite from inside the suite would recurse.
suite_cmd="${SUITE_LINE%%#*}"
suite_cmd="${suite_cmd%% *}"
[ -x "$ROOT/$suite_cmd" ] || fail "command 2 ($suite_cmd) is not an executable file of the tree"

if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
  fail "something already listens on 127.0.0.1:$PORT; the README's commands need that port"
fi

# A stable place for the copy: with the files' times preserved, a rerun rebuilds nothing.
WORK="${TMPDIR:-/tmp}/ordertrack-readme-check"
COPY="$WORK/ordertrack"
rm -rf "$WORK"
PGID=""
cleanup() {
  if [ -n "$PGID" ]; then kill -INT -- "-$PGID" 2>/dev/null || true; sleep 1; kill -KILL -- "-$PGID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# A fresh copy: what git tracks plus untracked files that are not ignored (so a local run tests
# the working tree as it is); target/ is shared so nothing is downloaded or rebuilt twice.
mkdir -p "$COPY"
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 cp -p --parents -t "$COPY" 2>/dev/null) ||
  (cd "$ROOT" && git ls-files -co --exclude-standard -z | while IFS= read -r -d '' f; do
    if [ -e "$f" ]; then cp -p --parents -t "$COPY" "$f"; fi; done)
mkdir -p "$ROOT/target"
ln -s "$ROOT/target" "$COPY/target"

# Starts a README line in its own process group (Ctrl-C reaches cargo and the server, as in a
# terminal); sets PGID.
start() { # $1 = line, $2 = log file
  (cd "$COPY" && exec setsid bash -c "$1" >"$2" 2>&1) &
  PGID=$!
}
stop() { # Ctrl-C, then the exit status of the line
  kill -INT -- "-$PGID" 2>/dev/null || true
  local rc=0
  wait "$PGID" || rc=$?
  PGID=""
  return "$rc"
}
wait_healthy() { # $1 = log file
  local waited=0
  until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    kill -0 "$PGID" 2>/dev/null || { tail -n 30 "$1" >&2; fail "the line exited before the server answered /healthz"; }
    [ "$waited" -lt "$BUILD_WAIT_S" ] || { tail -n 30 "$1" >&2; fail "no /healthz answer after ${BUILD_WAIT_S}s"; }
    sleep 1
    waited=$((waited + 1))
  done
  echo "readme-check: /healthz answered ${waited}s after the start (build included)"
}

# ---- command 1 and the walk-through
echo "readme-check: command 1: $SERVE_LINE"
start "$SERVE_LINE" "$WORK/serve.log"
wait_healthy "$WORK/serve.log"

echo "readme-check: the walk-through"
(cd "$COPY" && bash -eo pipefail -c "$WALK") >"$WORK/walk.out" 2>"$WORK/walk.err" ||
  { cat "$WORK/walk.out" "$WORK/walk.err" >&2; fail "the walk-through exited non-zero"; }

python3 - "$WORK/walk.out" <<PY || { echo "---- printed:" >&2; cat "$WORK/walk.out" >&2; fail "the walk-through's answers differ from the README's"; }
import re, sys
expected = """$ANSWERS""".split("\n")
actual = open(sys.argv[1]).read().rstrip("\n").split("\n")
bad = 0
if len(expected) != len(actual):
    print(f"readme-check: README shows {len(expected)} answer lines, the walk-through printed {len(actual)}", file=sys.stderr)
    bad = 1
for i, (e, a) in enumerate(zip(expected, actual), 1):
    pattern = "".join(".*" if part == "…" else re.escape(part) for part in re.split("(…)", e))
    if not re.fullmatch(pattern, a, re.S):
        print(f"readme-check: answer {i} differs\n  README:  {e}\n  printed: {a}", file=sys.stderr)
        bad = 1
sys.exit(bad)
PY
echo "readme-check: $(wc -l <"$WORK/walk.out") answer lines match the README"

rc=0
stop || rc=$?
[ "$rc" -eq 0 ] || { tail -n 20 "$WORK/serve.log" >&2; fail "command 1 exited $rc after Ctrl-C (expected 0)"; }
echo "readme-check: command 1 stopped cleanly on Ctrl-C"

# ---- the demo, then the watch command it prints
echo "readme-check: the demo: $DEMO"
start "$DEMO" "$WORK/demo.log"
wait_healthy "$WORK/demo.log"
WATCH=""
for _ in $(seq 1 30); do
  WATCH="$(grep -m1 -oE '(target/release/)?ordertrack watch [^ ]+ --url [^ ]+ --token [^ ]+' "$WORK/demo.log" || true)"
  [ -n "$WATCH" ] && break
  sleep 1
done
[ -n "$WATCH" ] || { tail -n 30 "$WORK/demo.log" >&2; fail "the demo printed no watch command"; }
echo "readme-check: running the printed watch command (the featured order's whole life)"
(cd "$COPY" && timeout 180 bash -c "$WATCH") >"$WORK/watch.out" 2>&1 ||
  { cat "$WORK/watch.out" >&2; fail "the printed watch command did not exit 0"; }
grep -q 'subscribed (current state)' "$WORK/watch.out" || { cat "$WORK/watch.out" >&2; fail "watch never subscribed"; }
grep -qE 'ReceiveOrder[A-Za-z]+ +(Delivered|Cancelled|Rejected) ' "$WORK/watch.out" ||
  { cat "$WORK/watch.out" >&2; fail "watch did not see a terminal status"; }
echo "readme-check: watch followed the featured order to $(grep -oE '(Delivered|Cancelled|Rejected)' "$WORK/watch.out" | tail -n1)"
rc=0
stop || rc=$?
[ "$rc" -eq 0 ] || { tail -n 20 "$WORK/demo.log" >&2; fail "the demo exited $rc after Ctrl-C (expected 0)"; }
echo "readme-check: all README commands ran as written"
