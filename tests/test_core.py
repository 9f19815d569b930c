"""Behaviour of the compiled core's Python API: what a caller sees, errors included."""
import math
import statistics

import numpy as np
import pytest

import coherence
from coherence import EwmaRate, RatioWindow, RingBuffer, RollingStats


# ------------------------------------------------------------------ package
def test_public_api_is_explicit():
    for name in coherence.__all__:
        assert hasattr(coherence, name), name
    assert {"RingBuffer", "RollingStats", "EwmaRate", "RatioWindow"} <= set(coherence.__all__)


def test_pxd_header_and_stubs_ship_with_the_package():
    pkg = coherence.get_include() + "/coherence/"
    for name in ("_core.pxd", "__init__.pxd", "coh_atomic.h", "_core.pyi", "py.typed"):
        with open(pkg + name, "rb"):
            pass


# ------------------------------------------------------------------ RingBuffer
def test_ring_keeps_the_last_capacity_values_oldest_first():
    r = RingBuffer(3)
    assert len(r) == 0 and r.capacity == 3
    assert r.to_array().tolist() == []
    for x in (1, 2):
        r.push(x)
    assert r.to_array().tolist() == [1.0, 2.0] and len(r) == 2
    for x in (3, 4, 5):
        r.push(x)
    assert r.to_array().tolist() == [3.0, 4.0, 5.0]
    assert r.last() == 5.0 and len(r) == 3 and r.total == 5


def test_ring_snapshot_is_the_values_and_the_count_pushed_with_them():
    r = RingBuffer(3)
    values, total = r.snapshot()
    assert values.tolist() == [] and total == 0
    for x in (1, 2, 3, 4, 5):
        r.push(x)
    values, total = r.snapshot()
    assert values.tolist() == [3.0, 4.0, 5.0] and total == 5
    values[0] = 99.0                                   # a copy, as to_array's
    assert r.to_array().tolist() == [3.0, 4.0, 5.0]


def test_ring_to_array_is_a_copy():
    r = RingBuffer(2)
    r.push(1.0)
    a = r.to_array()
    a[0] = 99.0
    assert r.to_array().tolist() == [1.0]


def test_ring_last_of_empty_raises_index_error():
    with pytest.raises(IndexError):
        RingBuffer(4).last()


@pytest.mark.parametrize("bad", [0, -1])
def test_ring_capacity_under_one_names_the_argument(bad):
    with pytest.raises(ValueError, match="capacity"):
        RingBuffer(bad)


@pytest.mark.parametrize("bad", [2.5, "3", None, True])
def test_ring_capacity_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="capacity"):
        RingBuffer(bad)


def test_ring_push_non_number_is_type_error():
    with pytest.raises(TypeError):
        RingBuffer(2).push("x")  # type: ignore[arg-type]


# ------------------------------------------------------------------ RollingStats
def test_rolling_matches_the_docstring_example():
    s = RollingStats(window=4)
    assert s.push_many([1.0, 2.0, 3.0, 4.0, 5.0]) == 5
    assert (s.mean, s.var(), s.count, s.total) == (3.5, 1.25, 4, 5)
    assert s.std() == math.sqrt(1.25)
    assert s.var(ddof=1) == pytest.approx(statistics.variance([2, 3, 4, 5]))
    assert s.std(1) == pytest.approx(statistics.stdev([2, 3, 4, 5]))


def test_rolling_empty_and_single_value():
    s = RollingStats(5)
    assert s.count == 0 and math.isnan(s.mean) and math.isnan(s.var()) and math.isnan(s.std())
    s.push(7)
    assert s.mean == 7.0 and s.var() == 0.0 and math.isnan(s.var(ddof=1))


def test_rolling_window_of_one_is_the_last_value():
    s = RollingStats(1)
    for x in (3.0, -2.0, 10.0):
        s.push(x)
        assert (s.count, s.mean, s.var()) == (1, x, 0.0)


def test_rolling_constant_signal_has_exactly_zero_variance():
    s = RollingStats(10)
    s.push_many(np.full(1000, 0.1))
    assert s.var() == 0.0 and s.std() == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_rolling_refuses_nan_and_inf_and_counts_them(bad):
    s = RollingStats(3)
    s.push_many([1.0, 2.0])
    before = s.snapshot()
    assert s.push(bad) is False
    assert s.rejected == 1
    assert s.snapshot() == before


def test_rolling_push_many_refuses_and_counts_non_finite_values():
    s = RollingStats(3)
    assert s.push_many([1.0, math.nan, 2.0, math.inf, 3.0, -math.inf]) == 3
    assert s.rejected == 3 and s.count == 3 and s.mean == 2.0


def test_rolling_push_accepts_ints_and_numpy_scalars():
    s = RollingStats(3)
    assert s.push(1) and s.push(np.float32(2.0)) and s.push(np.int64(3))
    assert s.mean == 2.0


@pytest.mark.parametrize("bad", ["1.0", None, [1.0], object()])
def test_rolling_push_of_a_non_number_is_type_error(bad):
    s = RollingStats(3)
    with pytest.raises(TypeError):
        s.push(bad)
    assert s.total == 0 and s.rejected == 0


def test_rolling_push_many_of_non_numbers_is_an_error_and_changes_nothing():
    s = RollingStats(3)
    with pytest.raises((TypeError, ValueError)):
        s.push_many(["a", "b"])
    with pytest.raises(ValueError, match="1-d"):
        s.push_many(np.ones((2, 2)))
    assert s.total == 0


@pytest.mark.parametrize("bad", [0, -5])
def test_rolling_window_under_one_names_the_argument(bad):
    with pytest.raises(ValueError, match="window"):
        RollingStats(bad)


@pytest.mark.parametrize("bad", [1.5, "10", None])
def test_rolling_window_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="window"):
        RollingStats(bad)


@pytest.mark.parametrize("bad", [-1, 1.5])
def test_rolling_bad_ddof(bad):
    s = RollingStats(3)
    with pytest.raises((ValueError, TypeError), match="ddof|integer"):
        s.var(ddof=bad)


def test_rolling_reset_empties_the_window():
    s = RollingStats(4)
    s.push_many([1.0, 2.0, math.nan, 3.0])
    s.reset()
    assert (s.count, s.total, s.rejected) == (0, 0, 0) and math.isnan(s.mean)
    s.push_many([10.0, 20.0])
    assert (s.count, s.mean, s.var()) == (2, 15.0, 25.0)


def test_rolling_snapshot_fields_agree_with_properties():
    s = RollingStats(8)
    s.push_many(np.arange(20.0))
    snap = s.snapshot()
    assert snap == (8, 20, s.mean, s.var())
    assert snap.count == 8 and snap.total == 20
    assert s.snapshot(ddof=1).var == pytest.approx(np.var(np.arange(12.0, 20.0), ddof=1))


def test_rolling_push_many_equals_push_one_by_one():
    x = np.random.default_rng(7).normal(size=2000) * 10
    a, b = RollingStats(37), RollingStats(37)
    a.push_many(x)
    for v in x:
        b.push(v)
    assert a.snapshot() == b.snapshot()


def test_rolling_push_many_accepts_non_contiguous_and_other_dtypes():
    x = np.arange(40, dtype=np.int32)
    s = RollingStats(5)
    s.push_many(x[::2])
    assert s.mean == np.mean(x[::2][-5:])


# ------------------------------------------------------------------ EwmaRate
def test_ewma_docstring_example():
    r = EwmaRate(half_life=1.0)
    assert math.isnan(r.update(0.0, 100))
    assert r.update(0.5, 150) == 100.0
    assert r.samples == 2 and r.rate == 100.0 and r.rate_var == 0.0


def test_ewma_constant_rate_is_that_rate_whatever_the_sampling():
    r = EwmaRate(half_life=2.0)
    t, v = 0.0, 0.0
    rng = np.random.default_rng(3)
    r.update(t, v)
    for dt in rng.uniform(0.001, 0.5, size=500):
        t += dt
        v += 250.0 * dt
        r.update(t, v)
    assert r.rate == pytest.approx(250.0, rel=1e-9)
    assert r.rate_std == pytest.approx(0.0, abs=1e-6)


def test_ewma_rate_var_is_the_exponentially_weighted_variance_of_the_rates():
    # A rate switching between about 100/s and 900/s, sampled at irregular times. An interval
    # of dt weighs alpha = 1 - 2**(-dt/h) and every older one shrinks by (1 - alpha): the
    # smoothed rate and rate_var are that weighted mean and weighted variance, computed here
    # from the weights directly rather than incrementally.
    h = 2.0
    rng = np.random.default_rng(11)
    r = EwmaRate(half_life=h)
    t = v = 0.0
    r.update(t, v)
    rates, alphas = [], []
    for _ in range(400):
        dt = rng.uniform(0.001, 1.0)
        rate = rng.choice([100.0, 900.0]) * rng.uniform(0.9, 1.1)
        t, v = t + dt, v + rate * dt
        r.update(t, v)
        rates.append(rate)
        alphas.append(1.0 - 2.0 ** (-dt / h))
    alphas[0] = 1.0                                   # the first interval is the first rate
    a, x = np.array(alphas), np.array(rates)
    later = np.concatenate([np.cumprod((1.0 - a)[::-1])[::-1][1:], [1.0]])
    w = a * later                                     # weight of each interval's rate now
    assert w.sum() == pytest.approx(1.0, rel=1e-12)
    mean = float((w * x).sum())
    var = float((w * (x - mean) ** 2).sum())
    assert r.rate == pytest.approx(mean, rel=1e-12)
    assert r.rate_var == pytest.approx(var, rel=1e-9)
    assert r.rate_std == pytest.approx(np.sqrt(var), rel=1e-9)
    assert 200.0 < r.rate_std < 450.0                 # a switching rate: far from 0


def test_ewma_refuses_an_interval_whose_rate_overflows_and_recovers():
    r = EwmaRate(half_life=1.0)
    r.update(0.0, -1e308)
    r.update(1.0, 1e308)          # +2e308 in a second: not a rate a double can hold
    assert r.rejected == 1 and np.isnan(r.rate)
    r.update(2.0, 10.0)           # back to a sane counter: counted from zero (a reset)
    r.update(3.0, 30.0)
    assert r.rate == pytest.approx(15.0) and np.isfinite(r.rate_var) and r.rejected == 1
    # the other way round: a counter "reset" to a huge negative value is refused as well
    r = EwmaRate(half_life=1.0)
    r.update(0.0, 1e308)
    r.update(1.0, -1e308)
    assert r.rejected == 1 and r.resets == 0 and np.isnan(r.rate)
    for t, v in ((2.0, 5.0), (3.0, 10.0), (4.0, 15.0)):
        r.update(t, v)
    assert r.rate == pytest.approx(5.0) and r.rate_var == pytest.approx(0.0)


def test_ewma_alpha_is_time_aware():
    # After exactly one half-life, the old rate and the new one weigh the same.
    r = EwmaRate(half_life=10.0)
    r.update(0.0, 0.0)
    r.update(1.0, 100.0)            # rate 100
    assert r.update(11.0, 100.0) == pytest.approx(50.0)   # 10 s at rate 0: halfway
    # A short interval moves the rate only a little: alpha = 1 - 2**(-0.1/10).
    alpha = 1 - 2 ** (-0.1 / 10.0)
    expected = 50.0 + alpha * (1000.0 - 50.0)
    assert r.update(11.1, 200.0) == pytest.approx(expected, rel=1e-12)


def test_ewma_counter_reset_counts_from_the_new_value():
    r = EwmaRate(half_life=1e-9)    # no memory: the rate is the last interval's
    r.update(0.0, 1000.0)
    r.update(1.0, 1100.0)
    assert r.rate == pytest.approx(100.0)
    assert r.update(2.0, 30.0) == pytest.approx(30.0)   # restarted: 0 -> 30 in 1 s
    assert r.resets == 1 and r.rate >= 0


@pytest.mark.parametrize("t2", [0.0, -1.0, math.nan, math.inf])
def test_ewma_time_that_does_not_increase_is_value_error(t2):
    r = EwmaRate(1.0)
    r.update(0.0, 1.0)
    with pytest.raises(ValueError, match="time must"):
        r.update(t2, 2.0)
    assert r.samples == 1


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_ewma_non_finite_value_is_counted_and_ignored(bad):
    r = EwmaRate(1.0)
    r.update(0.0, 0.0)
    r.update(1.0, 10.0)
    r.update(2.0, bad)
    assert r.rejected == 1 and r.samples == 2 and r.rate == 10.0


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf])
def test_ewma_half_life_must_be_positive_finite(bad):
    with pytest.raises(ValueError, match="half_life"):
        EwmaRate(bad)


def test_ewma_non_number_is_type_error():
    with pytest.raises(TypeError):
        EwmaRate("1s")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        EwmaRate(1.0).update("now", 1.0)  # type: ignore[arg-type]


def test_ewma_snapshot_is_consistent():
    r = EwmaRate(1.0)
    r.update(1.0, 0.0)
    r.update(2.0, 5.0)
    snap = r.snapshot()
    assert snap == (2.0, 5.0, 0.0, 2)
    assert math.isnan(EwmaRate(1.0).snapshot().rate)


# ------------------------------------------------------------------ RatioWindow
def test_ratio_docstring_example():
    w = RatioWindow(window=3, min_denominator=1)
    for e, i in ((2, 1), (3, 1), (4, 2)):
        w.update(e, i)
    assert (w.numerator, w.denominator, w.ratio()) == (9.0, 4.0, 2.25)


def test_ratio_slides_over_the_last_window_updates():
    w = RatioWindow(2)
    for e, i in ((100, 1), (3, 2), (5, 4)):
        w.update(e, i)
    assert (w.numerator, w.denominator, w.count, w.total) == (8.0, 6.0, 2, 3)


def test_ratio_is_nan_under_the_minimum_denominator():
    w = RatioWindow(3, min_denominator=10)
    w.update(50, 9)
    assert math.isnan(w.ratio())
    w.update(0, 1)
    assert w.ratio() == 5.0
    z = RatioWindow(3, min_denominator=0)
    z.update(5, 0)
    assert math.isnan(z.ratio())       # never a division by zero


def test_ratio_window_empties_to_exactly_zero():
    w = RatioWindow(2)
    w.update(1e12, 0.1)
    w.update(0.3, 0.7)
    w.update(0, 0)
    w.update(0, 0)
    assert (w.numerator, w.denominator) == (0.0, 0.0)


def test_ratio_refuses_negative_deltas():
    w = RatioWindow(2)
    with pytest.raises(ValueError, match="deltas must be >= 0"):
        w.update(-1, 1)
    assert w.total == 0


def test_ratio_counts_non_finite_deltas():
    w = RatioWindow(2)
    w.update(math.nan, 1)
    w.update(1, math.inf)
    assert (w.rejected, w.total, w.count) == (2, 0, 0)


def test_ratio_bad_construction():
    with pytest.raises(ValueError, match="window"):
        RatioWindow(0)
    with pytest.raises(ValueError, match="min_denominator"):
        RatioWindow(3, min_denominator=-1)
    with pytest.raises(TypeError, match="min_denominator"):
        RatioWindow(3, min_denominator="x")  # type: ignore[arg-type]


def test_ratio_snapshot():
    w = RatioWindow(4)
    w.update(3, 1)
    assert w.snapshot() == (3.0, 1.0, 3.0, 1, 1)


def test_reprs_say_what_they_are():
    assert "RollingStats(window=3" in repr(RollingStats(3))
    assert "RingBuffer(capacity=3" in repr(RingBuffer(3))
    assert "EwmaRate(half_life=1.0" in repr(EwmaRate(1.0))
    assert "RatioWindow(window=3" in repr(RatioWindow(3))


# ------------------------------------------------------------------ AtomicCounter
def test_counter_adds_and_refuses_what_a_counter_cannot_do():
    c = coherence.AtomicCounter()
    assert c.value == 0.0
    c.add()
    c.add(2.5)
    assert c.value == 3.5
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="finite and >= 0"):
            c.add(bad)
    assert c.value == 3.5 and "3.5" in repr(c)


def test_counter_loses_nothing_under_concurrent_nogil_adders(capi):
    import threading
    c = coherence.AtomicCounter()
    threads = [threading.Thread(target=capi.counter_add_loop, args=(c, 1_000_000, 1.0))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert c.value == 3_000_000.0
