"""Cost of one report's snapshot of the signals (Signals.snapshot, four times a second), with its
resident-memory trends: the fever window's alone (a forecast span no longer than the window)
against every forecast span of the default 4 h horizon (10 s doubling to 20 min, each with its
halves). The floor is the fever window's trend alone, which every report fits (its flat test).

Each round pushes the 5 resident points of a quarter second first, as the sampler does at 20 Hz,
so a coarse point is folded (and the long spans refitted) every fourth round, as live. Read the
ratios inside the group, not absolute times (shared, noisy VM). No timing is asserted.
"""
import numpy as np
import pytest

from coherence._sampler import Slot
from coherence.signals import Signals, trend_over

SLOW_HZ = 20.0
PER_REPORT = 5


def full_signals(forecast_span_s: float) -> Signals:
    """Signals whose every ring is full: the history, the CPU buckets and the coarse points."""
    s = Signals(slow_hz=SLOW_HZ, ncpu=2.0, forecast_span_s=forecast_span_s)
    s.gauges.update({Slot.MEM_TOTAL_BYTES: 16e9})
    rng = np.random.default_rng(0)
    for v in 4e9 + rng.normal(0, 1e6, s.resident_history.capacity):
        s.resident_history.push(v)
    for _ in range(s.cpu_history.capacity):
        s.cpu_buckets.push(30.0)
        s.cpu_history.push(30.0)
    s.snapshot()
    for v in 4e9 + rng.normal(0, 1e6, s.resident_coarse.capacity):
        s.resident_coarse.push(v)
    return s


def report_step(s: Signals):
    rng = np.random.default_rng(1)
    noise = iter(4e9 + rng.normal(0, 1e6, 10_000_000))

    def step():
        for _ in range(PER_REPORT):
            s.resident_history.push(next(noise))
        return s.snapshot()
    return step


def one_fit():
    window = full_signals(10.0).resident_history.to_array()[-200:]
    return lambda: trend_over(window, 1.0 / SLOW_HZ, 10.0)


CASES = {
    "floor: the fever window's trend, which every report fits": one_fit,
    "snapshot, the fever window only": lambda: report_step(full_signals(10.0)),
    "snapshot, every span of the 4 h horizon": lambda: report_step(full_signals(4 * 3600 / 12.0)),
}


@pytest.mark.benchmark(group="Signals.snapshot (one report, full rings)")
@pytest.mark.parametrize("name", list(CASES))
def test_snapshot(benchmark, name):
    fn = CASES[name]()
    for _ in range(200):
        fn()
    benchmark(fn)
