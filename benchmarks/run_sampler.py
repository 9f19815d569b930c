"""What the sampler costs at --hz 1000, beside a floor and a peer measured in the same run.

Usage: python benchmarks/run_sampler.py [--duration S] [--repeats R] [--hz N] [--json [FILE]]
       python benchmarks/run_sampler.py --profile [--duration S]   (perf record: where time goes)
       (always exits 0 when it ran to the end: the targets are informational)

Four cases, each a separate process (programs/ beside this file), run one after the other for
--duration seconds, --repeats times, the cases taking turns (a noisy stretch of this shared VM
falls on all of them alike):

  floor         a bare C loop (programs/floor.c, built with gcc -O2 in a temp dir) that wakes
                --hz times a second on absolute CLOCK_MONOTONIC deadlines and preads one counter
                file: the one the sampler reads every tick. Same timer slack as the sampler (1 us).
  sampler       coherence.sampler.Sampler(hz=--hz, slow_hz=Config's) with every source this host
                has (programs/sampler_child.py).
  psutil        the peer (programs/psutil_loop.py) on the sampler's schedule: psutil.cpu_percent()
                every tick; virtual_memory() and net_io_counters() every N ticks, N the sampler's
                own for its memory and request sources (20 Hz by default); time.sleep() to the next
                absolute deadline of the monotonic clock (default timer slack, 50 us).
  psutil-naive  the same loop calling all three every tick: what the peer used to be; a second
                row for reference, not a target.

CPU cost = the child's CPU time (sum over its threads of /proc/<pid>/task/*/schedstat, ns; or
utime+stime of /proc/<pid>/stat where schedstat is missing) between two snapshots taken by this
process: the first once the child says "ready" (started, imported, ticking for --warmup s), the
second --duration s later. Python start-up and imports are outside the interval. Tick figures
(achieved Hz, ticks taken, lateness, overruns) are each child's own, over its whole run, in the
sampler's bins and by the sampler's rules (a late tick skips to the next deadline, counted).
Reported: medians over the repeats, and PASS/MISS against the targets of issue 3.

--profile runs the floor and the sampler once each under `perf record -e cpu-clock -g -p PID`
(the software clock: this VM has no hardware counters) for --duration seconds after "ready", and
sorts the samples by call chain: sleeping and waking up, pread, the sampler's compiled code, ...
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import selectors
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _machine import cpu_model, write_json

CASES = ("floor", "sampler", "sampler+runtime", "psutil", "psutil-naive")
LABELS = {"floor": "floor (C loop)", "sampler": "coherence sampler",
          "sampler+runtime": "coherence sampler + runtime poller (1 JVM, 1 scrape)",
          "psutil": "psutil loop, sampler's schedule",
          "psutil-naive": "psutil loop, all at --hz (naive)"}
HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "programs")
FLOOR_SRC = os.path.join(PROGRAMS, "floor.c")
SAMPLER_CHILD = os.path.join(PROGRAMS, "sampler_child.py")
PSUTIL_CHILD = os.path.join(PROGRAMS, "psutil_loop.py")
TIMER_SLACK_NS = 1000          # what csrc/coherence/_sampler.pyx sets (prctl PR_SET_TIMERSLACK)
FALLBACK_COUNTER = "/proc/self/schedstat"
READY_TIMEOUT_S = 30.0         # start-up + imports + warm-up, on a loaded VM
EXIT_TIMEOUT_S = 10.0

# Targets (issue 3, "How fast").
SAMPLER_VS_FLOOR_MAX = 1.5
TICKS_TAKEN_MIN_PCT = 99.5
P99_LATENESS_MAX_US = 200.0
PSUTIL_VS_SAMPLER_MIN = 3.0
# Issue 10: with one JVM discovered and one scrape target, the tick loop's CPU stays within 1.2x
# the floor (the poller reads them on its own thread, whose cost is reported beside).
RUNTIME_TICK_VS_FLOOR_MAX = 1.2
GCLOAD_SRC = os.path.join(os.path.dirname(HERE), "tests", "e2e", "loads", "GcLoad.java")
PEER = "the psutil loop on the sampler's schedule"

class CaseError(RuntimeError):
    pass


# --- set-up ---------------------------------------------------------------------------------

def build_floor(tmpdir: str, cc: str = "gcc") -> str:
    """Compile programs/floor.c into tmpdir with -O2; the executable's path, or CaseError."""
    exe = os.path.join(tmpdir, "floor_loop")
    cmd = [cc, "-O2", "-std=gnu11", "-o", exe, FLOOR_SRC]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise CaseError(f"cannot build the floor loop ({' '.join(cmd)}): {err}") from err
    if res.returncode != 0:
        raise CaseError(f"cannot build the floor loop ({' '.join(cmd)}):\n{res.stderr}")
    return exe


class Plan:
    """What the sampler will do on this host, taken from coherence itself so that the floor and
    the peer copy it rather than a second guess of it: the file it preads every tick (its CPU
    source's first file; /proc/self/schedstat when that source reads no file) and how many ticks
    apart it reads its memory and request sources (Config's slow_hz, rounded by the sampler)."""

    def __init__(self, hz: float) -> None:
        self.counter_file, self.counter_source = FALLBACK_COUNTER, "coherence not importable"
        self.slow_hz: Optional[float] = None        # asked for (Config)
        self.slow_every: Optional[int] = None       # ticks between two reads, as the sampler reads
        self.scrape_url: Optional[str] = None       # the runtime case's target, once started
        try:
            from coherence.config import SamplerConfig
            from coherence.sampler import Sampler, SamplerError
        except ImportError as err:
            self.counter_source = f"coherence not importable ({err})"
            return
        self.slow_hz = SamplerConfig().slow_hz      # what `coherence --live` passes
        try:
            s = Sampler(hz=hz, slow_hz=self.slow_hz)           # built, never started
        except (SamplerError, ValueError) as err:
            self.counter_source = f"no sampler here ({err})"
            return
        try:
            self.slow_every = int(round(s.hz / s.signals.slow_hz))
            src = s.chosen["cpu"].source
            if src is not None and src.readers:
                self.counter_file, self.counter_source = src.readers[0].path, src.name
            else:
                self.counter_source = (src.name if src is not None else "no CPU source") + " reads no file"
        finally:
            s.stop()


def machine() -> Dict[str, Any]:
    model = cpu_model()
    clocksource = None
    try:
        with open("/sys/devices/system/clocksource/clocksource0/current_clocksource") as f:
            clocksource = f.read().strip()
    except OSError:
        pass
    try:
        import coherence
        version = coherence.__version__
    except Exception:   # noqa: BLE001 - reported, not fatal
        version = "not importable"
    return {
        "cpu_model": model, "nproc": len(os.sched_getaffinity(0)), "cpu_count": os.cpu_count(),
        "kernel": platform.release(), "python": platform.python_version(),
        "coherence": version, "clocksource": clocksource, "loadavg_start": os.getloadavg(),
    }


# --- measuring one child ----------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def host_cpu_ticks() -> Tuple[int, int]:
    """(busy, total) clock ticks of all CPUs from /proc/stat: how busy the machine is around us."""
    try:
        with open("/proc/stat", "rb") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    idle = v[3] + (v[4] if len(v) > 4 else 0)          # idle + iowait
    total = sum(v[:8])                                 # guest time is already in user
    return total - idle, total


def thread_ns(pid: int) -> Dict[int, int]:
    """CPU time of each thread of process pid so far, ns (schedstat); {} where unreadable."""
    out: Dict[int, int] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def cpu_ns(pid: int) -> Tuple[int, str]:
    """CPU time of process pid so far, ns: summed over its threads' schedstat, else utime+stime."""
    total, seen = 0, 0
    task_dir = f"/proc/{pid}/task"
    try:
        tids = os.listdir(task_dir)
    except OSError as err:
        raise CaseError(f"process {pid} is gone: {err}") from err
    for tid in tids:
        try:
            with open(f"{task_dir}/{tid}/schedstat", "rb") as f:
                total += int(f.read().split()[0])
                seen += 1
        except (OSError, ValueError, IndexError):
            continue    # a thread that just exited, or no schedstat on this kernel
    if seen:
        return total, "schedstat"
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError as err:
        raise CaseError(f"process {pid} is gone: {err}") from err
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // _CLK_TCK, "stat utime+stime"


class Child:
    """A child process that prints "ready", is measured, then told to stop (SIGTERM) and prints
    one JSON line. Killed on leaving the with-block whatever happened (error, Ctrl-C)."""

    def __init__(self, argv: Sequence[str], cwd: Optional[str] = None) -> None:
        self.argv = list(argv)
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=cwd)
        self._out = b""

    def __enter__(self) -> "Child":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pass
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def _stderr(self) -> str:
        try:
            if self.proc.poll() is not None and self.proc.stderr is not None:
                return self.proc.stderr.read().decode(errors="replace").strip()[-2000:]
        except (OSError, ValueError):
            pass
        return ""

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Block until the child has printed "ready"; CaseError if it exits or times out."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._out:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CaseError(f"no 'ready' from {self.argv[0]} within {timeout:g} s")
                if not sel.select(left):
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait(timeout=EXIT_TIMEOUT_S)
                    raise CaseError(f"{self.argv[0]} exited ({self.proc.returncode}) before "
                                    f"'ready': {self._stderr()}")
                self._out += chunk
        line, _, self._out = self._out.partition(b"\n")
        if line.strip() != b"ready":
            raise CaseError(f"expected 'ready' from {self.argv[0]}, got {line[:200]!r}")

    def stop(self) -> Dict[str, Any]:
        """SIGTERM, then the child's JSON report."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, err = self.proc.communicate(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired as e:
            raise CaseError(f"{self.argv[0]} did not stop within {EXIT_TIMEOUT_S:g} s of SIGTERM") from e
        out = self._out + out
        lines = [ln for ln in out.decode(errors="replace").splitlines() if ln.strip()]
        if self.proc.returncode != 0 or not lines:
            raise CaseError(f"{self.argv[0]} exited {self.proc.returncode}: "
                            f"{err.decode(errors='replace').strip()[-2000:]}")
        try:
            return json.loads(lines[-1])
        except ValueError as e:
            raise CaseError(f"{self.argv[0]} printed no JSON report: {lines[-1][:200]!r}") from e


def measure(argv: Sequence[str], duration: float, cwd: Optional[str] = None) -> Dict[str, Any]:
    """Run one child: wait for ready, snapshot its CPU time, wait duration, snapshot, stop it."""
    with Child(argv, cwd=cwd) as child:
        child.wait_ready()
        pid = child.proc.pid
        h0 = host_cpu_ticks()
        c0, method = cpu_ns(pid)
        th0 = thread_ns(pid)
        t0 = time.monotonic()
        time.sleep(duration)
        c1, _ = cpu_ns(pid)
        th1 = thread_ns(pid)
        t1 = time.monotonic()
        h1 = host_cpu_ticks()
        report = child.stop()
    report["cpu_ns"] = c1 - c0
    report["wall_s"] = t1 - t0
    report["cpu_method"] = method
    report["cpu_pct"] = 100.0 * (c1 - c0) / ((t1 - t0) * 1e9)
    # each thread's share over the same interval, by native thread id (the child names its own)
    report["thread_cpu_pct"] = {tid: 100.0 * (ns - th0.get(tid, 0)) / ((t1 - t0) * 1e9)
                                for tid, ns in th1.items()}
    # The whole machine's busy share meanwhile (this child included): the noise indicator.
    busy, total = h1[0] - h0[0], h1[1] - h0[1]
    report["host_busy_pct"] = 100.0 * busy / total if total > 0 else math.nan
    return report


# --- figures ----------------------------------------------------------------------------------

def percentile(hist: Sequence[Sequence[int]], q: float) -> float:
    """The sampler's own rule, so that every row is computed one way."""
    from coherence.sampler import lateness_percentile
    return lateness_percentile([(int(u), int(c)) for u, c in hist], q)


def _thread_pct(report: Dict[str, Any], tid: Optional[int]) -> float:
    per_thread = report.get("thread_cpu_pct", {})
    return float(per_thread.get(tid, math.nan)) if tid is not None else math.nan


def figures(report: Dict[str, Any]) -> Dict[str, float]:
    elapsed = report["elapsed_s"]
    return {
        "cpu_pct": report["cpu_pct"],
        "achieved_hz": report["ticks"] / elapsed if elapsed > 0 else math.nan,
        "ticks_taken_pct": 100.0 * report["ticks"] / report["ticks_expected"]
        if report["ticks_expected"] else math.nan,
        "p50_us": percentile(report["lateness_hist"], 0.50),
        "p99_us": percentile(report["lateness_hist"], 0.99),
        "max_us": float(report["lateness_hist"][-1][0]) if report["lateness_hist"] else math.nan,
        "overruns": float(report["overruns"]),
        # the tick loop's own thread, and the runtime poller's, over the measured interval
        "tick_cpu_pct": _thread_pct(report, report.get("tick_tid")),
        "runtime_cpu_pct": _thread_pct(report, (report.get("runtime") or {}).get("tid")),
    }


def _median(xs: List[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def summarize(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """{case: {metric: median over the successful repeats, "n": how many, "cpu_runs": [...]}}."""
    out = {}
    for case, reports in runs.items():
        ok = [figures(r) for r in reports if "error" not in r]
        if not ok:
            continue
        med: Dict[str, Any] = {k: _median([f[k] for f in ok]) for k in ok[0]}
        med["n"] = len(ok)
        med["cpu_runs"] = [f["cpu_pct"] for f in ok]
        out[case] = med
    return out


def verdicts(summary: Dict[str, Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    """(PASS|MISS|SKIP, target, measured) for each target of issue 3."""
    b, a, c = summary.get("sampler"), summary.get("floor"), summary.get("psutil")
    out = []

    def add(label, ok, measured):
        out.append(("SKIP" if ok is None else ("PASS" if ok else "MISS"), label, measured))

    if b and a and a["cpu_pct"] > 0:
        r = b["cpu_pct"] / a["cpu_pct"]
        add(f"sampler CPU <= {SAMPLER_VS_FLOOR_MAX:g}x floor", r <= SAMPLER_VS_FLOOR_MAX, f"{r:.2f}x")
    else:
        add(f"sampler CPU <= {SAMPLER_VS_FLOOR_MAX:g}x floor", None, "needs both rows")
    if b:
        # the floor's own figures beside: what this machine allowed in the same run
        add(f"sampler ticks taken >= {TICKS_TAKEN_MIN_PCT:g} %",
            b["ticks_taken_pct"] >= TICKS_TAKEN_MIN_PCT, f"{b['ticks_taken_pct']:.2f} %"
            + (f"; floor {a['ticks_taken_pct']:.2f} %" if a else ""))
        add(f"sampler p99 lateness < {P99_LATENESS_MAX_US:g} us (target for an idle machine)",
            b["p99_us"] < P99_LATENESS_MAX_US, f"{b['p99_us']:.0f} us"
            + (f"; floor {a['p99_us']:.0f} us" if a else ""))
    else:
        add(f"sampler ticks taken >= {TICKS_TAKEN_MIN_PCT:g} %", None, "no sampler row")
        add(f"sampler p99 lateness < {P99_LATENESS_MAX_US:g} us", None, "no sampler row")
    rt = summary.get("sampler+runtime")
    label = f"tick loop with 1 JVM and 1 scrape target <= {RUNTIME_TICK_VS_FLOOR_MAX:g}x floor"
    if rt and a and a["cpu_pct"] > 0:
        r = rt["tick_cpu_pct"] / a["cpu_pct"]
        add(label, r <= RUNTIME_TICK_VS_FLOOR_MAX,
            f"{r:.2f}x; its p99 lateness {rt['p99_us']:.0f} us; the poller's own thread "
            f"{rt['runtime_cpu_pct']:.2f} % of a core, the whole process {rt['cpu_pct']:.2f} %")
    elif "sampler+runtime" in summary or rt is None:
        add(label, None, "needs the floor and the runtime rows")
    if b and c and b["cpu_pct"] > 0:
        r = c["cpu_pct"] / b["cpu_pct"]
        add(f"sampler >= {PSUTIL_VS_SAMPLER_MIN:g}x cheaper than {PEER}",
            r >= PSUTIL_VS_SAMPLER_MIN, f"{r:.1f}x")
    else:
        add(f"sampler >= {PSUTIL_VS_SAMPLER_MIN:g}x cheaper than {PEER}", None, "needs both rows")
    return out


def _fmt(x: float, spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(summary: Dict[str, Dict[str, Any]], runs: Dict[str, List[Dict[str, Any]]]) -> str:
    floor = summary.get("floor", {}).get("cpu_pct")
    lines = ["| case | CPU % of one core (median) | x floor | achieved Hz | ticks taken % "
             "| p50 lateness µs | p99 lateness µs | overruns | CPU % per run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for case in CASES:
        m = summary.get(case)
        errors = [r["error"] for r in runs.get(case, []) if "error" in r]
        if m is None:
            why = errors[0].splitlines()[0] if errors else "not measured"
            lines.append(f"| {LABELS[case]} | failed: {why} | | | | | | | |")
            continue
        x = m["cpu_pct"] / floor if floor else math.nan
        per_run = ", ".join(f"{v:.2f}" for v in m["cpu_runs"])
        if errors:
            per_run += f" ({len(errors)} failed)"
        lines.append(
            f"| {LABELS[case]} | {_fmt(m['cpu_pct'], '.2f')} | {_fmt(x, '.2f')} "
            f"| {_fmt(m['achieved_hz'], '.1f')} | {_fmt(m['ticks_taken_pct'], '.2f')} "
            f"| {_fmt(m['p50_us'], '.0f')} | {_fmt(m['p99_us'], '.0f')} "
            f"| {_fmt(m['overruns'], '.0f')} | {per_run} |")
    return "\n".join(lines)


def report_text(result: Dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    load0 = ", ".join(f"{x:.2f}" for x in m["loadavg_start"])
    load1 = ", ".join(f"{x:.2f}" for x in result.get("loadavg_end", ()))
    out = [
        f"Machine: {m['cpu_model']}; nproc {m['nproc']} (of {m['cpu_count']}); kernel {m['kernel']}; "
        f"clocksource {m['clocksource']}; Python {m['python']}; coherence {m['coherence']}; "
        f"load average at start {load0}" + (f", at end {load1}" if load1 else ""),
        f"Each case a separate process at {cfg['hz']:g} Hz, measured for {cfg['duration']:g} s after a "
        f"{cfg['warmup']:g} s warm-up, {cfg['repeats']} repeats, cases interleaved; medians. "
        "CPU = the process's CPU time over the measured interval (schedstat of all its threads).",
        f"Floor: C loop (gcc -O2), clock_nanosleep TIMER_ABSTIME on CLOCK_MONOTONIC, one pread of "
        f"{cfg['counter_file']} ({cfg['counter_source']}) per tick, timer slack set to "
        f"{TIMER_SLACK_NS} ns (prctl PR_SET_TIMERSLACK) as the sampler sets it.",
        f"Peer: psutil.cpu_percent() every tick; virtual_memory() and net_io_counters() every "
        f"{cfg.get('slow_every')} ticks, as the sampler reads its memory and request sources "
        f"(slow_hz {cfg.get('slow_hz')} in coherence's Config); default timer slack (50 us). "
        "The naive row calls all three every tick.",
    ]
    busy = [r["host_busy_pct"] for rs_ in result["runs"].values() for r in rs_
            if "host_busy_pct" in r and not math.isnan(r["host_busy_pct"])]
    if busy:
        out.append(f"Machine busy (all CPUs, /proc/stat) during the measured intervals: median "
                   f"{statistics.median(busy):.0f} %, max {max(busy):.0f} % (a case itself adds its "
                   f"CPU % / {m['cpu_count']}; the rest is other work on this machine, which shows "
                   "first in lateness and ticks taken).")
    srcs = next((r.get("sources") for r in result["runs"].get("sampler", []) if "sources" in r), None)
    if srcs:
        out.append("Sampler sources: " + ", ".join(f"{k}={v}" for k, v in srcs.items()))
    out += ["", table(result["summary"], result["runs"]), ""]
    for state, label, measured in result["verdicts"]:
        out.append(f"- {state}: {label} (measured {measured})")
    s, naive = result["summary"].get("sampler"), result["summary"].get("psutil-naive")
    if s and naive and s["cpu_pct"] > 0:
        out.append(f"Reference, not a target: the naive psutil loop costs "
                   f"{naive['cpu_pct'] / s['cpu_pct']:.1f}x the sampler.")
    if result.get("interrupted"):
        out.append("\nInterrupted: partial results.")
    return "\n".join(out)


# --- the run --------------------------------------------------------------------------------

class RuntimeFixture:
    """What the runtime case reads: a small JVM allocating 20 MB/s (its own process, not
    measured) and a /metrics endpoint served from this process by prometheus_client."""

    def __init__(self, tmpdir: str) -> None:
        self.tmpdir = tmpdir
        self.jvm: Optional[subprocess.Popen] = None
        self.httpd: Any = None

    def start(self, log) -> Optional[str]:
        try:
            subprocess.run(["javac", "-d", self.tmpdir, GCLOAD_SRC], check=True, capture_output=True,
                           timeout=120)
            self.jvm = subprocess.Popen(["java", "-Xmx64m", "-cp", self.tmpdir, "GcLoad", "8", "20", "100000"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            from wsgiref.simple_server import WSGIRequestHandler, make_server

            from prometheus_client import CollectorRegistry, Summary, make_wsgi_app
            registry = CollectorRegistry()
            for name in ("http_server_requests_seconds", "http_client_requests_seconds"):
                Summary(name, name, ["uri"], registry=registry).labels("/a").observe(0.01)

            class Quiet(WSGIRequestHandler):
                def log_message(self, *args: Any) -> None:
                    pass

            self.httpd = make_server("127.0.0.1", 0, make_wsgi_app(registry), handler_class=Quiet)
            import threading
            threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
            time.sleep(1.0)                                 # the JVM's performance file appears
            return f"http://127.0.0.1:{self.httpd.server_port}/metrics"
        except (OSError, subprocess.SubprocessError, ImportError) as err:
            log(f"runtime case unavailable: {err}\n")
            return None

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
        if self.jvm is not None:
            self.jvm.terminate()
            self.jvm.wait(10)


def case_argv(case: str, hz: float, max_s: float, warmup: float,
              floor_exe: Optional[str], plan: Plan) -> List[str]:
    tail = [f"{max_s:g}", f"{warmup:g}"]
    if case == "floor":
        if floor_exe is None:
            raise CaseError("floor loop not built")
        return [floor_exe, f"{hz:g}", plan.counter_file, *tail]
    if case in ("sampler", "sampler+runtime"):
        if plan.slow_hz is None:
            raise CaseError(plan.counter_source)
        extra = [plan.scrape_url] if case == "sampler+runtime" else []
        if case == "sampler+runtime" and not plan.scrape_url:
            raise CaseError("no runtime to read (the JVM or the scrape target did not start)")
        return [sys.executable, SAMPLER_CHILD, f"{hz:g}", f"{plan.slow_hz:g}", *tail, *extra]
    if case == "psutil":
        if plan.slow_every is None:
            raise CaseError(f"the sampler's schedule is unknown: {plan.counter_source}")
        return [sys.executable, PSUTIL_CHILD, f"{hz:g}", str(plan.slow_every), *tail]
    if case == "psutil-naive":
        return [sys.executable, PSUTIL_CHILD, f"{hz:g}", "1", *tail]
    raise ValueError(f"unknown case {case!r}")


def run(duration: float = 10.0, repeats: int = 3, hz: float = 1000.0, warmup: float = 0.5,
        cases: Sequence[str] = CASES, log=None) -> Dict[str, Any]:
    """Every case, repeats times, interleaved; the raw reports, their medians and the verdicts.
    Ctrl-C stops early: the result holds what was measured, with "interrupted": True."""
    log = log or (lambda msg: None)
    tmpdir = tempfile.mkdtemp(prefix="coherence-bench-sampler-")
    runs: Dict[str, List[Dict[str, Any]]] = {c: [] for c in cases}
    plan = Plan(hz)
    result: Dict[str, Any] = {
        "machine": machine(),
        "config": {"duration": duration, "repeats": repeats, "hz": hz, "warmup": warmup,
                   "cases": list(cases), "counter_file": plan.counter_file,
                   "counter_source": plan.counter_source, "slow_hz": plan.slow_hz,
                   "slow_every": plan.slow_every, "timer_slack_ns": TIMER_SLACK_NS},
        "runs": runs,
    }
    # A child outlives a parent killed outright only until max_s: its own safety net.
    max_s = warmup + duration + 30.0
    runtime = RuntimeFixture(tmpdir) if "sampler+runtime" in cases else None
    try:
        if runtime is not None:
            plan.scrape_url = runtime.start(log)
        floor_exe, floor_err = None, None
        if "floor" in cases:
            try:
                floor_exe = build_floor(tmpdir)
            except CaseError as err:
                floor_err = str(err)
        for r in range(repeats):
            order = list(cases[r % len(cases):]) + list(cases[:r % len(cases)])   # take turns
            for case in order:
                log(f"[{r + 1}/{repeats}] {case} ... ")
                try:
                    if case == "floor" and floor_err:
                        raise CaseError(floor_err)
                    rep = measure(case_argv(case, hz, max_s, warmup, floor_exe, plan),
                                  duration, cwd=tmpdir)
                    log(f"{rep['cpu_pct']:.2f} % CPU\n")
                except CaseError as err:
                    rep = {"error": str(err)}
                    log(f"failed: {str(err).splitlines()[0]}\n")
                runs[case].append(rep)
    except KeyboardInterrupt:
        result["interrupted"] = True
    finally:
        if runtime is not None:
            runtime.stop()
        shutil.rmtree(tmpdir, ignore_errors=True)
    result["loadavg_end"] = os.getloadavg()
    result["summary"] = summarize(runs)
    result["verdicts"] = verdicts(result["summary"])
    return result


# --- --profile: where the time goes, by perf record -------------------------------------------

PROFILE_CASES = ("floor", "sampler")
# One sample per 10 us of the process's CPU time (software clock: this kind of VM exposes no
# hardware counters; 10 us is perf_event_max_sample_rate's 100 kHz): ~5000 samples from a
# process at 1 % of a core over 10 s, where 50 us gave ~900.
PERF_PERIOD_NS = 10_000
# A sample goes to the first bucket whose symbols appear anywhere in its call chain ...
CHAIN_BUCKETS = (
    ("sleeping and waking up (clock_nanosleep)", ("nanosleep",)),
    ("pread of the counter files", ("pread",)),
    ("main thread waiting for SIGTERM", ("sigtimedwait",)),
)
# ... else to the bucket of the object its innermost frame is in.
LEAF_BUCKETS = (
    ("compiled code (tick loop, parsing, statistics)", ("_sampler.", "_core.", "floor_loop")),
    ("clock reads (vDSO clock_gettime)", ("[vdso]",)),
    ("Python interpreter", ("python", "libpython")),
    ("kernel, other (interrupts, syscall entry and exit)", ("[kernel.",)),
)
OTHER = "other (libc, unresolved)"
PROFILE_ORDER = [b for b, _ in CHAIN_BUCKETS] + [b for b, _ in LEAF_BUCKETS] + [OTHER]


def perf_command(pid: int, duration: float, out: str) -> List[str]:
    """The perf record this runner runs on a case, printed beside its result."""
    return ["perf", "record", "-e", "cpu-clock", "-c", str(PERF_PERIOD_NS), "-g", "-p", str(pid),
            "-o", out, "--", "sleep", f"{duration:g}"]


def classify(chain: Sequence[Tuple[str, str]]) -> str:
    """The bucket of one sample: chain = [(symbol, object)], innermost frame first."""
    for bucket, needles in CHAIN_BUCKETS:
        if any(n in sym for sym, _ in chain for n in needles):
            return bucket
    dso = chain[0][1] if chain else ""
    for bucket, needles in LEAF_BUCKETS:
        if any(n in dso for n in needles):
            return bucket
    return OTHER


# Handlers that dispatch to a file's own (kernfs and cgroup files all pass through them).
GENERIC_SHOW = ("kernfs_seq_show", "cgroup_seqfile_show")


def pread_handler(chain: Sequence[Tuple[str, str]]) -> str:
    """Which file a pread sample read, by the kernel's handler of it (cpu_stat_show,
    memory_stat_show, meminfo_proc_show, psi_cpu_show, snmp_seq_show, ...): the outermost
    *_show in the chain that is not a dispatcher; "read path" when none is (syscall entry,
    seq_file set-up, copy to user space)."""
    for sym, _ in reversed(chain):
        name = sym.split("+", 1)[0]
        if name.endswith("_show") and name not in GENERIC_SHOW:
            return name
    return "read path"


def perf_samples(data: str) -> Tuple[Dict[str, int], Dict[str, int]]:
    """({bucket: samples}, {pread handler: samples}) from a perf.data file, by `perf script`."""
    res = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym,dso"], capture_output=True,
                         text=True, timeout=300, check=False)
    if res.returncode != 0:
        raise CaseError(f"perf script failed: {res.stderr.strip()[-500:]}")
    counts: Dict[str, int] = {}
    preads: Dict[str, int] = {}

    def flush(chain):
        if chain:
            bucket = classify(chain)
            counts[bucket] = counts.get(bucket, 0) + 1
            if bucket == CHAIN_BUCKETS[1][0]:
                handler = pread_handler(chain)
                preads[handler] = preads.get(handler, 0) + 1

    chain: List[Tuple[str, str]] = []
    for line in res.stdout.splitlines():
        if not line.strip():                  # a blank line ends a sample's call chain
            flush(chain)
            chain = []
            continue
        # "\t ffffffff8a2c1234 do_nanosleep+0x6d ([kernel.kallsyms])"
        parts = line.split(None, 1)
        if len(parts) < 2:
            continue
        rest = parts[1]
        sym, _, dso = rest.rpartition(" (")
        chain.append((sym, dso.rstrip(")")))
    flush(chain)
    return counts, preads


def profile_case(argv: Sequence[str], duration: float, tmpdir: str, name: str) -> Dict[str, Any]:
    """One case under perf record for duration s after its "ready": samples by bucket, and the
    process's CPU time over the same interval (schedstat) to turn shares into µs per tick."""
    data = os.path.join(tmpdir, f"{name}.perf.data")
    with Child(argv, cwd=tmpdir) as child:
        child.wait_ready()
        pid = child.proc.pid
        cmd = perf_command(pid, duration, data)
        c0, _ = cpu_ns(pid)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                                 check=False)
        except (OSError, subprocess.TimeoutExpired) as err:
            raise CaseError(f"{' '.join(cmd)}: {err} (Debian: apt-get install linux-perf)") from err
        c1, _ = cpu_ns(pid)
        report = child.stop()
    if res.returncode != 0:
        raise CaseError(f"{' '.join(cmd)} failed: {res.stderr.strip()[-500:]}")
    samples, preads = perf_samples(data)
    return {"command": " ".join(cmd[:-4]), "samples": samples, "pread_by_handler": preads,
            "cpu_ns": c1 - c0,
            "ticks_per_s": report["ticks"] / report["elapsed_s"] if report["elapsed_s"] else 0.0}


def profile(duration: float = 10.0, hz: float = 1000.0, warmup: float = 0.5,
            log=None) -> Dict[str, Any]:
    """The floor and the sampler, once each, under perf record; {case: profile_case()}."""
    log = log or (lambda msg: None)
    tmpdir = tempfile.mkdtemp(prefix="coherence-bench-profile-")
    plan = Plan(hz)
    out: Dict[str, Any] = {"hz": hz, "duration": duration, "period_ns": PERF_PERIOD_NS, "cases": {}}
    try:
        floor_exe = build_floor(tmpdir)
        for case in PROFILE_CASES:
            log(f"profiling {case} ... ")
            argv = case_argv(case, hz, warmup + duration + 30.0, warmup, floor_exe, plan)
            try:
                out["cases"][case] = profile_case(argv, duration, tmpdir, case)
                log("done\n")
            except CaseError as err:
                out["cases"][case] = {"error": str(err)}
                log(f"failed: {str(err).splitlines()[0]}\n")
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return out


def profile_text(prof: Dict[str, Any]) -> str:
    cases = prof["cases"]
    lines = [f"perf record -e cpu-clock -c {prof['period_ns']} -g -p PID -- sleep {prof['duration']:g}, "
             f"on each case at {prof['hz']:g} Hz once it is ticking; samples sorted by call chain.",
             "Share of the process's samples, and its CPU time per tick (share x schedstat CPU / ticks):",
             "", "| where | " + " | ".join(LABELS[c] for c in cases) + " |",
             "|---|" + "---:|" * len(cases)]
    for bucket in PROFILE_ORDER:
        row = []
        for c in cases:
            r = cases[c]
            total = sum(r.get("samples", {}).values())
            n = r.get("samples", {}).get(bucket, 0)
            ticks = r.get("ticks_per_s", 0.0) * prof["duration"]
            if "error" in r or not total or not ticks:
                row.append("n/a")
                continue
            us = n / total * r["cpu_ns"] / ticks / 1000.0
            row.append(f"{100.0 * n / total:.0f} % ({us:.2f} µs)")
        if any(x not in ("0 % (0.00 µs)", "n/a") for x in row):
            lines.append(f"| {bucket} | " + " | ".join(row) + " |")
    row = []
    for c in cases:
        r = cases[c]
        ticks = r.get("ticks_per_s", 0.0) * prof["duration"]
        row.append("n/a" if "error" in r or not ticks else
                   f"{sum(r['samples'].values())} samples, {r['cpu_ns'] / ticks / 1000.0:.2f} µs/tick")
    lines.append("| total | " + " | ".join(row) + " |")
    lines.append("")
    for c in cases:
        r = cases[c]
        if "error" in r:
            lines.append(f"{LABELS[c]}: {r['error']}")
            continue
        total = sum(r["samples"].values())
        by = sorted(r["pread_by_handler"].items(), key=lambda kv: -kv[1])
        if total and by:
            lines.append(f"{LABELS[c]}, pread by the file's kernel handler (share of all samples): "
                         + ", ".join(f"{h} {100.0 * n / total:.1f} %" for h, n in by))
    lines.append("µs per tick = share x the process's CPU time under perf (schedstat) / ticks; "
                 "sampling adds to that CPU time.")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (10)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per case, interleaved (3)")
    parser.add_argument("--hz", type=float, default=1000.0, help="ticks per second of every case (1000)")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds ticking before measuring (0.5)")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="dump the raw results as JSON to FILE; bare --json: JSON on stdout, "
                             "the table on stderr")
    parser.add_argument("--profile", action="store_true",
                        help="instead of the table: the floor and the sampler once each under "
                             "perf record, samples sorted by where the time goes")
    args = parser.parse_args(argv)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in cases if c not in CASES]
    if bad or not cases:
        parser.error(f"unknown case(s) {bad}; choose from {CASES}")
    if not (args.duration > 0 and args.repeats >= 1 and args.warmup >= 0 and args.hz > 0):
        parser.error("--duration and --hz must be > 0, --repeats >= 1, --warmup >= 0")
    text_out = sys.stderr if args.json == "-" else sys.stdout

    def log(msg):
        sys.stderr.write(msg)
        sys.stderr.flush()

    if args.profile:
        prof = profile(args.duration, args.hz, args.warmup, log=log)
        print(profile_text(prof), file=text_out)
        if args.json:
            write_json(prof, args.json)
        return 0

    result = run(args.duration, args.repeats, args.hz, args.warmup, cases, log=log)
    print(report_text(result), file=text_out)
    if args.json:
        write_json(result, args.json)
    return 130 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
