#!/usr/bin/env bash
# Install the proxies tests/proxies runs in front of fastrpc nodes: HAProxy and nginx from
# Debian packages. Idempotent and quiet: does nothing when both binaries are on PATH.
# Fails loudly (non-zero exit, a message on stderr) when it cannot install them: the proxy
# tests must never be skipped for a missing install. Needs root (CI containers run as root).
# Nothing is started or enabled here: the tests run each proxy from its binary with a config
# they generate in a temporary directory (Debian's policy-rc.d in containers, or the absence
# of an init system, keeps the packages' own services from starting).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || missing+=(nginx)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "tests/proxies/install.sh: ${missing[*]} missing and not root: install them with" \
         "'apt-get install -y ${missing[*]}'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "tests/proxies/install.sh: apt-get install ${missing[*]} failed" >&2
    exit 1
fi
for bin in haproxy nginx; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "tests/proxies/install.sh: $bin still not on PATH after apt-get install" >&2
        exit 1
    fi
done
