"""What the detectors judge: one reading of every signal, as frozen dataclasses with the unit in
each field's name. Built by coherence.signals (live or simulated); read by the detectors and
the dashboard. NaN marks a figure that has no value yet."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

# Where amplification's request counts come from (JSON `evidence.source`), best first: counters
# pushed by the application (StatsD, coherence.hooks), counters scraped from the service or its
# sidecar (coherence.runtime), or TCP connection opens standing in for them.
PUSHED, SCRAPED, TCP_PROXY = "pushed", "scraped", "tcp_proxy"


@dataclass(frozen=True)
class CpuSignals:
    available: bool                # a CPU source is read (False: it was lost; the sampler needs one)
    util_mean_pct: float           # mean of the buckets in the window, % of the CPUs available
    util_std_pct: float            # their standard deviation, points of %
    buckets: int                   # buckets in the window so far
    buckets_per_window: int
    ncpu: float                    # CPUs the utilization is normalized to
    history_pct: np.ndarray        # the recent buckets, oldest first


@dataclass(frozen=True)
class Trend:
    """Resident memory's least-squares trend over the last ``span_s`` seconds, with the trends of
    that span's earlier and later halves: about equal for steady growth, one of them flat for a
    step (a process that took its memory at once)."""
    span_s: float
    bytes_per_s: float
    t: float                       # the slope over its standard error
    early_bytes_per_s: float
    late_bytes_per_s: float


@dataclass(frozen=True)
class MemorySignals:
    available: bool
    resident_bytes: float
    resident_growth_bytes_per_s: float   # least-squares trend over the fever window
    resident_growth_t: float             # that trend over its standard error
    trend_points: int
    trend_points_needed: int
    total_bytes: float                   # memory available to what is watched (limit or host)
    minor_faults_per_s: float
    churn_bytes_per_s: float             # minor faults x page size: allocation churn
    pgalloc_bytes_per_s: float
    lost: bool = False                   # its source became unreadable while running
    # the trend over each span the forecast may stand on, shortest first: the fever window, then
    # doubling up to the horizon / FORECAST_REACH; only spans the history covers in full
    growth_trends: Tuple[Trend, ...] = ()


@dataclass(frozen=True)
class PressureSignals:
    cpu_some_pct: float            # PSI: share of time some task waited for a CPU
    memory_some_pct: float


@dataclass(frozen=True)
class RequestSignals:
    source: str                    # PUSHED, SCRAPED or TCP_PROXY
    ingress_per_s: float
    egress_per_s: float
    ratio: float                   # egress / ingress over the window; NaN under the minimum
    ingress_in_window: float
    egress_in_window: float
    window_points: int
    window_capacity: int
    origin: str = ""               # with SCRAPED: which runtime source ("scrape http://...")


@dataclass(frozen=True)
class RuntimeProcess:
    """A managed runtime or service read through its own counters (coherence.runtime)."""

    name: str                      # "jvm 1234", "scrape http://127.0.0.1:9090/metrics"
    runtime: str                   # "jvm", "go", "service", ...
    pid: Optional[int]
    available: bool                # read, and not lost
    lost: bool                     # it failed (the process exited); `reason` says how
    reason: str
    recognised: Tuple[str, ...]    # the counters it has
    gc_share: float                # seconds in GC per second of wall time
    collections_per_s: float
    alloc_bytes_per_s: float
    requests_in_per_s: float
    requests_out_per_s: float
    ratio: float                   # requests out / in over the window; NaN under the minimum
    ingress_in_window: float


@dataclass(frozen=True)
class Snapshot:
    cpu: CpuSignals
    memory: MemorySignals
    pressure: PressureSignals
    requests: RequestSignals
    runtime: Tuple[RuntimeProcess, ...] = ()
