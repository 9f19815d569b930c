"""One step of judgement: a snapshot of the signals through the three detectors and the verdict
engine, into a Report, the one structure every sink (dashboard, JSON lines, check) renders."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from coherence.config import Config
from coherence.detectors import Finding, make_detectors
from coherence.snapshot import Snapshot
from coherence.verdict import OK, Verdict, VerdictEngine

DETECTORS = ("seizure", "fever", "amplification")


@dataclass(frozen=True)
class Report:
    ts: float                          # wall-clock time, Unix seconds
    elapsed_s: float                   # since the monitor started
    verdict: Verdict
    findings: Dict[str, Finding]
    snapshot: Snapshot                 # the signals judged (history arrays included)
    sampler: Optional[Dict[str, Any]]  # the sampler's own figures; None when simulated

    @property
    def status(self) -> str:
        return self.verdict.status

    def to_json(self) -> Dict[str, Any]:
        """The documented JSON-lines object (schema: coherence/report.schema.json)."""
        detectors = {}
        for name in DETECTORS:
            f = self.findings[name]
            detectors[name] = {
                "state": self.verdict.states[name],
                "for_s": round(self.verdict.now - self.verdict.since[name], 3),
                "value": f.value, "limit": f.limit, "unit": f.unit,
                "reason": f.reason, "evidence": f.evidence,
                "veto": next((v["action"] for v in self.verdict.veto if v["detector"] == name), None),
            }
        return clean({
            "ts": round(self.ts, 3),
            "elapsed_s": round(self.elapsed_s, 3),
            "status": self.verdict.status,
            "changed": self.verdict.changed,
            "detectors": detectors,
            "veto": self.verdict.veto,
            # `since` on the monitor's clock becomes Unix time, comparable with `ts`
            "incidents": [{**i, "since": round(self.ts - (self.verdict.now - i["since"]), 3)}
                          if "since" in i else i for i in self.verdict.incidents],
            "sampler": self.sampler,
        })


def clean(value: Any) -> Any:
    """JSON-safe: NaN and inf become null, tuples lists, numpy scalars floats."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


class Monitor:
    """Detectors and verdicts over a source of snapshots (a Sampler's, or the simulator's).

    ``step(now, wall)`` judges one instant; ``now`` is monotonic (or simulated) seconds.
    """

    def __init__(self, config: Config, snapshot: Callable[[], Snapshot],
                 sampler_stats: Optional[Callable[[], Optional[Dict[str, Any]]]] = None) -> None:
        self.config = config
        self.detectors = make_detectors(config)
        self.verdicts = VerdictEngine(list(DETECTORS), config.verdict)
        self._snapshot = snapshot
        self._sampler_stats = sampler_stats or (lambda: None)
        self._start: Optional[float] = None

    def step(self, now: float, wall: float) -> Report:
        if self._start is None:
            self._start = now
        snap = self._snapshot()
        findings = {name: self.detectors[name].evaluate(snap, now) for name in DETECTORS}
        verdict = self.verdicts.update(findings, now)
        amp = findings["amplification"]
        ingress = amp.evidence.get("ingress_per_s")
        if verdict.states["amplification"] == OK and not math.isnan(amp.value) \
                and ingress is not None and ingress >= self.config.amplification.min_ingress_per_s:
            # the baseline learns only from a healthy service, never from the storm
            self.detectors["amplification"].learn(amp.value, now)
        return Report(wall, now - self._start, verdict, findings, snap, self._sampler_stats())


def sampler_figures(sampler: Any) -> Dict[str, Any]:
    """The `sampler` object of a report: the sampler's own figures and the sources in use."""
    s = sampler.stats()
    return {
        "hz": sampler.hz,
        "achieved_hz": s.achieved_hz,
        "ticks": s.ticks,
        "overruns": s.overruns,
        "tick_lateness_p50_us": s.tick_lateness_p50_us,
        "tick_lateness_p99_us": s.tick_lateness_p99_us,
        "cpu_percent": s.cpu_percent,
        "sources": {r.family: r.name for r in sampler.sources() if r.in_use},
        "notes": list(sampler.notes),
    }

