"""The three laws: each detector turns one snapshot of the signals into a Finding (is the
condition present, the measured value against its limit, typed evidence, one line a person can
act on). Detectors judge; they never read files and never keep verdict state."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Generic, Iterable, Optional, Tuple, TypeVar

import numpy as np

from coherence.config import AmplificationConfig, Config, FeverConfig, SeizureConfig
from coherence.format import duration, finite, num
from coherence.signals import FORECAST_REACH
from coherence.snapshot import PUSHED, SCRAPED, TCP_PROXY, MemorySignals, RuntimeProcess, Snapshot, Trend
from coherence.states import Condition, State, Veto

MB = 1e6
TREND_T_MIN = 3.0          # slope / standard error: under this a trend is noise, not a forecast
# Steady growth shows in both halves of its span, each at least this share of the whole's rate;
# a step (a process taking its memory at once) shows in one half only.
STEADY_SHARE = 1.0 / 3.0
# A field whose None means "not computed" is left out of the JSON rather than written as null.
_OMITTED_WHEN_NONE = {"omit_when_none": True}
SOURCE_LABEL = {PUSHED: "pushed counters", SCRAPED: "scraped counters", TCP_PROXY: "TCP opens (a proxy)"}


@dataclass(frozen=True)
class Evidence:
    """The figures behind a finding. Each field is a JSON `evidence` key, its unit in its name;
    NaN marks a figure with no value yet."""

    def as_dict(self) -> Dict[str, Any]:
        """The fields in declaration order, as the JSON `evidence` object (before NaN -> null)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if not (f.metadata.get("omit_when_none") and getattr(self, f.name) is None)}

    def line(self) -> str:
        """The evidence in one line a person reads (the dashboard's panel footer)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SeizureEvidence(Evidence):
    mean_pct: float                    # CPU utilization over the window, % of the CPUs available
    std_pct: float                     # its standard deviation, points of %
    buckets: int                       # buckets in the window so far
    swings: int                        # moves between the low and the high of the window
    resolution_s: float
    window_s: float
    pressure_cpu_some_pct: float       # PSI: share of time some task waited for a CPU

    def line(self) -> str:
        return (f"mean {num(self.mean_pct)} % · std {num(self.std_pct)} · {self.buckets} buckets"
                f" · PSI cpu {num(self.pressure_cpu_some_pct)} %")


@dataclass(frozen=True)
class FeverEvidence(Evidence):
    alloc_rate_mb_s: float             # allocation churn: minor faults x page size
    minor_faults_per_s: float
    pgalloc_mb_s: float                # page allocations beside it (page cache included)
    resident_mb: float
    total_mb: float
    resident_growth_mb_s: float        # least-squares trend of resident memory
    pressure_memory_some_pct: float
    # only while a forecast stands (resident memory growing steadily, out of the noise, over a
    # span of at least 1/12 of this): the time until it reaches total_mb
    exhaustion_eta_s: Optional[float] = field(default=None, metadata=_OMITTED_WHEN_NONE)
    # only while a runtime is read through its own counters (coherence.runtime): the one that
    # spends the largest share of its time in GC
    runtime_process: Optional[str] = field(default=None, metadata=_OMITTED_WHEN_NONE)
    runtime_pid: Optional[int] = field(default=None, metadata=_OMITTED_WHEN_NONE)
    gc_time_pct: Optional[float] = field(default=None, metadata=_OMITTED_WHEN_NONE)
    gc_collections_per_s: Optional[float] = field(default=None, metadata=_OMITTED_WHEN_NONE)
    runtime_alloc_mb_s: Optional[float] = field(default=None, metadata=_OMITTED_WHEN_NONE)
    runtime_alloc_baseline_mb_s: Optional[float] = field(default=None, metadata=_OMITTED_WHEN_NONE)

    def line(self) -> str:
        parts = []
        if self.runtime_process is not None:
            parts.append(f"{self.runtime_process}: GC {num(self.gc_time_pct)} % of the time, "
                         f"{num(self.runtime_alloc_mb_s)} MB/s allocated")
        parts += [f"churn {num(self.alloc_rate_mb_s)} MB/s",
                 f"resident {num(self.resident_mb)} of {num(self.total_mb)} MB",
                 f"growth {num(self.resident_growth_mb_s)} MB/s"]
        eta = finite(self.exhaustion_eta_s)
        if eta is not None:
            parts.append(f"exhausted in ~{duration(eta)}")
        parts.append(f"PSI mem {num(self.pressure_memory_some_pct)} %")
        return " · ".join(parts)


@dataclass(frozen=True)
class AmplificationEvidence(Evidence):
    ratio: float                       # egress / ingress over the window
    baseline: Optional[float]          # the ratio learned while healthy; None until seeded
    ingress_per_s: float
    egress_per_s: float
    source: str                        # PUSHED, SCRAPED or TCP_PROXY (coherence.snapshot)
    window_s: float
    pressure_cpu_some_pct: float

    def line(self) -> str:
        return (f"ratio {num(self.ratio)} · baseline {num(self.baseline)} · "
                f"in {num(self.ingress_per_s)}/s · out {num(self.egress_per_s)}/s · "
                f"{SOURCE_LABEL.get(self.source, self.source)}")


E = TypeVar("E", bound=Evidence)


@dataclass(frozen=True)
class Finding(Generic[E]):
    detector: str
    condition: Condition
    value: float                   # the measured figure compared with `limit`
    limit: float
    unit: str
    reason: str                    # one line a person can act on
    veto: Veto                     # the recommendation while the condition holds
    evidence: Optional[E] = None       # None: nothing could be measured (no source)
    max_state: State = State.CRITICAL  # a forecast warns; it never escalates


# Why a source read until now is not any more: its file or clock became unreadable.
LOST = "lost while running: it became unreadable (the watched process exited, or its cgroup was removed)"


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def _percentile(x: np.ndarray, q: float) -> float:
    """np.percentile(x, 100 * q) of a finite series with its default ("linear") method, the
    same float to the last bit, by sort and numpy's own arithmetic: the virtual index (n-1)*q,
    and the lerp taken from whichever end is nearer. np.percentile makes dozens of temporary
    arrays a call and leaves 52-byte blocks behind in numpy's caches (seen in the live soak);
    this makes one sorted copy."""
    s = np.sort(x)
    n = len(s)
    virtual = (n - 1) * q
    if virtual >= n - 1:
        return float(s[-1])
    below = math.floor(virtual)
    gamma = virtual - below
    a, b = float(s[below]), float(s[below + 1])
    diff = b - a
    return b - diff * (1 - gamma) if gamma >= 0.5 else a + diff * gamma


def swings(values: Any) -> int:
    """How many times the series goes from its low third to its high third or back (between its
    5th and 95th percentiles, so that half a second of a 10 s window counts but one stray
    bucket does not): a step counts once, a pulse twice, a seizure again and again.
    Small noise around a level swings too; the detector also requires a large std."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return 0
    low, high = _percentile(x, 0.05), _percentile(x, 0.95)
    third = (high - low) / 3
    side = np.where(x >= high - third, 1, np.where(x <= low + third, -1, 0))
    side = side[side != 0]
    return int(np.count_nonzero(side[1:] != side[:-1]))


class Seizure:
    """CPU utilization that swings back and forth (std high, crossing its mean again and again)
    while its mean is not high. A load that starts or stops is a step, not a seizure."""

    name = "seizure"
    unit = "pct_points"
    veto = Veto.SHED_LOAD

    def __init__(self, config: SeizureConfig) -> None:
        self.c = config

    @classmethod
    def from_config(cls, config: Config) -> "Seizure":
        return cls(config.seizure)

    def evaluate(self, snap: Snapshot, now: float) -> Finding[SeizureEvidence]:
        cpu, c = snap.cpu, self.c
        std, mean, n = cpu.util_std_pct, cpu.util_mean_pct, cpu.buckets
        if not cpu.available:
            return Finding(detector=self.name, condition=Condition.UNAVAILABLE, value=math.nan,
                           limit=c.std_limit_pct, unit=self.unit, veto=self.veto,
                           reason=f"CPU source {LOST}")
        crossings = swings(cpu.history_pct[-n:]) if n else 0
        evidence = SeizureEvidence(mean_pct=mean, std_pct=std, buckets=n, swings=crossings,
                                   resolution_s=c.resolution_s, window_s=c.window_s,
                                   pressure_cpu_some_pct=snap.pressure.cpu_some_pct)

        def finding(condition: Condition, reason: str) -> Finding[SeizureEvidence]:
            return Finding(detector=self.name, condition=condition, value=std,
                           limit=c.std_limit_pct, unit=self.unit, reason=reason,
                           veto=self.veto, evidence=evidence)

        # Half a window of buckets is enough to see a swing; less would judge on noise.
        if n < max(2, cpu.buckets_per_window // 2) or _nan(std):
            return finding(Condition.WARMUP, f"collecting CPU buckets ({n} of "
                           f"{cpu.buckets_per_window // 2} needed)")
        if std > c.std_limit_pct and mean < c.mean_ceiling_pct and crossings >= c.min_swings:
            return finding(Condition.FIRING, (
                f"CPU swings {crossings} times by ±{std:.0f} points around a mean of {mean:.0f} % "
                f"({c.resolution_s * 1000:.0f} ms buckets over {c.window_s:g} s): thrashing or "
                "lock contention; shed load"))
        if std > c.std_limit_pct and mean >= c.mean_ceiling_pct:
            why = f"CPU busy ({mean:.0f} % mean) and swinging (±{std:.0f}): load, not a seizure"
        elif std > c.std_limit_pct:
            why = (f"CPU changed level (±{std:.0f} around {mean:.0f} %, {crossings} swing"
                   f"{'s' if crossings != 1 else ''}): a step, not a seizure")
        else:
            why = f"CPU steady: ±{std:.1f} points around {mean:.0f} %"
        return finding(Condition.CLEAR, why)


class Fever:
    """Allocation churn high while resident memory stays flat; steady growth as a forecast."""

    name = "fever"
    unit = "MB/s"
    veto = Veto.THROTTLE

    def __init__(self, config: FeverConfig) -> None:
        self.c = config
        self.alloc_baseline: Dict[str, float] = {}      # runtime process -> bytes/s, learned healthy
        self._learned_at: Dict[str, float] = {}

    @classmethod
    def from_config(cls, config: Config) -> "Fever":
        return cls(config.fever)

    def _learn_alloc(self, p: RuntimeProcess, now: float) -> None:
        """Move the process's usual allocation rate towards its current one, time-aware; only
        while its GC share is under half the limit (a spiral must not become the usual)."""
        if _nan(p.alloc_bytes_per_s) or _nan(p.gc_share) \
                or p.gc_share * 100 >= self.c.gc_time_limit_pct / 2:
            return
        last = self._learned_at.get(p.name)
        if last is None or p.name not in self.alloc_baseline:
            self.alloc_baseline[p.name] = p.alloc_bytes_per_s
        else:
            alpha = 1.0 - 2.0 ** (-(now - last) / self.c.alloc_baseline_half_life_s)
            base = self.alloc_baseline[p.name]
            self.alloc_baseline[p.name] = base + alpha * (p.alloc_bytes_per_s - base)
        self._learned_at[p.name] = now

    def _forget(self, names: Iterable[str]) -> None:
        """Forget the usual rates of runtimes no longer listed: on a host where JVMs come and
        go (a build agent), one kept per JVM ever seen would grow without end."""
        listed = set(names)
        for name in [n for n in self.alloc_baseline if n not in listed]:
            del self.alloc_baseline[name]
            self._learned_at.pop(name, None)

    def evaluate(self, snap: Snapshot, now: float) -> Finding[FeverEvidence]:
        m, c = snap.memory, self.c
        judged = [p for p in snap.runtime if p.available and not _nan(p.gc_share)]
        for p in judged:
            self._learn_alloc(p, now)
        self._forget(p.name for p in snap.runtime)
        worst = max(judged, key=lambda p: p.gc_share, default=None)
        churn = m.churn_bytes_per_s / MB
        resident, total, growth = m.resident_bytes, m.total_bytes, m.resident_growth_bytes_per_s
        evidence = FeverEvidence(
            alloc_rate_mb_s=churn, minor_faults_per_s=m.minor_faults_per_s,
            pgalloc_mb_s=m.pgalloc_bytes_per_s / MB, resident_mb=resident / MB,
            total_mb=total / MB,
            resident_growth_mb_s=growth / MB if not _nan(growth) else math.nan,
            pressure_memory_some_pct=snap.pressure.memory_some_pct)
        if worst is not None:
            baseline = self.alloc_baseline.get(worst.name)
            evidence = replace(
                evidence, runtime_process=worst.name, runtime_pid=worst.pid,
                gc_time_pct=worst.gc_share * 100, gc_collections_per_s=worst.collections_per_s,
                runtime_alloc_mb_s=worst.alloc_bytes_per_s / MB,
                runtime_alloc_baseline_mb_s=None if baseline is None else baseline / MB)
            gc_pct = worst.gc_share * 100
            if gc_pct > c.gc_time_limit_pct:
                usual = "" if baseline is None else f" against a usual {baseline / MB:.0f} MB/s"
                return Finding(
                    detector=self.name, condition=Condition.FIRING, value=gc_pct,
                    limit=c.gc_time_limit_pct, unit="pct_gc_time", veto=self.veto,
                    evidence=evidence, reason=(
                        f"{worst.name} spends {gc_pct:.0f} % of its time in garbage collection "
                        f"({worst.collections_per_s:.0f} collections/s, allocating "
                        f"{worst.alloc_bytes_per_s / MB:.0f} MB/s{usual}): a GC death spiral; "
                        "throttle"))

        def finding(condition: Condition, reason: str) -> Finding[FeverEvidence]:
            return Finding(detector=self.name, condition=condition, value=churn,
                           limit=c.churn_limit_mb_s, unit=self.unit, reason=reason,
                           veto=self.veto, evidence=evidence)

        if not m.available:
            if worst is not None:
                return Finding(
                    detector=self.name, condition=Condition.CLEAR, value=worst.gc_share * 100,
                    limit=c.gc_time_limit_pct, unit="pct_gc_time", veto=self.veto,
                    evidence=evidence, reason=(
                        f"{worst.name}: {worst.gc_share * 100:.1f} % of its time in GC (limit "
                        f"{c.gc_time_limit_pct:g} %); no kernel memory source"))
            if m.lost:
                return finding(Condition.UNAVAILABLE, f"memory source {LOST}")
            return finding(Condition.UNAVAILABLE, "no memory source on this host "
                           "(see `coherence sources`)")
        if _nan(churn) or _nan(growth) or m.trend_points < m.trend_points_needed // 2:
            return finding(Condition.WARMUP, "collecting memory samples")
        flat = _nan(total) or abs(growth) * c.window_s < c.flat_pct / 100.0 * total
        if churn > c.churn_limit_mb_s and flat:
            return finding(Condition.FIRING, (
                f"allocating {churn:.0f} MB/s while resident memory stays flat at "
                f"{resident / MB:.0f} MB: garbage-collection death-spiral risk; throttle"))
        forecast = _forecast(m)
        if forecast is not None:
            eta, trend = forecast
            evidence = replace(evidence, exhaustion_eta_s=eta)
            if eta < c.horizon_h * 3600:
                rate = trend.bytes_per_s
                return Finding(
                    detector=self.name, condition=Condition.FIRING, max_state=State.WARNING,
                    value=rate / MB, limit=(total - resident) / MB / (c.horizon_h * 3600),
                    unit="MB/s growth", veto=self.veto, evidence=evidence, reason=(
                        f"resident memory grows {rate / MB:.1f} MB/s, steadily over the last "
                        f"{duration(trend.span_s)}: exhausted in about {duration(eta)} "
                        f"({resident / MB:.0f} of {total / MB:.0f} MB); throttle"))
        if churn > c.churn_limit_mb_s:
            why = (f"allocating {churn:.0f} MB/s while resident memory moves {growth / MB:+.0f} MB/s: "
                   "not churn over flat memory")
        else:
            why = f"allocation churn {churn:.0f} MB/s (limit {c.churn_limit_mb_s:g})"
        if worst is not None:
            why = f"{worst.name}: {worst.gc_share * 100:.1f} % of its time in GC; {why}"
        return finding(Condition.CLEAR, why)


def _forecast(m: MemorySignals) -> Optional[Tuple[float, Trend]]:
    """The soonest exhaustion a trend forecasts (seconds until resident memory reaches the
    total, and the trend), among the trends that stand: growth out of the noise (t > 3), in
    both halves of its span, and a forecast no further than FORECAST_REACH times that span.
    None when none stands."""
    if _nan(m.total_bytes) or _nan(m.resident_bytes):
        return None
    best: Optional[Tuple[float, Trend]] = None
    for trend in m.growth_trends:
        growth = trend.bytes_per_s
        if not (growth > 0 and trend.t > TREND_T_MIN
                and min(trend.early_bytes_per_s, trend.late_bytes_per_s) >= STEADY_SHARE * growth):
            continue
        eta = max(0.0, (m.total_bytes - m.resident_bytes) / growth)
        if eta <= FORECAST_REACH * trend.span_s and (best is None or eta < best[0]):
            best = (eta, trend)
    return best


class Amplification:
    """egress / ingress above 1.1 and above its own learned baseline: a retry storm."""

    name = "amplification"
    unit = "ratio"
    veto = Veto.CAP_RETRIES

    def __init__(self, config: AmplificationConfig) -> None:
        self.c = config
        self.baseline: Optional[float] = None
        self._last: Optional[float] = None
        self._traffic_since: Optional[float] = None   # judged traffic, without a gap, since

    @classmethod
    def from_config(cls, config: Config) -> "Amplification":
        return cls(config.amplification)

    def learn(self, ratio: float, now: float) -> None:
        """Move the baseline towards ratio, time-aware; the caller does it only while healthy."""
        if _nan(ratio):
            return
        if self.baseline is None or self._last is None:
            self.baseline = ratio
        else:
            alpha = 1.0 - 2.0 ** (-(now - self._last) / self.c.baseline_half_life_s)
            self.baseline += alpha * (ratio - self.baseline)
        self._last = now

    def learn_from(self, finding: Finding[Any], state: State, now: float) -> None:
        """Learn from a finding the verdict found OK, with enough traffic to judge: the baseline
        learns only from a healthy service, never from the storm."""
        e = finding.evidence
        if state == State.OK and isinstance(e, AmplificationEvidence) \
                and not _nan(finding.value) and e.ingress_per_s >= self.c.min_ingress_per_s:
            self.learn(finding.value, now)

    def evaluate(self, snap: Snapshot, now: float) -> Finding[AmplificationEvidence]:
        r, c = snap.requests, self.c
        ratio, ingress = r.ratio, r.ingress_per_s
        evidence = AmplificationEvidence(
            ratio=ratio, baseline=self.baseline, ingress_per_s=ingress,
            egress_per_s=r.egress_per_s, source=r.source, window_s=c.window_s,
            pressure_cpu_some_pct=snap.pressure.cpu_some_pct)
        limit = max(c.ratio_limit, (self.baseline or 0.0) * c.baseline_factor)

        def finding(condition: Condition, reason: str) -> Finding[AmplificationEvidence]:
            return Finding(detector=self.name, condition=condition, value=ratio, limit=limit,
                           unit=self.unit, reason=reason, veto=self.veto, evidence=evidence)

        label = {PUSHED: "", SCRAPED: f" ({r.origin})"}.get(
            r.source, " (TCP connections, a proxy)")
        if _nan(ingress) or _nan(ratio) or ingress < c.min_ingress_per_s:
            self._traffic_since = None
            shown = 0.0 if _nan(ingress) else ingress
            return finding(Condition.CLEAR, (
                f"too little traffic to judge{label}: {shown:.1f} requests/s in "
                f"(minimum {c.min_ingress_per_s:g})"))
        if self._traffic_since is None:
            self._traffic_since = now
        if self.baseline is None:
            # Seed the baseline from a full window of traffic, never from the first requests
            # (a window of a few requests, one still in flight, reads 2 for a fan-out of 3).
            learned = now - self._traffic_since
            if learned < c.window_s:
                return finding(Condition.WARMUP, (
                    f"learning the usual ratio{label}: {learned:.1f} of {c.window_s:g} s "
                    "of traffic"))
            self.learn(ratio, now)
            evidence = replace(evidence, baseline=self.baseline)
            limit = max(c.ratio_limit, ratio * c.baseline_factor)
        if ratio > limit:
            return finding(Condition.FIRING, (
                f"{ratio:.2f} calls out per request in{label}, against a usual {self.baseline:.2f}: "
                "a retry storm or feedback loop; cap retries, then break the circuit"))
        return finding(Condition.CLEAR, (
            f"{ratio:.2f} calls out per request in{label} (usual {self.baseline:.2f})"))


# In the order reports list them (the JSON `detectors` object, the dashboard's panels).
DETECTORS: Tuple[str, ...] = (Seizure.name, Fever.name, Amplification.name)
