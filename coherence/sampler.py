"""The sampler: the chosen sources read at their own rates by the compiled tick loop, in a
background thread without the GIL, feeding the core's accumulators; readers take snapshots.

>>> with Sampler(hz=1000) as s:          # doctest: +SKIP
...     time.sleep(2)
...     s.stats().achieved_hz, s.snapshot().cpu.util_std_pct
"""
from __future__ import annotations

import bisect
import itertools
import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Mapping, Optional, Sequence, Tuple

from coherence import hooks
from coherence._core import AtomicCounter
from coherence._sampler import Engine, Slot
from coherence.signals import FORECAST_REACH, Signals, longest_forecast_span_s
from coherence.snapshot import Snapshot
from coherence.sources import (
    Choice,
    Row,
    Source,
    SourceUnavailable,
    close_all,
    cpu_capacity,
    describe,
    pid_dir,
    positive_pid,
    select,
)

if TYPE_CHECKING:
    from coherence.config import Config

# --hz bounds: below 1 Hz there is no variance to see in 10 s; above 2000 Hz the wake-ups
# alone cost more than a few % of a core on a 2-vCPU VM (README, "The sampler").
MIN_HZ, MAX_HZ = 1.0, 2000.0
# /proc/vmstat, /proc/meminfo, /proc/net/snmp cost 5-20 us a read on a 2-vCPU VM: tens of Hz.
SLOW_HZ = 20.0

# The engine's slot for each derived signal a source's recipe names (coherence.sources): the
# vocabulary the sampler speaks; which fields feed them, and how, is each source's to declare.
SLOTS: Dict[str, Slot] = {
    "cpu_usage_ns_total": Slot.CPU_NS,
    "minor_faults_total": Slot.MINOR_FAULTS,
    "pgalloc_total": Slot.PGALLOC,
    "pgfree_total": Slot.PGFREE,
    "mem_resident_bytes": Slot.RESIDENT_BYTES,
    "mem_total_bytes": Slot.MEM_TOTAL_BYTES,
    "psi_cpu_some_us_total": Slot.PSI_CPU_US,
    "psi_memory_some_us_total": Slot.PSI_MEMORY_US,
    "psi_io_some_us_total": Slot.PSI_IO_US,
    "tcp_passive_opens_total": Slot.TCP_PASSIVE,
    "tcp_active_opens_total": Slot.TCP_ACTIVE,
}


class SamplerError(Exception):
    """The sampler cannot run as asked; ``str(err)`` is one line for the user."""


@dataclass(frozen=True)
class SamplerStats:
    """The sampler's own figures since it started."""

    achieved_hz: float
    ticks: int
    ticks_expected: int
    overruns: int              # deadlines skipped because a tick ran late (never caught up)
    tick_lateness_p50_us: float
    tick_lateness_p99_us: float
    tick_lateness_max_us: float
    cpu_percent: float         # the sampler thread's CPU time over wall time, % of one core
    elapsed_s: float
    cpu_s: float = 0.0         # the sampler thread's CPU time so far
    tick_lateness_sum_s: float = 0.0   # over the ticks the lateness histogram holds
    last_tick_s: float = math.nan      # monotonic time the last tick woke up (a heartbeat)


def _positive(name: str, value: float) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def lateness_percentiles(hist: Sequence[Tuple[int, int]], qs: Sequence[float]) -> List[float]:
    """The upper bound (us) of the lateness bin holding rank q of the engine's histogram, for
    each q: the first bin whose cumulative count reaches q of the total (NaN when empty)."""
    cumulative = list(itertools.accumulate([count for _, count in hist]))
    total = cumulative[-1] if cumulative else 0
    if total == 0:
        return [math.nan] * len(qs)
    last = len(hist) - 1
    return [float(hist[min(bisect.bisect_left(cumulative, q * total), last)][0]) for q in qs]


def lateness_percentile(hist: Sequence[Tuple[int, int]], q: float) -> float:
    """lateness_percentiles for one q."""
    return lateness_percentiles(hist, (q,))[0]


class Sampler:
    """Reads the host (or a container, or ``pid``) at ``hz`` in a background thread.

    CPU counters are read every tick; memory, pressure and request counters at ``slow_hz``.
    CPU utilization is aggregated into buckets of ``resolution_s`` and its statistics kept over
    ``window_s``; rates are smoothed with a half-life of ``rate_half_life_s``; request ratios
    slide over ``ratio_window_s`` and the resident-memory trend over ``trend_window_s``, and
    over longer spans up to ``forecast_span_s`` for the forecast of exhaustion.
    """

    def __init__(self, hz: float = 1000.0, *, pid: Optional[int] = None,
                 resolution_s: float = 0.1, window_s: float = 10.0, slow_hz: float = SLOW_HZ,
                 rate_half_life_s: float = 1.0, history: int = 600,
                 ratio_window_s: float = 5.0, trend_window_s: float = 10.0,
                 forecast_span_s: float = 4 * 3600 / FORECAST_REACH,
                 proc_root: str = "/proc", sys_root: str = "/sys",
                 ingress: AtomicCounter = hooks.INGRESS, egress: AtomicCounter = hooks.EGRESS,
                 chosen: Optional[Mapping[str, Choice]] = None) -> None:
        self.hz = _positive("hz", hz)
        if not (MIN_HZ <= self.hz <= MAX_HZ):
            raise ValueError(f"hz must be between {MIN_HZ:g} and {MAX_HZ:g}, got {hz!r}")
        self.resolution_s = _positive("resolution", resolution_s)
        self.window_s = _positive("window", window_s)
        if self.window_s < 2 * self.resolution_s:
            raise ValueError(f"window ({window_s:g} s) must hold at least two buckets of "
                             f"resolution ({resolution_s:g} s)")
        if self.resolution_s < 1.0 / self.hz:
            raise ValueError(f"resolution ({resolution_s:g} s) is shorter than one tick at "
                             f"{self.hz:g} Hz")
        self.slow_hz = min(_positive("slow_hz", slow_hz), self.hz)
        half_life = _positive("rate_half_life", rate_half_life_s)
        if pid is not None:
            try:
                pid_dir(proc_root, positive_pid(pid))
            except SourceUnavailable as err:          # "no process <pid>"
                raise SamplerError(str(err)) from None
        self.pid = pid
        self.notes: List[str] = []
        self.chosen = dict(chosen) if chosen is not None else dict(
            select(pid=pid, proc_root=proc_root, sys_root=sys_root))
        try:
            cpu = self.chosen["cpu"].source
            if cpu is None:
                reasons = "; ".join(f"{s.name}: {s.reason}" for s in self.chosen["cpu"].tried)
                raise SamplerError(f"no CPU source available ({reasons})")
            self.ncpu, self.ncpu_reason = cpu_capacity(proc_root, sys_root, pid)
            self.engine = Engine(self.hz, self.resolution_s, self.ncpu)
            self._wire(cpu, ingress, egress)
        except Exception:
            close_all(self.chosen)
            raise
        # counters only grow: once anything was pushed, requests are the pushed counts
        self._pushed = lambda: ingress.value > 0 or egress.value > 0
        self._make_feeds(half_life, history, _positive("ratio_window", ratio_window_s),
                         _positive("trend_window", trend_window_s),
                         _positive("forecast_span", forecast_span_s))
        self._thread: Optional[threading.Thread] = None

    @classmethod
    def from_config(cls, config: "Config", *, pid: Optional[int] = None,
                    ingress: AtomicCounter = hooks.INGRESS, egress: AtomicCounter = hooks.EGRESS,
                    proc_root: str = "/proc", sys_root: str = "/sys") -> "Sampler":
        """The sampler the settings describe: its rates, the seizure's buckets and window, the
        amplification's ratio window and the fever's trend window."""
        s = config.sampler
        return cls(s.hz, pid=pid, resolution_s=config.seizure.resolution_s,
                   window_s=config.seizure.window_s, slow_hz=s.slow_hz,
                   rate_half_life_s=s.rate_half_life_s,
                   ratio_window_s=config.amplification.window_s,
                   trend_window_s=config.fever.window_s,
                   forecast_span_s=longest_forecast_span_s(config), proc_root=proc_root,
                   sys_root=sys_root, ingress=ingress, egress=egress)

    # ------------------------------------------------------------------ wiring
    def _every(self, rate_hz: float) -> int:
        return max(1, int(round(self.hz / min(self.hz, rate_hz))))

    def _targets(self, source: Source) -> Dict[str, List[Tuple[int, float]]]:
        """The source's recipe in slots: {parsed signal: [(slot, coefficient)]}."""
        try:
            return {parsed: [(int(SLOTS[derived]), coef) for derived, coef in targets]
                    for parsed, targets in source.recipe.items()}
        except KeyError as err:
            raise SamplerError(f"source {source.name} feeds {err.args[0]}, which the sampler "
                               "has no slot for") from None

    def _add_source(self, source: Source, every: int, phase: int) -> None:
        targets = self._targets(source)
        for derived, rule in source.rules.items():
            if derived in SLOTS:
                self.engine.set_rule(SLOTS[derived], rule.floor, rule.hold, rule.take_min)
        if source.clock is not None:
            for slot, _coef in targets.get(source.clock_signal, ()):
                alive = source.clock_alive
                self.engine.add_clock(source.clock, slot, every, phase, -1 if alive is None else alive)
        elif source.readers:
            for reader in source.readers:
                fields = [(f.prefix, f.index, f.occurrence, f.after_last, slot, coef * f.scale)
                          for f in reader.fields for slot, coef in targets.get(f.signal, ())]
                if fields:
                    self.engine.add_file(reader.fd, every, phase, fields)
                    self._files.append((source.name, reader.path))
        else:
            # No file (psutil): called back with the GIL, at its own rate.
            self.engine.add_callback(every, phase, source.read, targets)

    def _wire(self, cpu: Source, ingress: AtomicCounter, egress: AtomicCounter) -> None:
        self._files: List[Tuple[str, str]] = []     # (source, path) per engine file, in order
        cpu_every = self._every(cpu.max_hz)
        if cpu_every * (1.0 / self.hz) > self.resolution_s / 2:
            self.notes.append(f"{cpu.name} updates at most {cpu.max_hz:g} times a second: "
                              f"too coarse for buckets of {self.resolution_s:g} s")
        if cpu.max_hz <= 100.0:
            self.notes.append(f"CPU from {cpu.name}: 10 ms ticks, usable only for buckets of "
                              "100 ms or more")
        self._add_source(cpu, cpu_every, 0)
        slow = self._every(self.slow_hz)
        # Slow sources on different ticks, so that no one tick reads them all.
        phase = 1
        for family in ("memory", "pressure", "requests"):
            source = self.chosen[family].source if family in self.chosen else None
            if source is not None:
                self._add_source(source, slow, phase % slow)
                phase += max(1, slow // 4)
        self.engine.add_counter(ingress, Slot.INGRESS, slow, 0)
        self.engine.add_counter(egress, Slot.EGRESS, slow, 0)

    def _make_feeds(self, half_life: float, history: int, ratio_window_s: float,
                    trend_window_s: float, forecast_span_s: float) -> None:
        # the rate the slow sources are really read at: hz / a whole number of ticks
        slow_hz = self.hz / self._every(self.slow_hz)
        self.signals = Signals(resolution_s=self.resolution_s, window_s=self.window_s,
                               slow_hz=slow_hz, rate_half_life_s=half_life,
                               ratio_window_s=ratio_window_s, trend_window_s=trend_window_s,
                               forecast_span_s=forecast_span_s, history=history,
                               ncpu=self.ncpu, pushed=self._pushed,
                               available=[f for f, c in self.chosen.items() if c.source is not None])
        sig = self.signals
        self.engine.feed_gauges(sig.gauges)
        self.engine.feed_cpu(sig.cpu_buckets, sig.cpu_history)
        for slot, rate in sig.rates.items():
            self.engine.feed_rate(slot, rate)
        self.engine.feed_gauge(Slot.RESIDENT_BYTES, sig.resident_history)
        self.engine.feed_ratios(sig.pushed_ratio, sig.proxy_ratio)

    # ------------------------------------------------------------------ running
    def start(self) -> "Sampler":
        if self._thread is not None:
            raise RuntimeError("a Sampler starts once")
        self._thread = threading.Thread(target=self.engine.run, name="coherence-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop the loop (within one tick, 100 ms at most) and close the sources' files."""
        self.engine.stop()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                # never close a descriptor the loop may still pread: its number could be reused
                raise RuntimeError("the sampler thread did not stop; its files stay open")
        close_all(self.chosen)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ readers
    def stats(self) -> SamplerStats:
        """The sampler's figures; the lateness percentiles from the engine's counts in one pass
        (lateness_quantiles: what lateness_percentiles gives of the histogram, without its list)."""
        s = self.engine.stats()
        p50, p99, worst = self.engine.lateness_quantiles((0.50, 0.99))
        elapsed = s["elapsed_s"]
        return SamplerStats(
            achieved_hz=s["ticks"] / elapsed if elapsed > 0 else math.nan,
            ticks=s["ticks"],
            ticks_expected=int(elapsed * self.hz) + 1,
            overruns=s["overruns"],
            tick_lateness_p50_us=p50,
            tick_lateness_p99_us=p99,
            tick_lateness_max_us=worst,
            cpu_percent=100.0 * s["thread_cpu_s"] / elapsed if elapsed > 0 else math.nan,
            elapsed_s=elapsed,
            cpu_s=s["thread_cpu_s"],
            tick_lateness_sum_s=s["lateness_sum_us"] / 1e6,
            last_tick_s=s["last_tick_s"] if s["last_tick_s"] > 0 else math.nan,
        )

    def snapshot(self) -> Snapshot:
        """Every signal's current figures, each read without a lock (see Signals.snapshot). It
        also folds resident memory into the forecast's one-second points, under a lock of its
        own: callers on several threads each fold only what none has folded yet."""
        return self.signals.snapshot()

    def read_figures(self) -> Dict[str, Dict[str, int]]:
        """Per source read from files: reads, read errors and parse misses (a field not found in
        what was read: a format this kernel writes differently), summed over its files."""
        out: Dict[str, Dict[str, int]] = {}
        for (name, _path), f in zip(self._files, self.engine.file_stats()):
            mine = out.setdefault(name, {"reads": 0, "errors": 0, "parse_misses": 0})
            for key in mine:
                mine[key] += int(f[key])
        return out

    def sources(self) -> List[Row]:
        """Every candidate source with availability, the one in use per family, and why; a
        source whose file became unreadable while running (its process exited) shows as lost."""
        lost: Dict[str, str] = {}
        for (name, path), f in zip(self._files, self.engine.file_stats()):
            if f["lost"]:
                lost.setdefault(name, path)
        cpu = self.chosen["cpu"].source
        if cpu is not None and cpu.clock is not None and self.signals.gauges.state()[2][Slot.CPU_NS]:
            lost[cpu.name] = f"the CPU clock of process {self.pid}"
        return [row._replace(available=False, reason=f"lost while running: {lost[row.name]} "
                                                     "became unreadable (process exited, or cgroup removed?)")
                if row.name in lost else row for row in describe(self.chosen)]
