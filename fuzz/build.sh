#!/usr/bin/env bash
# Build the compiled modules with AddressSanitizer and libFuzzer's coverage hooks
# (setup.py, FASTRPC_SANITIZE=address) into build/fuzz-asan/lib, a package of its own:
# the normal in-place build and its generated C files are left as they are.
# Installs clang (Debian) and atheris (pip) when missing.
set -euo pipefail
source "$(dirname "$0")/env.sh"
if ! command -v clang >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq clang >/dev/null
fi
if ! "$PYTHON" -c 'import atheris' 2>/dev/null; then
    "$PYTHON" -m pip install -q 'atheris>=2.3'
fi
cd "$REPO"
out="$REPO/build/fuzz-asan"
mkdir -p "$out"
FASTRPC_SANITIZE=address "$PYTHON" setup.py -q build --build-lib "$out/lib" \
    --build-temp "$out/tmp" >"$out/build.log" 2>&1 || { cat "$out/build.log" >&2; exit 1; }
for so in "$out"/lib/fastrpc/_core*.so "$out"/lib/fastrpc/_fastcall*.so "$out"/lib/fastrpc/_clientcall*.so; do
    # An unsanitized object here would fuzz without ASan: refuse it.
    syms="$(nm -D "$so")"  # (not piped into grep -q: pipefail would see nm's SIGPIPE)
    if ! grep -q __asan_report <<<"$syms" || ! grep -q __sanitizer_cov <<<"$syms"; then
        echo "fuzz/build.sh: $so lacks ASan or coverage symbols" >&2
        exit 1
    fi
done
echo "ASan build: $out/lib"
