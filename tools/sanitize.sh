#!/usr/bin/env bash
# Runs tests against a build of the compiled core instrumented by a sanitizer.
#
#   tools/sanitize.sh thread [pytest args...]     ThreadSanitizer (default: the concurrency tests)
#
# The extension is built into a temporary copy of the package (the installed one is left as it
# is), the interpreter preloads the sanitizer's runtime, and any report fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:?usage: tools/sanitize.sh thread [pytest args...]}
shift
python=${PYTHON:-.venv/bin/python}
pytest=$(dirname "$python")/pytest   # not `python -m pytest`: that puts the source tree first
case "$kind" in
  thread) runtime=libtsan.so ;;
  *) echo "tools/sanitize.sh: unknown sanitizer '$kind' (known: thread)" >&2; exit 2 ;;
esac
[ $# -gt 0 ] || set -- tests/test_core_concurrency.py tests/test_hooks.py

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lib"
# the package's Python files and .pxd, then the instrumented extensions beside them
cp -rL coherence "$work/lib/"
find "$work/lib/coherence" -name '*.so' -delete
cp csrc/coherence/*.pxd csrc/coherence/*.h "$work/lib/coherence/"
COHERENCE_SANITIZE=$kind "$python" setup.py -q build_ext --build-lib "$work/lib" \
  --build-temp "$work/tmp" >"$work/build.log" 2>&1 || { cat "$work/build.log"; exit 1; }

lib=$(gcc -print-file-name="$runtime")
# Modules the tests compile themselves (tests/capi) are instrumented too; the compiler they
# run does not load the runtime (conftest drops LD_PRELOAD for it).
export CFLAGS="-fsanitize=$kind -g" LDFLAGS="-fsanitize=$kind"
# reports go to files (pytest captures the test's stderr, and the first report ends the run)
export TSAN_OPTIONS="halt_on_error=1 exitcode=66 second_deadlock_stack=1 log_path=$work/report ${TSAN_OPTIONS:-}"
export COHERENCE_SANITIZED=$kind
# the instrumented build is the one imported, and the runtime is loaded: else this proves nothing
(cd / && PYTHONPATH="$work/lib" LD_PRELOAD="$lib" "$python" -c '
import sys, coherence._core as core
assert core.__file__.startswith(sys.argv[1]), "imported " + core.__file__
maps = open("/proc/self/maps").read()
assert "'"$runtime"'" in maps, "the sanitizer runtime is not loaded"
' "$work/lib")
rc=0
PYTHONPATH="$work/lib" LD_PRELOAD="$lib" "$pytest" -p no:cacheprovider -q "$@" || rc=$?
for report in "$work"/report.*; do
  [ -e "$report" ] || continue
  echo "--- $kind sanitizer report ($report) ---" >&2
  cat "$report" >&2
  rc=${rc/#0/1}
done
exit "$rc"
