"""The numerical contract of RollingStats and RatioWindow: against numpy and exact models,
on random and hostile data, after long runs; and a hypothesis state machine."""
import statistics
from collections import deque
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coherence import RatioWindow, RollingStats

N = 100_000


def sliding_var(x: np.ndarray, window: int, chunk: int = 2000) -> np.ndarray:
    """numpy's (two-pass) population variance of every window position, the first window-1
    positions being the growing prefixes; in chunks so a 10^4 window does not need GBs."""
    out = np.empty(len(x))
    for i in range(min(window - 1, len(x))):
        out[i] = np.var(x[: i + 1])
    views = np.lib.stride_tricks.sliding_window_view(x, window)
    for s in range(0, len(views), chunk):
        out[window - 1 + s: window - 1 + s + chunk] = views[s: s + chunk].var(axis=1)
    return out


def rolling_var_at_every_position(x: np.ndarray, window: int) -> np.ndarray:
    s = RollingStats(window)
    out = np.empty(len(x))
    push, var = s.push, s.var
    for i, v in enumerate(x.tolist()):
        push(v)
        out[i] = var()
    return out


@pytest.mark.parametrize("window", [2, 3, 10, 101, 1000, 10_000])
def test_variance_matches_numpy_at_every_position(window):
    rng = np.random.default_rng(window)
    x = rng.normal(loc=50.0, scale=20.0, size=N) * rng.choice([0.01, 1.0, 100.0], size=N)
    ours = rolling_var_at_every_position(x, window)
    ref = sliding_var(x, window)
    rel = np.abs(ours - ref) / np.maximum(ref, np.finfo(float).tiny)
    assert rel.max() <= 1e-9, f"worst relative error {rel.max():.3g} at {rel.argmax()}"
    assert (ours >= 0).all()


@pytest.mark.parametrize("window", [7, 1000])
def test_huge_offset_keeps_the_variance_of_the_noise(window):
    rng = np.random.default_rng(1)
    x = 1e9 + rng.normal(size=20 * window)
    ours = rolling_var_at_every_position(x, window)
    ref = sliding_var(x, window)
    assert np.abs(ours[1:] - ref[1:]).max() / ref[window:].min() <= 1e-9
    assert (ours >= 0).all()


@pytest.mark.parametrize("window", [2, 3, 4, 5, 100, 1001])
def test_mixed_magnitudes_leave_no_residue(window):
    # Values near 1e10, then 0s and 1s: the window holding only 0 and 1 has variance 0.25.
    # An add/remove Welford keeps ~1e10**2 * eps of garbage here (and can go negative).
    rng = np.random.default_rng(2)
    s = RollingStats(window)
    s.push_many(1e10 + rng.uniform(-1, 1, size=3 * window))
    zero_one = np.resize([0.0, 1.0], 4 * window)
    for i, v in enumerate(zero_one):
        s.push(v)
        assert s.var() >= 0.0
        if i + 1 >= window:
            expected = np.var(zero_one[i + 1 - window: i + 1])
            assert abs(s.var() - expected) <= 1e-12, (i, s.var(), expected)
            assert abs(s.mean - np.mean(zero_one[i + 1 - window: i + 1])) <= 1e-12


def test_variance_is_never_negative_on_hostile_data():
    rng = np.random.default_rng(3)
    magnitudes = 10.0 ** rng.integers(-8, 15, size=200_000)
    x = magnitudes * rng.choice([-1.0, 1.0], size=len(magnitudes))
    x[rng.random(len(x)) < 0.3] = 1e-300
    s = RollingStats(17)
    for chunk in np.array_split(x, 1000):
        s.push_many(chunk)
        assert s.var() >= 0.0


@pytest.mark.slow
def test_error_does_not_grow_over_ten_million_pushes():
    window = 1000
    rng = np.random.default_rng(4)
    s = RollingStats(window)
    errors: list[float] = []
    for _ in range(10):
        chunk = 1e3 + rng.normal(scale=5.0, size=1_000_000)
        s.push_many(chunk)
        tail = chunk[-window:]
        errors.append(float(abs(s.var() - np.var(tail)) / np.var(tail)))
        assert abs(s.mean - np.mean(tail)) <= 1e-12 * 1e3
    assert s.total == 10_000_000
    assert max(errors) <= 1e-12, errors
    assert errors[-1] <= max(10 * errors[0], 1e-14), errors


def test_ratio_sums_do_not_drift_after_a_burst_leaves():
    rng = np.random.default_rng(5)
    w = RatioWindow(100)
    for e in rng.uniform(0, 1e12, size=300):
        w.update(e, e / 3)
    small = rng.integers(0, 10, size=(100_000, 2)).astype(float)
    for e, i in small:
        w.update(e, i)
    tail = small[-100:]
    assert w.numerator == tail[:, 0].sum()
    assert w.denominator == tail[:, 1].sum()


# ------------------------------------------------------------------ hypothesis
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
hostile = st.one_of(finite, st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e12, -1e12, 0.0]))


class RollingModel(RuleBasedStateMachine):
    """RollingStats against a deque and exact rational statistics."""

    def __init__(self):
        super().__init__()
        self.window = None

    @precondition(lambda self: self.window is None)
    @rule(window=st.integers(min_value=1, max_value=40))
    def create(self, window):
        self.window = window
        self.stats = RollingStats(window)
        self.model: deque[float] = deque(maxlen=window)
        self.rejected = 0
        self.total = 0

    def _take(self, x):
        if np.isfinite(x):
            self.model.append(x)
            self.total += 1
        else:
            self.rejected += 1

    @precondition(lambda self: self.window is not None)
    @rule(x=hostile)
    def push(self, x):
        accepted = self.stats.push(x)
        assert accepted == bool(np.isfinite(x))
        self._take(x)

    @precondition(lambda self: self.window is not None)
    @rule(xs=st.lists(hostile, max_size=60))
    def push_many(self, xs):
        assert self.stats.push_many(np.array(xs, dtype=float)) == sum(map(np.isfinite, xs))
        for x in xs:
            self._take(x)

    @precondition(lambda self: self.window is not None)
    @rule()
    def reset(self):
        self.stats.reset()
        self.model.clear()
        self.rejected = self.total = 0

    @invariant()
    def agrees_with_the_model(self):
        if self.window is None:
            return
        snap = self.stats.snapshot()
        assert snap.count == len(self.model) and snap.total == self.total
        assert self.stats.rejected == self.rejected
        if not self.model:
            assert np.isnan(snap.mean) and np.isnan(snap.var)
            return
        exact = [Fraction(v) for v in self.model]
        mean = sum(exact) / len(exact)
        var = float(sum((v - mean) ** 2 for v in exact) / len(exact))
        assert snap.var >= 0.0
        scale = max(abs(v) for v in self.model)
        assert abs(snap.mean - float(mean)) <= 1e-12 * scale + 1e-300
        assert abs(snap.var - var) <= 1e-9 * var + 1e-12 * scale * scale
        if len(self.model) > 1:
            assert snap.var == pytest.approx(statistics.pvariance(self.model), rel=1e-6,
                                              abs=1e-12 * scale * scale)


RollingModel.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
test_rolling_state_machine = RollingModel.TestCase


@settings(max_examples=200, deadline=None)
@given(window=st.integers(1, 30),
       pairs=st.lists(st.tuples(st.floats(0, 1e9), st.floats(0, 1e9)), max_size=80),
       min_den=st.floats(0, 100))
def test_ratio_window_against_a_model(window, pairs, min_den):
    w = RatioWindow(window, min_denominator=min_den)
    for e, i in pairs:
        w.update(e, i)
    tail = pairs[-window:] if pairs else []
    num = float(sum(Fraction(e) for e, _ in tail))
    den = float(sum(Fraction(i) for _, i in tail))
    assert w.numerator == pytest.approx(num, rel=1e-12, abs=1e-6)
    assert w.denominator == pytest.approx(den, rel=1e-12, abs=1e-6)
    if den >= min_den and den > 0:
        assert w.ratio() == pytest.approx(num / den, rel=1e-9)
    else:
        assert np.isnan(w.ratio())
