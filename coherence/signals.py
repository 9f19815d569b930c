"""The accumulators the detectors judge, and one snapshot of them: fed by the sampler on a
live host, or by the simulator's script; read without a lock."""
from __future__ import annotations

import functools
import math
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from coherence._core import EwmaRate, RatioWindow, RingBuffer, RollingStats
from coherence._sampler import Gauges, Slot
from coherence.runtime import DEFAULT_RATE_HZ, RuntimeBoard
from coherence.snapshot import (PUSHED, SCRAPED, TCP_PROXY, CpuSignals, MemorySignals,
                                 PressureSignals, RequestSignals, RuntimeProcess, Snapshot, Trend)

if TYPE_CHECKING:
    from coherence.config import Config

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# A forecast of exhaustion reaches at most this many times the span of growth it stands on: the
# 4 h horizon needs 20 min of growth, an exhaustion 2 min away 10 s of it. Ten seconds of a
# process loading its data is not a trend to extrapolate for hours.
FORECAST_REACH = 12.0
# Resident memory is kept this many points back for the long spans (one a second for the 20 min
# of the default horizon; coarser for longer horizons): 10 KB, whatever the horizon.
COARSE_POINTS = 1200
RATE_SLOTS = (Slot.MINOR_FAULTS, Slot.PGALLOC, Slot.PGFREE, Slot.PSI_CPU_US, Slot.PSI_MEMORY_US,
              Slot.PSI_IO_US, Slot.INGRESS, Slot.EGRESS, Slot.TCP_PASSIVE, Slot.TCP_ACTIVE)


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else math.nan


@functools.lru_cache(maxsize=64)
def _centred_index(n: int) -> Tuple[np.ndarray, float]:
    """0..n-1 less its mean, read-only, and its sum of squares: the x of a least-squares fit."""
    x = np.arange(n, dtype=np.float64)
    x -= x.mean()
    x.flags.writeable = False
    return x, float(np.dot(x, x))


def _fit(dev: np.ndarray) -> Tuple[float, float]:
    """Slope per point of evenly spaced values less their mean (at least 3, all finite), and
    its t-statistic. The residuals' sum of squares comes in closed form: one pass fewer."""
    n = len(dev)
    x, sxx = _centred_index(n)
    slope = float(np.dot(x, dev)) / sxx
    rss = max(0.0, float(np.dot(dev, dev)) - slope * slope * sxx)
    se = math.sqrt(rss / (n - 2) / sxx)
    return slope, slope / se if se > 0 else (math.inf if slope else 0.0)


def _deviations(values: np.ndarray) -> np.ndarray:
    """The finite values less their mean (a sum that is finite means every value is)."""
    total = float(np.add.reduce(values))
    if not math.isfinite(total):
        values = values[np.isfinite(values)]
        total = float(np.add.reduce(values))
    return values - total / len(values) if len(values) else values


def trend_per_s(values: np.ndarray, interval_s: float) -> Tuple[float, float]:
    """Least-squares slope of evenly spaced values, per second, and its t-statistic (slope over
    its standard error: how far the trend stands above the noise); NaNs under 3 finite points."""
    dev = _deviations(values)
    if len(dev) < 3:
        return math.nan, math.nan
    slope, t = _fit(dev)
    return slope / interval_s, t


def trend_over(values: np.ndarray, interval_s: float, span_s: float) -> Trend:
    """The trend of ``values`` (evenly spaced, the span's and no more), with its halves'."""
    dev = _deviations(values)
    n, half = len(dev), len(dev) // 2
    if n - half < 3 or half < 3:
        slope, t = trend_per_s(dev, interval_s)
        return Trend(span_s, slope, t, math.nan, math.nan)
    slope, t = _fit(dev)
    # a half's slope needs no centring of its own: its x sums to zero
    (early, sxx_e), (late, sxx_l) = _centred_index(half), _centred_index(n - half)
    return Trend(span_s, slope / interval_s, t,
                 float(np.dot(early, dev[:half])) / sxx_e / interval_s,
                 float(np.dot(late, dev[half:])) / sxx_l / interval_s)


def longest_forecast_span_s(config: "Config") -> float:
    """The longest span a forecast stands on: the horizon over FORECAST_REACH."""
    return config.fever.horizon_h * 3600.0 / FORECAST_REACH


def forecast_spans(window_s: float, longest_s: float) -> Tuple[float, ...]:
    """The spans a forecast may stand on: the fever window, doubling up to ``longest_s``, and it."""
    spans = [window_s]
    while spans[-1] * 2 < longest_s:
        spans.append(spans[-1] * 2)
    if longest_s > window_s:
        spans.append(longest_s)
    return tuple(spans)


class Signals:
    """CPU buckets, fault and request rates, resident memory and request ratios.

    ``gauges`` holds the last value of each slot (resident memory, memory total) and whether its
    source became unreadable: written by the sampler's engine (or the simulator), like every
    other accumulator here. ``pushed()`` says whether the application pushes request counts.
    ``slow_hz`` is the rate the memory and request counters are really read at.

    Resident memory is kept twice: ``resident_history``, every point read (the fever window's
    trend and the short forecast spans), and ``resident_coarse``, means of whole blocks of it
    (one a second by default) back to ``forecast_span_s``, folded in by ``snapshot()``. That
    fold makes ``snapshot()`` a writer: one thread (the monitor's) calls it.
    """

    def __init__(self, *, resolution_s: float = 0.1, window_s: float = 10.0,
                 slow_hz: float = 20.0, rate_half_life_s: float = 1.0,
                 ratio_window_s: float = 5.0, trend_window_s: float = 10.0,
                 forecast_span_s: float = 4 * 3600 / FORECAST_REACH, history: int = 600,
                 ncpu: float = 1.0, runtime_hz: float = DEFAULT_RATE_HZ,
                 pushed: Callable[[], bool] = lambda: False,
                 available: Sequence[str] = ("cpu", "memory", "pressure", "requests")) -> None:
        self.resolution_s, self.window_s, self.slow_hz, self.ncpu = resolution_s, window_s, slow_hz, ncpu
        self.cpu_buckets = RollingStats(max(2, int(round(window_s / resolution_s))))
        # the seizure detector counts swings over a whole window of buckets
        self.cpu_history = RingBuffer(max(history, self.cpu_buckets.window))
        self.rates: Dict[int, EwmaRate] = {slot: EwmaRate(rate_half_life_s) for slot in RATE_SLOTS}
        self.trend_points = max(2, int(round(trend_window_s * slow_hz)))
        self.resident_history = RingBuffer(max(history, self.trend_points))
        # the longer spans' points: means of whole blocks of the history's, folded in by
        # snapshot() (one caller: the monitor's thread)
        coarse_s = max(1.0 / slow_hz, forecast_span_s / COARSE_POINTS, 1.0)
        self._block = max(1, int(round(coarse_s * slow_hz)))
        self.coarse_interval_s = self._block / slow_hz
        self.resident_coarse = RingBuffer(max(2, int(math.ceil(forecast_span_s / self.coarse_interval_s))))
        self._folded = 0                       # history points folded (or lost) so far
        self.spans = forecast_spans(trend_window_s, forecast_span_s)
        self._long: Tuple[int, Tuple[Trend, ...]] = (-1, ())   # coarse total -> its trends
        # each span: (span_s, points, whether from the history (else the coarse ring))
        self._plan = tuple(
            (span, n, True) if n <= self.resident_history.capacity
            else (span, int(round(span / self.coarse_interval_s)), False)
            for span in self.spans for n in [int(round(span * slow_hz))])
        # every fit's index, made now rather than the first time a span is covered (20 min in):
        # nothing the reports use is allocated for the first time late into a run
        for _, n, _ in self._plan:
            for length in (n, n // 2, n - n // 2):
                if length >= 3:
                    _centred_index(length)
        ratio_points = max(2, int(round(ratio_window_s * slow_hz)))
        self.pushed_ratio = RatioWindow(ratio_points, min_denominator=1.0)
        self.proxy_ratio = RatioWindow(ratio_points, min_denominator=1.0)
        self.gauges = Gauges()
        # runtimes' and services' own counters, written by the runtime poller's thread
        self.runtime = RuntimeBoard(rate_half_life_s, max(2, int(round(ratio_window_s * runtime_hz))))
        self.interval_s = 1.0 / slow_hz
        # whether the application pushes its request counts (StatsD, hooks): then they are
        # judged, else TCP connection opens stand in for them
        self.pushed = pushed
        # families with a source: a family without one is UNAVAILABLE, not warming up
        self.available = frozenset(available)

    @classmethod
    def from_config(cls, config: "Config", *, ncpu: float, slow_hz: Optional[float] = None,
                    **wiring: Any) -> "Signals":
        """Signals shaped by the settings; ``slow_hz`` is the rate the slow counters are really
        read at (default: the configured one); ``wiring`` is pushed and available."""
        return cls(resolution_s=config.seizure.resolution_s, window_s=config.seizure.window_s,
                   slow_hz=config.sampler.slow_hz if slow_hz is None else slow_hz,
                   rate_half_life_s=config.sampler.rate_half_life_s,
                   ratio_window_s=config.amplification.window_s,
                   trend_window_s=config.fever.window_s, runtime_hz=config.sampler.runtime_hz,
                   forecast_span_s=longest_forecast_span_s(config), ncpu=ncpu, **wiring)

    def _requests(self, rate: Dict[int, float],
                  runtime: Tuple[RuntimeProcess, ...]) -> RequestSignals:
        """Amplification's counts, best source first: pushed by the application, scraped from
        the service (the busiest one that has both directions), or the TCP proxy."""
        capacity = self.pushed_ratio.window
        if self.pushed():
            r = self.pushed_ratio.snapshot()
            return RequestSignals(PUSHED, rate[Slot.INGRESS], rate[Slot.EGRESS], r.ratio,
                                  r.denominator, r.numerator, r.count, capacity)
        scraped = [p for p in runtime if p.available and not math.isnan(p.requests_in_per_s)
                   and not math.isnan(p.requests_out_per_s)]
        if scraped:
            p = max(scraped, key=lambda p: p.requests_in_per_s)
            return RequestSignals(SCRAPED, p.requests_in_per_s, p.requests_out_per_s, p.ratio,
                                  p.ingress_in_window, math.nan, 0, self.runtime.ratio_points,
                                  origin=p.name)
        r = self.proxy_ratio.snapshot()
        return RequestSignals(TCP_PROXY, rate[Slot.TCP_PASSIVE], rate[Slot.TCP_ACTIVE], r.ratio,
                              r.denominator, r.numerator, r.count, capacity)

    def _fold(self, recent: np.ndarray, total: int) -> None:
        """Fold the history points not yet folded, in whole blocks, into the coarse ring.
        ``recent`` is the history when ``total`` points had been pushed. Points the history
        dropped before they were folded are lost to it (a monitor that stopped stepping for
        longer than the history holds); the blocks stay whole blocks of the count all the same."""
        block = self._block
        first = total - len(recent)         # the oldest point still held, counted from the start
        if first > self._folded:            # some were lost: go on from the next whole block
            first = -(-first // block) * block
        else:
            first = self._folded            # always a whole number of blocks
        blocks = max(0, total - first) // block
        start = len(recent) - (total - first)
        for b in range(blocks):
            self.resident_coarse.push(
                float(recent[start + b * block:start + (b + 1) * block].mean()))
        self._folded = first + blocks * block

    def _trends(self, recent: np.ndarray, total: int) -> Tuple[Trend, ...]:
        """The trend over each forecast span the points cover in full: from the history while it
        reaches, else from the coarse ring (recomputed only when a coarse point came)."""
        self._fold(recent, total)
        short = tuple(trend_over(recent[-n:], self.interval_s, span)
                      for span, n, history in self._plan if history and n <= len(recent))
        done, cached = self._long
        if done != self.resident_coarse.total:
            coarse = self.resident_coarse.to_array()
            cached = tuple(trend_over(coarse[-n:], self.coarse_interval_s, span)
                           for span, n, history in self._plan if not history and n <= len(coarse))
            self._long = (self.resident_coarse.total, cached)
        return short + cached

    @property
    def buckets_per_window(self) -> int:
        return self.cpu_buckets.window

    def snapshot(self) -> Snapshot:
        """Every signal's current figures; NaN where a signal has no value yet."""
        values, _, lost = self.gauges.state()
        memory_lost = "memory" in self.available and (lost[Slot.RESIDENT_BYTES] or lost[Slot.MINOR_FAULTS])
        cpu = self.cpu_buckets.snapshot()
        rate = {slot: r.rate for slot, r in self.rates.items()}
        # the sampler's thread pushes while this copies: the values and their count must be of
        # the same moment, or a one-second point would mix two seconds
        history, pushed = self.resident_history.snapshot()
        trends = self._trends(history, pushed)
        recent = history[-self.trend_points:]
        growth, growth_t = trend_per_s(recent, self.interval_s)
        runtime = self.runtime.snapshot()
        requests = self._requests(rate, runtime)
        return Snapshot(
            cpu=CpuSignals(
                available="cpu" in self.available and not lost[Slot.CPU_NS],
                util_mean_pct=cpu.mean, util_std_pct=_sqrt(cpu.var), buckets=cpu.count,
                buckets_per_window=self.buckets_per_window, ncpu=self.ncpu,
                history_pct=self.cpu_history.to_array()),
            memory=MemorySignals(
                available="memory" in self.available and not memory_lost,
                resident_bytes=values[Slot.RESIDENT_BYTES],
                resident_growth_bytes_per_s=growth, resident_growth_t=growth_t,
                trend_points=len(recent), trend_points_needed=self.trend_points,
                total_bytes=values[Slot.MEM_TOTAL_BYTES],
                minor_faults_per_s=rate[Slot.MINOR_FAULTS],
                churn_bytes_per_s=rate[Slot.MINOR_FAULTS] * PAGE_SIZE,
                pgalloc_bytes_per_s=rate[Slot.PGALLOC] * PAGE_SIZE, lost=memory_lost,
                growth_trends=trends),
            # PSI: microseconds stalled per second / 1e4 = % of the time
            pressure=PressureSignals(cpu_some_pct=rate[Slot.PSI_CPU_US] / 1e4,
                                     memory_some_pct=rate[Slot.PSI_MEMORY_US] / 1e4),
            requests=requests,
            runtime=runtime,
        )
