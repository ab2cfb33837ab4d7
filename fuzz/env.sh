# Sourced by build.sh, run.sh and long.sh: where the sanitized build lives and how a
# fuzz target is started against it. Paths are absolute, so any working directory works.
FUZZ_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$FUZZ_DIR/.." && pwd)"
PYTHON="${PYTHON:-python3}"
# FASTRPC_FUZZ_BUILD=asan (default): the ASan + libFuzzer-coverage build of the compiled
# modules, in build/fuzz-asan/lib (never the normal in-place build). =plain: the modules
# as they are installed (no ASan, no native coverage: Python coverage only).
FUZZ_BUILD="${FASTRPC_FUZZ_BUILD:-asan}"
# FASTRPC_FUZZ_LIB: another copy of it (long.sh runs on a snapshot, so a rebuild
# meanwhile, e.g. by the test suite, cannot swap the modules under a running target).
ASAN_LIB="${FASTRPC_FUZZ_LIB:-$REPO/build/fuzz-asan/lib}"

fuzz_env() {
    # The environment a target runs in: PYTHONPATH first the build under test, then the
    # repository (fuzz/ and tests/ helpers import from there).
    case "$FUZZ_BUILD" in
        asan)
            local rt
            rt="$("$PYTHON" -c 'import atheris, os; print(os.path.join(atheris.path(), "asan_with_fuzzer.so"))')"
            if [ ! -f "$rt" ]; then
                echo "fuzz: atheris ships no asan_with_fuzzer.so at $rt" >&2
                return 1
            fi
            if [ ! -d "$ASAN_LIB/fastrpc" ]; then
                echo "fuzz: no ASan build in $ASAN_LIB: run fuzz/build.sh first" >&2
                return 1
            fi
            export LD_PRELOAD="$rt"
            export PYTHONPATH="$ASAN_LIB:$REPO:$REPO/tests:$REPO/tests/unit${PYTHONPATH:+:$PYTHONPATH}"
            # detect_leaks=0: CPython's own allocations at exit are not ours to report.
            # allocator_may_return_null: a huge malloc is a MemoryError, not an abort.
            export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:allocator_may_return_null=1:abort_on_error=0:symbolize=1:detect_stack_use_after_return=0}"
            export PYTHONMALLOC="${PYTHONMALLOC:-malloc}"  # every object through ASan's malloc
            ;;
        plain)
            export PYTHONPATH="$REPO:$REPO/tests:$REPO/tests/unit${PYTHONPATH:+:$PYTHONPATH}"
            ;;
        *)
            echo "fuzz: FASTRPC_FUZZ_BUILD must be asan or plain, not $FUZZ_BUILD" >&2
            return 1
            ;;
    esac
    export FASTRPC_FUZZ_BUILD="$FUZZ_BUILD"
}
