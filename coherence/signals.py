"""The accumulators the detectors judge, and one snapshot of them: fed by the sampler on a
live host, or by the simulator's script; read without a lock."""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from coherence._core import EwmaRate, RatioWindow, RingBuffer, RollingStats
from coherence._sampler import Gauges, Slot
from coherence.runtime import DEFAULT_RATE_HZ, RuntimeBoard
from coherence.snapshot import (PUSHED, SCRAPED, TCP_PROXY, CpuSignals, MemorySignals,
                                 PressureSignals, RequestSignals, RuntimeProcess, Snapshot)

if TYPE_CHECKING:
    from coherence.config import Config

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
RATE_SLOTS = (Slot.MINOR_FAULTS, Slot.PGALLOC, Slot.PGFREE, Slot.PSI_CPU_US, Slot.PSI_MEMORY_US,
              Slot.PSI_IO_US, Slot.INGRESS, Slot.EGRESS, Slot.TCP_PASSIVE, Slot.TCP_ACTIVE)


def _sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0 else math.nan


def trend_per_s(values: np.ndarray, interval_s: float) -> Tuple[float, float]:
    """Least-squares slope of evenly spaced values, per second, and its t-statistic (slope over
    its standard error: how far the trend stands above the noise); NaNs under 3 finite points."""
    values = values[np.isfinite(values)]
    n = len(values)
    if n < 3:
        return math.nan, math.nan
    x = np.arange(n, dtype=np.float64)
    x -= x.mean()
    sxx = float(np.dot(x, x))
    dev = values - values.mean()
    slope = float(np.dot(x, dev)) / sxx
    residual = dev - slope * x
    se = math.sqrt(float(np.dot(residual, residual)) / (n - 2) / sxx)
    t = slope / se if se > 0 else (math.inf if slope else 0.0)
    return slope / interval_s, t


class Signals:
    """CPU buckets, fault and request rates, resident memory and request ratios.

    ``gauges`` holds the last value of each slot (resident memory, memory total) and whether its
    source became unreadable: written by the sampler's engine (or the simulator), like every
    other accumulator here. ``pushed()`` says whether the application pushes request counts.
    ``slow_hz`` is the rate the memory and request counters are really read at.
    """

    def __init__(self, *, resolution_s: float = 0.1, window_s: float = 10.0,
                 slow_hz: float = 20.0, rate_half_life_s: float = 1.0,
                 ratio_window_s: float = 5.0, trend_window_s: float = 10.0,
                 history: int = 600, ncpu: float = 1.0, runtime_hz: float = DEFAULT_RATE_HZ,
                 pushed: Callable[[], bool] = lambda: False,
                 available: Sequence[str] = ("cpu", "memory", "pressure", "requests")) -> None:
        self.resolution_s, self.window_s, self.slow_hz, self.ncpu = resolution_s, window_s, slow_hz, ncpu
        self.cpu_buckets = RollingStats(max(2, int(round(window_s / resolution_s))))
        # the seizure detector counts swings over a whole window of buckets
        self.cpu_history = RingBuffer(max(history, self.cpu_buckets.window))
        self.rates: Dict[int, EwmaRate] = {slot: EwmaRate(rate_half_life_s) for slot in RATE_SLOTS}
        self.trend_points = max(2, int(round(trend_window_s * slow_hz)))
        self.resident_history = RingBuffer(max(history, self.trend_points))
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
                   ncpu=ncpu, **wiring)

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

    @property
    def buckets_per_window(self) -> int:
        return self.cpu_buckets.window

    def snapshot(self) -> Snapshot:
        """Every signal's current figures; NaN where a signal has no value yet."""
        values, _, lost = self.gauges.state()
        memory_lost = "memory" in self.available and (lost[Slot.RESIDENT_BYTES] or lost[Slot.MINOR_FAULTS])
        cpu = self.cpu_buckets.snapshot()
        rate = {slot: r.rate for slot, r in self.rates.items()}
        recent = self.resident_history.to_array()[-self.trend_points:]
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
                pgalloc_bytes_per_s=rate[Slot.PGALLOC] * PAGE_SIZE, lost=memory_lost),
            # PSI: microseconds stalled per second / 1e4 = % of the time
            pressure=PressureSignals(cpu_some_pct=rate[Slot.PSI_CPU_US] / 1e4,
                                     memory_some_pct=rate[Slot.PSI_MEMORY_US] / 1e4),
            requests=requests,
            runtime=runtime,
        )
