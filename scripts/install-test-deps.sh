#!/usr/bin/env bash
# Installs what the SignalR interop suite (scripts/interop/) and the load bench's socket.io
# peer (scripts/peer/, used by scripts/bench.sh) need:
#   * the npm packages pinned in scripts/interop/package-lock.json (via `npm ci`)
#   * the npm packages pinned in scripts/peer/package-lock.json (via `npm ci`)
#   * Debian's chromium at /usr/bin/chromium (only when it is missing)
#   * Debian's wrk, the HTTP load generator of scripts/bench.sh (only when it is missing)
#   * Debian's openssl and curl, used by the TLS and JWKS tests (only when missing)
#   * Debian's nats-server (JetStream built in), the real NATS of the cluster tests (only when missing)
#
# Idempotent and quiet: prints nothing when everything is already there or was
# installed successfully; on failure it prints the failing tool's output.
#
# Environment:
#   INTEROP_SKIP_BROWSER=1   do not install chromium (local debugging only)
#   CHROMIUM_BIN             browser to look for (default /usr/bin/chromium)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
interop_dir="$here/interop"
chromium_bin="${CHROMIUM_BIN:-/usr/bin/chromium}"

log="$(mktemp -t ordertrack-install.XXXXXX)"
trap 'rm -f "$log"' EXIT

die() {
    echo "install-test-deps: $*" >&2
    if [ -s "$log" ]; then
        echo "---- output ----" >&2
        tail -n 80 "$log" >&2
    fi
    exit 1
}

# Run a command with its output captured; show it only if the command fails.
quiet() {
    : >"$log"
    "$@" >>"$log" 2>&1 || die "failed: $*"
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or passwordless sudo) to run: $*"
    fi
}

# ---------------------------------------------------------------- npm packages
command -v node >/dev/null 2>&1 || die "node is not installed (Node.js >= 20 is required)"
command -v npm >/dev/null 2>&1 || die "npm is not installed"

node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 20 ] || die "Node.js >= 20 is required, found $(node --version)"

# The stamp records which lock file (and node version) node_modules was built
# from, so a second run costs one sha256sum instead of an `npm ci`.
stamp_file="$interop_dir/node_modules/.ordertrack-install-stamp"
want_stamp="$(cat "$interop_dir/package-lock.json" "$interop_dir/package.json" | sha256sum | cut -d' ' -f1) node-$node_major"
have_stamp=""
[ -f "$stamp_file" ] && have_stamp="$(cat "$stamp_file")"

if [ "$want_stamp" != "$have_stamp" ] \
    || [ ! -f "$interop_dir/node_modules/@microsoft/signalr/dist/browser/signalr.min.js" ] \
    || [ ! -f "$interop_dir/node_modules/@microsoft/signalr-protocol-msgpack/dist/browser/signalr-protocol-msgpack.min.js" ] \
    || [ ! -d "$interop_dir/node_modules/playwright-core" ]; then
    # PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD: playwright-core never downloads, but be
    # explicit; the suite uses Debian's chromium.
    (
        cd "$interop_dir"
        export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
        quiet npm ci --no-audit --no-fund --loglevel=error --prefer-offline
    )
    printf '%s\n' "$want_stamp" >"$stamp_file"
fi

# The socket.io peer of scripts/bench.sh: same stamp scheme, so a rerun costs a sha256sum and
# needs no network.
peer_dir="$here/peer"
peer_stamp_file="$peer_dir/node_modules/.ordertrack-install-stamp"
peer_want="$(cat "$peer_dir/package-lock.json" "$peer_dir/package.json" | sha256sum | cut -d' ' -f1) node-$node_major"
peer_have=""
[ -f "$peer_stamp_file" ] && peer_have="$(cat "$peer_stamp_file")"
if [ "$peer_want" != "$peer_have" ] || [ ! -f "$peer_dir/node_modules/socket.io/package.json" ]; then
    (
        cd "$peer_dir"
        quiet npm ci --no-audit --no-fund --loglevel=error --prefer-offline
    )
    printf '%s\n' "$peer_want" >"$peer_stamp_file"
fi

# ------------------------------------------------------------- wrk, openssl
# Installs Debian package $2 when command $1 is missing.
apt_tool() {
    command -v "$1" >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "$1 is missing and apt-get is not available"
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300
    quiet as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300 --no-install-recommends "$2"
    command -v "$1" >/dev/null 2>&1 || die "apt-get installed $2 but $1 is not on PATH"
}
# scripts/bench.sh measures server CPU per request with wrk (ordertrack-load cpu).
apt_tool wrk wrk
# tests/ops_tls.rs and tests/auth_jwks.rs make their certificates and keys with the CLI.
apt_tool openssl openssl
# tests/ops_tls.rs talks TLS with curl (--cacert, --http2, --tlsv1.1).
apt_tool curl curl
# tests/cluster*.rs start real JetStream servers (tests/common/nats.rs).
apt_tool nats-server nats-server

# -------------------------------------------------------------------- chromium
if [ "${INTEROP_SKIP_BROWSER:-0}" != "1" ] && [ ! -x "$chromium_bin" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt_opts=(-y -q -o Dpkg::Use-Pty=0 -o DPkg::Lock::Timeout=300
              -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    command -v apt-get >/dev/null 2>&1 || die "$chromium_bin is missing and apt-get is not available"
    quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300
    if ! as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install "${apt_opts[@]}" --no-install-recommends chromium >"$log" 2>&1; then
        # One retry after refreshing the lists (a mirror may have moved on).
        quiet as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q -o DPkg::Lock::Timeout=300
        quiet as_root env DEBIAN_FRONTEND=noninteractive \
            apt-get install "${apt_opts[@]}" --no-install-recommends chromium
    fi
    [ -x "$chromium_bin" ] || die "apt-get installed chromium but $chromium_bin is still missing"
fi

exit 0
