"""The host cases, shared by the e2e tests and benchmarks/run_e2e.py: real CPU and memory load
started under a running `coherence --live --json`, judged from its JSON lines.

Each fault case returns when its detector is CRITICAL or 10 s after the fault started; each
control watches its load for longer than warm-up + `for` and records every state seen.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from harness import LOADS, Load, Sentinel, compile_c, first_critical_after

DEADLINE_S = 10.0          # the bar: CRITICAL within 10 s of the fault starting
CONTROL_S = 12.0           # longer than `for` (5 s) + margin: a control that would go CRITICAL does
QUIET_S = 6.0              # judged lines watched before a fault: `for` (5 s) + 1, none CRITICAL
CPU_ALERT_PCT = 80.0       # the classic alerts compared against
MEM_ALERT_PCT = 90.0


@dataclass
class CaseResult:
    case: str
    detector: str
    fault: bool                               # a fault case (else a control)
    time_to_critical: Optional[float] = None  # seconds after the fault started (fault cases)
    critical_before_fault: bool = False
    critical_in_control: bool = False
    states: List[str] = field(default_factory=list)
    classic_alert_after: Optional[float] = None   # when CPU > 80 % / memory > 90 % first held
    classic_alert: str = ""
    notes: Dict[str, float] = field(default_factory=dict)


def _classic_cpu(sentinel: Sentinel, t0: float) -> Optional[float]:
    for line in sentinel.since(t0):
        mean = line.report["detectors"]["seizure"]["evidence"].get("mean_pct")
        if mean is not None and mean > CPU_ALERT_PCT:
            return line.received - t0
    return None


def _classic_memory(sentinel: Sentinel, t0: float) -> Optional[float]:
    for line in sentinel.since(t0):
        ev = line.report["detectors"]["fever"]["evidence"]
        if ev.get("resident_mb") and ev.get("total_mb") and \
                100 * ev["resident_mb"] / ev["total_mb"] > MEM_ALERT_PCT:
            return line.received - t0
    return None


LABELS = {"_classic_cpu": f"CPU > {CPU_ALERT_PCT:g} %", "_classic_memory": f"used memory > {MEM_ALERT_PCT:g} %"}


def _fault(case: str, detector: str, load_cmd: List[str], classic) -> CaseResult:
    result = CaseResult(case, detector, fault=True, classic_alert=LABELS[classic.__name__])
    with Sentinel(duration=60) as sentinel:
        judged = sentinel.warmed_up(detector).received
        # "not before the fault" must mean something: watch the judged, quiet host first
        sentinel.wait_for(lambda l: l.received >= judged + QUIET_S, timeout=QUIET_S + 3)
        with Load(*load_cmd) as load:
            t0 = load.started
            line = sentinel.wait_for(lambda l: l.received >= t0 and l.state(detector) == "CRITICAL",
                                     timeout=DEADLINE_S + 0.5)
            before = [l.state(detector) for l in sentinel.lines if judged <= l.received < t0]
            assert len(before) >= QUIET_S - 1, f"too few judged lines before the fault: {before}"
            result.critical_before_fault = "CRITICAL" in before
            result.time_to_critical = first_critical_after(sentinel.lines, detector, t0)
            if line is None:
                assert load.alive(), f"the load {load_cmd} died early"
        result.states = [l.state(detector) for l in sentinel.lines]
        result.classic_alert_after = classic(sentinel, t0)
        if line is not None:
            result.notes["value_at_critical"] = line.report["detectors"][detector]["value"]
    return result


def seizure_fault(build: str) -> CaseResult:
    """Every allowed CPU busy ~1 s, idle ~1 s, in step."""
    return _fault("seizure: all CPUs 1 s busy / 1 s idle", "seizure",
                  [compile_c("cpuload", build), "flip", "1000", "30"], _classic_cpu)


def fever_fault(build: str) -> CaseResult:
    """Map, touch and unmap 64 MB over and over: GB/s of faults, resident memory flat."""
    return _fault("fever: map/touch/unmap 64 MB in a loop", "fever",
                  [compile_c("churn", build), "churn", "64", "30"], _classic_memory)


def _controls(detector: str, phases: List[tuple], classic) -> List[CaseResult]:
    """One sentinel, several control loads one after the other, none allowed to go CRITICAL."""
    results = []
    with Sentinel(duration=30 + len(phases) * (CONTROL_S + 2)) as sentinel:
        sentinel.warmed_up(detector)
        for name, cmd, seconds in phases:
            result = CaseResult(name, detector, fault=False, classic_alert=LABELS[classic.__name__])
            if cmd is None:
                t0 = time.monotonic()
                sentinel.wait_for(lambda l: l.received >= t0 + seconds, timeout=seconds + 3)
            else:
                with Load(*cmd) as load:
                    t0 = load.started
                    sentinel.wait_for(lambda l: l.received >= t0 + seconds, timeout=seconds + 3)
                    assert load.alive() or load.proc.returncode == 0, f"{cmd} failed"
            t1 = time.monotonic()
            result.states = [l.state(detector) for l in sentinel.lines if t0 <= l.received < t1]
            result.critical_in_control = "CRITICAL" in result.states
            assert {"OK", "WARNING"} & set(result.states), (
                f"{name}: the detector never judged during the control: {result.states}")
            result.classic_alert_after = classic(sentinel, t0)
            results.append(result)
    return results


def seizure_controls(build: str) -> List[CaseResult]:
    cpuload = compile_c("cpuload", build)
    return _controls("seizure", [
        ("seizure control: idle machine", None, CONTROL_S),
        ("seizure control: every CPU steadily busy", [cpuload, "steady", "0", "20"], CONTROL_S),
        ("seizure control: on/off every 10 ms", [cpuload, "flip", "10", "20"], CONTROL_S),
    ], _classic_cpu)


def fever_controls(build: str) -> List[CaseResult]:
    path = os.path.join(build, "big.file")
    try:
        return _controls("fever", [
            ("fever control: holding 1 GB", [compile_c("churn", build), "hold", "1024", "20"], CONTROL_S),
            ("fever control: reading a 600 MB file through the page cache",
             [sys.executable, os.path.join(LOADS, "pagecache.py"), path, "600", "25"], CONTROL_S + 3),
        ], _classic_memory)
    finally:
        if os.path.exists(path):
            os.unlink(path)
