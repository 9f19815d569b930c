"""The amplification cases, shared by the e2e tests and the benchmark runner: a real HTTP service on
127.0.0.1 (loads/http_service.py) whose requests are counted through the StatsD listener of a
`coherence --live --json` subprocess, or through coherence.hooks with the sentinel embedded in the
service. Judged from the JSON lines as they arrive; every process started is killed on the way out.

Fault cases watch the 10 s after the fault started (by the receipt time of the line: state changes
are written at once); controls watch a learned, steady service for 12 s and record every state
seen. The cases run one at a time, each with the machine to itself.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, Iterator, List, Optional, Tuple

from harness import DETECTORS, LOADS, Line, Load, Sentinel, kill_group, seconds_in, \
    warning_starts
from host import MayShow, fault_violations, not_ok_reasons, others_warning

DETECTOR = "amplification"
DEADLINE_S = 10.0          # the bar: CRITICAL within 10 s of the fault starting
STORM_RATIO = 2.0          # the bar: the ratio climbs above 2 (the service's is 2.5)
CONTROL_S = 12.0           # longer than `for` (5 s) + margin: a control that would go CRITICAL does
HEALTHY_S = 11.0           # healthy traffic before a storm: 5 s seed the baseline, then 6 s judged
LEARN_S = 8.0              # steady traffic before a control's observation starts
# The classic alert compared against: the frontend's 5xx rate over 5 %, computed from the
# service's own per-second counts (never from the sentinel). The rules users write wrap it in a
# rate[1m] and a `for` (awesome-prometheus-alerts' NginxHighHttp5xxErrorRate: > 5 %, for 1m); the
# time reported is when the condition first held, one second's counts.
ERROR_ALERT = 0.05
RATE = 60.0                # client requests per second (the detector judges from 1/s)
START_TIMEOUT_S = 10.0     # for a subprocess to print its first line
SERVICE = os.path.join(LOADS, "http_service.py")


@dataclass
class CaseResult:
    case: str
    detector: str
    fault: bool                               # a fault case (else a control)
    counting: str = ""                        # "statsd" or "inprocess"
    fault_start: Optional[float] = None       # time.monotonic() of the fault (controls: of the
                                              # end of learning, when observation starts)
    time_to_critical: Optional[float] = None  # seconds after fault_start (receipt of the line)
    critical_before_fault: bool = False
    critical_in_control: bool = False
    states: List[str] = field(default_factory=list)    # amplification's, from fault_start
    others: Dict[str, List[str]] = field(default_factory=dict)   # the other detectors', there
    others_warning: Dict[str, Tuple[float, List[str]]] = field(default_factory=dict)
                                              # theirs: seconds in WARNING, what raised it
    warning_s: float = 0.0                    # seconds amplification spent in WARNING there
    warning_starts: List[str] = field(default_factory=list)   # what raised each WARNING (unit)
    reasons: List[str] = field(default_factory=list)   # reasons on lines not OK (host.py)
    may_show: Optional[MayShow] = None        # controls: what they are allowed to show
    max_ratio: Optional[float] = None         # highest ratio reported at or after fault_start
    median_ratio: Optional[float] = None      # ... and its median there
    baseline: Optional[float] = None          # the learned baseline at the last line
    sources: List[str] = field(default_factory=list)   # evidence.source values after fault_start
    observed_s: float = 0.0                   # seconds of lines after fault_start
    classic_alert_after: Optional[float] = None   # when the frontend's error rate first > 5 %
    classic_alert: str = f"5xx rate > {ERROR_ALERT:.0%}"
    wall_s: float = 0.0
    notes: Dict[str, float] = field(default_factory=dict)
    diagnostics: str = ""                     # the tail of both stderr streams, for a failure


# ----------------------------------------------------------------------------- service output
class ServiceLog:
    """The service's stderr, read as it comes: PHASE / FAULT / METRICS markers and per-second
    stats."""

    def __init__(self, stream: IO[Any]) -> None:
        self.phases: List[tuple] = []          # (mode, monotonic time)
        self.fault: Optional[float] = None
        self.metrics: Optional[str] = None     # --count prometheus: its /metrics URL
        self.stats: List[Dict[str, Any]] = []
        self.other: List[str] = []             # anything else (a traceback): diagnostics
        self._cond = threading.Condition()
        self._done = False
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: IO[Any]) -> None:
        for raw in stream:
            text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            text = text.rstrip("\n")
            with self._cond:
                word, _, rest = text.partition(" ")
                if word == "PHASE":
                    mode, _, t = rest.partition(" ")
                    self.phases.append((mode, float(t)))
                elif word == "FAULT":
                    self.fault = float(rest)
                elif word == "METRICS":
                    self.metrics = rest
                elif text.startswith("{"):
                    self.stats.append(json.loads(text))
                else:
                    self.other.append(text)
                self._cond.notify_all()
        with self._cond:
            self._done = True
            self._cond.notify_all()

    def wait(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """predicate()'s first true value, or None at the deadline or when the stream ended."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                left = deadline - time.monotonic()
                if value or left <= 0 or self._done:
                    return value or None
                self._cond.wait(min(left, 0.5))

    def join(self, timeout: float = 5.0) -> None:
        self._thread.join(timeout)

    def tail(self, n: int = 20) -> str:
        with self._cond:
            stats = [json.dumps(s) for s in self.stats[-5:]]
            phases = [f"PHASE {m} {t:.3f}" for m, t in self.phases]
            return "\n".join(phases + self.other[-n:] + stats)

    def first_error_alert(self, t0: float) -> Optional[float]:
        """Seconds from t0 to the end of the first second after it with a frontend error rate
        over 5 %, as a classic threshold alert on the service's 5xx would see it."""
        with self._cond:
            for s in self.stats:
                if s["t"] > t0 and s["requests"] and s["errors"] / s["requests"] > ERROR_ALERT:
                    return s["t"] - t0
        return None


class EmbeddedService(Sentinel):
    """The service with the sentinel inside (--count inprocess): its stdout is the JSON lines,
    read by the harness; its stderr the service's log."""

    def __enter__(self) -> "EmbeddedService":
        super().__enter__()
        assert self.proc is not None and self.proc.stderr is not None
        self.log = ServiceLog(self.proc.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        kill_group(self.proc)
        self.log.join()
        self.stderr = self.log.tail()

    def stderr_now(self) -> str:
        return self.log.tail()


class Service(Load):
    """The service as a separate process counting through StatsD; its stderr read live."""

    def __enter__(self) -> "Service":
        super().__enter__()
        assert self.proc is not None and self.proc.stderr is not None
        self.log = ServiceLog(self.proc.stderr)
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self.log.join()


def _service_cmd(mode: str, healthy_s: float, seconds: float, count: str, rate: float) -> List[str]:
    return [sys.executable, SERVICE, "--mode", mode, "--healthy-seconds", str(healthy_s),
            "--seconds", str(seconds), "--rate", str(rate), "--count", count]


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _statsd_sentinel(duration: float) -> Iterator[tuple]:
    """`coherence --live --json --statsd 127.0.0.1:PORT` on a free port, once its first line is
    out (the listener is bound by then). A port taken between the probe and the bind (cases run
    in parallel) is retried on another."""
    for _attempt in range(3):
        port = _free_udp_port()
        with Sentinel("--statsd", f"127.0.0.1:{port}", duration=duration) as sentinel:
            if sentinel.wait_for(lambda line: True, START_TIMEOUT_S) is not None:
                yield sentinel, port
                return
        if "cannot listen" not in sentinel.stderr:
            raise AssertionError(f"coherence printed no line in {START_TIMEOUT_S} s: "
                                 f"{sentinel.stderr}")
    raise AssertionError(f"coherence could not bind a StatsD port: {sentinel.stderr}")


# ----------------------------------------------------------------------------------- judging
def _amp(line: Line) -> Dict[str, Any]:
    return line.report["detectors"][DETECTOR]


def _judge(result: CaseResult, sentinel: Sentinel, log: ServiceLog, t0: float, t1: float) -> None:
    lines = list(sentinel.lines)
    after = [l for l in lines if t0 <= l.received < t1]
    result.fault_start = t0
    result.states = [l.state(DETECTOR) for l in after]
    result.others = {det: [l.state(det) for l in after] for det in DETECTORS if det != DETECTOR}
    result.others_warning = others_warning(lines, DETECTOR, t0, t1)
    result.warning_s = seconds_in(lines, DETECTOR, "WARNING", t0, t1)
    result.warning_starts = warning_starts(lines, DETECTOR, t0, t1)
    result.reasons = ([] if result.fault else not_ok_reasons(lines, DETECTOR, t0, t1)) \
        + not_ok_reasons(lines, DETECTOR, t0, t1, others=True)
    result.critical_before_fault = any(l.state(DETECTOR) == "CRITICAL"
                                       for l in lines if l.received < t0)
    crit = next((l for l in after if l.state(DETECTOR) == "CRITICAL"), None)
    result.time_to_critical = None if crit is None else crit.received - t0
    ratios = [_amp(l)["value"] for l in after if _amp(l)["value"] is not None]
    result.max_ratio = max(ratios) if ratios else None
    result.median_ratio = statistics.median(ratios) if ratios else None
    result.baseline = _amp(lines[-1])["evidence"].get("baseline") if lines else None
    result.sources = sorted({_amp(l)["evidence"].get("source") for l in after})
    seen = [l.received for l in lines if l.received >= t0]
    result.observed_s = seen[-1] - t0 if seen else 0.0
    result.classic_alert_after = log.first_error_alert(t0)
    if crit is not None:
        result.notes["ratio_at_critical"] = _amp(crit)["value"]
        result.notes["limit_at_critical"] = _amp(crit)["limit"]
    warning = next((l for l in after if l.state(DETECTOR) in ("WARNING", "CRITICAL")), None)
    if warning is not None:
        result.notes["time_to_warning"] = warning.received - t0


def _storm(result: CaseResult, sentinel: Sentinel, log: ServiceLog) -> None:
    """Wait for the fault, then watch the 10 s after it (the other detectors must stay quiet
    through all of them, after CRITICAL too)."""
    t0 = log.wait(lambda: log.fault, HEALTHY_S + START_TIMEOUT_S)
    assert t0 is not None, f"the service never started its storm:\n{log.tail()}"
    _watch_until(sentinel, t0 + DEADLINE_S)
    _judge(result, sentinel, log, t0, t0 + DEADLINE_S)


def _watch_until(sentinel: Sentinel, end: float) -> None:
    """Return once a line received at or after `end` is in (or 2 s after it, if none comes)."""
    sentinel.wait_for(lambda l: l.received >= end, max(0.0, end - time.monotonic()) + 2.0)


def _control(result: CaseResult, sentinel: Sentinel, log: ServiceLog) -> None:
    """Wait for the end of learning (the service's second phase), then watch 12 s of lines."""
    marks = log.wait(lambda: log.phases[1:], LEARN_S + START_TIMEOUT_S)
    assert marks, f"the service never finished its learning phase:\n{log.tail()}"
    t0 = marks[0][1]
    _watch_until(sentinel, t0 + CONTROL_S)
    _judge(result, sentinel, log, t0, t0 + CONTROL_S)
    result.critical_in_control = "CRITICAL" in result.states


def _run(case: str, fault: bool, counting: str, mode: str, healthy_s: float,
         judge: Callable[[CaseResult, Sentinel, ServiceLog], None], rate: float,
         may_show: Optional[MayShow] = None) -> CaseResult:
    started = time.monotonic()
    result = CaseResult(case, DETECTOR, fault=fault, counting=counting, may_show=may_show)
    result.notes["rate"] = rate
    observe = DEADLINE_S if fault else CONTROL_S
    seconds = healthy_s + observe + 2.0       # the service stops by itself after this
    try:
        if counting == "inprocess":
            cmd = _service_cmd(mode, healthy_s, seconds, "inprocess", rate)
            with EmbeddedService(cmd=cmd) as service:
                if service.wait_for(lambda line: True, START_TIMEOUT_S) is None:
                    raise AssertionError("the embedded sentinel printed no line:\n"
                                         + service.log.tail())
                service.warmed_up(DETECTOR)
                try:
                    judge(result, service, service.log)
                finally:
                    result.diagnostics = service.log.tail()
        else:
            with _statsd_sentinel(seconds + 5.0) as (sentinel, port):
                sentinel.warmed_up(DETECTOR)
                count = f"statsd:127.0.0.1:{port}"
                with Service(*_service_cmd(mode, healthy_s, seconds, count, rate)) as svc:
                    try:
                        judge(result, sentinel, svc.log)
                    finally:
                        result.diagnostics = svc.log.tail()
            result.diagnostics += "\n" + sentinel.stderr
    finally:
        result.wall_s = time.monotonic() - started
    return result


# -------------------------------------------------------------------------------------- cases
def storm_via_statsd(rate: float = RATE) -> CaseResult:
    """Half the keys fail persistently; the client and the frontend both retry (ratio 2.5);
    counted through the sentinel's StatsD listener."""
    return _run("amplification: retry storm, StatsD", True, "statsd", "storm", HEALTHY_S,
                _storm, rate)


def storm_in_process(rate: float = RATE) -> CaseResult:
    """The same storm, counted with coherence.hooks by a service that embeds the sentinel."""
    return _run("amplification: retry storm, in-process hooks", True, "inprocess", "storm",
                HEALTHY_S, _storm, rate)


# What each control may show (host.MayShow): the tightest rule that held in every run measured.
CONTROLS_MAY_SHOW = {"control_fanout3": MayShow(), "control_one_to_one": MayShow()}


def control_fanout3(rate: float = RATE) -> CaseResult:
    """3 backend calls per request, steady: learned as the baseline, then 12 s never CRITICAL."""
    return _run("amplification control: steady fan-out x3", False, "statsd", "fanout3", LEARN_S,
                _control, rate, CONTROLS_MAY_SHOW["control_fanout3"])


def control_one_to_one(rate: float = RATE) -> CaseResult:
    """One backend call per request, steady: never CRITICAL."""
    return _run("amplification control: steady 1:1", False, "statsd", "ok", LEARN_S, _control,
                rate, CONTROLS_MAY_SHOW["control_one_to_one"])


def storm_violations(result: CaseResult) -> List[str]:
    """host.fault_violations, and the storm's own: its ratio above 2, on the pushed counts."""
    bad = fault_violations(result)
    if result.max_ratio is None or result.max_ratio <= STORM_RATIO:
        bad.append(f"ratio never above {STORM_RATIO:g} (max {result.max_ratio})")
    if result.sources != ["pushed"]:
        bad.append(f"judged on {result.sources}, not the pushed counts")
    return bad


FAULTS = {"storm_via_statsd": storm_via_statsd, "storm_in_process": storm_in_process}
CONTROLS = {"control_fanout3": control_fanout3, "control_one_to_one": control_one_to_one}


if __name__ == "__main__":     # python tests/e2e/amplification.py [case ...]: results as JSON lines
    import dataclasses
    for name in sys.argv[1:] or [*FAULTS, *CONTROLS]:
        r = {**FAULTS, **CONTROLS}[name]()
        print(json.dumps({k: v for k, v in dataclasses.asdict(r).items()
                          if k not in ("states", "diagnostics")}), flush=True)
