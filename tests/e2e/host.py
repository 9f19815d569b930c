"""The host cases, shared by the e2e tests and benchmarks/run_e2e.py: real CPU and memory load
started under a running `coherence --live --json`, judged from its JSON lines, with the classic
node_exporter alerts evaluated beside it from /proc by the harness itself (classic.py).

Each fault case watches the 10 s after the fault started (CRITICAL must come within them); each
control watches its load for longer than warm-up + `for` and records every state seen.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from classic import ClassicProbe, ClassicReading
from coherence.config import VerdictConfig
from harness import DETECTORS, LOADS, Line, Load, Sentinel, compile_c, first_critical_after, \
    seconds_in, warning_starts

DEADLINE_S = 10.0          # the bar: CRITICAL within 10 s of the fault starting
CONTROL_S = 12.0           # longer than `for` (5 s) + margin: a control that would go CRITICAL does
QUIET_S = 6.0              # judged lines watched before a fault: `for` (5 s) + 1, none CRITICAL
JUDGED = ("OK", "WARNING", "CRITICAL")
# While a fault runs, every other detector must say OK: a seizure is not also a fever, and a
# fever not also a seizure (WARMUP is allowed only before the fault, while they learn). The one
# exception is what the controls may show at a load's edge (EDGE_ONLY, below): a fault that
# starts by taking every CPU (a runtime's GC spiral: idle to ~97 % in a second) is a step, which
# seizure's window reads as a swing for a moment and `clear` then holds as WARNING; never longer
# than that, never raised as anything but seizure's swing, never CRITICAL.
OTHERS_DURING_FAULT = {"OK"}


@dataclass(frozen=True)
class MayShow:
    """What a control may show over its span: never CRITICAL, judged (OK or WARNING) on every
    line, WARNING for at most `warning_s` seconds and only raised by a finding in one of the
    units `warning_as` (fever's "MB/s growth" is its resident-growth forecast, which can never
    escalate; "MB/s" would be the churn condition itself); the other detectors only OK."""
    warning_s: float = 0.0
    warning_as: Tuple[str, ...] = ()


@dataclass
class CaseResult:
    case: str
    detector: str
    fault: bool                               # a fault case (else a control)
    forecast: bool = False                    # a fault whose bar is a WARNING (fever_leak)
    time_to_critical: Optional[float] = None  # seconds after the fault started (fault cases)
    critical_before_fault: bool = False
    states: List[str] = field(default_factory=list)   # the detector's, over the fault / control
    others: Dict[str, List[str]] = field(default_factory=dict)   # the other detectors', there
    others_warning: Dict[str, Tuple[float, List[str]]] = field(default_factory=dict)
                                              # theirs: seconds in WARNING, what raised it
    warning_s: float = 0.0                    # seconds the detector spent in WARNING there
    warning_starts: List[str] = field(default_factory=list)   # what raised each WARNING (unit)
    reasons: List[str] = field(default_factory=list)   # the detector's reasons on lines not OK
    may_show: Optional[MayShow] = None        # controls: what they are allowed to show
    classic: List[ClassicReading] = field(default_factory=list)  # CPU and memory rules there
    span_s: float = 0.0                       # seconds watched after the fault / control start
    notes: Dict[str, float] = field(default_factory=dict)

    @property
    def classic_reading(self) -> Optional[ClassicReading]:
        """The classic rule that watches this detector's resource (CPU for seizure, memory for
        fever)."""
        want = "CPU" if self.detector == "seizure" else "MemAvailable"
        return next((r for r in self.classic if r.rule.startswith(want)), None)


def control_violations(result) -> List[str]:
    """What a control (a host or amplification CaseResult) showed beyond its MayShow; empty
    when it passed."""
    assert not result.fault and result.may_show is not None, result
    bad = []
    if "CRITICAL" in result.states:
        bad.append("CRITICAL")
    unjudged = sorted(set(result.states) - set(JUDGED))
    if unjudged or not result.states:
        bad.append(f"not judged throughout ({unjudged or 'no lines'})")
    if result.warning_s > result.may_show.warning_s:
        bad.append(f"WARNING for {result.warning_s:.1f} s (may: {result.may_show.warning_s:g} s)")
    raised = sorted(set(result.warning_starts) - set(result.may_show.warning_as))
    if raised:
        bad.append(f"WARNING raised as {raised} (may: {list(result.may_show.warning_as)})")
    bad += other_violations(result)
    return bad + ([f"({'; '.join(result.reasons)})"] if bad and result.reasons
                  and not result.fault else [])


def other_violations(result) -> List[str]:
    """The other detectors' states, over a fault or a control, beyond OTHERS_DURING_FAULT; over
    a fault, a WARNING within EDGE_ONLY (the controls' load edge) is allowed them."""
    bad = []
    for det, states in result.others.items():
        beyond = set(states) - OTHERS_DURING_FAULT
        if result.fault and beyond == {"WARNING"}:
            seconds, raised = result.others_warning.get(det, (math.inf, []))
            if seconds <= EDGE_ONLY.warning_s and set(raised) <= set(EDGE_ONLY.warning_as):
                continue
            bad.append(f"{det} showed WARNING for {seconds:.1f} s raised as {raised} (may: "
                       f"{EDGE_ONLY.warning_s:g} s, as {list(EDGE_ONLY.warning_as)})")
        elif beyond or not states:
            bad.append(f"{det} showed {sorted(beyond) or 'no lines'}")
    return bad + ([f"({'; '.join(result.reasons)})"] if bad and result.reasons
                  and result.fault else [])


def not_ok_reasons(lines: Sequence[Line], detector: str, t0: float, t1: float,
                   others: bool = False) -> List[str]:
    """The distinct reasons given on lines of [t0, t1) where the detector (or, with others, any
    other detector) was not OK: what a failure message needs."""
    names = [d for d in DETECTORS if d != detector] if others else [detector]
    seen: Dict[str, None] = {}
    for line in lines:
        for name in names:
            d = line.report["detectors"][name]
            if t0 <= line.received < t1 and d["state"] != "OK":
                seen.setdefault(f"{name} {d['state']}: {d['reason']}", None)
    return list(seen)[:8]


def others_warning(lines: Sequence[Line], detector: str, t0: float,
                   t1: float) -> Dict[str, Tuple[float, List[str]]]:
    """For each detector but `detector`: its seconds in WARNING over [t0, t1), and what raised
    each WARNING (other_violations judges them against EDGE_ONLY)."""
    return {det: (seconds_in(lines, det, "WARNING", t0, t1), warning_starts(lines, det, t0, t1))
            for det in DETECTORS if det != detector}


def record_fault(result: CaseResult, lines: List[Line], before: List[str], t0: float,
                 t1: float) -> Optional[Line]:
    """What a fault that started at t0 showed until t1, given the states judged before it:
    CRITICAL before it or not, the time to CRITICAL, every detector's states, the others'
    reasons. The first CRITICAL line, for the caller's evidence."""
    detector = result.detector
    result.critical_before_fault = "CRITICAL" in before
    result.time_to_critical = first_critical_after(lines, detector, t0)
    span = _span_states(lines, t0, t1)
    result.states = span.pop(detector)
    result.others = span
    result.others_warning = others_warning(lines, detector, t0, t1)
    result.reasons = not_ok_reasons(lines, detector, t0, t1, others=True)
    result.span_s = t1 - t0
    return next((l for l in lines if l.received >= t0 and l.state(detector) == "CRITICAL"), None)


def record_control(result: CaseResult, lines: List[Line], t0: float, t1: float) -> None:
    """What a control showed between t0 and t1: its detector's states, the others', how long it
    warned and why, on the lines the sentinel sent."""
    detector = result.detector
    span = _span_states(lines, t0, t1)
    result.states = span.pop(detector)
    result.others = span
    result.warning_s = seconds_in(lines, detector, "WARNING", t0, t1)
    result.warning_starts = warning_starts(lines, detector, t0, t1)
    result.reasons = (not_ok_reasons(lines, detector, t0, t1)
                      + not_ok_reasons(lines, detector, t0, t1, others=True))
    result.span_s = t1 - t0


def _span_states(lines: Sequence[Line], t0: float, t1: float) -> Dict[str, List[str]]:
    return {det: [l.state(det) for l in lines if t0 <= l.received < t1] for det in DETECTORS}


def _fault(case: str, detector: str, load_cmd: List[str]) -> CaseResult:
    result = CaseResult(case, detector, fault=True)
    with Sentinel(duration=60) as sentinel, ClassicProbe() as probe:
        judged = sentinel.warmed_up(detector).received
        # "not before the fault" must mean something: watch the judged, quiet host first
        sentinel.wait_for(lambda l: l.received >= judged + QUIET_S, timeout=QUIET_S + 3)
        t0 = probe.mark()
        with Load(*load_cmd) as load:
            # the whole 10 s, even after CRITICAL: the other detectors must stay quiet through
            # them, and the classic rules are evaluated over them
            sentinel.wait_for(lambda l: l.received >= t0 + DEADLINE_S, timeout=DEADLINE_S + 3)
            t1 = probe.mark()
            assert load.alive(), f"the load {load_cmd} died early"
        lines = list(sentinel.lines)
    before = [l.state(detector) for l in lines if judged <= l.received < t0]
    assert len(before) >= QUIET_S - 1, f"too few judged lines before the fault: {before}"
    crit = record_fault(result, lines, before, t0, t1)
    result.classic = [probe.cpu(t0, t1), probe.memory(t0, t1)]
    if crit is not None:
        result.notes["value_at_critical"] = crit.report["detectors"][detector]["value"]
    return result


def seizure_fault(build: str) -> CaseResult:
    """Every allowed CPU busy ~1 s, idle ~1 s, in step."""
    return _fault("seizure: all CPUs 1 s busy / 1 s idle", "seizure",
                  [compile_c("cpuload", build), "flip", "1000", "30"])


def fever_fault(build: str) -> CaseResult:
    """Map, touch and unmap 64 MB over and over: GB/s of faults, resident memory flat."""
    return _fault("fever: map/touch/unmap 64 MB in a loop", "fever",
                  [compile_c("churn", build), "churn", "64", "30"])


# The leak: a process taking 1/90 of the free memory more every second, exhaustion ~90 s away
# when it starts. A forecast of 90 s may stand on 10 s of growth (FORECAST_REACH = 12), once
# the growth shows in both halves of them: WARNING about 6 to 9 s in; 15 s is the bar here.
LEAK_FREE_SHARE_PER_S = 1.0 / 90.0
# Page faults cost CPU: a host with more than 90 GB free leaks slower than 1/90 of it a second,
# its exhaustion further than the 10 s span reaches (and the forecast comes later, or not in 15 s).
LEAK_MAX_MB_S = 1000.0
LEAK_S = 20.0
FORECAST_DEADLINE_S = 15.0


def fever_leak(build: str) -> CaseResult:
    """A real leak: map and touch 1/90 of the free memory more every second, never freeing it.
    Fever's forecast must WARN within FORECAST_DEADLINE_S (raised as "MB/s growth"), not before
    the leak, never CRITICAL (a forecast never escalates); the others stay OK. Notes: the leak
    rate, the free memory at its start, and the forecast's time to exhaustion when it warned."""
    result = CaseResult("fever forecast: a process leaking 1/90 of free memory a second",
                        "fever", fault=True, forecast=True)
    with Sentinel(duration=60) as sentinel, ClassicProbe() as probe:
        judged = sentinel.warmed_up("fever").received
        last = sentinel.wait_for(lambda l: l.received >= judged + QUIET_S, timeout=QUIET_S + 3)
        assert last is not None
        ev = last.report["detectors"]["fever"]["evidence"]
        free_mb = ev["total_mb"] - ev["resident_mb"]
        rate = min(LEAK_MAX_MB_S, free_mb * LEAK_FREE_SHARE_PER_S)
        t0 = probe.mark()
        mib_per_s = max(1, int(rate * 1e6 / (1 << 20)))   # churn counts in MiB; this file in MB
        with Load(compile_c("churn", build), "leak", str(mib_per_s), str(LEAK_S + 5)) as load:
            sentinel.wait_for(lambda l: l.received >= t0 + LEAK_S, timeout=LEAK_S + 3)
            t1 = probe.mark()
            assert load.alive(), "the leak died early (out of memory?)"
        lines = list(sentinel.lines)
    before = [l.state("fever") for l in lines if judged <= l.received < t0]
    assert len(before) >= QUIET_S - 1, f"too few judged lines before the leak: {before}"
    record_fault(result, lines, before, t0, t1)
    result.notes.update(rate_mb_s=rate, free_mb=free_mb, warning_before_leak="WARNING" in before)
    result.warning_starts = warning_starts(lines, "fever", t0, t1)
    warned = next((l for l in lines if l.received >= t0 and l.state("fever") == "WARNING"), None)
    if warned is not None:
        d = warned.report["detectors"]["fever"]
        result.notes.update(time_to_warning=warned.received - t0,
                            eta_at_warning_s=d["evidence"].get("exhaustion_eta_s", math.nan),
                            growth_at_warning_mb_s=d["value"])
        result.reasons.insert(0, f"fever WARNING: {d['reason']}")
    result.classic = [probe.cpu(t0, t1), probe.memory(t0, t1)]
    return result


def forecast_violations(result: CaseResult) -> List[str]:
    """What the leak case got wrong; empty when it passed."""
    bad = []
    if result.critical_before_fault or result.notes.get("warning_before_leak"):
        bad.append("fever not OK before the leak")
    when = result.notes.get("time_to_warning")
    if when is None or when > FORECAST_DEADLINE_S:
        bad.append(f"no WARNING within {FORECAST_DEADLINE_S:g} s (first: {when})")
    if "CRITICAL" in result.states:
        bad.append("CRITICAL: a forecast never escalates")
    if result.warning_starts != ["MB/s growth"]:
        bad.append(f"WARNING raised as {result.warning_starts} (must be one forecast episode)")
    return bad + other_violations(result)


def _controls(detector: str, phases: List[tuple]) -> List[CaseResult]:
    """One sentinel, several control loads one after the other (name, command or None for
    none, seconds, MayShow); each phase's states recorded for the caller to judge."""
    results = []
    with Sentinel(duration=30 + len(phases) * (CONTROL_S + 2)) as sentinel, \
            ClassicProbe() as probe:
        sentinel.warmed_up(detector)
        for others in DETECTORS:     # the others must be judged too: their quiet is asserted
            sentinel.warmed_up(others)
        for name, cmd, seconds, may_show in phases:
            result = CaseResult(name, detector, fault=False, may_show=may_show)
            t0 = probe.mark()
            if cmd is None:
                sentinel.wait_for(lambda l, end=t0 + seconds: l.received >= end, timeout=seconds + 3)
            else:
                with Load(*cmd) as load:
                    sentinel.wait_for(lambda l, end=t0 + seconds: l.received >= end, timeout=seconds + 3)
                    assert load.alive() or load.proc.returncode == 0, f"{cmd} failed"
            t1 = probe.mark()
            record_control(result, list(sentinel.lines), t0, t1)
            result.classic = [probe.cpu(t0, t1), probe.memory(t0, t1)]
            results.append(result)
    return results


# What each control may show: the tightest rule that held in every run measured (5 runs of each
# on this shared 2-CPU VM; see README, "End to end").
# A seizure control may show the seizure condition for a moment at a load's edge, never longer:
# a burst on the idle host (another process starting) followed by the step to every CPU busy
# crosses thirds three times, and `clear` (10 s) then holds that WARNING (10.2 s in 1 of 5 runs
# of "steadily busy"; none in the others). One second of condition + `clear` is the bound; a
# condition that held for `for` (5 s) would have gone CRITICAL.
EDGE_ONLY = MayShow(warning_s=VerdictConfig().clear_s + 1.0, warning_as=("pct_points",))
SEIZURE_CONTROLS = {
    "seizure control: idle machine": EDGE_ONLY,
    "seizure control: every CPU steadily busy": EDGE_ONLY,
    "seizure control: on/off every 10 ms": EDGE_ONLY,
}
# Fever's resident-growth forecast may warn through a whole fever control, and only it: holding
# 1 GB is a step the 10 s trend reads as ~100 MB/s of growth (WARNING for all of the 12 s
# measured, then `clear`, 10 s); the page cache filled by the 600 MB file counts as resident
# memory in a cgroup v1 `memory.usage_in_bytes` (WARNING for up to 14.4 of 16 s measured). The
# churn condition, which can go CRITICAL, must never be what raises it.
FORECAST_ONLY = MayShow(warning_s=math.inf, warning_as=("MB/s growth",))
FEVER_CONTROLS = {
    "fever control: holding 1 GB": FORECAST_ONLY,
    "fever control: reading a 600 MB file through the page cache": FORECAST_ONLY,
}


def seizure_controls(build: str) -> List[CaseResult]:
    cpuload = compile_c("cpuload", build)
    idle, steady, flip = SEIZURE_CONTROLS
    return _controls("seizure", [
        (idle, None, CONTROL_S, SEIZURE_CONTROLS[idle]),
        (steady, [cpuload, "steady", "0", "20"], CONTROL_S, SEIZURE_CONTROLS[steady]),
        (flip, [cpuload, "flip", "10", "20"], CONTROL_S, SEIZURE_CONTROLS[flip]),
    ])


def fever_controls(build: str) -> List[CaseResult]:
    path = os.path.join(build, "big.file")
    hold, pagecache = FEVER_CONTROLS
    try:
        return _controls("fever", [
            (hold, [compile_c("churn", build), "hold", "1024", "20"], CONTROL_S,
             FEVER_CONTROLS[hold]),
            (pagecache, [sys.executable, os.path.join(LOADS, "pagecache.py"), path, "600", "25"],
             CONTROL_S + 3, FEVER_CONTROLS[pagecache]),
        ])
    finally:
        if os.path.exists(path):
            os.unlink(path)


def fault_violations(result) -> List[str]:
    """What a fault run (a host or amplification CaseResult) got wrong; empty when it passed:
    CRITICAL within 10 s of the fault and not before it, the other detectors OK throughout
    (but for a load edge's WARNING: other_violations)."""
    bad = []
    if result.critical_before_fault:
        bad.append("CRITICAL before the fault")
    if result.time_to_critical is None:
        bad.append(f"no CRITICAL within {DEADLINE_S:g} s")
    elif result.time_to_critical > DEADLINE_S:
        bad.append(f"CRITICAL after {result.time_to_critical:.1f} s (bar {DEADLINE_S:g} s)")
    return bad + other_violations(result)


def summary(r: CaseResult) -> str:
    """One line for the log (pytest -rP shows it): what the case measured."""
    classic = "; ".join(c.text() for c in r.classic)
    if r.forecast:
        return (f"{r.case}: notes={r.notes} states={sorted(set(r.states))} others="
                f"{ {d: sorted(set(s)) for d, s in r.others.items()} } classic: {classic}")
    if r.fault:
        return (f"{r.case}: time_to_critical={r.time_to_critical} others="
                f"{ {d: sorted(set(s)) for d, s in r.others.items()} } classic: {classic}")
    return (f"{r.case}: states={sorted(set(r.states))} warning_s={r.warning_s:.1f} "
            f"warning_starts={r.warning_starts} span_s={r.span_s:.1f} others="
            f"{ {d: sorted(set(s)) for d, s in r.others.items()} } classic: {classic}")
