"""The three laws: each detector turns one snapshot of the signals into a Finding (is the
condition present, the measured value against its limit, the evidence, one line a person can
act on). Detectors judge; they never read files and never keep verdict state."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from coherence.config import AmplificationConfig, FeverConfig, SeizureConfig
from coherence.snapshot import PUSHED, Snapshot

# What a finding can say about its condition; the verdict engine turns these into states.
WARMUP, UNAVAILABLE, CLEAR, FIRING = "warmup", "unavailable", "clear", "firing"
MB = 1e6
TREND_T_MIN = 3.0          # slope / standard error: under this a trend is noise, not a forecast


@dataclass(frozen=True)
class Finding:
    detector: str
    condition: str                 # WARMUP / UNAVAILABLE / CLEAR / FIRING
    value: float                   # the measured figure compared with `limit`
    limit: float
    unit: str
    reason: str                    # one line a person can act on
    evidence: Dict[str, Any] = field(default_factory=dict)
    max_state: str = "CRITICAL"    # a forecast warns; it never escalates
    veto: str = ""                 # the recommendation while the condition holds


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def duration(seconds: float) -> str:
    """A span of time as a person says it: 45 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def swings(values: Any) -> int:
    """How many times the series goes from its low third to its high third or back (between its
    5th and 95th percentiles, so that half a second of a 10 s window counts but one stray
    bucket does not): a step counts once, a pulse twice, a seizure again and again.
    Small noise around a level swings too; the detector also requires a large std."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return 0
    low, high = np.percentile(x, [5, 95])
    third = (high - low) / 3
    side = np.where(x >= high - third, 1, np.where(x <= low + third, -1, 0))
    side = side[side != 0]
    return int(np.count_nonzero(side[1:] != side[:-1]))


class Seizure:
    """CPU utilization that swings back and forth (std high, crossing its mean again and again)
    while its mean is not high. A load that starts or stops is a step, not a seizure."""

    name = "seizure"
    unit = "pct_points"

    def __init__(self, config: SeizureConfig) -> None:
        self.c = config

    def evaluate(self, snap: Snapshot, now: float) -> Finding:
        cpu, c = snap.cpu, self.c
        std, mean, n = cpu.util_std_pct, cpu.util_mean_pct, cpu.buckets
        if not cpu.available:
            return Finding(detector=self.name, condition=UNAVAILABLE, value=math.nan,
                           limit=c.std_limit_pct, unit=self.unit, veto="SHED_LOAD",
                           reason="no CPU source (lost: the watched process exited?)")
        crossings = swings(cpu.history_pct[-n:]) if n else 0
        evidence = {"mean_pct": mean, "std_pct": std, "buckets": n, "swings": crossings,
                    "resolution_s": c.resolution_s, "window_s": c.window_s,
                    "pressure_cpu_some_pct": snap.pressure.cpu_some_pct}
        base = dict(detector=self.name, value=std, limit=c.std_limit_pct, unit=self.unit,
                    evidence=evidence, veto="SHED_LOAD")
        # Half a window of buckets is enough to see a swing; less would judge on noise.
        if n < max(2, cpu.buckets_per_window // 2) or _nan(std):
            return Finding(condition=WARMUP, reason=f"collecting CPU buckets ({n} of "
                           f"{cpu.buckets_per_window // 2} needed)", **base)
        if std > c.std_limit_pct and mean < c.mean_ceiling_pct and crossings >= c.min_swings:
            return Finding(condition=FIRING, reason=(
                f"CPU swings {crossings} times by ±{std:.0f} points around a mean of {mean:.0f} % "
                f"({c.resolution_s * 1000:.0f} ms buckets over {c.window_s:g} s): thrashing or "
                "lock contention; shed load"), **base)
        if std > c.std_limit_pct and mean >= c.mean_ceiling_pct:
            why = f"CPU busy ({mean:.0f} % mean) and swinging (±{std:.0f}): load, not a seizure"
        elif std > c.std_limit_pct:
            why = (f"CPU changed level (±{std:.0f} around {mean:.0f} %, {crossings} swing"
                   f"{'s' if crossings != 1 else ''}): a step, not a seizure")
        else:
            why = f"CPU steady: ±{std:.1f} points around {mean:.0f} %"
        return Finding(condition=CLEAR, reason=why, **base)


class Fever:
    """Allocation churn high while resident memory stays flat; steady growth as a forecast."""

    name = "fever"
    unit = "MB/s"

    def __init__(self, config: FeverConfig) -> None:
        self.c = config

    def evaluate(self, snap: Snapshot, now: float) -> Finding:
        m, c = snap.memory, self.c
        churn = m.churn_bytes_per_s / MB
        resident, total, growth = m.resident_bytes, m.total_bytes, m.resident_growth_bytes_per_s
        evidence = {"alloc_rate_mb_s": churn, "minor_faults_per_s": m.minor_faults_per_s,
                    "pgalloc_mb_s": m.pgalloc_bytes_per_s / MB,
                    "resident_mb": resident / MB, "total_mb": total / MB,
                    "resident_growth_mb_s": growth / MB if not _nan(growth) else math.nan,
                    "pressure_memory_some_pct": snap.pressure.memory_some_pct}
        base = dict(detector=self.name, value=churn, limit=c.churn_limit_mb_s, unit=self.unit,
                    evidence=evidence, veto="THROTTLE")
        if not m.available:
            return Finding(condition=UNAVAILABLE, reason="no memory source on this host "
                           "(see `coherence sources`)", **base)
        if _nan(churn) or _nan(growth) or m.trend_points < m.trend_points_needed // 2:
            return Finding(condition=WARMUP, reason="collecting memory samples", **base)
        flat = _nan(total) or abs(growth) * c.window_s < c.flat_pct / 100.0 * total
        if churn > c.churn_limit_mb_s and flat:
            return Finding(condition=FIRING, reason=(
                f"allocating {churn:.0f} MB/s while resident memory stays flat at "
                f"{resident / MB:.0f} MB: garbage-collection death-spiral risk; throttle"), **base)
        # a forecast needs a trend that stands well above the noise (t > 3), not any slope
        if not _nan(total) and growth > 0 and m.resident_growth_t > TREND_T_MIN:
            eta = (total - resident) / growth
            evidence["exhaustion_eta_s"] = eta
            if eta < c.horizon_h * 3600:
                return Finding(condition=FIRING, max_state="WARNING", reason=(
                    f"resident memory grows {growth / MB:.1f} MB/s: exhausted in about "
                    f"{duration(eta)} ({resident / MB:.0f} of {total / MB:.0f} MB); throttle"),
                    **{**base, "value": growth / MB, "limit": (total - resident) / MB / (c.horizon_h * 3600),
                       "unit": "MB/s growth"})
        if churn > c.churn_limit_mb_s:
            why = (f"allocating {churn:.0f} MB/s while resident memory moves {growth / MB:+.0f} MB/s: "
                   "not churn over flat memory")
        else:
            why = f"allocation churn {churn:.0f} MB/s (limit {c.churn_limit_mb_s:g})"
        return Finding(condition=CLEAR, reason=why, **base)


class Amplification:
    """egress / ingress above 1.1 and above its own learned baseline: a retry storm."""

    name = "amplification"
    unit = "ratio"

    def __init__(self, config: AmplificationConfig) -> None:
        self.c = config
        self.baseline: Optional[float] = None
        self._last: Optional[float] = None
        self._traffic_since: Optional[float] = None   # judged traffic, without a gap, since

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

    def evaluate(self, snap: Snapshot, now: float) -> Finding:
        r, c = snap.requests, self.c
        ratio, ingress = r.ratio, r.ingress_per_s
        evidence = {"ratio": ratio, "baseline": self.baseline, "ingress_per_s": ingress,
                    "egress_per_s": r.egress_per_s, "source": r.source,
                    "window_s": c.window_s,
                    "pressure_cpu_some_pct": snap.pressure.cpu_some_pct}
        limit = max(c.ratio_limit, (self.baseline or 0.0) * c.baseline_factor)
        base = dict(detector=self.name, value=ratio, limit=limit, unit=self.unit,
                    evidence=evidence, veto="CAP_RETRIES")
        label = "" if r.source == PUSHED else " (TCP connections, a proxy)"
        if _nan(ingress) or _nan(ratio) or ingress < c.min_ingress_per_s:
            self._traffic_since = None
            shown = 0.0 if _nan(ingress) else ingress
            return Finding(condition=CLEAR, reason=(
                f"too little traffic to judge{label}: {shown:.1f} requests/s in "
                f"(minimum {c.min_ingress_per_s:g})"), **base)
        if self._traffic_since is None:
            self._traffic_since = now
        if self.baseline is None:
            # Seed the baseline from a full window of traffic, never from the first requests
            # (a window of a few requests, one still in flight, reads 2 for a fan-out of 3).
            learned = now - self._traffic_since
            if learned < c.window_s:
                return Finding(condition=WARMUP, reason=(
                    f"learning the usual ratio{label}: {learned:.1f} of {c.window_s:g} s "
                    "of traffic"), **base)
            self.learn(ratio, now)
            evidence["baseline"] = self.baseline
            limit = max(c.ratio_limit, ratio * c.baseline_factor)
            base["limit"] = limit
        if ratio > limit:
            return Finding(condition=FIRING, reason=(
                f"{ratio:.2f} calls out per request in{label}, against a usual {self.baseline:.2f}: "
                "a retry storm or feedback loop; cap retries, then break the circuit"), **base)
        return Finding(condition=CLEAR, reason=(
            f"{ratio:.2f} calls out per request in{label} (usual {self.baseline:.2f})"), **base)


def make_detectors(config: Any) -> Dict[str, Any]:
    return {"seizure": Seizure(config.seizure), "fever": Fever(config.fever),
            "amplification": Amplification(config.amplification)}
