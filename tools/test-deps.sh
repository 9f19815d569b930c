#!/usr/bin/env bash
# The Debian packages the test suite needs, installed where missing (root, as on CI and the
# project's machines); a machine that has them all is left untouched and asks no registry.
#   perf (linux-perf): benchmarks/test_bench_sampler.py profiles the sampler with it
#   javac, java, jcmd (openjdk-17-jdk-headless): tests/test_sources_jvm.py reads a real JVM's counters;
#     tests/e2e/test_e2e_4_jvm.py runs one in a GC death spiral
#   go (golang-go): tests/e2e/test_e2e_6_go.py builds a Go program that exposes its runtime counters
#   promtool, prometheus (prometheus): tests/test_sinks_prometheus.py runs `promtool check metrics`
#     on a real scrape, tests/test_prometheus_rules.py `promtool check rules` and `promtool test
#     rules` on deploy/prometheus/; tests/e2e/test_e2e_7_prometheus.py runs the server itself
#   prometheus-alertmanager (Debian's name for alertmanager), amtool (prometheus-alertmanager):
#     tests/e2e/test_e2e_7_prometheus.py routes a real Prometheus's alerts through it;
#     tests/test_prometheus_rules.py checks the example Alertmanager configuration with amtool
# Both packages ship their server as a service. The tests start their own, on free ports of
# 127.0.0.1 with temporary directories: the packaged services are kept from starting during the
# install (policy-rc.d) and stopped and disabled after it, so nothing listens on 9090 or 9093.
#   systemd-analyze (systemd), strace: tests/test_deploy.py verifies deploy/systemd/coherence.service
#     and traces `coherence serve` against its system call filter (nothing is started)
#   clang and its sanitizer runtimes (clang, libclang-rt-14-dev): tools/fuzz.sh builds the compiled
#     parser for libFuzzer's coverage (-fsanitize=fuzzer-no-link, which gcc lacks) for tests/test_fuzz.py
set -euo pipefail
need=()
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v go >/dev/null || need+=(golang-go)
command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null && command -v amtool >/dev/null || need+=(prometheus-alertmanager)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null || need+=(strace)
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
# Debian's invoke-rc.d asks /usr/sbin/policy-rc.d whether a package may start its service: 101
# says no. An existing policy file is left as it was.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy" && own_policy=1
fi
trap 'if [ "$own_policy" -eq 1 ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Stopped and disabled whatever the policy file said (one that pre-existed may allow starts).
for pkg in prometheus prometheus-alertmanager; do
  [[ " ${need[*]} " == *" $pkg "* ]] || continue
  if [ -d /run/systemd/system ]; then
    systemctl disable --now "$pkg.service" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$pkg" ]; then
    "/etc/init.d/$pkg" stop >/dev/null 2>&1 || true
    update-rc.d "$pkg" disable >/dev/null 2>&1 || true
  fi
done
