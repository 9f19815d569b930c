"""One step of judgement: a snapshot of the signals through the three detectors and the verdict
engine, into a Report, the one structure every sink (dashboard, JSON lines, check) renders."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from coherence.config import Config
from coherence.detectors import DETECTORS, Amplification, Fever, Finding, Seizure
from coherence.snapshot import PUSHED, SCRAPED, Snapshot
from coherence.states import State
from coherence.verdict import Verdict, VerdictEngine

__all__ = ["DETECTORS", "Monitor", "Report", "judged_requests", "sampler_figures"]


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
        figures = self._sampler_stats()
        if figures is not None and "sources" in figures:
            figures = judged_requests(figures, snap)
        return Report(wall, now - self._start, verdict, findings, snap, figures)


# What sampler.sources.requests says when the requests judged are not the sampler's own (TCP).
REQUEST_SOURCES = {PUSHED: "requests.pushed", SCRAPED: "requests.scraped"}


def judged_requests(figures: Dict[str, Any], snap: Snapshot) -> Dict[str, Any]:
    """``figures`` with `sources.requests` naming what amplification judges: the pushed counts
    (StatsD, coherence.hooks) or a scraped service's (`requests_origin` says which) when they
    flow, else the sampler's TCP counters."""
    name = REQUEST_SOURCES.get(snap.requests.source)
    if name is None:
        return figures
    out = {**figures, "sources": {**figures["sources"], "requests": name}}
    if snap.requests.source == SCRAPED:
        out["requests_origin"] = snap.requests.origin
    return out


# /proc/net/udp is read for the StatsD socket's kernel drops at most this often: on a host with
# thousands of sockets it is megabytes, and reports come four times a second.
DROPS_EVERY_S = 5.0


def sampler_figures(sampler: Any, statsd: Any = None,
                    clock: Callable[[], float] = time.monotonic) -> Callable[[], Dict[str, Any]]:
    """A callable giving the `sampler` object of a report: the sampler's own figures, the sources
    in use, each file source's reads and parse misses, and, with a StatsD listener, its counts."""
    drops: List[Any] = [-math.inf, None]         # when read, what it said

    def figures() -> Dict[str, Any]:
        s = sampler.stats()
        out: Dict[str, Any] = {
            "hz": sampler.hz,
            "achieved_hz": s.achieved_hz,
            "ticks": s.ticks,
            "overruns": s.overruns,
            "tick_lateness_p50_us": s.tick_lateness_p50_us,
            "tick_lateness_p99_us": s.tick_lateness_p99_us,
            "cpu_percent": s.cpu_percent,
            "sources": {r.family: r.name for r in sampler.sources() if r.in_use},
            "reads": sampler.read_figures(),
            "notes": list(sampler.notes),
        }
        if statsd is not None:
            now = clock()
            if now - drops[0] >= DROPS_EVERY_S:
                drops[0], drops[1] = now, statsd.dropped()
            out["statsd"] = {"packets": statsd.packets, "accepted": statsd.accepted,
                             "ignored": statsd.ignored, "malformed": statsd.malformed,
                             "dropped": drops[1]}
        return out
    return figures
