"""`coherence --simulate`: a scripted host (healthy, seizure, fever, retry storm, cascade, leak,
recovery) whose synthetic counters feed the same accumulators, detectors and verdicts as a live
host, on simulated time, with the classic threshold alerts computed beside for a lead-time table.

    result = run(Config(), "seizure", seed=0, speed=MAX_SPEED, on_report=print_report)
    print(simulation.format_result(result))   # coherence.sinks: when coherence called each incident,
                                              # and when the classic alerts did
"""
from __future__ import annotations

import math
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Deque, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

from coherence._sampler import Slot
from coherence.config import Config
from coherence.monitor import DETECTORS, Monitor, Report
from coherence.signals import PAGE_SIZE, Signals
from coherence.states import State

# --------------------------------------------------------------------------- clocks
STEP_S = 0.25                  # the monitor judges every 0.25 simulated seconds
EPOCH = 1_700_000_000.0        # wall clock of simulated t=0 (2023-11-14 22:13:20 UTC): output
                               # is deterministic, never today's date
# The story spans 350 simulated seconds: at 10x it plays in 35 s of wall time (under a minute).
DEFAULT_SPEED = 10.0
MAX_SPEED = math.inf           # "as fast as possible": no sleeping at all (what tests use)
_EPS = 1e-9                    # i * 0.05 is not exactly k * 0.25 in binary floating point

# --------------------------------------------------------------------------- the synthetic host
NCPU = 4.0
MEM_TOTAL_BYTES = 16 * 2**30               # a 16 GiB host
RESIDENT_PCT = 40.0                        # of it resident while healthy, flat
RESIDENT_NOISE_BYTES = 1e6                 # small, or the trend would forecast exhaustion on noise
GC_SAWTOOTH_BYTES = 96e6                   # fever: the heap fills and is collected, flat on average
GC_PERIOD_S = 0.8
CPU_PCT = {"healthy": 35.0, "fever": 45.0, "storm": 50.0}   # steady loads: GC work, retries
CPU_NOISE_PCT = 3.0
SEIZURE_LOW_PCT, SEIZURE_HIGH_PCT = 10.0, 90.0   # the README's seizure: averages 50 %
SEIZURE_HALF_PERIOD_S = (0.8, 1.2)              # a flip roughly every second
CHURN_MB_S = {"healthy": 40.0, "fever": 2500.0}  # minor faults x page size: GB/s in a fever
CHURN_NOISE = 0.1                                # relative
PAGE_CACHE_MB_S = 5.0                            # pgalloc beside the faults: reads, not churn
LEAK_MB_S = 150.0                                # 40 % -> 90 % of 16 GiB in about a minute
LEAK_CAP_PCT = 98.0
INGRESS_PER_S = 200.0
MAX_ATTEMPTS = 6                   # 1 call + 5 retries: the retry policy that makes storms
BACKEND_FAILURE = {"healthy": 0.002, "storm": 0.55}   # 0.55 -> 2.2 calls a request, 2.8 % errors
COLLAPSE_FAILURE, COLLAPSE_RAMP_S = 0.85, 20.0        # the backend gives way: 38 % errors
PSI_SOME_PCT = {"healthy": (2.0, 0.5, 1.0), "seizure": (30.0, 0.5, 1.0),   # cpu, memory, io
                "fever": (5.0, 20.0, 1.0), "storm": (8.0, 0.5, 2.0)}

# --------------------------------------------------------------------------- the classic alerts
CLASSIC_WINDOW_S = 60.0            # the 1-minute average a dashboard shows
CLASSIC_CPU_PCT = 80.0             # CPU > 80 % (mean over the last 60 s)
CLASSIC_MEMORY_PCT = 90.0          # used memory > 90 % (the gauge)
CLASSIC_ERROR_PCT = 5.0            # error rate > 5 % (errors / requests over the last 60 s)
CLASSIC_RULES = (f"CPU > {CLASSIC_CPU_PCT:g} %", f"used memory > {CLASSIC_MEMORY_PCT:g} %",
                 f"error rate > {CLASSIC_ERROR_PCT:g} %")

# Which detector each injected fault should trip; a leak is a forecast: WARNING, never CRITICAL.
FAULT_DETECTOR = {"seizure": "seizure", "fever": "fever", "storm": "amplification",
                  "leak": "fever"}


@dataclass(frozen=True)
class Phase:
    name: str
    start_s: float
    duration_s: float
    faults: FrozenSet[str] = frozenset()     # of FAULT_DETECTOR's keys
    collapse: bool = False                   # a storm's backend gives way: errors climb

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


def _timeline(*parts: Tuple[Any, ...]) -> Tuple[Phase, ...]:
    phases, t = [], 0.0
    for name, duration, *rest in parts:
        faults = frozenset(rest[0]) if rest else frozenset()
        phases.append(Phase(name, t, float(duration), faults, collapse=len(rest) > 1 and rest[1]))
        t += duration
    return tuple(phases)


_CASCADE = ("storm", "fever", "seizure")
_PHASES: Dict[str, Tuple[Phase, ...]] = {
    "story": _timeline(("healthy", 30), ("seizure", 30, ["seizure"]), ("recovery", 30),
                       ("fever", 30, ["fever"]), ("recovery", 30),
                       ("retry storm", 30, ["storm"]), ("cascade", 40, _CASCADE, True),
                       ("recovery", 40), ("leak", 65, ["leak"]), ("recovery", 25)),
    "healthy": _timeline(("healthy", 60)),
    "seizure": _timeline(("healthy", 30), ("seizure", 30, ["seizure"]), ("recovery", 30)),
    "fever": _timeline(("healthy", 30), ("fever", 30, ["fever"]), ("recovery", 30)),
    "storm": _timeline(("healthy", 30), ("retry storm", 30, ["storm"]), ("recovery", 30)),
    "cascade": _timeline(("healthy", 30), ("cascade", 40, _CASCADE, True), ("recovery", 40)),
    "leak": _timeline(("healthy", 30), ("leak", 65, ["leak"]), ("recovery", 25)),
}

SCENARIOS: Dict[str, str] = {
    "story": "the whole demo, 350 simulated seconds: healthy, seizure, fever, retry storm, "
             "cascade (the storm brings a fever and a seizure), memory leak, with recoveries",
    "healthy": "one minute of a healthy host: nothing fires",
    "seizure": "CPU flips between 10 % and 90 % every second: a 50 % average, a seizure",
    "fever": "GB/s of allocation churn while resident memory stays flat",
    "storm": "a failing backend and 5 retries a call: egress/ingress climbs past 2",
    "cascade": "a retry storm, allocation churn and a CPU seizure at once",
    "leak": "resident memory grows steadily: coherence forecasts the exhaustion",
}


def phases(scenario: str) -> Tuple[Phase, ...]:
    """The timeline of a scenario: phases with their start and duration in simulated seconds."""
    _check_scenario(scenario)
    return _PHASES[scenario]


def phase_at(scenario: str, t: float) -> Phase:
    """The phase in force at simulated second ``t`` (the last one after the end)."""
    return _phase_in(phases(scenario), t)


def _phase_in(timeline: Sequence[Phase], t: float) -> Phase:
    for p in timeline:
        if t < p.end_s:
            return p
    return timeline[-1]


def _check_scenario(scenario: str) -> None:
    if scenario not in _PHASES:
        raise ValueError(f"unknown scenario {scenario!r}: choose one of {', '.join(SCENARIOS)}")


class Host:
    """The synthetic host: counters and gauges as /proc would show them, driven by one seeded
    random generator, so that a seed replays the same host exactly."""

    def __init__(self, timeline: Sequence[Phase], rng: random.Random) -> None:
        self.timeline, self.rng = timeline, rng
        self.total = float(MEM_TOTAL_BYTES)
        self.base_resident = RESIDENT_PCT / 100.0 * self.total
        self.resident = self.base_resident
        self.leaked = 0.0
        self.minor_faults = self.pgalloc = 0
        self.ingress = self.egress = self.errors = 0
        self.psi_us = [0.0, 0.0, 0.0]
        self._seizure_high = False
        self._flip_at = -math.inf

    def cpu_bucket(self, t0: float, t1: float) -> float:
        """Utilization (% of the CPUs available) over [t0, t1]."""
        mid = 0.5 * (t0 + t1)
        p, rng = _phase_in(self.timeline, mid), self.rng
        if "seizure" in p.faults:
            if self._flip_at == -math.inf:           # a new seizure starts busy or idle
                self._seizure_high = rng.random() < 0.5
                self._flip_at = mid + rng.uniform(*SEIZURE_HALF_PERIOD_S)
            while mid >= self._flip_at:
                self._seizure_high = not self._seizure_high
                self._flip_at += rng.uniform(*SEIZURE_HALF_PERIOD_S)
            level = SEIZURE_HIGH_PCT if self._seizure_high else SEIZURE_LOW_PCT
        else:
            self._flip_at = -math.inf
            level = CPU_PCT["storm" if "storm" in p.faults
                            else "fever" if "fever" in p.faults else "healthy"]
        return min(100.0, max(0.0, level + rng.gauss(0.0, CPU_NOISE_PCT)))

    def _backend_failure(self, p: Phase, t: float) -> float:
        if "storm" not in p.faults:
            return BACKEND_FAILURE["healthy"]
        f = BACKEND_FAILURE["storm"]
        if p.collapse:
            f += (COLLAPSE_FAILURE - f) * min(1.0, (t - p.start_s) / COLLAPSE_RAMP_S)
        return f

    def advance(self, t0: float, t1: float) -> None:
        """Move the counters and gauges over [t0, t1]."""
        dt, mid = t1 - t0, 0.5 * (t0 + t1)
        p, rng = _phase_in(self.timeline, mid), self.rng
        # memory: churn as minor faults; resident flat, sawtoothing under GC, or leaking
        churn = CHURN_MB_S["fever" if "fever" in p.faults else "healthy"]
        churn *= 1.0 + rng.gauss(0.0, CHURN_NOISE)
        grown = 0.0
        if "leak" in p.faults:
            grown = min(LEAK_MB_S * 1e6 * dt, LEAK_CAP_PCT / 100.0 * self.total
                        - self.base_resident - self.leaked)
            self.leaked += max(0.0, grown)
        else:
            self.leaked = 0.0      # the leaking process was restarted
        faults = int(round(max(0.0, churn * 1e6 * dt + max(0.0, grown)) / PAGE_SIZE))
        self.minor_faults += faults
        self.pgalloc += faults + int(round(PAGE_CACHE_MB_S * 1e6 * dt / PAGE_SIZE))
        self.resident = self.base_resident + self.leaked + rng.gauss(0.0, RESIDENT_NOISE_BYTES)
        if "fever" in p.faults:
            self.resident += GC_SAWTOOTH_BYTES * (((mid - p.start_s) / GC_PERIOD_S) % 1.0)
        # requests: each tries until it succeeds or runs out of attempts
        failure = self._backend_failure(p, mid)
        n = max(0, int(round(rng.gauss(INGRESS_PER_S * dt, math.sqrt(INGRESS_PER_S * dt)))))
        for _ in range(n):
            for attempt in range(1, MAX_ATTEMPTS + 1):  # noqa: B007 (the count is used after)
                if rng.random() >= failure:
                    break
            else:
                self.errors += 1
            self.egress += attempt
        self.ingress += n
        # pressure stall: microseconds stalled, a share of the elapsed time
        key = ("seizure" if "seizure" in p.faults else "fever" if "fever" in p.faults
               else "storm" if "storm" in p.faults else "healthy")
        for i, pct in enumerate(PSI_SOME_PCT[key]):
            self.psi_us[i] += pct / 100.0 * dt * 1e6


class Classic:
    """The threshold alerts of a classic dashboard, on the same simulated host."""

    def __init__(self, resolution_s: float, slow_dt: float) -> None:
        self.cpu: Deque[float] = deque(maxlen=max(1, int(round(CLASSIC_WINDOW_S / resolution_s))))
        self.requests: Deque[Tuple[int, int]] = deque(
            maxlen=max(1, int(round(CLASSIC_WINDOW_S / slow_dt))))
        self.n_requests = self.n_errors = 0
        self.memory_pct = math.nan

    def add_cpu(self, util: float) -> None:
        self.cpu.append(util)

    def add_requests(self, requests: int, errors: int) -> None:
        if len(self.requests) == self.requests.maxlen:
            old_r, old_e = self.requests[0]
            self.n_requests -= old_r
            self.n_errors -= old_e
        self.requests.append((requests, errors))
        self.n_requests += requests
        self.n_errors += errors

    def firing(self) -> Tuple[str, ...]:
        """The classic alerts whose condition holds now (of CLASSIC_RULES)."""
        cpu = sum(self.cpu) / len(self.cpu) if self.cpu else math.nan
        errors = 100.0 * self.n_errors / self.n_requests if self.n_requests else math.nan
        holds = (cpu > CLASSIC_CPU_PCT, self.memory_pct > CLASSIC_MEMORY_PCT,
                 errors > CLASSIC_ERROR_PCT)
        return tuple(rule for rule, h in zip(CLASSIC_RULES, holds) if h)


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Incident:
    """One injected fault and who called it when (seconds after its start; None: never)."""

    name: str
    kind: str                        # "single", "cascade" (2+ detectors) or "forecast"
    detectors: Tuple[str, ...]       # the detectors the fault should trip
    start_s: float                   # simulated seconds since the start
    end_s: float                     # the window searched: until the next incident or the end
    warning_after_s: Optional[float]
    critical_after_s: Optional[float]   # cascade: when the verdict named the cascade
    classic_after_s: Optional[float]
    classic_alert: Optional[str]     # which classic alert fired first

    @property
    def called_after_s(self) -> Optional[float]:
        """When coherence called it: CRITICAL, or WARNING for a forecast (which never escalates)."""
        return self.warning_after_s if self.kind == "forecast" else self.critical_after_s

    @property
    def lead_s(self) -> Optional[float]:
        """Classic alert minus coherence's call; inf when the classic alert never fired."""
        if self.called_after_s is None:
            return None
        if self.classic_after_s is None:
            return math.inf
        return self.classic_after_s - self.called_after_s


@dataclass(frozen=True)
class Step:
    t: float                         # simulated seconds
    status: State
    states: Tuple[Tuple[str, State], ...]
    incidents: Tuple[Tuple[str, Tuple[str, ...]], ...]   # the verdict's: (kind, detectors)


@dataclass(frozen=True)
class SimulationResult:
    scenario: str
    seed: int
    speed: float
    duration_s: float
    incidents: Tuple[Incident, ...]
    steps: Tuple[Step, ...] = field(repr=False)

    @property
    def missed(self) -> int:
        """Incidents the classic alerts never fired for."""
        return sum(1 for i in self.incidents if i.classic_after_s is None)


# --------------------------------------------------------------------------- the run
def _check_speed(speed: Optional[float]) -> float:
    if speed is None:
        return DEFAULT_SPEED
    if isinstance(speed, bool) or not isinstance(speed, (int, float)) or math.isnan(speed) \
            or speed <= 0:
        raise ValueError(f"speed must be a number > 0 (inf: as fast as possible), got {speed!r}")
    return float(speed)


def make_signals(config: Config) -> Signals:
    """Signals shaped exactly as the live sampler's for this config."""
    # requests are pushed, as by an application sending StatsD counters
    return Signals.from_config(config, ncpu=NCPU, pushed=lambda: True)


def run(config: Optional[Config] = None, scenario: str = "story", seed: int = 0,
        speed: Optional[float] = None, on_report: Optional[Callable[[Report], Any]] = None, *,
        sleep: Callable[[float], Any] = time.sleep,
        clock: Callable[[], float] = time.monotonic) -> SimulationResult:
    """Play ``scenario`` through the detectors and verdicts; every Report goes to ``on_report``.

    ``speed`` is simulated seconds per wall second (default DEFAULT_SPEED; ``math.inf``: as
    fast as possible, never sleeping). Reports carry ``ts = EPOCH + simulated seconds``, so a
    seed gives the same output byte for byte. ``sleep`` and ``clock`` pace the wall time.
    """
    config = config if config is not None else Config()
    _check_scenario(scenario)
    pace = _check_speed(speed)
    timeline = _PHASES[scenario]
    steps: List[Step] = []
    fired: List[Tuple[str, ...]] = []          # the classic alerts firing at each step
    for report, alerts in play(config, timeline, seed, pace, sleep=sleep, clock=clock):
        v = report.verdict
        steps.append(Step(v.now, v.status, tuple((n, v.states[n]) for n in DETECTORS),
                          tuple(_incident_key(i) for i in v.incidents)))
        fired.append(alerts)
        if on_report is not None:
            on_report(report)
    return SimulationResult(scenario, seed, pace, timeline[-1].end_s,
                            _incidents(timeline, steps, fired), tuple(steps))


def play(config: Config, timeline: Sequence[Phase], seed: int = 0, speed: float = MAX_SPEED, *,
         sleep: Callable[[float], Any] = time.sleep, clock: Callable[[], float] = time.monotonic
         ) -> Iterator[Tuple[Report, Tuple[str, ...]]]:
    """Each Report of ``timeline`` as it is judged, with the classic alerts firing then (of
    CLASSIC_RULES), and nothing kept: what ``run`` collects, and what a long run (a soak of
    many simulated hours, benchmarks/run_soak.py) goes through without holding its history."""
    pace = _check_speed(speed)
    duration = timeline[-1].end_s
    host = Host(timeline, random.Random(seed))
    signals = make_signals(config)
    monitor = Monitor(config, signals.snapshot)
    slow_dt, res = 1.0 / config.sampler.slow_hz, config.seizure.resolution_s
    classic = Classic(res, slow_dt)
    fault_slots = ((Slot.PSI_CPU_US, 0), (Slot.PSI_MEMORY_US, 1), (Slot.PSI_IO_US, 2))

    def read_counters(t: float) -> None:      # one slow tick of the sampler
        signals.rates[Slot.MINOR_FAULTS].update(t, host.minor_faults)
        signals.rates[Slot.PGALLOC].update(t, host.pgalloc)
        signals.rates[Slot.PGFREE].update(t, host.pgalloc)      # freed as fast as allocated
        for slot, i in fault_slots:
            signals.rates[slot].update(t, host.psi_us[i])
        signals.rates[Slot.INGRESS].update(t, host.ingress)
        signals.rates[Slot.EGRESS].update(t, host.egress)
        signals.resident_history.push(host.resident)
        signals.gauges.update({Slot.RESIDENT_BYTES: host.resident, Slot.MEM_TOTAL_BYTES: host.total}, t)

    tick = bucket = 0
    read_counters(0.0)
    wall0 = clock()
    for k in range(int(round(duration / STEP_S)) + 1):
        now = k * STEP_S
        while (bucket + 1) * res <= now + _EPS:
            util = host.cpu_bucket(bucket * res, (bucket + 1) * res)
            bucket += 1
            signals.cpu_buckets.push(util)
            signals.cpu_history.push(util)
            classic.add_cpu(util)
        while (tick + 1) * slow_dt <= now + _EPS:
            before = (host.ingress, host.egress, host.errors)
            host.advance(tick * slow_dt, (tick + 1) * slow_dt)
            tick += 1
            read_counters(tick * slow_dt)
            d_in, d_out = host.ingress - before[0], host.egress - before[1]
            signals.pushed_ratio.update(d_out, d_in)
            classic.add_requests(d_in, host.errors - before[2])
        classic.memory_pct = 100.0 * host.resident / host.total
        if math.isfinite(pace):
            wait = wall0 + now / pace - clock()
            if wait > 0:
                sleep(wait)
        yield monitor.step(now, EPOCH + now), classic.firing()


def _incident_key(incident: Dict[str, object]) -> Tuple[str, Tuple[str, ...]]:
    members = incident.get("detectors")
    detector = incident.get("detector")
    names = members if isinstance(members, list) else [detector] if detector else []
    return str(incident["kind"]), tuple(str(n) for n in names)


def _incidents(timeline: Sequence[Phase], steps: Sequence[Step],
               fired: Sequence[Tuple[str, ...]]) -> Tuple[Incident, ...]:
    """Each phase that injects a new fault is an incident; find who called it, and when."""
    starts = [(i, p) for i, p in enumerate(timeline)
              if p.faults - (timeline[i - 1].faults if i else frozenset())]
    out = []
    for n, (i, p) in enumerate(starts):
        end = starts[n + 1][1].start_s if n + 1 < len(starts) else timeline[-1].end_s
        new = p.faults - (timeline[i - 1].faults if i else frozenset())
        detectors = tuple(d for d in DETECTORS if any(FAULT_DETECTOR[f] == d for f in new))
        everyone = {FAULT_DETECTOR[f] for f in p.faults}
        kind = "cascade" if len(everyone) >= 2 else "forecast" if new == {"leak"} else "single"
        warning = critical = classic_at = None
        classic_alert = None
        before: Tuple[str, ...] = ()
        for step, alerts in zip(steps, fired):
            # an alert pages when it starts firing: one already firing paged for something else
            new_alerts = [a for a in alerts if a not in before]
            before = alerts
            if step.t < p.start_s - _EPS:
                continue
            if step.t > end + _EPS:
                break
            after = step.t - p.start_s
            states = dict(step.states)
            if warning is None and any(states[d].alarmed for d in detectors):
                warning = after
            if critical is None:
                if kind == "cascade":
                    if any(k == "cascade" and set(ds) & set(detectors) for k, ds in step.incidents):
                        critical = after
                elif any(states[d] == State.CRITICAL for d in detectors):
                    critical = after
            if classic_at is None and new_alerts:
                classic_at, classic_alert = after, new_alerts[0]
        out.append(Incident(p.name, kind, detectors, p.start_s, end, warning, critical,
                            classic_at, classic_alert))
    return tuple(out)


# --------------------------------------------------------------------------- the table
HEADERS = ("INCIDENT", "STARTS AT", "DETECTOR", "COHERENCE WARNING", "COHERENCE CRITICAL",
           "CLASSIC ALERT", "LEAD TIME")
NEVER_FIRED = "∞ (classic never fired)"
