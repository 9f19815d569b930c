"""Runner of the core benchmarks without pytest: timeit, median of >= 7 interleaved runs, a
Markdown table of ns per value with ratios to the floor and to river, PASS/MISS per target.
Usage: python benchmarks/run_core.py [--repeats N]   (always exits 0: targets are informational)
"""
import argparse
import hashlib
import os
import platform
import shutil
import statistics
import sys
import tempfile
import timeit

import _cases as cases
from _machine import cpu_model
from _build import build_capi_bench

BATCH_SECONDS = 0.1   # one timed batch: long against the timer, short against the VM's hiccups
# (title, cases, statement, values per call, floor row)
GROUPS = [
    ("push (per value, from Python)", cases.PUSH, "fn(x)", 1, "floor-noop"),
    ("push_many 1e6", cases.PUSH_MANY, "fn()", cases.ARRAY.size, "floor-capi.ring_loop"),
    ("EwmaRate.update", cases.EWMA, "fn()", cases.N_UPDATES, "floor-noop2-python-loop"),
    ("RatioWindow.update", cases.RATIO, "fn()", cases.N_UPDATES, "floor-noop2-python-loop"),
]
# Targets (the brief of the benchmark suite): push <= 2x floor, push_many >= 100 M values/s,
# push >= 10x faster than river's rolling variance.
PUSH_VS_FLOOR_MAX = 2.0
PUSH_MANY_MIN_MVALUES = 100.0
RIVER_SPEEDUP_MIN = 10.0


def machine():
    model = cpu_model()
    import Cython
    import numpy

    import coherence
    import coherence._core as core
    with open(core.__file__, "rb") as f:   # which build of the core was measured
        core_id = hashlib.sha256(f.read()).hexdigest()[:12]
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model}; nproc {len(os.sched_getaffinity(0))} (of {os.cpu_count()}); "
            f"Python {platform.python_version()}; numpy {numpy.__version__}; "
            f"Cython {Cython.__version__}; coherence {coherence.__version__} "
            f"(_core.so sha256 {core_id}); load average {load}")



def calibrate(timer):
    """Calls per batch so that a batch lasts about BATCH_SECONDS."""
    n = 1
    while True:
        t = timer.timeit(n)
        if t >= BATCH_SECONDS / 10:
            return max(1, round(n * BATCH_SECONDS / t))
        n *= 10


def measure(capi, group, stmt, values_per_call, repeats):
    """{name: [ns per value of each repeat]}, and {name: why skipped}. Rows take turns inside
    every repeat, so a noisy stretch of the shared VM falls on all of them alike."""
    timers, skipped = {}, {}
    for name, factory in group.items():
        try:
            fn = factory(capi)
        except ImportError as err:
            skipped[name] = str(err)
            continue
        timer = timeit.Timer(stmt, globals={"fn": fn, "x": cases.X})
        timers[name] = (timer, calibrate(timer))
    samples = {name: [] for name in timers}
    for _ in range(repeats):
        for name, (timer, number) in timers.items():
            samples[name].append(timer.timeit(number) / number / values_per_call * 1e9)
    return samples, skipped


def spread(xs):
    q1, _, q3 = statistics.quantiles(xs, n=4)
    return (q3 - q1) / statistics.median(xs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per row (>= 7)")
    repeats = max(7, parser.parse_args().repeats)

    tmpdir = tempfile.mkdtemp(prefix="coherence-capi-bench-")
    try:
        capi = build_capi_bench(tmpdir)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)   # the module stays loaded

    print(f"Machine: {machine()}")
    print(f"Median of {repeats} runs of ~{BATCH_SECONDS} s per row; spread = IQR / median.\n")
    print("| group | operation | ns / value | x floor | M values / s | river / this | spread |")
    print("|---|---|---:|---:|---:|---:|---:|")
    med = {}
    for title, group, stmt, values_per_call, floor in GROUPS:
        samples, skipped = measure(capi, group, stmt, values_per_call, repeats)
        m = {name: statistics.median(xs) for name, xs in samples.items()}
        med[title] = m
        river = m.get("river-Rolling(Var)") if title.startswith("push (") else None
        for name, ns in m.items():
            vs_river = f"{river / ns:.1f}" if river else ""
            print(f"| {title} | {name} | {ns:.2f} | {ns / m[floor]:.2f} | {1e3 / ns:.1f} "
                  f"| {vs_river} | {spread(samples[name]):.0%} |")
        for name, why in skipped.items():
            print(f"| {title} | {name} | skipped: {why} | | | | |")

    push = med["push (per value, from Python)"]
    many = med["push_many 1e6"]
    verdicts = [
        ("RollingStats.push <= 2x floor (noop)", push["RollingStats.push"] / push["floor-noop"],
         lambda v: v <= PUSH_VS_FLOOR_MAX, "{:.2f}x"),
        ("RollingStats.push_many >= 100 M values/s", 1e3 / many["RollingStats.push_many"],
         lambda v: v >= PUSH_MANY_MIN_MVALUES, "{:.0f} M/s"),
    ]
    if "river-Rolling(Var)" in push:
        verdicts.append(("RollingStats.push >= 10x faster than river Rolling(Var)",
                         push["river-Rolling(Var)"] / push["RollingStats.push"],
                         lambda v: v >= RIVER_SPEEDUP_MIN, "{:.1f}x"))
    print()
    for label, value, ok, fmt in verdicts:
        print(f"- {'PASS' if ok(value) else 'MISS'}: {label} (measured {fmt.format(value)})")
    if "river-Rolling(Var)" not in push:
        print("- SKIP: RollingStats.push >= 10x faster than river (river not installed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
