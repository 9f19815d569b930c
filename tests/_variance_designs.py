"""The designs README says RollingStats replaces, as plain Python models: the numerics tests
run them on the same data and bounds, and check that each one fails there. A bound that one of
these passes proves nothing about our design."""
from __future__ import annotations

from collections import deque
from typing import Callable, Deque, Dict

import numpy as np

LONG = np.longdouble   # 64-bit mantissa on x86-64: a reference 2048x finer than float64


def reference_var(x: np.ndarray, window: int, chunk: int = 1000) -> np.ndarray:
    """Two-pass population variance of every window position in extended precision (the first
    window-1 positions are the growing prefixes), rounded once to float64."""
    xl = x.astype(LONG)
    out = np.empty(len(x), dtype=LONG)
    for i in range(min(window - 1, len(x))):
        out[i] = np.var(xl[: i + 1])
    views = np.lib.stride_tricks.sliding_window_view(xl, window)
    for s in range(0, len(views), chunk):
        out[window - 1 + s: window - 1 + s + chunk] = views[s: s + chunk].var(axis=1)
    return out.astype(np.float64)


def running_sums(x: np.ndarray, window: int) -> np.ndarray:
    """Sum and sum of squares, adding the new value and subtracting the leaving one."""
    out = np.empty(len(x))
    s1 = s2 = 0.0
    xs = x.tolist()
    for i, v in enumerate(xs):
        s1 += v
        s2 += v * v
        if i >= window:
            old = xs[i - window]
            s1 -= old
            s2 -= old * old
        n = min(i + 1, window)
        m = s1 / n
        out[i] = s2 / n - m * m
    return out


def add_remove_welford(x: np.ndarray, window: int) -> np.ndarray:
    """Welford's update to add the new value and its inverse to remove the leaving one."""
    out = np.empty(len(x))
    n, mean, m2 = 0, 0.0, 0.0
    xs = x.tolist()
    for i, v in enumerate(xs):
        if i >= window:
            old = xs[i - window]
            n -= 1
            d = old - mean
            mean -= d / n
            m2 -= d * (old - mean)
        n += 1
        d = v - mean
        mean += d / n
        m2 += d * (v - mean)
        out[i] = m2 / n
    return out


def textbook(x: np.ndarray, window: int) -> np.ndarray:
    """E[x^2] - E[x]^2 of each window, computed afresh (no drift, but cancellation)."""
    out = np.empty(len(x))
    for i in range(min(window - 1, len(x))):
        seg = x[: i + 1]
        out[i] = np.mean(seg * seg) - np.mean(seg) ** 2
    views = np.lib.stride_tricks.sliding_window_view(x, window)
    for s in range(0, len(views), 2000):
        c = views[s: s + 2000]
        out[window - 1 + s: window - 1 + s + 2000] = (c * c).mean(axis=1) - c.mean(axis=1) ** 2
    return out


DESIGNS: Dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "running sums": running_sums,
    "add/remove Welford": add_remove_welford,
    "textbook": textbook,
}


class TextbookRolling:
    """A RollingStats look-alike computing E[x^2] - E[x]^2 exactly as floats would, for the
    state machine: the test that must tell it from ours."""

    def __init__(self, window: int) -> None:
        self.values: Deque[float] = deque(maxlen=window)
        self.total = 0
        self.rejected = 0

    def _take(self, x: float) -> bool:
        if np.isfinite(x):
            self.values.append(float(x))
            self.total += 1
            return True
        self.rejected += 1
        return False

    def push(self, x: float) -> bool:
        return self._take(x)

    def push_many(self, xs: np.ndarray) -> int:
        return sum(self._take(x) for x in xs)

    def reset(self) -> None:
        self.values.clear()
        self.total = self.rejected = 0

    def snapshot(self):
        from coherence import RollingSnapshot
        n = len(self.values)
        if not n:
            return RollingSnapshot(0, self.total, float("nan"), float("nan"))
        a = np.array(self.values)
        mean = float(a.mean())
        return RollingSnapshot(n, self.total, mean, max(0.0, float((a * a).mean() - mean * mean)))
