"""Classic threshold alerts as users configure them on node_exporter, computed by the harness from
/proc itself (never from the sentinel's output), for comparison with coherence's verdicts.

A probe samples /proc/stat and /proc/meminfo once a second while a case runs; each rule is then
evaluated over the fault (or control) span. A rule with a `for` longer than the span cannot fire
in it, so what is reported is the expression's value there and whether its condition held.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import List, Optional

PROC = "/proc"
SAMPLE_S = 1.0             # node_exporter scraped every second: finer than any real scrape

# awesome-prometheus-alerts, rules/host-and-hardware/node-exporter.yml, HostHighCpuLoad:
#   sum by (instance) (avg by (mode, instance) (rate(node_cpu_seconds_total{mode!="idle"}[2m]))) > 0.8
#   for: 10m
# (the 1m/5m `100 - avg(rate(...{mode="idle"}[1m])) * 100 > 80` variants users write are the same
# ratio over another window). node-mixin's NodeCPUHighUsage is the same with > 90 %, for 15m.
CPU_BUSY_ALERT_PCT = 80.0
CPU_ALERT_FOR_S = 600.0
# awesome-prometheus-alerts HostOutOfMemory:
#   node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes * 100 < 10, for: 2m
# (node-mixin's NodeMemoryHighUtilization: used > 90 %, for 15m: the same line).
MEM_AVAILABLE_ALERT_PCT = 10.0
MEM_ALERT_FOR_S = 120.0


@dataclass(frozen=True)
class Sample:
    t: float                  # time.monotonic()
    idle_jiffies: int         # the `idle` column of the aggregate cpu line: mode="idle"
    total_jiffies: int        # every column but guest/guest_nice (already counted in user/nice)
    mem_available_kb: int
    mem_total_kb: int


@dataclass
class ClassicReading:
    """One rule's expression over one span: its value, the bar, whether the condition held, and
    whether the rule could have fired at all in a span that short."""
    rule: str                 # e.g. "CPU busy > 80 % (rate[2m], for 10m)"
    value: Optional[float]    # the expression over the span (None: too few samples)
    bar: float
    condition_held: bool      # the expression crossed the bar over the span
    span_s: float
    for_s: float

    @property
    def could_fire(self) -> bool:
        return self.span_s >= self.for_s

    def text(self) -> str:
        if self.value is None:
            return f"{self.rule}: no samples"
        held = "condition true" if self.condition_held else "condition false"
        fire = "" if self.could_fire else (f"; could not fire in {self.span_s:.0f} s"
                                           if self.condition_held else "")
        return f"{self.rule}: {self.value:.0f} % ({held}{fire})"


def read_sample(proc: str = PROC) -> Sample:
    with open(f"{proc}/stat", "rb") as f:
        cpu = f.readline().split()
    assert cpu[0] == b"cpu", cpu
    # user nice system idle iowait irq softirq steal [guest guest_nice]
    fields = [int(x) for x in cpu[1:9]]
    mem = {}
    with open(f"{proc}/meminfo", "rb") as f:
        for line in f:
            key, _, rest = line.partition(b":")
            if key in (b"MemTotal", b"MemAvailable"):
                mem[key] = int(rest.split()[0])
    return Sample(time.monotonic(), fields[3], sum(fields), mem[b"MemAvailable"], mem[b"MemTotal"])


class ClassicProbe:
    """Samples /proc once a second in a thread (and on demand), like a node_exporter scrape.

    >>> with ClassicProbe() as probe:
    ...     t0 = probe.mark(); run_the_load(); t1 = probe.mark()
    ...     probe.cpu(t0, t1).value
    """

    def __init__(self, proc: str = PROC) -> None:
        self.proc = proc
        self.samples: List[Sample] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "ClassicProbe":
        self.mark()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5.0)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self.mark()

    def mark(self) -> float:
        """Take a sample now; its time (a span's exact start or end)."""
        s = read_sample(self.proc)
        with self._lock:
            self.samples.append(s)
        return s.t

    def _span(self, t0: float, t1: float) -> List[Sample]:
        with self._lock:
            return [s for s in self.samples if t0 <= s.t <= t1]

    def cpu(self, t0: float, t1: float) -> ClassicReading:
        """CPU busy % (non-idle) between the first and last samples of [t0, t1]: what
        `rate(node_cpu_seconds_total{mode!="idle"}[w])` shows at t1 for w = t1 - t0, and what a
        1m, 2m or 5m rate settles at while a load like this one goes on unchanged."""
        span = self._span(t0, t1)
        value = None
        if len(span) >= 2 and span[-1].total_jiffies > span[0].total_jiffies:
            idle = span[-1].idle_jiffies - span[0].idle_jiffies
            value = 100.0 * (1.0 - idle / (span[-1].total_jiffies - span[0].total_jiffies))
        return ClassicReading(
            f"CPU busy > {CPU_BUSY_ALERT_PCT:g} % (for {CPU_ALERT_FOR_S / 60:g}m)", value,
            CPU_BUSY_ALERT_PCT, value is not None and value > CPU_BUSY_ALERT_PCT, t1 - t0,
            CPU_ALERT_FOR_S)

    def memory(self, t0: float, t1: float) -> ClassicReading:
        """The lowest MemAvailable / MemTotal % sampled in [t0, t1] (a gauge: no window)."""
        span = self._span(t0, t1)
        value = min((100.0 * s.mem_available_kb / s.mem_total_kb for s in span), default=None)
        return ClassicReading(
            f"MemAvailable < {MEM_AVAILABLE_ALERT_PCT:g} % (for {MEM_ALERT_FOR_S / 60:g}m)",
            value, MEM_AVAILABLE_ALERT_PCT,
            value is not None and value < MEM_AVAILABLE_ALERT_PCT, t1 - t0, MEM_ALERT_FOR_S)

