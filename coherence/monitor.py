"""One step of judgement: a snapshot of the signals through the three detectors and the verdict
engine, into a Report, the one structure every sink (dashboard, JSON lines, check) renders."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

from coherence.config import Config
from coherence.detectors import DETECTORS, Amplification, Fever, Finding, Seizure
from coherence.snapshot import Snapshot
from coherence.states import State
from coherence.verdict import Verdict, VerdictEngine

__all__ = ["DETECTORS", "Monitor", "Report", "sampler_figures"]


@dataclass(frozen=True)
class Report:
    ts: float                          # wall-clock time, Unix seconds
    elapsed_s: float                   # since the monitor started
    verdict: Verdict
    findings: Dict[str, Finding[Any]]     # by detector name, in DETECTORS order
    snapshot: Snapshot                 # the signals judged (history arrays included)
    sampler: Optional[Dict[str, Any]]  # the sampler's own figures; None when simulated

    @property
    def status(self) -> State:
        return self.verdict.status


class Monitor:
    """Detectors and verdicts over a source of snapshots (a Sampler's, or the simulator's).

    ``step(now, wall)`` judges one instant; ``now`` is monotonic (or simulated) seconds.
    """

    def __init__(self, config: Config, snapshot: Callable[[], Snapshot],
                 sampler_stats: Optional[Callable[[], Optional[Dict[str, Any]]]] = None) -> None:
        self.config = config
        self.seizure = Seizure.from_config(config)
        self.fever = Fever.from_config(config)
        self.amplification = Amplification.from_config(config)
        self.verdicts = VerdictEngine.from_config(config, DETECTORS)
        self._snapshot = snapshot
        self._sampler_stats = sampler_stats or (lambda: None)
        self._start: Optional[float] = None

    @property
    def started_at(self) -> Optional[float]:
        """The ``now`` of the first step (None before it): a report's is this + elapsed_s."""
        return self._start

    def step(self, now: float, wall: float) -> Report:
        if self._start is None:
            self._start = now
        snap = self._snapshot()
        findings = {d.name: d.evaluate(snap, now)
                    for d in (self.seizure, self.fever, self.amplification)}
        verdict = self.verdicts.update(findings, now)
        self.amplification.learn_from(findings[Amplification.name],
                                      verdict.states[Amplification.name], now)
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
