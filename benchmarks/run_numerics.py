"""The numerics figures README quotes: the worst relative error of RollingStats' variance, in
ulp (units of 2.2e-16), on the data sets of tests/test_core_numerics.py, beside the designs it
replaces run on the same data, against an extended-precision reference. Deterministic (fixed
seeds): the same build prints the same table.

Usage: python benchmarks/run_numerics.py
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import _variance_designs as designs  # noqa: E402
from coherence import RollingStats  # noqa: E402

EPS = float(np.finfo(float).eps)
BOUND_ULP = 32          # tests/test_core_numerics.py: BOUND = 32 * EPS (128 for the long run)


def ours(x, window):
    s = RollingStats(window)
    out = np.empty(len(x))
    for i, v in enumerate(x.tolist()):
        s.push(v)
        out[i] = s.var()
    return out


def data_sets():
    """(name, values, window, positions judged): the tests' data, seeds and sizes."""
    for window in (2, 101, 10_000):
        n = 100_000 if window < 10_000 else 40_000
        rng = np.random.default_rng(window)
        x = rng.normal(loc=50.0, scale=20.0, size=n) * rng.choice([0.01, 1.0, 100.0], size=n)
        yield f"mixed scales, window {window}", x, window, slice(1, None)
    rng = np.random.default_rng(1)
    yield "1e9 + unit noise, window 1000", 1e9 + rng.normal(size=20_000), 1000, slice(1, None)
    rng = np.random.default_rng(3)
    n = 200_000
    x = (10.0 ** rng.integers(-300, 16, size=n).astype(float) * rng.choice([-1.0, 1.0], size=n)
         * rng.uniform(1.0, 10.0, size=n))
    yield "magnitudes 1e-300 to 1e16, window 17", x, 17, slice(1, None)
    window, period, n = 10_000, 50_000, 1_000_000
    rng = np.random.default_rng(7)
    x = 1e3 + rng.normal(size=n)
    for start in range(period // 2, n, period):
        x[start:start + 100] = 1e6 * rng.normal(size=100)
    yield "10^6 values with bursts, window 10^4", x, window, np.arange(period - 1, n, period)


def worst_ulp(values, ref, where):
    v, r = values[where], ref[where]
    rel = np.abs(v - r) / np.maximum(r, np.finfo(float).tiny)
    return float(rel.max()) / EPS


def main():
    names = ["ours", *designs.DESIGNS]
    print(f"worst relative error of the variance, in ulp (the tests' bar: {BOUND_ULP} ulp)\n")
    print("| data | " + " | ".join(names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for title, x, window, where in data_sets():
        if isinstance(where, np.ndarray):        # probes only: the reference of a 10^6 run
            ref = np.full(len(x), np.nan)
            for p in where:
                ref[p] = float(np.var(x[p + 1 - window:p + 1].astype(designs.LONG)))
        else:
            ref = designs.reference_var(x, window)
        cells = []
        for name in names:
            fn = ours if name == "ours" else designs.DESIGNS[name]
            if name == "textbook" and isinstance(where, np.ndarray):
                cells.append("–")               # O(n window): too slow for 10^6 x 10^4
                continue
            err = worst_ulp(fn(x, window), ref, where)
            cells.append(f"{err:.3g}" if err < 1e6 else f"{err:.1e}")
        print(f"| {title} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
