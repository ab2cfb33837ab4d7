#!/usr/bin/env bash
# Install the browser tests/browser drives: Debian's chromium and chromium-driver (the
# chromedriver built from the same Chromium, so the two versions always match). Idempotent
# and quiet: does nothing when both binaries are on PATH. Fails loudly (non-zero exit, a
# message on stderr) when it cannot install them: the browser tests must never be skipped
# for a missing install. Needs root (CI containers run as root). Nothing else is fetched:
# the tests point Selenium at these two binaries, so Selenium Manager never downloads a
# browser or a driver of its own.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "tests/browser/install.sh: ${missing[*]} missing and not root: install them with" \
         "'apt-get install -y ${missing[*]}'" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    cat "$log" >&2
    echo "tests/browser/install.sh: apt-get install ${missing[*]} failed" >&2
    exit 1
fi
for bin in chromium chromedriver; do
    if ! command -v "$bin" >/dev/null 2>&1; then
        echo "tests/browser/install.sh: $bin still not on PATH after apt-get install" >&2
        exit 1
    fi
done
