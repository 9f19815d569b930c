"""The runtime cases (issue 10), shared by the e2e tests and benchmarks/run_e2e.py: faults the
kernel cannot see, found through the runtimes' own counters. A real JVM (found with no
configuration, through its hsperfdata file) in a GC death spiral and healthy at 1 GB/s; a real
Go program exposing its runtime counters on /metrics in the Go client's names and types; a real
HTTP service behind keep-alive pools exposing Micrometer-named counters, read with --scrape.

Judged as the host cases are (host.py): a fault is CRITICAL within 10 s of its start and never
before it, with the detector's evidence naming the runtime; a control is never CRITICAL and
shows no more than its MayShow. Every process started is killed on the way out.
"""
from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Dict, Iterator, List, Optional, Sequence, Tuple

import amplification as amp
from classic import ClassicProbe
from harness import DETECTORS, LOADS, Line, Load, Sentinel
from host import CONTROL_S, DEADLINE_S, FORECAST_ONLY, QUIET_S, CaseResult, MayShow, record_control, \
    record_fault

START_TIMEOUT_S = 15.0      # a program to print its first line (a JVM touching 1 GB, a Go build)
GC_LIMIT_PCT = 25.0         # fever.gc_time_limit_pct's default: the share a spiral is judged over
# A JVM is looked for every 10 s (coherence/runtime.py, DISCOVER_EVERY_S): a control watches
# the JVM from its start until it has been read for CONTROL_S, so at most this long.
DISCOVERY_S = 10.0


@dataclass
class RuntimeResult(CaseResult):
    runtime: str = ""                 # the runtime the case started, as coherence names it
    evidence: Dict[str, Any] = field(default_factory=dict)   # the detector's, at CRITICAL


# ------------------------------------------------------------------------------------ programs
def compile_java(name: str, build_dir: str) -> str:
    """javac tests/e2e/loads/<name>.java into build_dir; the class path to run it with."""
    out = os.path.join(build_dir, "java")
    os.makedirs(out, exist_ok=True)
    src = os.path.join(LOADS, name + ".java")
    proc = subprocess.run(["javac", "-d", out, src], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{proc.stderr}")
    return out


# One heap, sized as a service's would be, touched up front (-XX:+AlwaysPreTouch) so that the
# kernel sees its pages once, at the start, and never again: the churn is invisible to it.
JVM_HEAP = ["-Xms1g", "-Xmx1g", "-XX:+UseParallelGC"]
# The collectors the JVM cases can run with (-XX:+Use<name>); the suite asserts ParallelGC only,
# measure_collectors.py measures them all (G1 is JDK 17's default; ZGC is almost all concurrent).
JVM_COLLECTORS = ("ParallelGC", "G1GC", "ZGC")


def jvm_heap(collector: str = "ParallelGC") -> List[str]:
    """JVM_HEAP with the collector `collector` (one of JVM_COLLECTORS) instead of ParallelGC."""
    if collector not in JVM_COLLECTORS:
        raise ValueError(f"unknown collector {collector!r}: one of {JVM_COLLECTORS}")
    return [*JVM_HEAP[:-1], f"-XX:+Use{collector}"]


def jvm_spiral_cmd(classes: str, seconds: float = 30, collector: str = "ParallelGC",
                   extra: Sequence[str] = ()) -> List[str]:
    """850 MB live in a 1 GB heap: every collection promotes, the old generation stays full,
    collections back to back (ParallelGC: ~80 % of wall time in GC, ~40 collections/s
    measured). `extra`: more JVM flags (-Xlog:gc...)."""
    return ["java", *jvm_heap(collector), "-XX:+AlwaysPreTouch", *extra, "-cp", classes,
            "GcLoad", "850", "0", f"{seconds:g}"]


def jvm_healthy_cmd(classes: str, seconds: float = 30, collector: str = "ParallelGC",
                    extra: Sequence[str] = ()) -> List[str]:
    """50 MB live, 1 GB/s of short-lived arrays: a busy, healthy service (ParallelGC: ~2 % GC
    measured)."""
    return ["java", *jvm_heap(collector), *extra, "-cp", classes, "GcLoad", "50", "1000",
            f"{seconds:g}"]


# ------------------------------------------------------------------------------------ judging
def _det(line: Line, detector: str) -> Dict[str, Any]:
    return line.report["detectors"][detector]


def _evidence(line: Line, detector: str) -> Dict[str, Any]:
    return _det(line, detector).get("evidence") or {}


def names_runtime(name: str) -> Callable[[Line], bool]:
    """A line whose fever evidence names the runtime `name` ("jvm 1234", "scrape URL")."""
    return lambda line: _evidence(line, "fever").get("runtime_process") == name


def _judged(line: Line) -> bool:
    """Every detector past its warm-up on this line."""
    return all(line.state(d) not in ("WARMUP", "UNAVAILABLE") for d in DETECTORS)


def _record_fault(result: RuntimeResult, lines: List[Line], t0: float, t1: float) -> None:
    detector = result.detector
    before = [l.state(detector) for l in lines if l.received < t0]
    crit = record_fault(result, lines, before, t0, t1)
    if crit is not None:
        result.notes["value_at_critical"] = _det(crit, detector)["value"]
        result.evidence = {**_evidence(crit, detector), "unit": _det(crit, detector)["unit"]}


def _fault(result: RuntimeResult, fault: ContextManager[float], ready: Callable[[Line], bool],
           *args: str) -> List[Line]:
    """A sentinel (with args) judged and quiet for QUIET_S, then the fault (entering `fault`
    starts it and gives its start time), watched for DEADLINE_S. The lines, for the caller."""
    with Sentinel(*args, duration=90) as sentinel, ClassicProbe() as probe:
        for detector in DETECTORS:       # the others must be judged too: their quiet is asserted
            sentinel.warmed_up(detector)
        judged = sentinel.wait_for(lambda l: ready(l) and _judged(l), START_TIMEOUT_S)
        assert judged is not None, f"never ready to judge the fault: {sentinel.stderr_now()}"
        # "not before the fault" must mean something: watch the judged, quiet host first
        sentinel.wait_for(lambda l: l.received >= judged.received + QUIET_S, QUIET_S + 3)
        quiet = [l for l in sentinel.lines if l.received >= judged.received]
        with fault as t0:
            # the whole 10 s, even after CRITICAL: the other detectors must stay quiet through
            sentinel.wait_for(lambda l: l.received >= t0 + DEADLINE_S, DEADLINE_S + 3)
            t1 = probe.mark()
        result.classic = [probe.cpu(t0, t1), probe.memory(t0, t1)]
        lines = list(sentinel.lines)
    assert len([l for l in quiet if l.received < t0]) >= QUIET_S - 1, "too few judged lines"
    _record_fault(result, [l for l in lines if l.received >= judged.received], t0, t1)
    return lines


@contextlib.contextmanager
def _started(load: Load) -> Iterator[float]:
    with load:
        yield load.started
        assert load.alive(), f"{load.cmd} died early"


def _runtime_values(lines: Sequence[Line], name: str, key: str) -> List[float]:
    return [e[key] for e in (_evidence(l, "fever") for l in lines)
            if e.get("runtime_process") == name and e.get(key) is not None]


# ---------------------------------------------------------------------------------------- JVM
def jvm_spiral(build: str, collector: str = "ParallelGC") -> RuntimeResult:
    """A JVM started under the sentinel, in a GC death spiral from its first second: found with
    no configuration, fever CRITICAL on its GC share."""
    classes = compile_java("GcLoad", build)
    result = RuntimeResult(f"fever: a JVM in a GC death spiral ({collector}, hsperfdata)", "fever",
                           fault=True)
    load = Load(*jvm_spiral_cmd(classes, collector=collector))
    lines = _fault(result, _started(load), lambda l: True)
    assert load.proc is not None
    name = f"jvm {load.proc.pid}"
    result.runtime = name
    seen = next((l for l in lines if names_runtime(name)(l)), None)
    if seen is not None:
        result.notes["time_to_discovery"] = seen.received - load.started
    gc = _runtime_values(lines, name, "gc_time_pct")
    if gc:
        result.notes["gc_time_pct_median"] = statistics.median(gc)
    return result


def jvm_healthy(build: str, collector: str = "ParallelGC") -> RuntimeResult:
    """A JVM allocating 1 GB/s with a small live set, watched from its start until it has been
    read for CONTROL_S: never CRITICAL."""
    classes = compile_java("GcLoad", build)
    result = RuntimeResult(f"fever control: a healthy JVM allocating 1 GB/s ({collector})", "fever",
                           fault=False, may_show=JVM_HEALTHY_MAY_SHOW)
    with Sentinel(duration=90) as sentinel, ClassicProbe() as probe:
        for detector in DETECTORS:
            sentinel.warmed_up(detector)
        with Load(*jvm_healthy_cmd(classes, DISCOVERY_S + CONTROL_S + 10, collector)) as load:
            assert load.proc is not None
            name = f"jvm {load.proc.pid}"
            t0 = load.started
            seen = sentinel.wait_for(lambda l: names_runtime(name)(l) and _judged(l),
                                     DISCOVERY_S + 5)
            assert seen is not None, f"{name} never read: {sentinel.stderr_now()}"
            sentinel.wait_for(lambda l: l.received >= seen.received + CONTROL_S, CONTROL_S + 3)
            t1 = probe.mark()
            assert load.alive(), f"{load.cmd} died early"
        result.classic = [probe.cpu(t0, t1), probe.memory(t0, t1)]
        lines = list(sentinel.lines)
    record_control(result, lines, t0, t1)
    result.runtime = name
    result.notes["time_to_discovery"] = seen.received - t0
    for key in ("gc_time_pct", "runtime_alloc_mb_s"):
        values = _runtime_values(lines, name, key)
        if values:
            result.notes[f"{key}_median"] = statistics.median(values)
    return result


# What the healthy JVM may show: fever's resident-growth forecast, and only it (the JVM's heap
# is touched as it grows to its 1 GB: the 10 s trend reads that as growth, WARNING for up to
# the whole control in the runs measured, then `clear`); never the GC or churn condition.
JVM_HEALTHY_MAY_SHOW = FORECAST_ONLY


def runtime_fault_violations(result: RuntimeResult) -> List[str]:
    """host.fault_violations, and the runtime's own: the CRITICAL line says why (the GC share of
    the runtime the test started, over the limit)."""
    from host import fault_violations
    bad = fault_violations(result)
    e = result.evidence
    if result.time_to_critical is not None:
        if e.get("unit") != "pct_gc_time" or e.get("runtime_process") != result.runtime:
            bad.append(f"CRITICAL not on {result.runtime}'s GC time: {e}")
        elif not (e.get("gc_time_pct") or 0) > GC_LIMIT_PCT:
            bad.append(f"gc_time_pct {e.get('gc_time_pct')} not above {GC_LIMIT_PCT:g}")
    return bad


# ---------------------------------------------------------------------- a scraped retry storm
# The storm's calls out, over the connections the host opened meanwhile, is at least this: behind
# keep-alive pools a retry opens no connection, and the TCP proxy (connections opened) is blind.
KEEPALIVE_CALLS_PER_OPEN = 10.0


def tcp_opens() -> Dict[str, int]:
    """/proc/net/snmp's Tcp ActiveOpens and PassiveOpens: what the TCP proxy counts."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return {k: int(v) for k, v in zip(rows[0][1:], rows[1][1:])
            if k in ("ActiveOpens", "PassiveOpens")}


@contextlib.contextmanager
def _scraped_service(mode: str, seconds: float) -> Iterator[Tuple[amp.Service, str]]:
    """loads/http_service.py counting with prometheus_client under Micrometer's names, its
    second phase on SIGUSR1; the service and its /metrics URL once it serves."""
    cmd = [sys.executable, amp.SERVICE, "--mode", mode, "--healthy-seconds", f"{seconds:g}",
           "--seconds", f"{seconds:g}", "--rate", f"{amp.RATE:g}", "--count", "prometheus",
           "--phase-signal"]
    with amp.Service(*cmd) as service:
        url = service.log.wait(lambda: service.log.metrics, START_TIMEOUT_S)
        assert url, f"the service never served its /metrics:\n{service.log.tail()}"
        yield service, url


def _scraped_judged(line: Line) -> bool:
    """Amplification judged healthy on the scraped counters, its baseline learned."""
    d = _det(line, amp.DETECTOR)
    return d["state"] == "OK" and _evidence(line, amp.DETECTOR).get("source") == "scraped" \
        and _evidence(line, amp.DETECTOR).get("baseline") is not None


def _scraped(case: str, fault: bool, mode: str,
             may_show: Optional[MayShow] = None) -> amp.CaseResult:
    result = amp.CaseResult(case, amp.DETECTOR, fault=fault, counting="scraped",
                            may_show=may_show)
    result.notes["rate"] = amp.RATE
    started = time.monotonic()
    # the ratio's window (5 s) of traffic seeds the baseline; the sentinel starts in ~1 s
    learn_s = START_TIMEOUT_S + 10.0
    try:
        with _scraped_service(mode, 90.0) as (service, url), \
                Sentinel("--scrape", url, duration=90.0) as sentinel:
            try:
                judged = sentinel.wait_for(_scraped_judged, learn_s)
                assert judged is not None, f"never judged on the scraped counters: {url}"
                if fault:
                    sentinel.wait_for(lambda l: l.received >= judged.received + QUIET_S,
                                      QUIET_S + 3)
                    before = tcp_opens()
                    assert service.proc is not None
                    os.kill(service.proc.pid, signal.SIGUSR1)
                    t0 = service.log.wait(lambda: service.log.fault, 5.0)
                    assert t0 is not None, f"the storm never started:\n{service.log.tail()}"
                    amp._watch_until(sentinel, t0 + DEADLINE_S)
                    after = tcp_opens()
                    amp._judge(result, sentinel, service.log, t0, t0 + DEADLINE_S)
                    result.notes["tcp_active_opens_per_s"] = \
                        (after["ActiveOpens"] - before["ActiveOpens"]) / DEADLINE_S
                else:
                    t0 = judged.received
                    amp._watch_until(sentinel, t0 + CONTROL_S)
                    amp._judge(result, sentinel, service.log, t0, t0 + CONTROL_S)
                    result.critical_in_control = "CRITICAL" in result.states
                out: List[float] = [e["egress_per_s"] for e in (
                    _evidence(l, amp.DETECTOR) for l in sentinel.lines if l.received >= t0)
                    if e.get("egress_per_s") is not None]
                if out:
                    result.notes["egress_per_s_median"] = statistics.median(out)
            finally:
                result.diagnostics = service.log.tail()
        result.diagnostics += "\n" + sentinel.stderr
    finally:
        result.wall_s = time.monotonic() - started
    return result


def storm_scraped() -> amp.CaseResult:
    """The retry storm of amplification.py (ratio 2.5), counted by the service itself with
    Micrometer's names and read by `coherence --scrape URL`; every connection keep-alive."""
    return _scraped("amplification: retry storm, scraped (Micrometer names)", True, "storm")


SCRAPED_FANOUT_MAY_SHOW = MayShow()


def control_fanout3_scraped() -> amp.CaseResult:
    """3 calls out per request, steady, scraped: learned as the baseline, then 12 s never
    CRITICAL."""
    return _scraped("amplification control: steady fan-out x3, scraped", False, "fanout3",
                    SCRAPED_FANOUT_MAY_SHOW)


def scraped_storm_violations(result: amp.CaseResult) -> List[str]:
    """host.fault_violations, and the storm's own: its ratio above 2 on the scraped counters,
    and a storm the TCP proxy could not see (far fewer connections opened than calls made)."""
    from host import fault_violations
    bad = fault_violations(result)
    if result.max_ratio is None or result.max_ratio <= amp.STORM_RATIO:
        bad.append(f"ratio never above {amp.STORM_RATIO:g} (max {result.max_ratio})")
    if result.sources != ["scraped"]:
        bad.append(f"judged on {result.sources}, not the scraped counters")
    opens, calls = (result.notes.get("tcp_active_opens_per_s"),
                    result.notes.get("egress_per_s_median"))
    if opens is None or calls is None or calls < KEEPALIVE_CALLS_PER_OPEN * opens:
        bad.append(f"{calls} calls/s out over {opens} TCP connections opened/s: not behind "
                   "keep-alive pools")
    return bad


# ----------------------------------------------------------------------------------------- Go
def compile_go(name: str, build_dir: str) -> str:
    """go build tests/e2e/loads/<name>.go (standard library only) into build_dir."""
    src, exe = os.path.join(LOADS, name + ".go"), os.path.join(build_dir, name)
    proc = subprocess.run(["go", "build", "-o", exe, src], capture_output=True, text=True,
                          env={**os.environ, "GO111MODULE": "off"})
    if proc.returncode != 0:
        raise RuntimeError(f"building {src} failed:\n{proc.stderr}")
    return exe


class GoLoad(Load):
    """loads/gcload.go, its stderr read as it comes: its /metrics URL, and the GC CPU share the
    Go runtime itself accounts each second (MemStats.GCCPUFraction, differenced)."""

    def __enter__(self) -> "GoLoad":
        super().__enter__()
        self.metrics: Optional[str] = None
        self.gc_cpu: List[Tuple[float, float]] = []     # (time.monotonic(), share of CPU)
        self.other: List[str] = []
        self._up = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            text = raw.decode(errors="replace").strip()
            fields = dict(f.split("=", 1) for f in text.split() if "=" in f)
            if text.startswith("METRICS "):
                self.metrics = text.split()[1]
                self._up.set()
            elif "gc_cpu_share" in fields:
                self.gc_cpu.append((time.monotonic(), float(fields["gc_cpu_share"])))
            else:
                self.other.append(text)
        self._up.set()

    def url(self) -> str:
        self._up.wait(START_TIMEOUT_S)
        assert self.metrics, f"{self.cmd} never served /metrics: {self.other[-5:]}"
        return self.metrics

    def gc_cpu_pct(self, t0: float, t1: float) -> Optional[float]:
        """The median of the runtime's own GC CPU share (%) over the seconds ending in [t0, t1]."""
        values = [100 * share for t, share in self.gc_cpu if t0 + 1 <= t <= t1]
        return statistics.median(values) if values else None


# A spiral as Go services have them: a live set of pointer-rich nodes (340 MB with its index) near
# its memory limit (400 MB, GOMEMLIMIT), allocation as fast as it can go. Measured: collections back
# to back (~8/s), the runtime's GC using 35-45 % of the CPU (its limiter caps it at 50 %).
GO_SPIRAL = ("300", "0", "400")
# Healthy: 50 MB live, 1 GB/s of short-lived buffers, no limit. Measured: ~16 collections/s,
# ~9 % of the CPU in GC.
GO_HEALTHY = ("50", "1000", "0")


@contextlib.contextmanager
def _signalled(load: Load, sent: List[float]) -> Iterator[float]:
    """SIGUSR1 to the load (its churn starts); the time it was sent (also appended to sent)."""
    assert load.proc is not None
    t0 = time.monotonic()
    os.kill(load.proc.pid, signal.SIGUSR1)
    sent.append(t0)
    yield t0
    assert load.alive(), f"{load.cmd} died early"


def go_spiral(build: str) -> RuntimeResult:
    """A Go program in a GC death spiral from SIGUSR1 on, read through --scrape: fever CRITICAL
    on its GC share (its GC CPU over GOMAXPROCS, from go_memstats_gc_cpu_fraction), not on its
    pauses (go_gc_duration_seconds_sum reads 0.1 % in the same spiral)."""
    exe = compile_go("gcload", build)
    result = RuntimeResult("fever: a Go program in a GC death spiral (--scrape)", "fever",
                           fault=True)
    with GoLoad(exe, *GO_SPIRAL, "60", "wait") as load:
        url = load.url()
        result.runtime = f"scrape {url}"
        sent: List[float] = []
        lines = _fault(result, _signalled(load, sent), names_runtime(result.runtime),
                       "--scrape", url)
    span = [l for l in lines if sent[0] <= l.received < sent[0] + DEADLINE_S]
    _go_notes(result, load, span, result.runtime)
    return result


def go_healthy(build: str) -> RuntimeResult:
    """A Go program allocating 1 GB/s over a small live set, read through --scrape from its
    start; watched for CONTROL_S once read: never CRITICAL."""
    exe = compile_go("gcload", build)
    result = RuntimeResult("fever control: a healthy Go program allocating 1 GB/s (--scrape)",
                           "fever", fault=False, may_show=GO_HEALTHY_MAY_SHOW)
    with GoLoad(exe, *GO_HEALTHY, "60") as load:
        url = load.url()
        result.runtime = f"scrape {url}"
        with Sentinel("--scrape", url, duration=60) as sentinel, ClassicProbe() as probe:
            for detector in DETECTORS:
                sentinel.warmed_up(detector)
            seen = sentinel.wait_for(lambda l: names_runtime(result.runtime)(l) and _judged(l),
                                     START_TIMEOUT_S)
            assert seen is not None, f"{url} never read: {sentinel.stderr_now()}"
            t0 = seen.received
            sentinel.wait_for(lambda l: l.received >= t0 + CONTROL_S, CONTROL_S + 3)
            t1 = probe.mark()
            assert load.alive(), f"{load.cmd} died early"
            result.classic = [probe.cpu(t0, t1), probe.memory(t0, t1)]
            lines = list(sentinel.lines)
    record_control(result, lines, t0, t1)
    _go_notes(result, load, [l for l in lines if t0 <= l.received < t1], result.runtime)
    return result


def _go_notes(result: RuntimeResult, load: GoLoad, span: Sequence[Line], name: str) -> None:
    """What the sentinel read (its GC share: GC CPU over GOMAXPROCS) beside what the Go runtime
    itself accounts as GC CPU each second, over the same span."""
    if not span:
        return
    for key in ("gc_time_pct", "runtime_alloc_mb_s", "gc_collections_per_s"):
        values = _runtime_values(span, name, key)
        if values:
            result.notes[f"{key}_median"] = statistics.median(values)
    own = load.gc_cpu_pct(span[0].received, span[-1].received)
    if own is not None:
        result.notes["runtime_gc_cpu_pct_median"] = own


# As the healthy JVM: its heap grows as it starts under the sentinel, which the host's 10 s trend
# may read as resident growth (the forecast), never as the GC or churn condition.
GO_HEALTHY_MAY_SHOW = FORECAST_ONLY
