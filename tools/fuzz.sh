#!/usr/bin/env bash
# Runs one coverage-guided fuzz harness of fuzz/ (atheris, on libFuzzer's engine).
#
#   tools/fuzz.sh HARNESS [libFuzzer options...]      e.g. tools/fuzz.sh scrape -max_total_time=600
#
# HARNESS is statsd, procfs, config, jvm or scrape. It starts from the committed seed corpus
# fuzz/corpus/HARNESS, which it only reads: the inputs it finds go to a scratch directory. A
# crash is written to $FUZZ_ARTIFACTS (default fuzz-artifacts/) as crash-<sha1>; replay it with
# `python fuzz/fuzz_HARNESS.py FILE`. procfs runs against a build of the compiled parser that
# clang instrumented for libFuzzer's coverage, ASan and UBSan (tools/sanitize.sh fuzzer).
set -euo pipefail
cd "$(dirname "$0")/.."
harness=${1:?usage: tools/fuzz.sh statsd|procfs|config|jvm|scrape [libFuzzer options...]}
shift
script=fuzz/fuzz_$harness.py
[ -f "$script" ] || { echo "tools/fuzz.sh: no harness $script" >&2; exit 2; }
python=$(realpath -s "${PYTHON:-.venv/bin/python}")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
artifacts=$(realpath -m "${FUZZ_ARTIFACTS:-fuzz-artifacts}")
mkdir -p "$work/corpus" "$artifacts"
# the harnesses' scratch files (procfs's fake trees) go here, removed with it: libFuzzer's exit
# skips the interpreter's atexit handlers
export TMPDIR=$work
options=("-artifact_prefix=$artifacts/")
# tokens of the input's language (TOML keys, exposition syntax) that mutation alone finds late
[ -f "fuzz/$harness.dict" ] && options+=("-dict=fuzz/$harness.dict")
cmd=("$python" "$script" "${options[@]}" "$@" "$work/corpus" "fuzz/corpus/$harness")
if [ "$harness" = procfs ]; then
  PYTHON=$python bash tools/sanitize.sh fuzzer -- "${cmd[@]}"
else
  "${cmd[@]}"
fi
