"""Measure fever's GC-share rule on the JVM's collectors: ParallelGC (what the suite asserts),
G1 (JDK 17's default) and ZGC (almost all concurrent). Not a test (no test_ prefix): run it alone,
under the machine lock, and read its table:

    flock /tmp/coh-machine.lock .venv/bin/python tests/e2e/measure_collectors.py \\
        --out /tmp/gcmeasure.jsonl

For each collector: the death spiral of the suite (850 MB live in -Xmx1g, allocating as fast as it
can) `--spiral-runs` times, each under a fresh `coherence --live --json` that has left its warm-up,
watched `--spiral-s` from the JVM's start; and the healthy JVM (50 MB live, 1 GB/s) watched
`--healthy-s` from its first reading. From the sentinel's JSON lines (fever's evidence naming
the JVM): gc_time_pct, gc_collections_per_s, runtime_alloc_mb_s (medians once it has been read
for SETTLE_S), the time from the JVM's start to fever CRITICAL and the worst state.

Beside it, what the JVM says itself, read independently of the sentinel:
  * its GC log (-Xlog:gc,gc+phases): the share of wall time in pauses, in concurrent GC phases
    (G1's "Concurrent Mark Cycle", ZGC's "Concurrent ..." phases) and, for ZGC, the time its
    threads were stalled waiting for memory ("Allocation Stall");
  * its hsperfdata file, read every SAMPLE_S: the collectors' names and totals, and the share of
    samples in which sun.gc.cause is not "No GC" (a collection under way; for ZGC the whole
    concurrent cycle, since its driver holds the cause for the cycle);
  * its threads' CPU time (/proc/<pid>/task/*/stat), by thread name: GC threads, VM Thread, the
    main (allocating) thread;
  * with --jstat, `jstat -gcutil -t <pid> 1000` during the healthy runs (it reads the same
    counters as the sentinel, so it checks the reading, not the meaning).

Measured (JDK 17.0.15, 2 CPUs, 2026-11-27; 4 spirals and 3 healthy runs per collector): the
sentinel's gc_time_pct matches the GC log's pause share within 1 point for all three. Spiral /
healthy: ParallelGC 80-85 % / 1.6-2.3 % (CRITICAL 5.7-6.2 s after the JVM's start); G1 64-69 % /
0.9-1.2 % (CRITICAL 5.7-6.2 s; its concurrent marking, 71-79 % of wall time in the spiral, is in no
time counter); ZGC 0.1 % / 0.0 %, never CRITICAL: its only collector counts the three pauses of a
cycle, while the GC log shows 70 % of wall time in allocation stalls and 78 % in concurrent
cycles. In hsperfdata, sun.gc.cause names the cause for the whole ZGC cycle: sampled, it read
"Allocation Stall" 76-82 % of the time in the spiral and never in the healthy runs.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import runtimes  # noqa: E402
from harness import DETECTORS, Line, Load, Sentinel, tmpdir, warning_starts  # noqa: E402

from coherence.sources.jvm import PerfDataError, parse_perfdata  # noqa: E402

SAMPLE_S = 0.1          # the side reader's period (hsperfdata and /proc threads)
SETTLE_S = 3.0          # the sentinel's rates are 1 s half-life EWMAs: skip their ramp
STATES = ("OK", "WARNING", "CRITICAL")
CLK_TCK = os.sysconf("SC_CLK_TCK")
# JDK 17 thread names (/proc/<pid>/task/<tid>/comm, 15 characters)
GC_THREADS = ("GC Thread#", "G1 ", "ZWorker", "ZDriver", "ZDirector", "ZStat", "ZUnmapper",
              "ZUncommitter")


# ------------------------------------------------------------------------- the JVM, read aside
@dataclass
class Sample:
    t: float                                 # time.monotonic()
    cause: str = ""
    last_cause: str = ""
    collectors: Dict[str, Tuple[int, float]] = field(default_factory=dict)  # name -> count, s
    cpu_ticks: Dict[str, int] = field(default_factory=dict)  # gc, vm, main, other


def _thread_class(comm: str) -> str:
    if comm.startswith(GC_THREADS):
        return "gc"
    if comm == "VM Thread":
        return "vm"
    if comm == "java":
        return "main"            # the launcher's thread (idle) and the Java main thread
    return "other"


def _thread_ticks(pid: int) -> Dict[str, int]:
    out = {"gc": 0, "vm": 0, "main": 0, "other": 0}
    base = f"/proc/{pid}/task"
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"{base}/{tid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        comm = stat[stat.find(b"(") + 1:stat.rfind(b")")].decode(errors="replace")
        fields = stat[stat.rfind(b")") + 2:].split()
        out[_thread_class(comm)] += int(fields[11]) + int(fields[12])   # utime, stime
    return out


class SideReader:
    """The JVM's hsperfdata and threads, every SAMPLE_S, in a thread of its own."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.path = f"/tmp/hsperfdata_{_user()}/{pid}"
        self.samples: List[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "SideReader":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            try:
                with open(self.path, "rb") as f:
                    perf = parse_perfdata(f.read())
            except (OSError, PerfDataError):
                continue
            freq = perf.long("sun.os.hrt.frequency") or 1
            names: Dict[int, str] = {}
            for key, value in perf.values.items():
                m = re.match(r"sun\.gc\.collector\.(\d+)\.name$", key)
                if m and isinstance(value, str):
                    names[int(m.group(1))] = value
            collectors = {f"{i}:{n}": (perf.long(f"sun.gc.collector.{i}.invocations") or 0,
                                       (perf.long(f"sun.gc.collector.{i}.time") or 0) / freq)
                          for i, n in sorted(names.items())}
            self.samples.append(Sample(time.monotonic(), perf.string("sun.gc.cause") or "",
                                       perf.string("sun.gc.lastCause") or "", collectors,
                                       _thread_ticks(self.pid)))

    def summary(self, t0: float, t1: float) -> Dict[str, Any]:
        s = [x for x in self.samples if t0 <= x.t <= t1]
        if len(s) < 2:
            return {}
        wall = s[-1].t - s[0].t
        causes: Dict[str, int] = {}
        for x in s:
            causes[x.cause] = causes.get(x.cause, 0) + 1
        in_gc = sum(n for c, n in causes.items() if c != "No GC")
        # per whole second: how steady each share is (what a 1 s rate would see)
        bins: Dict[int, List[str]] = {}
        for x in s:
            bins.setdefault(int(x.t - s[0].t), []).append(x.cause)
        whole = [b for b in bins.values() if len(b) >= 5]
        busy_s = [100.0 * sum(c != "No GC" for c in b) / len(b) for b in whole]
        stall_s = [100.0 * sum(c == "Allocation Stall" for c in b) / len(b) for b in whole]
        out: Dict[str, Any] = {
            "cause_busy_pct": 100.0 * in_gc / len(s),
            "cause_busy_pct_per_s_min_max": [min(busy_s, default=math.nan), max(busy_s, default=math.nan)],
            "cause_stall_pct": 100.0 * causes.get("Allocation Stall", 0) / len(s),
            "cause_stall_pct_per_s_min_max": [min(stall_s, default=math.nan), max(stall_s, default=math.nan)],
            "causes": causes,
            "last_causes": sorted({x.last_cause for x in s}),
            "collectors": {},
            "cpu_pct_of_a_core": {k: 100.0 * (s[-1].cpu_ticks[k] - s[0].cpu_ticks[k]) / CLK_TCK / wall
                                  for k in s[0].cpu_ticks},
        }
        for name in s[-1].collectors:
            (c0, t_0), (c1, t_1) = s[0].collectors.get(name, (0, 0.0)), s[-1].collectors[name]
            out["collectors"][name] = {"per_s": (c1 - c0) / wall, "time_pct": 100.0 * (t_1 - t_0) / wall,
                                       "invocations_total": c1, "time_s_total": t_1}
        cpu = out["cpu_pct_of_a_core"]
        total = sum(cpu.values())
        out["gc_threads_pct_of_process_cpu"] = 100.0 * cpu["gc"] / total if total > 0 else math.nan
        out["hsperf_gc_time_pct"] = sum(c["time_pct"] for c in out["collectors"].values())
        return out


def _user() -> str:
    import pwd
    return pwd.getpwuid(os.geteuid()).pw_name


# ------------------------------------------------------------------------------- the GC log
_LOG = re.compile(r"^\[(?P<up>[\d.]+)s\]\[\w+\s*\]\[(?P<tags>[\w,]+)\s*\] (?P<msg>.*)$")
_MS = re.compile(r"(\d+(?:\.\d+)?)ms$")


def gc_log_summary(path: str, up0: float, up1: float, zgc: bool) -> Dict[str, Any]:
    """Shares of the uptime window [up0, up1] (s) in pauses, concurrent GC and allocation stalls,
    from -Xlog:gc,gc+phases:file=path:uptime,level,tags; each event counted at the line that ends it."""
    pause = conc = stall = 0.0
    pauses = cycles = stalls = 0
    causes: Dict[str, int] = {}
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
    except OSError:
        return {}
    for raw in lines:
        m = _LOG.match(raw.strip())
        if not m or not up0 <= float(m.group("up")) <= up1:
            continue
        tags, msg = m.group("tags"), m.group("msg")
        ms = _MS.search(msg)
        value = float(ms.group(1)) / 1000 if ms else 0.0
        body = re.sub(r"^GC\(\d+\) ", "", msg)
        if body.startswith("Allocation Stall"):
            stall += value
            stalls += 1
        elif body.startswith("Pause ") and ms and tags == ("gc,phases" if zgc else "gc"):
            pause += value
            pauses += 1
        elif zgc and tags == "gc,phases" and body.startswith("Concurrent ") and ms:
            conc += value
        elif not zgc and tags == "gc" and re.match(r"Concurrent (Mark|Undo) Cycle", body) and ms:
            conc += value
            cycles += 1
        if tags == "gc" and body.startswith("Garbage Collection ("):   # a ZGC cycle
            cycles += 1
            cause = body[len("Garbage Collection ("):].split(")")[0]
            causes[cause] = causes.get(cause, 0) + 1
    wall = up1 - up0
    return {"window_s": wall, "pause_pct": 100 * pause / wall, "pauses_per_s": pauses / wall,
            "concurrent_pct": 100 * conc / wall, "cycles_per_s": cycles / wall,
            "stall_pct": 100 * stall / wall, "stalls_per_s": stalls / wall, "cycle_causes": causes}


# --------------------------------------------------------------------------------- the runs
@dataclass
class Run:
    collector: str
    kind: str                                  # spiral or healthy
    index: int
    pid: int = 0
    time_to_discovery_s: Optional[float] = None
    time_to_critical_s: Optional[float] = None  # from the JVM's start; None: never
    worst_state: str = "OK"
    state_seconds: Dict[str, float] = field(default_factory=dict)
    warning_units: List[str] = field(default_factory=list)  # the unit each WARNING began with
    critical_unit: Optional[str] = None
    gc_time_pct: Optional[float] = None           # medians of fever's evidence naming the JVM
    gc_time_pct_max: Optional[float] = None
    collections_per_s: Optional[float] = None
    alloc_mb_s: Optional[float] = None
    lines_named: int = 0
    kernel_churn_mb_s: Optional[float] = None     # fever's own (minor faults) churn, median
    kernel_churn_mb_s_max: Optional[float] = None
    reasons: Dict[str, str] = field(default_factory=dict)   # the first reason per non-OK unit
    program_alloc_mb_s: Optional[float] = None    # GcLoad's own count, over its whole run
    side: Dict[str, Any] = field(default_factory=dict)
    gc_log: Dict[str, Any] = field(default_factory=dict)
    jstat_tail: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)


def _fever(line: Line) -> Dict[str, Any]:
    return line.report["detectors"]["fever"]


def _named(line: Line, name: str) -> bool:
    return (_fever(line).get("evidence") or {}).get("runtime_process") == name


def _med(values: Sequence[float]) -> Optional[float]:
    return statistics.median(values) if values else None


def _judge(run: Run, lines: List[Line], name: str, started: float, t1: float) -> Tuple[float, float]:
    """Fill the sentinel's figures; the window its medians are taken over."""
    seen = next((l for l in lines if _named(l, name)), None)
    if seen is None:
        run.notes.append("never named in fever's evidence")
        return started, t1
    run.time_to_discovery_s = seen.received - started
    w0 = seen.received + SETTLE_S
    watched = [l for l in lines if started <= l.received <= t1]
    crit = next((l for l in watched if l.state("fever") == "CRITICAL"), None)
    if crit is not None:
        run.time_to_critical_s = crit.received - started
        run.critical_unit = _fever(crit)["unit"]
        if not _named(crit, name):
            run.notes.append(f"CRITICAL not naming {name}: {_fever(crit).get('evidence')}")
    states = [l.state("fever") for l in watched]
    run.worst_state = max((s for s in states if s in STATES), key=STATES.index, default="OK")
    for a, b in zip(watched, watched[1:] + [None]):
        end = b.received if b is not None else t1
        run.state_seconds[a.state("fever")] = run.state_seconds.get(a.state("fever"), 0.0) + end - a.received
    # what raised each WARNING episode (fever's forecast: "MB/s growth"; its churn: "MB/s")
    run.warning_units = warning_starts(lines, "fever", started, t1)
    for l in watched:
        if l.state("fever") in ("WARNING", "CRITICAL"):
            run.reasons.setdefault(_fever(l)["unit"], _fever(l).get("reason", ""))
    raw = [(_fever(l).get("evidence") or {}).get("alloc_rate_mb_s") for l in watched]
    churn: List[float] = [float(c) for c in raw if isinstance(c, (int, float)) and math.isfinite(c)]
    run.kernel_churn_mb_s, run.kernel_churn_mb_s_max = _med(churn), max(churn, default=None)
    ev = [_fever(l)["evidence"] for l in lines if w0 <= l.received <= t1 and _named(l, name)]
    run.lines_named = len(ev)
    pick = lambda key: [e[key] for e in ev if e.get(key) is not None]  # noqa: E731
    run.gc_time_pct, run.collections_per_s = _med(pick("gc_time_pct")), _med(pick("gc_collections_per_s"))
    run.gc_time_pct_max = max(pick("gc_time_pct"), default=None)
    run.alloc_mb_s = _med(pick("runtime_alloc_mb_s"))
    return w0, t1


def _finish(run: Run, load: Load, wait_s: float) -> None:
    """Let the program end on its own (it prints its allocation), else it is killed."""
    assert load.proc is not None
    try:
        out, _ = load.proc.communicate(timeout=wait_s)
    except subprocess.TimeoutExpired:
        run.notes.append("still running at the end: killed")
        return
    m = re.search(rb"allocated (\d+) bytes in ([\d.]+) s", out or b"")
    if m:
        run.program_alloc_mb_s = int(m.group(1)) / (1 << 20) / float(m.group(2))


def _log_flags(path: str) -> List[str]:
    return [f"-Xlog:gc,gc+phases:file={path}:uptime,level,tags"]


def spiral(classes: str, build: str, collector: str, index: int, watch_s: float) -> Run:
    run = Run(collector, "spiral", index)
    log = os.path.join(build, f"gc-{collector}-spiral-{index}.log")
    with Sentinel(duration=watch_s + 60) as sentinel:
        for detector in DETECTORS:
            sentinel.warmed_up(detector)
        cmd = runtimes.jvm_spiral_cmd(classes, watch_s + 1, collector, _log_flags(log))
        with Load(*cmd) as load:
            assert load.proc is not None
            run.pid, name, started = load.proc.pid, f"jvm {load.proc.pid}", load.started
            with SideReader(run.pid) as side:
                sentinel.wait_for(lambda l: l.received >= started + watch_s, watch_s + 5)
                t1 = time.monotonic()
            _finish(run, load, 15)
        lines = list(sentinel.lines)
    w0, w1 = _judge(run, lines, name, started, t1)
    run.side = side.summary(w0, w1)
    run.gc_log = gc_log_summary(log, w0 - started, w1 - started, collector == "ZGC")
    return run


def healthy(classes: str, build: str, collector: str, index: int, watch_s: float,
            jstat: bool) -> Run:
    run = Run(collector, "healthy", index)
    log = os.path.join(build, f"gc-{collector}-healthy-{index}.log")
    jstat_proc: Optional[subprocess.Popen] = None
    with Sentinel(duration=watch_s + 60) as sentinel:
        for detector in DETECTORS:
            sentinel.warmed_up(detector)
        cmd = runtimes.jvm_healthy_cmd(classes, watch_s + runtimes.DISCOVERY_S + 2, collector,
                                       _log_flags(log))
        with Load(*cmd) as load:
            assert load.proc is not None
            run.pid, name, started = load.proc.pid, f"jvm {load.proc.pid}", load.started
            with SideReader(run.pid) as side:
                seen = sentinel.wait_for(lambda l: _named(l, name), runtimes.DISCOVERY_S + 5)
                if seen is None:
                    run.notes.append("never read")
                    return run
                if jstat:
                    jstat_proc = subprocess.Popen(["jstat", "-gcutil", "-t", str(run.pid), "1000"],
                                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                  text=True)
                sentinel.wait_for(lambda l: l.received >= seen.received + watch_s, watch_s + 5)
                t1 = time.monotonic()
                if jstat_proc is not None:
                    jstat_proc.terminate()
                    out, _ = jstat_proc.communicate(timeout=5)
                    rows = out.strip().splitlines()
                    run.jstat_tail = rows[:1] + rows[-3:]
            _finish(run, load, runtimes.DISCOVERY_S + 5)
        lines = list(sentinel.lines)
    # the control's window: from the JVM's start (its first seconds included) to the end
    _judge(run, lines, name, started, t1)
    w0 = seen.received + SETTLE_S
    run.side = side.summary(w0, t1)
    run.gc_log = gc_log_summary(log, w0 - started, t1 - started, collector == "ZGC")
    return run


# --------------------------------------------------------------------------------- reporting
def _f(x: Optional[float], fmt: str = ".1f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, fmt)


def table(runs: List[Run]) -> str:
    head = ("collector  case     #  gc%    gc%max  coll/s  allocMB/s  progMB/s  crit_s  worst     "
            "| log: pause% conc% stall% cyc/s | cause-busy% gcthreads%cpu mainCPU%")
    out = [head, "-" * len(head)]
    for r in runs:
        cpu = r.side.get("cpu_pct_of_a_core", {})
        out.append(
            f"{r.collector:<10} {r.kind:<8} {r.index}  {_f(r.gc_time_pct):>5}  {_f(r.gc_time_pct_max):>6}  "
            f"{_f(r.collections_per_s):>6}  {_f(r.alloc_mb_s, '.0f'):>9}  {_f(r.program_alloc_mb_s, '.0f'):>8}  "
            f"{_f(r.time_to_critical_s):>6}  {r.worst_state:<8}  | "
            f"{_f(r.gc_log.get('pause_pct')):>10} {_f(r.gc_log.get('concurrent_pct')):>5} "
            f"{_f(r.gc_log.get('stall_pct')):>6} {_f(r.gc_log.get('cycles_per_s')):>5} | "
            f"{_f(r.side.get('cause_busy_pct')):>11} {_f(r.side.get('gc_threads_pct_of_process_cpu')):>13} "
            f"{_f(cpu.get('main')):>8}")
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collectors", default=",".join(runtimes.JVM_COLLECTORS))
    ap.add_argument("--spiral-runs", type=int, default=3)
    ap.add_argument("--spiral-s", type=float, default=20.0)
    ap.add_argument("--healthy-runs", type=int, default=1)
    ap.add_argument("--healthy-s", type=float, default=30.0)
    ap.add_argument("--jstat", action="store_true", help="jstat -gcutil during the healthy runs")
    ap.add_argument("--keep", action="store_true", help="keep the build directory (GC logs)")
    ap.add_argument("--out", help="append one JSON line per run here")
    args = ap.parse_args(argv)
    build = tmpdir()
    classes = runtimes.compile_java("GcLoad", build)
    runs: List[Run] = []
    try:
        for collector in args.collectors.split(","):
            todo = [("spiral", i) for i in range(1, args.spiral_runs + 1)] + \
                   [("healthy", i) for i in range(1, args.healthy_runs + 1)]
            for kind, i in todo:
                if kind == "spiral":
                    run = spiral(classes, build, collector, i, args.spiral_s)
                else:
                    run = healthy(classes, build, collector, i, args.healthy_s, args.jstat)
                runs.append(run)
                print(table([run]).splitlines()[-1], flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(asdict(run)) + "\n")
    finally:
        if args.keep:
            print(f"GC logs kept in {build}")
        else:
            shutil.rmtree(build, ignore_errors=True)
    print()
    print(table(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
