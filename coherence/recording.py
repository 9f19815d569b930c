"""The recording format that `coherence record` writes and `coherence replay` reads: JSON lines
(gzip-compressed when the file name ends in .gz), a header, then one chunk a second holding every
series read since the last, then an end record. The reader says in one line what is wrong.

    {"format": "coherence-recording", "version": 1, "host": ..., "ncpu": 2.0, ...}   header
    {"t": 1000000, "steps": [250000, ...], "series": {"cpu_util_pct": {"t": [...], "v": [...]},
     "minor_faults_total": {"t": [...], "dv": [...]}}, "tracks": [...], "runtime": [...]}   chunk
    {"end": "interrupted", "t": 61250000, "gaps": 0}                                   end

Times are integer microseconds since the recording started (the sampler's monotonic clock),
delta-encoded within a series (the first absolute); integral values (counters) are delta-encoded
as "dv", others written as "v". docs/recording.md describes every key.
"""
from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from dataclasses import dataclass, field
from typing import IO, Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from coherence._sampler import Slot
from coherence.sampler import SLOTS

FORMAT = "coherence-recording"
VERSION = 1
CPU_SERIES = "cpu_util_pct"          # one value per CPU bucket, at the time the bucket closed
# Every series a recording may hold, and the engine slot it is: the sampler's vocabulary.
SERIES: Dict[str, Slot] = {CPU_SERIES: Slot.CPU_NS, **SLOTS,
                           "ingress_total": Slot.INGRESS, "egress_total": Slot.EGRESS}
SERIES_OF_SLOT: Dict[int, str] = {int(slot): name for name, slot in SERIES.items()
                                  if name != "cpu_usage_ns_total"}
# Which family (coherence sources) feeds each slot: the header names the source per family.
FAMILY: Dict[int, str] = {
    Slot.CPU_NS: "cpu", Slot.MINOR_FAULTS: "memory", Slot.PGALLOC: "memory",
    Slot.PGFREE: "memory", Slot.RESIDENT_BYTES: "memory", Slot.MEM_TOTAL_BYTES: "memory",
    Slot.PSI_CPU_US: "pressure", Slot.PSI_MEMORY_US: "pressure", Slot.PSI_IO_US: "pressure",
    Slot.INGRESS: "pushed", Slot.EGRESS: "pushed", Slot.TCP_PASSIVE: "requests",
    Slot.TCP_ACTIVE: "requests"}
US = 1_000_000                      # time unit of the file: microseconds
EXACT = 2.0 ** 53                   # integers up to this survive float arithmetic exactly
CPU_DECIMALS = 3                    # a bucket's utilization to 0.001 points of %
GZIP_MAGIC = b"\x1f\x8b"


class RecordingError(ValueError):
    """A recording that cannot be read (further); ``str(err)`` is one line for the user.
    ``truncated``: the file ends in the middle of a record or without its end record (the
    recorder was killed), as opposed to a record that is not one."""

    def __init__(self, message: str, truncated: bool = False) -> None:
        super().__init__(message)
        self.truncated = truncated


@dataclass(frozen=True)
class Header:
    """Where and how the recording was made."""

    version: int
    coherence: str                     # the version that recorded it
    host: str
    kernel: str
    started_at: float                  # wall clock (Unix seconds) of t = 0
    ncpu: float                        # CPUs the utilization is normalized to
    ncpu_reason: str
    hz: float                          # the sampler's rates, as really run
    slow_hz: float
    runtime_hz: float
    resolution_s: float                # the CPU buckets'
    pid: Optional[int]                 # the watched process (None: the host or container)
    sources: Dict[str, str]            # family -> the source read
    available: Tuple[str, ...]         # families with a source
    settings: Dict[str, Any]           # the Config it judged with (coherence.config.as_dict)
    origin: str = "recording"          # "recording", or "prometheus" for a query_range import
    unavailable: Dict[str, str] = field(default_factory=dict)   # detector -> why it cannot judge

    def as_json(self) -> Dict[str, Any]:
        return {"format": FORMAT, "version": self.version, "coherence": self.coherence,
                "host": self.host, "kernel": self.kernel, "started_at": self.started_at,
                "ncpu": self.ncpu, "ncpu_reason": self.ncpu_reason, "hz": self.hz,
                "slow_hz": self.slow_hz, "runtime_hz": self.runtime_hz,
                "resolution_s": self.resolution_s, "pid": self.pid, "sources": self.sources,
                "available": list(self.available), "settings": self.settings}


@dataclass(frozen=True)
class Track:
    """A runtime source (coherence.runtime) as recorded: declared once, then read or lost."""

    index: int
    name: str
    runtime: str
    pid: Optional[int]


@dataclass(frozen=True)
class Chunk:
    """What was read over about one second; times in seconds since the start."""

    end_s: float
    steps: Tuple[float, ...]                                   # when the live monitor judged
    series: Dict[str, Tuple[List[float], List[float]]]         # name -> (times, values)
    tracks: Tuple[Track, ...] = ()                             # runtime sources first seen
    runtime: Tuple[Tuple[float, int, Optional[Dict[str, float]], str], ...] = ()
    lost: Tuple[Tuple[float, str], ...] = ()                   # (time, series) gone unreadable
    gaps: int = 0                                              # values the recorder missed


@dataclass(frozen=True)
class End:
    end_s: float
    reason: str                        # "duration", "interrupted"
    gaps: int


# ---------------------------------------------------------------------------------- encoding
def encode_times(times: Sequence[float]) -> List[int]:
    """Seconds -> integer microseconds, the first absolute, the others as differences."""
    us = [int(round(t * US)) for t in times]
    return us[:1] + [b - a for a, b in zip(us, us[1:])]


def decode_times(deltas: Sequence[int]) -> List[float]:
    out, acc = [], 0
    for d in deltas:
        acc += d
        out.append(acc / US)
    return out


def encode_values(values: Sequence[float], decimals: Optional[int] = None) -> Dict[str, List[Any]]:
    """Counters (integral values) as differences ("dv"); anything else as is ("v")."""
    if all(math.isfinite(v) and float(v).is_integer() and abs(v) < EXACT for v in values):
        ints = [int(v) for v in values]
        return {"dv": ints[:1] + [b - a for a, b in zip(ints, ints[1:])]}
    if decimals is not None:
        return {"v": [round(float(v), decimals) if math.isfinite(v) else None for v in values]}
    return {"v": [float(v) if math.isfinite(v) else None for v in values]}


def decode_values(obj: Mapping[str, Any]) -> List[float]:
    if "dv" in obj:
        out, acc = [], 0
        for d in obj["dv"]:
            acc += int(d)
            out.append(float(acc))
        return out
    return [math.nan if v is None else float(v) for v in obj["v"]]


def encode_chunk(chunk: Chunk) -> Dict[str, Any]:
    out: Dict[str, Any] = {"t": int(round(chunk.end_s * US)),
                           "steps": encode_times(chunk.steps), "series": {}}
    for name, (times, values) in chunk.series.items():
        if times:
            decimals = CPU_DECIMALS if name == CPU_SERIES else None
            out["series"][name] = {"t": encode_times(times), **encode_values(values, decimals)}
    if chunk.tracks:
        out["tracks"] = [{"i": t.index, "name": t.name, "runtime": t.runtime, "pid": t.pid}
                         for t in chunk.tracks]
    if chunk.runtime:
        out["runtime"] = [[int(round(t * US)), i, values, reason]
                          for t, i, values, reason in chunk.runtime]
    if chunk.lost:
        out["lost"] = [[int(round(t * US)), name] for t, name in chunk.lost]
    if chunk.gaps:
        out["gaps"] = chunk.gaps
    return out


def end_record(end: End) -> Dict[str, Any]:
    return {"end": end.reason, "t": int(round(end.end_s * US)), "gaps": end.gaps}


# ---------------------------------------------------------------------------------- writing
def open_for_writing(path: str) -> IO[str]:
    """A text stream to ``path``: gzip-compressed when the name ends in .gz (flushed whole at
    every record, so that a recorder killed later leaves every record before readable)."""
    try:
        if path.endswith(".gz"):
            return io.TextIOWrapper(gzip.open(path, "wb", compresslevel=6), encoding="utf-8",
                                    newline="\n")
        return open(path, "w", encoding="utf-8", newline="\n")
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err}") from None


def write_record(stream: IO[str], record: Mapping[str, Any]) -> None:
    stream.write(json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n")
    stream.flush()      # gzip: a sync flush, every record stands on its own


# ---------------------------------------------------------------------------------- reading
def _lines(path: str) -> Iterator[Tuple[int, str, bool]]:
    """(line number, text, complete) of the file, gunzipped if it is gzip (by its magic, not
    its name). A gzip stream cut short ends the lines; its last partial line is incomplete."""
    try:
        raw = open(path, "rb")
    except OSError as err:
        raise RecordingError(f"{path}: {err.strerror or err}") from None
    with raw:
        magic = raw.read(2)
        raw.seek(0)
        binary: Any = gzip.GzipFile(fileobj=raw) if magic == GZIP_MAGIC else raw
        n, pending = 0, b""
        try:
            for line in binary:
                n += 1
                if not line.endswith(b"\n"):
                    pending = line
                    break
                yield n, line.decode("utf-8", errors="replace"), True
        except (EOFError, zlib.error, gzip.BadGzipFile) as err:
            # a gzip stream cut short (the recorder was killed): what came before stands
            if isinstance(err, EOFError) or n > 0:
                if pending:
                    yield n, pending.decode("utf-8", errors="replace"), False
                raise RecordingError(f"{path}: truncated after line {n} (the compressed "
                                     "stream ends early: was the recorder killed?)",
                                     truncated=True) from None
            raise RecordingError(f"{path}: not a readable gzip file ({err})") from None
        if pending:
            yield n, pending.decode("utf-8", errors="replace"), False


def parse_header(obj: Any, where: str) -> Header:
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise RecordingError(f"{where}: not a coherence recording (its first line is no "
                             f"{FORMAT} header)")
    version = obj.get("version")
    if version != VERSION:
        raise RecordingError(f"{where}: recording format version {version!r}; this coherence "
                             f"reads version {VERSION}")
    try:
        sources = {str(k): str(v) for k, v in obj["sources"].items()}
        settings = obj["settings"]
        if not isinstance(settings, dict):
            raise TypeError("settings")
        header = Header(
            version=int(version), coherence=str(obj["coherence"]), host=str(obj["host"]),
            kernel=str(obj.get("kernel", "")), started_at=float(obj["started_at"]),
            ncpu=float(obj["ncpu"]), ncpu_reason=str(obj.get("ncpu_reason", "")),
            hz=float(obj["hz"]), slow_hz=float(obj["slow_hz"]),
            runtime_hz=float(obj["runtime_hz"]), resolution_s=float(obj["resolution_s"]),
            pid=None if obj.get("pid") is None else int(obj["pid"]), sources=sources,
            available=tuple(str(f) for f in obj["available"]), settings=settings)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise RecordingError(f"{where}: a header without a valid {err}") from None
    for name in ("ncpu", "hz", "slow_hz", "runtime_hz", "resolution_s"):
        value = getattr(header, name)
        if not (math.isfinite(value) and value > 0):
            raise RecordingError(f"{where}: header {name} must be a positive number, got {value!r}")
    return header


def parse_record(obj: Any, where: str) -> Union[Chunk, End]:
    """One record after the header, checked: RecordingError naming what is wrong."""
    if not isinstance(obj, dict):
        raise RecordingError(f"{where}: not a record (a JSON object)")
    try:
        if "end" in obj:
            return End(int(obj["t"]) / US, str(obj["end"]), int(obj.get("gaps", 0)))
        series: Dict[str, Tuple[List[float], List[float]]] = {}
        for name, s in obj["series"].items():
            if name not in SERIES:
                raise RecordingError(f"{where}: unknown series {name!r}")
            times, values = decode_times(s["t"]), decode_values(s)
            if len(times) != len(values):
                raise RecordingError(f"{where}: series {name} has {len(times)} times for "
                                     f"{len(values)} values")
            if any(b < a for a, b in zip(times, times[1:])):
                raise RecordingError(f"{where}: series {name} goes back in time")
            series[name] = (times, values)
        tracks = tuple(Track(int(t["i"]), str(t["name"]), str(t["runtime"]),
                             None if t.get("pid") is None else int(t["pid"]))
                       for t in obj.get("tracks", ()))
        runtime = tuple((int(t) / US, int(i), None if values is None else
                         {str(k): float(v) for k, v in values.items()}, str(reason))
                        for t, i, values, reason in obj.get("runtime", ()))
        lost = tuple((int(t) / US, str(name)) for t, name in obj.get("lost", ()))
        for _, name in lost:
            if name not in SERIES:
                raise RecordingError(f"{where}: unknown series {name!r} lost")
        return Chunk(int(obj["t"]) / US, tuple(decode_times(obj["steps"])), series, tracks,
                     runtime, lost, int(obj.get("gaps", 0)))
    except RecordingError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        what = f"no {err}" if isinstance(err, KeyError) else str(err)
        raise RecordingError(f"{where}: a malformed record ({what})") from None


class Recording:
    """A recording file opened for reading: ``header`` at once; ``records()`` the chunks, in
    order, then the End; RecordingError at the first record that is not one (what came before
    has been yielded)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lines = _lines(path)
        try:
            n, text, complete = next(self._lines)
        except StopIteration:
            raise RecordingError(f"{path}: empty file, not a coherence recording") from None
        where = f"{path} line {n}"
        try:
            obj = json.loads(text)
        except ValueError:
            raise RecordingError(f"{where}: not a coherence recording (not JSON lines)") from None
        self.header = parse_header(obj, where)

    def records(self) -> Iterator[Union[Chunk, End]]:
        n = 1
        for n, text, complete in self._lines:
            where = f"{self.path} line {n}"
            try:
                obj = json.loads(text)
            except ValueError:
                if not complete:
                    raise RecordingError(f"{where}: truncated (the last record is incomplete: "
                                         "was the recorder killed?)", truncated=True) from None
                raise RecordingError(f"{where}: not JSON") from None
            record = parse_record(obj, where)
            yield record
            if isinstance(record, End):
                return
        raise RecordingError(f"{self.path}: ends after line {n} without its end record (was "
                             "the recorder killed?)", truncated=True)
