"""The accumulators the detectors judge, and one snapshot of them: fed by the sampler on a
live host, or by the simulator's script; read without a lock."""
from __future__ import annotations

import math
import os
import threading
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


# 0..n-1 less its mean, and its sum of squares (the x of a least-squares fit), for each length a
# forecast span is fitted over: made when a Signals is, and kept (a few dozen lengths a config).
# Other lengths (the fever window's while it fills, a span with gaps) are made on the spot.
_PLANNED: Dict[int, Tuple[np.ndarray, float]] = {}


def _centred(x: np.ndarray) -> Tuple[np.ndarray, float]:
    x = x - x.mean()
    return x, float(np.dot(x, x))


def _plan_index(n: int) -> None:
    if n >= 3 and n not in _PLANNED:
        x, sxx = _centred(np.arange(n, dtype=np.float64))
        x.flags.writeable = False
        _PLANNED[n] = (x, sxx)


def _index(n: int) -> Tuple[np.ndarray, float]:
    got = _PLANNED.get(n)
    return got if got is not None else _centred(np.arange(n, dtype=np.float64))


def _fit(x: np.ndarray, sxx: float, dev: np.ndarray) -> Tuple[float, float]:
    """Slope per unit of x (centred) of values less their mean (at least 3), and its
    t-statistic. The residuals' sum of squares comes in closed form: one pass fewer."""
    slope = float(np.dot(x, dev)) / sxx
    rss = max(0.0, float(np.dot(dev, dev)) - slope * slope * sxx)
    se = math.sqrt(rss / (len(dev) - 2) / sxx)
    return slope, slope / se if se > 0 else (math.copysign(math.inf, slope) if slope else 0.0)


def _half_slope(x: np.ndarray, y: np.ndarray) -> float:
    """The least-squares slope of a half, by its own positions; NaN under 3 points."""
    if len(y) < 3:
        return math.nan
    xc, sxx = _centred(x)
    return float(np.dot(xc, y - y.mean())) / sxx


def trend_over(values: np.ndarray, interval_s: float, span_s: float) -> Trend:
    """The least-squares trend of ``values`` (one every ``interval_s``, the span's and no more),
    per second, with its t-statistic (slope over its standard error: how far it stands above the
    noise) and the slopes of its earlier and later halves. A value that is not finite is a gap:
    the others are fitted at their own times, never closed up. NaNs under 3 finite values."""
    n = len(values)
    total = float(np.add.reduce(values)) if n else math.nan
    early = late = math.nan
    if n >= 3 and math.isfinite(total):            # a finite sum: every value is finite
        dev = values - total / n
        half = n // 2
        slope, t = _fit(*_index(n), dev)
        if half >= 3 and n - half >= 3:
            # a half's slope needs no centring of its values: its centred x sums to zero
            (xe, se), (xl, sl) = _index(half), _index(n - half)
            early, late = float(np.dot(xe, dev[:half])) / se, float(np.dot(xl, dev[half:])) / sl
    else:
        finite = np.isfinite(values)
        if int(finite.sum()) < 3:
            return Trend(span_s, math.nan, math.nan, math.nan, math.nan)
        pos = np.flatnonzero(finite).astype(np.float64)
        y = values[finite]
        slope, t = _fit(*_centred(pos), y - y.mean())
        first = pos < n // 2
        early, late = _half_slope(pos[first], y[first]), _half_slope(pos[~first], y[~first])
    return Trend(span_s, slope / interval_s, t, early / interval_s, late / interval_s)


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
    (one a second by default) back to ``forecast_span_s``, folded in by ``snapshot()`` under a
    lock: each caller folds only what none has folded yet.
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
        # the longer spans' points: means of whole blocks of the history's (one a second by
        # default), folded in by snapshot() as they come, a block may span several snapshots
        coarse_s = max(1.0 / slow_hz, forecast_span_s / COARSE_POINTS, 1.0)
        self._block = max(1, int(round(coarse_s * slow_hz)))
        self.coarse_interval_s = self._block / slow_hz
        self.resident_coarse = RingBuffer(max(2, int(math.ceil(forecast_span_s / self.coarse_interval_s))))
        self._folded = 0                       # history points folded (or lost) so far
        # the block being filled: the sum of its finite points, its points, its finite points
        self._psum, self._pn, self._pfinite = 0.0, 0, 0
        self._fold_lock = threading.Lock()     # snapshot() folds: two callers must not both
        self.spans = forecast_spans(trend_window_s, forecast_span_s)
        self._long: Tuple[int, Tuple[Trend, ...]] = (-1, ())   # coarse total -> its trends
        # each span: (span_s, points, whether from the history (else the coarse ring)); a span
        # of under 6 points (3 a half) is no span
        plan = []
        for span in self.spans:
            n = int(round(span * slow_hz))
            if n <= self.resident_history.capacity:
                plan.append((span, n, True))
            else:
                plan.append((span, int(round(span / self.coarse_interval_s)), False))
        self._plan = tuple(p for p in plan if p[1] >= 6)
        # every fit's index, made now rather than the first time a span is covered (20 min in)
        for _, n, _ in self._plan:
            for length in (n, n // 2, n - n // 2):
                _plan_index(length)
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
        """Fold the history points not yet folded into the coarse ring, a point per whole block
        (the mean of its finite points; NaN if none). ``recent`` is the history when ``total``
        points had been pushed. Points the history dropped before they were folded (a monitor
        that stopped stepping for longer than it holds) leave NaN in their blocks' places, so
        that time is kept: a trend fits around a gap, never across a closed-up one."""
        block, coarse = self._block, self.resident_coarse
        held = total - len(recent)              # the oldest point still held, counted from 0
        if held > self._folded:                 # lost: the blocks they began, NaN
            start = self._folded - self._pn     # a whole number of blocks
            first = -(-held // block) * block
            for _ in range(min((first - start) // block, coarse.capacity)):
                coarse.push(math.nan)
            self._psum, self._pn, self._pfinite = 0.0, 0, 0
            self._folded = first
        new = recent[len(recent) - max(0, total - self._folded):]
        pos = 0
        if self._pn:                            # finish the block begun at the last snapshot
            pos = min(block - self._pn, len(new))
            self._add(new[:pos])
        whole = (len(new) - pos) // block
        if whole:
            blocks = new[pos:pos + whole * block].reshape(whole, block)
            finite = np.isfinite(blocks)
            counts = finite.sum(axis=1)
            sums = np.where(finite, blocks, 0.0).sum(axis=1)
            for total_b, count in zip(sums.tolist(), counts.tolist()):
                coarse.push(total_b / count if count else math.nan)
            pos += whole * block
        self._add(new[pos:])
        self._folded = max(self._folded, total)

    def _add(self, points: np.ndarray) -> None:
        """Points into the block being filled; its mean pushed once it is whole."""
        if not len(points):
            return
        finite = points[np.isfinite(points)]
        self._psum += float(finite.sum())
        self._pn += len(points)
        self._pfinite += len(finite)
        if self._pn == self._block:
            self.resident_coarse.push(self._psum / self._pfinite if self._pfinite else math.nan)
            self._psum, self._pn, self._pfinite = 0.0, 0, 0

    def _trends(self, recent: np.ndarray, total: int, window: Trend) -> Tuple[Trend, ...]:
        """The trend over each forecast span the points cover in full: from the history while it
        reaches (the fever window's is ``window``, fitted once), else from the coarse ring
        (refitted only when a coarse point came). Under the fold's lock: it moves on as it goes."""
        with self._fold_lock:
            self._fold(recent, total)
            short = tuple(window if n == self.trend_points
                          else trend_over(recent[-n:], self.interval_s, span)
                          for span, n, history in self._plan if history and n <= len(recent))
            done, cached = self._long
            if done != self.resident_coarse.total:
                coarse = self.resident_coarse.to_array()
                cached = tuple(trend_over(coarse[-n:], self.coarse_interval_s, span)
                               for span, n, history in self._plan
                               if not history and n <= len(coarse))
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
        # the fever window's trend (its flat test), which is also the first forecast span's
        window = trend_over(history[-self.trend_points:], self.interval_s, self.spans[0])
        trends = self._trends(history, pushed, window)
        growth, growth_t = window.bytes_per_s, window.t
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
                trend_points=min(len(history), self.trend_points), trend_points_needed=self.trend_points,
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
