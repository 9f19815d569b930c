"""Runtime signals: the counters managed runtimes and services keep themselves (a JVM's
performance data, a /metrics endpoint), read off the tick path by one poller thread at a few Hz,
and turned into the rates the detectors judge: GC time as a share of wall time, collections and
bytes allocated per second, requests in and out. The kernel sees none of these: a heap that is
reused raises no page faults, and a retry over a keep-alive pool opens no connection.

    board = RuntimeBoard(half_life_s=1.0, ratio_points=25)     # Signals owns one
    poller = RuntimePoller(board, rate_hz=4.0)
    poller.add(source)                                        # a RuntimeSource
    with poller:
        ...
        board.snapshot()                                      # a RuntimeProcess per source
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Protocol, Tuple

from coherence._core import EwmaRate, RatioWindow
from coherence.snapshot import RuntimeProcess
from coherence.sources import (  # noqa: F401 (the counters' names, re-exported)
    ALLOC_BYTES,
    Row,
    GC_COLLECTIONS,
    GC_SECONDS,
    REQUESTS_IN,
    REQUESTS_OUT,
    RUNTIME_COUNTERS,
    SourceUnavailable,
)

COUNTERS = RUNTIME_COUNTERS
# Twice a second: a round costs ~0.5 ms of Python with a JVM, ~1.5 ms with a scrape too (measured
# on a 2-core VM beside the 1 kHz sampler, caches cold), and detection needs no more (10 s bar).
DEFAULT_RATE_HZ = 2.0
# New JVMs are looked for this often (a scan of /proc: a few ms on a busy host).
DISCOVER_EVERY_S = 10.0
# Lost sources (exited JVMs) still shown; older ones are forgotten.
MAX_LOST = 16


class RuntimeSource(Protocol):
    """What the poller reads: a JVM's performance file, a scrape target, ..."""

    @property
    def name(self) -> str:
        """What the user sees: "jvm 1234", "scrape http://127.0.0.1:9090/metrics"."""
        ...

    @property
    def runtime(self) -> str:
        """"jvm", "go", "service", ..."""
        ...

    @property
    def pid(self) -> Optional[int]:
        """The process, when known."""
        ...

    def read(self) -> Mapping[str, float]:
        """The COUNTERS it has, by name (any subset); SourceUnavailable with the reason once
        it cannot read (the process exited, the target stopped answering)."""
        ...

    def close(self) -> None: ...

    # Optional: `retries = True` for a source whose failure may pass (a scrape target that is
    # down a moment): it is read again every round instead of being dropped as lost.


class RuntimeTrack:
    """The accumulators of one source. One writer (the poller); any reader (the monitor)."""

    def __init__(self, source: RuntimeSource, half_life_s: float, ratio_points: int) -> None:
        self.source = source
        self.rates: Dict[str, EwmaRate] = {name: EwmaRate(half_life_s) for name in COUNTERS}
        self.ratio = RatioWindow(ratio_points, min_denominator=1.0)
        self._last: Dict[str, float] = {}
        # written by the poller only; a str or bool assignment is atomic for readers (the GIL)
        self.read = False          # read at least once
        self.lost = False          # it failed: never read again
        self.reason = "not read yet"
        self.recognised: Tuple[str, ...] = ()
        # a recording's tap (coherence.record): told every reading and every loss
        self.tap: Optional["RuntimeTap"] = None

    def update(self, t: float, values: Mapping[str, float]) -> None:
        """Take one reading at monotonic time t (a source that came back is no longer lost)."""
        self.lost = False
        for name in COUNTERS:
            value = values.get(name)
            if value is not None and math.isfinite(value):
                self.rates[name].update(t, value)
        self._feed_ratio(values)
        self.recognised = tuple(name for name in COUNTERS if name in values)
        self.read, self.reason = True, "read"
        if self.tap is not None:
            self.tap.read(self, t, values)

    def _feed_ratio(self, values: Mapping[str, float]) -> None:
        out, in_ = values.get(REQUESTS_OUT), values.get(REQUESTS_IN)
        if out is None or in_ is None:
            self._last.pop(REQUESTS_OUT, None)
            return
        if REQUESTS_OUT in self._last:
            d_out, d_in = out - self._last[REQUESTS_OUT], in_ - self._last[REQUESTS_IN]
            # a counter that went down was reset (the service restarted): count from its value
            self.ratio.update(d_out if d_out >= 0 else out, d_in if d_in >= 0 else in_)
        self._last[REQUESTS_OUT], self._last[REQUESTS_IN] = out, in_

    def lose(self, reason: str) -> None:
        self.lost, self.reason = True, reason
        if self.tap is not None:
            self.tap.lost(self, reason)

    def snapshot(self) -> RuntimeProcess:
        r = {name: rate.rate for name, rate in self.rates.items()}
        ratio = self.ratio.snapshot()
        s = self.source
        return RuntimeProcess(
            name=s.name, runtime=s.runtime, pid=s.pid, available=self.read and not self.lost,
            lost=self.lost, reason=self.reason, recognised=self.recognised,
            gc_share=r[GC_SECONDS], collections_per_s=r[GC_COLLECTIONS],
            alloc_bytes_per_s=r[ALLOC_BYTES], requests_in_per_s=r[REQUESTS_IN],
            requests_out_per_s=r[REQUESTS_OUT], ratio=ratio.ratio,
            ingress_in_window=ratio.denominator)


class RuntimeTap(Protocol):
    """What a recording (coherence.record) is told, from the poller's thread."""

    def read(self, track: RuntimeTrack, t: float, values: Mapping[str, float]) -> None: ...

    def lost(self, track: RuntimeTrack, reason: str) -> None: ...


class RuntimeBoard:
    """Every runtime source's track. Signals owns the board; the poller adds and writes tracks."""

    def __init__(self, half_life_s: float = 1.0, ratio_points: int = 20) -> None:
        self.half_life_s, self.ratio_points = half_life_s, ratio_points
        self._tracks: Tuple[RuntimeTrack, ...] = ()      # replaced whole: readers never lock
        self._tap: Optional[RuntimeTap] = None

    def set_tap(self, tap: Optional[RuntimeTap]) -> None:
        """Tell ``tap`` every reading and loss of every track, present and to come."""
        self._tap = tap
        for track in self._tracks:
            track.tap = tap

    def add(self, source: RuntimeSource) -> RuntimeTrack:
        """A track for ``source``; one lost under the same name (a JVM whose pid came back) goes,
        and only the last MAX_LOST lost tracks are kept to be shown."""
        track = RuntimeTrack(source, self.half_life_s, self.ratio_points)
        track.tap = self._tap
        kept = [t for t in self._tracks if not (t.lost and t.source.name == source.name)]
        lost = [t for t in kept if t.lost]
        if len(lost) > MAX_LOST:
            drop = {id(t) for t in lost[:len(lost) - MAX_LOST]}
            kept = [t for t in kept if id(t) not in drop]
        self._tracks = tuple(kept) + (track,)
        return track

    @property
    def tracks(self) -> Tuple[RuntimeTrack, ...]:
        return self._tracks

    def snapshot(self) -> Tuple[RuntimeProcess, ...]:
        return tuple(track.snapshot() for track in self._tracks)


class RuntimePoller:
    """One thread reading every runtime source at ``rate_hz`` on absolute deadlines (a late
    round skips ahead; none is made up), writing the board. A source that fails is marked lost
    with its reason and closed, once; the others go on."""

    def __init__(self, board: RuntimeBoard, rate_hz: float = DEFAULT_RATE_HZ,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not (rate_hz > 0 and math.isfinite(rate_hz)):
            raise ValueError(f"rate_hz must be a positive number, got {rate_hz!r}")
        self.board, self.period_s, self.clock = board, 1.0 / rate_hz, clock
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.rounds = self.skipped = 0
        self._discover: Optional[Callable[[], Iterable[RuntimeSource]]] = None
        self._discover_every_s = DISCOVER_EVERY_S
        self._discovered_at = -math.inf
        self._changed: Optional[Callable[[], object]] = None
        self._token: object = None
        self.discover_error = ""

    def add(self, source: RuntimeSource) -> RuntimeTrack:
        return self.board.add(source)

    def watch(self, discover: Callable[[], Iterable[RuntimeSource]],
              every_s: float = DISCOVER_EVERY_S,
              changed: Optional[Callable[[], object]] = None) -> None:
        """Call ``discover`` now and every ``every_s`` from the poller's thread, and at once
        whenever ``changed()`` (cheap, called every round) returns something new; each source
        it returns whose name is not tracked yet (or was lost) is added."""
        self._discover, self._discover_every_s = discover, every_s
        self._changed = changed
        self._token = changed() if changed is not None else None
        self.discover_now()

    def discover_now(self) -> None:
        if self._discover is None:
            return
        self._discovered_at = self.clock()
        live = {t.source.name for t in self.board.tracks if not t.lost}
        for source in self._discover():
            if source.name in live:
                source.close()
            else:
                self.board.add(source)

    def _due(self) -> bool:
        """Time for a discovery: every_s since the last, or what `changed` watches changed."""
        due = self.clock() - self._discovered_at >= self._discover_every_s
        if self._changed is not None:
            token = self._changed()
            due = due or token != self._token
            self._token = token
        return due

    def poll_once(self) -> None:
        """Read every live source once (the thread's round; tests call it directly)."""
        for track in self.board.tracks:
            retries = getattr(track.source, "retries", False)
            if track.lost and not retries:
                continue
            try:
                values = track.source.read()
            except SourceUnavailable as err:
                track.lose(str(err))
                if not retries:
                    track.source.close()
                continue
            track.update(self.clock(), values)
        self.rounds += 1

    def _run(self) -> None:
        deadline = self.clock()
        while not self._stop.is_set():
            if self._due():
                try:
                    self.discover_now()
                except Exception as err:    # a scan that failed is retried; the reads go on
                    self.discover_error = f"{type(err).__name__}: {err}"
            self.poll_once()
            deadline += self.period_s
            now = self.clock()
            if now > deadline:                   # overran: skip to the next deadline
                missed = int((now - deadline) / self.period_s) + 1
                self.skipped += missed
                deadline += missed * self.period_s
            self._stop.wait(deadline - now)

    def start(self) -> "RuntimePoller":
        if self._thread is not None:
            raise RuntimeError("a RuntimePoller starts once")
        self._thread = threading.Thread(target=self._run, name="coherence-runtime", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        for track in self.board.tracks:
            track.source.close()

    def __enter__(self) -> "RuntimePoller":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def rows(config: Any, pid: Optional[int] = None) -> List[Row]:
    """A `coherence sources` row per JVM found (only ``pid``'s with it) and per scrape target of
    ``config``: each read once, saying what it gives, or why it cannot be read."""
    from coherence.sources.jvm import jvm_runtimes
    from coherence.sources.scrape import scrape_runtimes
    runtimes, unreadable = jvm_runtimes(pid)
    found: List[Any] = [*runtimes, *scrape_runtimes(config)]
    out = [Row("runtime", f"jvm {t.pid}", False, False, config.sampler.runtime_hz, t.reason)
           for t in unreadable]
    for source in found:
        try:
            what = source.describe()
            out.append(Row("runtime", source.name, True, True, config.sampler.runtime_hz, what))
        except SourceUnavailable as err:
            out.append(Row("runtime", source.name, False, False, config.sampler.runtime_hz, str(err)))
        finally:
            source.close()
    return out


def describe(board: RuntimeBoard) -> List[str]:
    """One line per runtime source for `coherence sources`: what it read, or why not."""
    lines = []
    for track in board.tracks:
        if track.lost:
            lines.append(f"{track.source.name}: lost: {track.reason}")
        else:
            what = ", ".join(track.recognised) or "nothing recognised yet"
            lines.append(f"{track.source.name}: {'in use' if track.read else 'starting'}: {what}")
    return lines
