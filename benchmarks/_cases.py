"""What the core benchmarks measure: the core, its floors and its peers, as zero-argument
factories shared by test_bench_core.py (pytest-benchmark) and run_core.py (timeit runner).
"""
import collections
import statistics

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from coherence import EwmaRate, RatioWindow, RingBuffer, RollingStats

WINDOW = 100
# One fixed value for every push row: the core's and the peers' arithmetic cost does not depend
# on the value (pvariance's exact Fractions aside), and the argument costs the same everywhere.
X = 0.4375
_rng = np.random.default_rng(20240501)
NOISE = 50.0 + 10.0 * _rng.standard_normal(WINDOW)      # pre-fills every window: full from push 1
ARRAY = 50.0 + 10.0 * _rng.standard_normal(10**6)       # "push_many 1e6"
# Counter samples for the rate and ratio loops: ~1 ms apart with jitter, increments of 0..999.
N_UPDATES = 10_000
TIMES = np.cumsum(0.001 + 0.0001 * _rng.random(N_UPDATES))
COUNTER = np.cumsum(_rng.integers(0, 1000, N_UPDATES)).astype(np.float64)
EGRESS = _rng.integers(0, 120, N_UPDATES).astype(np.float64)
INGRESS = _rng.integers(1, 100, N_UPDATES).astype(np.float64)
TIMES_L, COUNTER_L, EGRESS_L, INGRESS_L = (a.tolist() for a in (TIMES, COUNTER, EGRESS, INGRESS))


# ---- push (per value, from Python): each factory returns push(x) on a full window ----------
def floor_noop(capi):
    return capi.Floor().noop


def rolling_push(capi):
    s = RollingStats(WINDOW)
    s.push_many(NOISE)
    return s.push


def rolling_push_std(capi):
    # push and read the statistic at every sample, as the deque/numpy peers below do
    s = RollingStats(WINDOW)
    s.push_many(NOISE)
    push, std = s.push, s.std

    def push_std(x):
        push(x)
        return std()
    return push_std


def ring_push(capi):
    r = RingBuffer(WINDOW)
    for v in NOISE:
        r.push(v)
    return r.push


def deque_hand_var(capi):
    # what a pure-Python sentinel does: keep the window, recompute mean and variance
    w = collections.deque(NOISE.tolist(), maxlen=WINDOW)

    def push(x):
        w.append(x)
        m = sum(w) / len(w)
        return sum((v - m) * (v - m) for v in w) / len(w)
    return push


def deque_pvariance(capi):
    w = collections.deque(NOISE.tolist(), maxlen=WINDOW)

    def push(x):
        w.append(x)
        return statistics.pvariance(w)
    return push


def numpy_ring_std(capi):
    ring = NOISE.copy()
    head = [0]

    def push(x):
        i = head[0]
        ring[i] = x
        head[0] = i + 1 if i + 1 < WINDOW else 0
        return ring.std()
    return push


def river_rolling_var(capi):
    from river import stats, utils
    r = utils.Rolling(stats.Var, window_size=WINDOW, ddof=0)
    for v in NOISE.tolist():
        r.update(v)
    return r.update   # O(1) update and revert; get() is a read of its state


def runstats_exp(capi):
    # runstats has no sliding window: ExponentialStatistics (decay 1 - 1/window) is the closest
    import runstats
    s = runstats.ExponentialStatistics(decay=1.0 - 1.0 / WINDOW)
    for v in NOISE.tolist():
        s.push(v)
    return s.push


PUSH = {
    "floor-noop": floor_noop,
    "RollingStats.push": rolling_push,
    "RollingStats.push+std": rolling_push_std,
    "RingBuffer.push": ring_push,
    "deque+hand-var": deque_hand_var,
    "deque+pvariance": deque_pvariance,
    "numpy-ring+std": numpy_ring_std,
    "river-Rolling(Var)": river_rolling_var,
    "runstats-ExponentialStatistics(not-windowed)": runstats_exp,
}


# ---- push_many 1e6: each factory returns run() that takes all of ARRAY once --------------
def rolling_push_many(capi):
    s = RollingStats(WINDOW)
    return lambda: s.push_many(ARRAY)


def capi_push_loop(capi):
    s = RollingStats(WINDOW)
    return lambda: capi.push_loop(s, ARRAY)


def capi_ring_loop(capi):
    ring = np.zeros(WINDOW)
    return lambda: capi.ring_loop(ring, ARRAY)


def numpy_sliding_var(capi):
    # in chunks of 1e5 windows: all at once would allocate a 1e6 x 100 temporary (800 MB)
    def run():
        out = np.empty(ARRAY.size - WINDOW + 1)
        for i in range(0, out.size, 100_000):
            chunk = ARRAY[i:i + 100_000 + WINDOW - 1]
            out[i:i + 100_000] = sliding_window_view(chunk, WINDOW).var(axis=1)
        return out
    return run


def numpy_cumsum_var(capi):
    # O(n) and fast, but E[x^2] - E[x]^2 cancels catastrophically on offset data: a reference
    def run():
        c1 = np.cumsum(np.concatenate(([0.0], ARRAY)))
        c2 = np.cumsum(np.concatenate(([0.0], ARRAY * ARRAY)))
        m = (c1[WINDOW:] - c1[:-WINDOW]) / WINDOW
        return (c2[WINDOW:] - c2[:-WINDOW]) / WINDOW - m * m
    return run


PUSH_MANY = {
    "RollingStats.push_many": rolling_push_many,
    "capi.push_loop(rolling_push)": capi_push_loop,
    "floor-capi.ring_loop": capi_ring_loop,
    "numpy-sliding_window_view.var": numpy_sliding_var,
    "numpy-cumsum-var(unstable)": numpy_cumsum_var,
}


# ---- EwmaRate.update / RatioWindow.update: run() does N_UPDATES updates, fresh object ----
def floor_noop2_loop(capi):
    def run():
        u = capi.Floor().noop2
        for a, b in zip(TIMES_L, COUNTER_L):
            u(a, b)
    return run


def ewma_python_loop(capi):
    def run():
        u = EwmaRate(1.0).update
        for t, v in zip(TIMES_L, COUNTER_L):
            u(t, v)
    return run


def ewma_c_loop(capi):
    return lambda: capi.ewma_loop(EwmaRate(1.0), TIMES, COUNTER)


def ratio_python_loop(capi):
    def run():
        u = RatioWindow(WINDOW).update
        for e, i in zip(EGRESS_L, INGRESS_L):
            u(e, i)
    return run


def ratio_c_loop(capi):
    return lambda: capi.ratio_loop(RatioWindow(WINDOW), EGRESS, INGRESS)


EWMA = {
    "floor-noop2-python-loop": floor_noop2_loop,
    "EwmaRate.update-python-loop": ewma_python_loop,
    "capi.ewma_loop(ewma_update)": ewma_c_loop,
}
RATIO = {
    "floor-noop2-python-loop": floor_noop2_loop,
    "RatioWindow.update-python-loop": ratio_python_loop,
    "capi.ratio_loop(ratio_update)": ratio_c_loop,
}
