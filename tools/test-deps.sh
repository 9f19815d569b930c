#!/usr/bin/env bash
# The Debian packages the test suite needs, installed where missing (root, as on CI and the
# project's machines); a machine that has them all is left untouched and asks no registry.
#   perf (linux-perf): benchmarks/test_bench_sampler.py profiles the sampler with it
#   javac, java, jcmd (openjdk-17-jdk-headless): tests/test_sources_jvm.py reads a real JVM's counters;
#     tests/e2e/test_e2e_4_jvm.py runs one in a GC death spiral
#   go (golang-go): tests/e2e/test_e2e_6_go.py builds a Go program that exposes its runtime counters
#   clang and its sanitizer runtimes (clang, libclang-rt-14-dev): tools/fuzz.sh builds the compiled
#     parser for libFuzzer's coverage (-fsanitize=fuzzer-no-link, which gcc lacks) for tests/test_fuzz.py
set -euo pipefail
need=()
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v go >/dev/null || need+=(golang-go)
command -v clang >/dev/null || need+=(clang)
# linking -fsanitize=address with clang needs its static helper, packaged apart (Debian 12: clang 14)
asan_static=$(clang -print-file-name=libclang_rt.asan_static-x86_64.a 2>/dev/null || true)
[ -f "$asan_static" ] || need+=(libclang-rt-14-dev)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "tools/test-deps.sh: the tests need ${need[*]}: install them (apt-get install ${need[*]}) or run this as root" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
