#!/usr/bin/env bash
# fuzz/long.sh [MINUTES]: every target for MINUTES (default 10) each, one after the
# other, against the ASan build (fuzz/build.sh first), each from its seed corpus and a
# fresh work directory build/fuzz-long/TARGET. Prints a markdown table (executions,
# libFuzzer's final cov and ft, corpus size, crashes) and writes it to
# build/fuzz-long/summary.md. Exits 1 if any target crashed (its input is in its work
# directory: keep it in fuzz/corpus/TARGET and turn it into a regression test).
# On a shared machine: nice -n 10 fuzz/long.sh 10. FUZZ_TARGETS="frames ..." runs only
# those; FUZZ_LONG_WORK=DIR works there instead of build/fuzz-long (wiped at the start).
set -uo pipefail
source "$(dirname "$0")/env.sh"
minutes="${1:-10}"
targets="${FUZZ_TARGETS:-$("$PYTHON" -c 'import sys; sys.path.insert(0, sys.argv[1]); import fuzzing; print(" ".join(fuzzing.TARGETS))' "$FUZZ_DIR")}"
export FUZZ_WORK="${FUZZ_LONG_WORK:-$REPO/build/fuzz-long}"
rm -rf "$FUZZ_WORK"
mkdir -p "$FUZZ_WORK"
if [ "$FUZZ_BUILD" = asan ]; then
    [ -d "$ASAN_LIB/fastrpc" ] || { echo "fuzz/long.sh: no ASan build: run fuzz/build.sh" >&2; exit 1; }
    cp -a "$ASAN_LIB" "$FUZZ_WORK/lib"
    export FASTRPC_FUZZ_LIB="$FUZZ_WORK/lib"
fi
summary="$FUZZ_WORK/summary.md"
{
    echo "| target | minutes | executions | exec/s | cov | ft | corpus | crashes |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
} >"$summary"
failed=0
for t in $targets; do
    log="$FUZZ_WORK/$t.log"
    "$FUZZ_DIR/run.sh" "$t" "$((minutes * 60))" >"$log" 2>&1
    rc=$?
    last="$(grep -E '^#[0-9]+' "$log" | tail -1)"
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")"
    cov="$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")"
    ft="$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")"
    corp="$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")"
    crashes="$(find "$FUZZ_WORK/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' -o -name 'leak-*' \) | wc -l)"
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        crashes="1 (exit $rc, see $log)"
    fi
    [ "$rc" -ne 0 ] && failed=1
    echo "| $t | $minutes | ${execs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | $crashes |" >>"$summary"
done
cat "$summary"
exit "$failed"
