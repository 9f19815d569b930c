#!/usr/bin/env bash
# Runs tests against a build of the compiled core instrumented by a sanitizer.
#
#   tools/sanitize.sh thread [pytest args...]     ThreadSanitizer (default: the concurrency tests)
#   tools/sanitize.sh address [pytest args...]    AddressSanitizer + UndefinedBehaviorSanitizer on
#                                                 the debug build (default: the whole suite but e2e)
#   tools/sanitize.sh fuzzer -- COMMAND...        built by clang for libFuzzer's coverage as well as
#                                                 ASan + UBSan, for atheris (tools/fuzz.sh runs it)
#
# The extension is built into a temporary copy of the package (the installed one is left as it
# is), the interpreter preloads the sanitizer's runtime, and any report fails the run. After
# "--", COMMAND runs in place of pytest, with the same build and runtime.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: tools/sanitize.sh thread|address [pytest args...]}
shift
python=$(realpath -s "${PYTHON:-.venv/bin/python}")   # absolute: the check below runs from /
pytest=$(dirname "$python")/pytest   # not `python -m pytest`: that puts the source tree first
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case "$kind" in
  thread)
    runtime=libtsan.so
    sanitize=thread
    probes="__tsan_read"
    debug=0
    [ $# -gt 0 ] || set -- tests/test_core_concurrency.py tests/test_hooks.py -n "${SANITIZE_WORKERS:-$(nproc)}"
    # reports go to files (pytest captures the test's stderr, and the first report ends the run)
    export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$work/report ${TSAN_OPTIONS:-}"
    ;;
  address)
    runtime=libasan.so
    # float-cast-overflow is not in gcc's "undefined" group: a double out of an integer's range
    # cast to it (a period in ns, a window length) is undefined behaviour all the same.
    sanitize=address,undefined,float-cast-overflow
    probes="__asan_report_load __ubsan_handle_float_cast_overflow"
    debug=1          # -O0 -g3 and Cython's bounds checks: reports name the line
    # The whole suite but e2e (real load, timed against the host), this runner's own tests, the
    # fuzzing (tools/fuzz.sh runs the compiled parser under ASan and UBSan itself), and the checks
    # of deploy/ (promtool on the rules; an strace of `coherence serve` for file writes, which the
    # sanitized scratch copy's own start-up makes): none of them is about the compiled code. Nor
    # the fault tests (tests/test_faults.py, ~1.5 min here under ASan): CI's 20 minutes do not
    # hold them twice; `tools/sanitize.sh address tests/test_faults.py` runs them sanitized.
    # On every CPU (pytest-xdist; SANITIZE_WORKERS=1 for one): ~4 min on one of this 2-CPU
    # machine's, ~2.3 on both. No test of the set times anything; each binds its own ports.
    [ $# -gt 0 ] || set -- tests --ignore=tests/e2e --ignore=tests/test_sanitizers.py --ignore=tests/test_fuzz.py \
      --ignore=tests/test_deploy.py --ignore=tests/test_prometheus_rules.py --ignore=tests/test_faults.py \
      -n "${SANITIZE_WORKERS:-$(nproc)}"
    # Python objects from libc's malloc, not pymalloc's arenas, so that reading past a small
    # bytes object (a file's contents, a packet) is an overflow ASan sees.
    export PYTHONMALLOC=malloc
    # detect_leaks=0: CPython never frees its interned strings, type objects and module state
    # at exit (thousands of "leaks" per run), and LeakSanitizer's suppressions match any frame
    # of a stack, so they cannot keep the extension's own allocations (always called from the
    # interpreter) while dropping the interpreter's. The core frees what it allocates in
    # __dealloc__; ASan still reports any use after that free or double free.
    export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 exitcode=66 abort_on_error=0 detect_stack_use_after_return=1 strict_string_checks=1 check_initialization_order=1 log_path=$work/report ${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 exitcode=67 log_path=$work/report ${UBSAN_OPTIONS:-}"
    ;;
  fuzzer)
    # libFuzzer's coverage of C code needs clang (-fsanitize=fuzzer-no-link), and its runtime
    # must come with the sanitizer's: atheris ships both in one library to preload.
    runtime=$("$python" -c 'import atheris; print(atheris.path())')/asan_with_fuzzer.so
    sanitize=address,undefined,fuzzer-no-link
    probes="__asan_report_load __ubsan_handle_ __sanitizer_cov_8bit_counters_init"
    debug=0          # -O1: fuzzing wants executions per second
    export CC=clang LDSHARED="clang -shared"
    export PYTHONMALLOC=malloc
    # as for address; abort_on_error=0: libFuzzer reports the crashing input, then exits non-zero
    export ASAN_OPTIONS="detect_leaks=0 halt_on_error=1 ${ASAN_OPTIONS:-}"
    export UBSAN_OPTIONS="halt_on_error=1 print_stacktrace=1 ${UBSAN_OPTIONS:-}"
    ;;
  *) echo "tools/sanitize.sh: unknown sanitizer '$kind' (known: thread, address, fuzzer)" >&2; exit 2 ;;
esac

mkdir -p "$work/lib"
# the package's Python files and .pxd, then the instrumented extensions beside them
cp -rL coherence "$work/lib/"
find "$work/lib/coherence" -name '*.so' -delete
cp csrc/coherence/*.pxd csrc/coherence/*.h "$work/lib/coherence/"
COHERENCE_DEBUG=$debug COHERENCE_SANITIZE=$sanitize "$python" setup.py -q build_ext --build-lib "$work/lib" \
  --build-temp "$work/tmp" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }

case "$runtime" in
  /*) lib=$runtime ;;
  *) lib=$(gcc -print-file-name="$runtime") ;;
esac
# Modules the tests compile themselves (tests/capi) are instrumented too; the compiler they
# run does not load the runtime (conftest drops LD_PRELOAD for it).
export CFLAGS="-fsanitize=$sanitize -g" LDFLAGS="-fsanitize=$sanitize"
export COHERENCE_SANITIZED=$kind
# the extensions are instrumented, the instrumented build is the one imported, and the runtime
# is loaded: else this proves nothing
symbols=$(nm -D "$work"/lib/coherence/_sampler*.so)
for probe in $probes; do
  [[ $symbols == *"$probe"* ]] || { echo "tools/sanitize.sh: the build has no $probe: not instrumented" >&2; exit 1; }
done
(cd / && PYTHONPATH="$work/lib" LD_PRELOAD="$lib" "$python" -c '
import sys, coherence._core as core, coherence._sampler as sampler
for module in (core, sampler):
    assert module.__file__.startswith(sys.argv[1]), "imported " + module.__file__
maps = open("/proc/self/maps").read()
assert "'"$(basename "$runtime")"'" in maps, "the sanitizer runtime is not loaded"
' "$work/lib")
rc=0
if [ "${1:-}" = "--" ]; then
  shift
  PYTHONPATH="$work/lib" LD_PRELOAD="$lib" "$@" || rc=$?
else
  PYTHONPATH="$work/lib" LD_PRELOAD="$lib" "$pytest" -p no:cacheprovider -q "$@" || rc=$?
fi
for report in "$work"/report.*; do
  [ -e "$report" ] || continue
  echo "--- $kind sanitizer report ($report) ---" >&2
  cat "$report" >&2
  rc=${rc/#0/1}
done
exit "$rc"
