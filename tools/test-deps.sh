#!/usr/bin/env bash
# The Debian packages the test suite needs, installed where missing (root, as on CI and the
# project's machines); a machine that has them all is left untouched and asks no registry.
#   perf (linux-perf): benchmarks/test_bench_sampler.py profiles the sampler with it
#   javac, java, jcmd (openjdk-17-jdk-headless): tests/test_sources_jvm.py reads a real JVM's counters;
#     tests/e2e/test_e2e_4_jvm.py runs one in a GC death spiral
#   go (golang-go): tests/e2e/test_e2e_6_go.py builds a Go program that exposes its runtime counters
#   promtool (prometheus): tests/test_sinks_prometheus.py runs `promtool check metrics` on a real
#     scrape. The package ships a Prometheus server as a service: it is kept from starting during
#     the install (policy-rc.d) and stopped and disabled after it, so nothing listens on 9090.
#   systemd-analyze (systemd), strace: tests/test_deploy.py verifies deploy/systemd/coherence.service
#     and traces `coherence serve` against its system call filter (nothing is started)
set -euo pipefail
need=()
command -v perf >/dev/null 2>&1 || need+=(linux-perf)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
command -v javac >/dev/null || need+=(openjdk-17-jdk-headless)
command -v go >/dev/null || need+=(golang-go)
command -v promtool >/dev/null || need+=(prometheus)
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v strace >/dev/null || need+=(strace)
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
if [[ " ${need[*]} " == *" prometheus "* ]] && [ -d /run/systemd/system ]; then
  systemctl disable --now prometheus.service >/dev/null 2>&1 || true
fi
