"""`coherence record`: the raw signals the detectors judge, as the live sampler reads them, into a
recording (coherence.recording) that `coherence replay` plays through the same accumulators,
detectors and verdicts. Taps on the engine (every CPU bucket, every slow counter read, with the
time of its read) and on the runtime board are drained once a second, off the tick.

    sentinel = Sentinel.from_config(config, sinks=[...])
    with Recorder.attach("incident.jsonl.gz", sentinel, config) as recorder, sentinel:
        sentinel.run(60, on_report=recorder.poll)
"""
from __future__ import annotations

import collections
import math
import os
import socket
import time
from typing import IO, Any, Callable, Deque, Dict, List, Mapping, Optional, Tuple

import numpy as np

from coherence import __version__
from coherence._core import RingBuffer
from coherence._sampler import Slot
from coherence.config import Config, as_dict
from coherence.monitor import Monitor, Report
from coherence.recording import (SERIES_OF_SLOT, VERSION, Chunk, End, Header, Track,
                                 encode_chunk, end_record, open_for_writing, write_record)
from coherence.runtime import RuntimeTrack
from coherence.sampler import Sampler

CHUNK_S = 1.0          # a record a second: a killed recorder loses at most this much
# The taps hold this many seconds of reads between drains (a drain is due every CHUNK_S; the
# margin covers a main loop held up by a slow sink).
TAP_SECONDS = 30.0


def _stable(ring: RingBuffer) -> Tuple[np.ndarray, int]:
    """The ring's values and how many were ever pushed, read consistently with each other."""
    while True:
        total = ring.total
        values = ring.to_array()
        if ring.total == total:
            return values, total


def _since(values: np.ndarray, total: int, start: int, stop: int) -> Tuple[np.ndarray, int]:
    """Values number [start, stop) of a ring holding numbers [total - len, total), and how
    many of them were overwritten before being read."""
    first = total - len(values)
    lost = max(0, first - start)
    lo = max(start, first) - first
    return values[lo:max(lo, stop - first)], lost


class _Tap:
    """One slot's pair of rings (values, times) and how far they were drained."""

    def __init__(self, capacity: int) -> None:
        self.values, self.times = RingBuffer(capacity), RingBuffer(capacity)
        self.seen = 0

    def drain(self) -> Tuple[np.ndarray, np.ndarray, int]:
        """(times, values, missed) pushed since the last drain; a time is pushed after its
        value, so every time read has its value."""
        times, t_total = _stable(self.times)
        values, v_total = _stable(self.values)
        t_new, t_lost = _since(times, t_total, self.seen, t_total)
        v_new, v_lost = _since(values, v_total, self.seen, t_total)
        n = min(len(t_new), len(v_new))
        self.seen = t_total
        return t_new[len(t_new) - n:], v_new[len(v_new) - n:], max(t_lost, v_lost)


class Recorder:
    """Drains the sampler's taps and the runtime board into a recording file, a chunk a second;
    ``close()`` (or leaving ``with``) drains the rest and writes the end record."""

    def __init__(self, path: str, sampler: Sampler, monitor: Monitor, config: Config, *,
                 stream: Optional[IO[str]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self.path, self.sampler, self.monitor, self.clock = path, sampler, monitor, clock
        rate: Dict[int, float] = {Slot.CPU_NS: 1.0 / sampler.resolution_s}
        self.taps: Dict[int, _Tap] = {}
        for slot in SERIES_OF_SLOT:
            per_s = rate.get(slot, sampler.signals.slow_hz)
            self.taps[slot] = _Tap(max(256, int(math.ceil(per_s * TAP_SECONDS))))
            sampler.engine.feed_tap(slot, self.taps[slot].values, self.taps[slot].times)
        self._runtime: Deque[Tuple[float, RuntimeTrack, Optional[Dict[str, float]], str]] = \
            collections.deque()
        self._tracks: Dict[int, int] = {}           # id(track) -> index in the file
        self._track_refs: List[RuntimeTrack] = []   # kept alive: their ids stay theirs
        sampler.signals.runtime.set_tap(self)
        self.t0 = clock()
        self._wall0 = wall()
        self._steps: List[float] = []
        self._lost: List[Tuple[float, str]] = []
        self._lost_seen = [False] * len(Slot)
        self._next_chunk = self.t0 + CHUNK_S
        self.gaps = 0
        self.chunks = 0
        self.end_reason = "interrupted"
        self._stream: Optional[IO[str]] = stream if stream is not None else open_for_writing(path)
        write_record(self._stream, self.header(config).as_json())

    @classmethod
    def attach(cls, path: str, sentinel: Any, config: Config,
               stream: Optional[IO[str]] = None) -> "Recorder":
        """A recorder on a Sentinel that has not started yet (its engine takes the taps);
        ``stream``: ``path`` already opened (coherence.recording.open_for_writing)."""
        return cls(path, sentinel.sampler, sentinel.monitor, config, stream=stream)

    def header(self, config: Config) -> Header:
        s = self.sampler
        uname = os.uname()
        return Header(
            version=VERSION, coherence=__version__, host=socket.gethostname(),
            kernel=f"{uname.sysname} {uname.release}", started_at=self._wall0, ncpu=s.ncpu,
            ncpu_reason=s.ncpu_reason, hz=s.hz, slow_hz=s.signals.slow_hz,
            runtime_hz=config.sampler.runtime_hz, resolution_s=s.resolution_s, pid=s.pid,
            sources={family: c.source.name for family, c in s.chosen.items()
                     if c.source is not None},
            available=tuple(sorted(s.signals.available)), settings=as_dict(config))

    # ------------------------------------------------------------------ the runtime tap
    def read(self, track: RuntimeTrack, t: float, values: Mapping[str, float]) -> None:
        """The poller's thread: one reading of a runtime source."""
        self._runtime.append((t, track, {k: float(v) for k, v in values.items()}, ""))

    def lost(self, track: RuntimeTrack, reason: str) -> None:
        self._runtime.append((self.clock(), track, None, reason))

    # ------------------------------------------------------------------ the main loop's side
    def poll(self, report: Optional[Report] = None) -> None:
        """After each step of the monitor: note when it judged; a chunk when one is due."""
        now = self.clock()
        start = self.monitor.started_at
        if report is not None and start is not None:
            self._steps.append(start + report.elapsed_s - self.t0)
        lost = self.sampler.signals.gauges.state()[2]
        for slot, name in SERIES_OF_SLOT.items():
            if lost[slot] and not self._lost_seen[slot]:
                self._lost_seen[slot] = True
                self._lost.append((now - self.t0, name))
        if now >= self._next_chunk:
            self._next_chunk = now + CHUNK_S
            self._write_chunk(now)

    def _write_chunk(self, now: float) -> None:
        series: Dict[str, Tuple[List[float], List[float]]] = {}
        gaps = 0
        for slot, tap in self.taps.items():
            times, read, missed = tap.drain()
            gaps += missed
            if len(times):
                series[SERIES_OF_SLOT[slot]] = ((times - self.t0).tolist(), read.tolist())
        tracks, runtime = [], []
        while self._runtime:
            t, track, values, reason = self._runtime.popleft()
            index = self._tracks.get(id(track))
            if index is None:
                index = self._tracks[id(track)] = len(self._tracks)
                self._track_refs.append(track)
                s = track.source
                tracks.append(Track(index, s.name, s.runtime, s.pid))
            runtime.append((t - self.t0, index, values, reason))
        self.gaps += gaps
        chunk = Chunk(now - self.t0, tuple(self._steps), series, tuple(tracks), tuple(runtime),
                      tuple(self._lost), gaps)
        self._steps, self._lost = [], []
        if self._stream is not None:
            write_record(self._stream, encode_chunk(chunk))
            self.chunks += 1

    def close(self) -> None:
        """Drain what is left, write the end record and close the file (once)."""
        if self._stream is None:
            return
        try:
            now = self.clock()
            self._write_chunk(now)
            write_record(self._stream, end_record(End(now - self.t0, self.end_reason, self.gaps)))
        finally:
            self.sampler.signals.runtime.set_tap(None)
            stream, self._stream = self._stream, None
            stream.close()

    def __enter__(self) -> "Recorder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def size_bytes(self) -> int:
        try:
            return os.path.getsize(self.path)
        except OSError:
            return 0
