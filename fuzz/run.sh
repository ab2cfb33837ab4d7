#!/usr/bin/env bash
# fuzz/run.sh TARGET SECONDS [libFuzzer flags...]: run fuzz/TARGET.py for SECONDS
# against the ASan build (FASTRPC_FUZZ_BUILD=plain: the installed one), starting from
# the seed corpus fuzz/corpus/TARGET. New inputs go to build/fuzz-work/TARGET/corpus, a
# crashing input to build/fuzz-work/TARGET/ (the seed corpus is only read).
set -euo pipefail
source "$(dirname "$0")/env.sh"
target="${1:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags]}"
seconds="${2:?usage: fuzz/run.sh TARGET SECONDS [libFuzzer flags]}"
shift 2
script="$FUZZ_DIR/$target.py"
[ -f "$script" ] || { echo "fuzz/run.sh: no target $script" >&2; exit 2; }
work="${FUZZ_WORK:-$REPO/build/fuzz-work}/$target"
mkdir -p "$work/corpus"
fuzz_env
# -rss_limit_mb: ASan's shadow memory counts; 4 GiB is plenty for these targets.
exec "$PYTHON" "$script" "$work/corpus" "$FUZZ_DIR/corpus/$target" \
    -max_total_time="$seconds" -artifact_prefix="$work/" -rss_limit_mb=4096 \
    -max_len=8192 -timeout=30 -print_final_stats=1 "$@"
