"""A JVM's own GC and allocation counters, from HotSpot's performance-data file (what jstat reads).

The kernel cannot see a managed heap being reused: a JVM in a GC death spiral raises no page
faults. HotSpot publishes its counters in ``/tmp/hsperfdata_<user>/<pid>`` with no configuration;
this module finds those files, parses them and turns them into ``JvmCounters``.

>>> for target in discover_jvms():                      # doctest: +SKIP
...     with JvmReader(target) as reader:
...         counters = reader.read()                     # None until the JVM is ready
"""
from __future__ import annotations

import errno
import logging
import math
import os
import re
import struct
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Callable, Container, Dict, List, Mapping, Optional, Pattern, Tuple, Union

from coherence.sources._base import (
    ALLOC_BYTES,
    GC_COLLECTIONS,
    GC_SECONDS,
    SourceUnavailable,
    check_pid,
    open_readonly,
    os_error_reason,
)

log = logging.getLogger("coherence.sources.jvm")

# --- the file format (OpenJDK perfMemory.hpp, PerfDataBuffer.java v2_0) -----------------------
# The magic is always stored big-endian; everything after byte_order is in that byte order.
PERFDATA_MAGIC = 0xCAFEC0C0
PERFDATA_MAJOR_VERSION = 2  # 2.0 since JDK 1.5; 1.0 had another entry layout
# magic, byte_order, major, minor, accessible | used, overflow, mod_time_stamp, entry_offset, num_entries
_PROLOGUE_HEAD = struct.Struct(">IBBBB")
_PROLOGUE_TAIL = "iiqii"
PROLOGUE_SIZE = 32
# entry_length, name_offset, vector_length, data_type, flags, data_units, data_variability, data_offset
_ENTRY = "iiibbbbi"
ENTRY_HEADER_SIZE = 20
TYPE_LONG = ord("J")
TYPE_BYTE = ord("B")
UNITS_STRING = 5  # perfData.hpp: U_None=1, U_Bytes=2, U_Ticks=3, U_Events=4, U_String=5, U_Hertz=6
# A JDK 17 JVM publishes ~220 entries in 32 KiB (-XX:PerfDataMemorySize, default 32k); these caps
# only bound the work a garbled or hostile file can cause.
MAX_ENTRIES = 100_000
MAX_READ_BYTES = 1 << 20
MAX_NAME_BYTES = 1024

Value = Union[int, str]


class PerfDataError(ValueError):
    """The bytes are not a usable performance-data buffer; ``str(err)`` is the one-line reason."""


class PerfDataNotReady(PerfDataError):
    """The JVM has not finished initialising the buffer (its ``accessible`` flag is 0)."""


@dataclass(frozen=True)
class PerfData:
    """One parsed hsperfdata buffer: the prologue and every long or string entry by name."""

    byte_order: str            # "big" or "little"
    major_version: int
    minor_version: int
    accessible: bool
    used_bytes: int
    overflow_bytes: int
    mod_time_stamp: int        # ticks of the last structural change (an entry added)
    entry_offset: int
    num_entries: int
    values: Mapping[str, Value] = field(default_factory=lambda: MappingProxyType({}))

    def long(self, name: str) -> Optional[int]:
        """The long counter ``name``, or None when absent (or a string)."""
        value = self.values.get(name)
        return value if isinstance(value, int) else None

    def string(self, name: str) -> Optional[str]:
        value = self.values.get(name)
        return value if isinstance(value, str) else None


# Where an entry's value lies in the buffer: (offset, 0) for a long, (offset, length) for a string.
Place = Tuple[int, int]


def parse_perfdata(data: bytes, where: Optional[Dict[str, Place]] = None) -> PerfData:
    """Parse a whole hsperfdata file; any malformed input raises PerfDataError with the reason.

    Work is bounded by ``MAX_ENTRIES`` and the buffer's length. Longs (type 'J', scalar) are ints,
    byte vectors with units "string" are str (up to the first NUL); other entries are skipped.
    A buffer whose ``accessible`` flag is 0 raises PerfDataNotReady. With ``where``, each value's
    place is recorded in it (for ``PerfLayout``).
    """
    size = len(data)
    if size < PROLOGUE_SIZE:
        raise PerfDataError(f"short buffer: {size} bytes, the prologue needs {PROLOGUE_SIZE}")
    magic, order, major, minor, accessible = _PROLOGUE_HEAD.unpack_from(data, 0)
    if magic != PERFDATA_MAGIC:
        raise PerfDataError(f"bad magic 0x{magic:08x} (expected 0x{PERFDATA_MAGIC:08x})")
    if order not in (0, 1):
        raise PerfDataError(f"bad byte order flag {order}")
    if major != PERFDATA_MAJOR_VERSION:
        raise PerfDataError(f"unsupported perfdata version {major}.{minor}")
    bo = "<" if order == 1 else ">"
    used, overflow, mod_time, entry_offset, num_entries = struct.unpack_from(
        bo + _PROLOGUE_TAIL, data, 8)
    if not accessible:
        raise PerfDataNotReady("not ready: the JVM is still initialising its performance data")
    if not PROLOGUE_SIZE <= used <= size:
        raise PerfDataError(f"used size {used} outside the {size} bytes read")
    if not 0 <= num_entries <= min(MAX_ENTRIES, used // ENTRY_HEADER_SIZE):
        raise PerfDataError(f"absurd entry count {num_entries} for {used} bytes")
    if entry_offset % 4 or not PROLOGUE_SIZE <= entry_offset <= used:
        raise PerfDataError(f"entry offset {entry_offset} outside the used {used} bytes")
    values = _parse_entries(data, bo, used, entry_offset, num_entries, where)
    return PerfData("little" if order == 1 else "big", major, minor, bool(accessible), used,
                    overflow, mod_time, entry_offset, num_entries, MappingProxyType(values))


def _parse_entries(data: bytes, bo: str, limit: int, offset: int, count: int,
                   where: Optional[Dict[str, Place]] = None) -> Dict[str, Value]:
    header = struct.Struct(bo + _ENTRY)
    long_ = struct.Struct(bo + "q")
    values: Dict[str, Value] = {}
    for index in range(count):
        if offset + ENTRY_HEADER_SIZE > limit:
            raise PerfDataError(f"entry {index} at {offset} runs past the used {limit} bytes")
        length, name_at, vector, dtype, _flags, units, _var, data_at = header.unpack_from(data, offset)
        if length == 0:  # the end of the entries written so far
            break
        if length < ENTRY_HEADER_SIZE or length % 4 or offset + length > limit:
            raise PerfDataError(f"entry {index} at {offset}: bad length {length}")
        if not ENTRY_HEADER_SIZE <= name_at < data_at <= length or vector < 0:
            raise PerfDataError(f"entry {index} at {offset}: name/data offsets {name_at}/{data_at} "
                                f"outside its {length} bytes")
        name_end = data.find(b"\0", offset + name_at, offset + data_at)
        if name_end < 0:
            raise PerfDataError(f"entry {index} at {offset}: name without NUL")
        raw_name = data[offset + name_at:name_end]
        if not raw_name or len(raw_name) > MAX_NAME_BYTES:
            raise PerfDataError(f"entry {index} at {offset}: empty or overlong name")
        name = raw_name.decode("ascii", "replace")
        # a reason is one line: a name holding a newline or other control bytes is shown escaped
        shown = name if name.isprintable() else repr(name)
        start = offset + data_at
        if dtype == TYPE_LONG and vector == 0:
            if data_at + 8 > length:
                raise PerfDataError(f"entry {index} ({shown}): long runs past its entry")
            if name not in values and where is not None:
                where[name] = (start, 0)
            values.setdefault(name, long_.unpack_from(data, start)[0])
        elif dtype == TYPE_BYTE and vector > 0 and units == UNITS_STRING:
            if data_at + vector > length:
                raise PerfDataError(f"entry {index} ({shown}): string runs past its entry")
            text = data[start:start + vector].split(b"\0", 1)[0]
            if name not in values and where is not None:
                where[name] = (start, vector)
            values.setdefault(name, text.decode("utf-8", "replace"))
        offset += length
    return values


class PerfLayout:
    """Where the entries of ``names`` lie in one JVM's buffer, so that a poll reads those few
    values instead of parsing ~220 entries. HotSpot only appends entries (and bumps ``used``,
    ``num_entries`` and ``mod_time_stamp`` when it does) and rewrites values in place, so the
    places hold while the prologue says the same; ``read`` returns None when it does not, and the
    caller parses the buffer whole again."""

    def __init__(self, data: bytes, names: "Pattern[str]") -> None:
        where: Dict[str, Place] = {}
        self.perf = parse_perfdata(data, where)
        self.key = data[:PROLOGUE_SIZE]
        bo = "<" if self.perf.byte_order == "little" else ">"
        self._long = struct.Struct(bo + "q")
        wanted = {name: place for name, place in where.items() if names.match(name)}
        self.longs = tuple((name, at) for name, (at, length) in wanted.items() if length == 0)
        self.strings = tuple((name, at, length) for name, (at, length) in wanted.items() if length)

    def read(self, data: bytes) -> Optional[PerfData]:
        """The wanted values of ``data``, or None when its prologue (its layout) changed."""
        # the prologue's first 32 bytes: magic to num_entries; mod_time_stamp moves with the layout;
        # a buffer shorter than the size it says it uses (a file cut short between the fstat and
        # the pread) does not hold the places either
        if data[:PROLOGUE_SIZE] != self.key or len(data) < self.perf.used_bytes:
            return None
        unpack = self._long.unpack_from
        values: Dict[str, Value] = {name: unpack(data, at)[0] for name, at in self.longs}
        for name, at, length in self.strings:
            values[name] = data[at:at + length].split(b"\0", 1)[0].decode("utf-8", "replace")
        return replace(self.perf, values=MappingProxyType(values))


# --- what the counters mean -------------------------------------------------------------------
_COLLECTOR = re.compile(r"sun\.gc\.collector\.(\d+)\.(invocations|time|name)$")
_SPACE = re.compile(r"sun\.gc\.generation\.(\d+)\.space\.(\d+)\.(used|capacity)$")
# Every entry jvm_counters reads: what a poll reads through a PerfLayout.
USED = re.compile(r"sun\.gc\.collector\.\d+\.(?:invocations|time|name|lastEntryTime|lastExitTime)$"
                  r"|sun\.gc\.generation\.\d+\.space\.\d+\.(?:used|capacity)$"
                  r"|sun\.os\.hrt\.(?:frequency|ticks)$|sun\.gc\.(?:lastCause|cause)$")
NAN = math.nan


@dataclass(frozen=True)
class CollectorCounters:
    """One of the JVM's collectors (jstat: 0 young, 1 full, 2 concurrent-cycle pauses)."""

    index: int
    name: str
    collections_total: int
    time_s_total: float
    in_progress: bool  # lastEntryTime after lastExitTime: a pause is under way


@dataclass(frozen=True)
class JvmCounters:
    """What a reading of the JVM means, in units; a counter the JVM does not publish is NaN."""

    ticks_per_s: float
    uptime_s: float
    gc_time_s_total: float        # all collectors: jstat's GCT
    gc_collections_total: float   # all collectors: YGC + FGC + CGC
    collectors: Tuple[CollectorCounters, ...]
    eden_used_bytes: float
    eden_capacity_bytes: float
    heap_used_bytes: float        # every space of every generation (eden, survivors, old)
    heap_capacity_bytes: float
    last_gc_cause: str
    gc_cause: str = ""            # the cycle under way ("No GC" between them)
    alloc_bytes_total: float = NAN  # set by AllocationTracker (see there for its error)

    def collector(self, index: int) -> Optional[CollectorCounters]:
        return next((c for c in self.collectors if c.index == index), None)


def _ratio(ticks: Optional[int], per_s: float) -> float:
    return ticks / per_s if ticks is not None and per_s > 0 else NAN


def jvm_counters(perf: PerfData) -> JvmCounters:
    """The counters of one parsed buffer; never raises for a missing counter."""
    frequency = perf.long("sun.os.hrt.frequency")
    per_s = float(frequency) if frequency is not None and frequency > 0 else NAN
    found: Dict[int, Dict[str, Value]] = {}
    spaces: Dict[str, List[int]] = {"used": [], "capacity": []}
    for name, value in perf.values.items():
        match = _COLLECTOR.match(name)
        if match:
            found.setdefault(int(match.group(1)), {})[match.group(2)] = value
            continue
        match = _SPACE.match(name)
        if match and isinstance(value, int):
            spaces[match.group(3)].append(value)
    collectors = []
    for index in sorted(found):
        entry = found[index]
        count, ticks, label = entry.get("invocations"), entry.get("time"), entry.get("name")
        if not isinstance(count, int) or not isinstance(ticks, int):
            continue
        entered = perf.long(f"sun.gc.collector.{index}.lastEntryTime")
        exited = perf.long(f"sun.gc.collector.{index}.lastExitTime")
        busy = entered is not None and exited is not None and entered > exited
        collectors.append(CollectorCounters(index, label if isinstance(label, str) else "", count,
                                            _ratio(ticks, per_s), busy))
    have = bool(collectors)
    eden_used = perf.long("sun.gc.generation.0.space.0.used")
    eden_capacity = perf.long("sun.gc.generation.0.space.0.capacity")
    return JvmCounters(
        ticks_per_s=per_s,
        uptime_s=_ratio(perf.long("sun.os.hrt.ticks"), per_s),
        gc_time_s_total=sum(c.time_s_total for c in collectors) if have else NAN,
        gc_collections_total=float(sum(c.collections_total for c in collectors)) if have else NAN,
        collectors=tuple(collectors),
        eden_used_bytes=float(eden_used) if eden_used is not None else NAN,
        eden_capacity_bytes=float(eden_capacity) if eden_capacity is not None else NAN,
        heap_used_bytes=float(sum(spaces["used"])) if spaces["used"] else NAN,
        heap_capacity_bytes=float(sum(spaces["capacity"])) if spaces["capacity"] else NAN,
        last_gc_cause=perf.string("sun.gc.lastCause") or "",
        gc_cause=perf.string("sun.gc.cause") or "",
    )


class AllocationTracker:
    """Bytes allocated by the JVM, estimated from successive readings of eden, as jstat-based
    tools do: HotSpot 17 publishes no cumulative allocation counter (``sun.gc.tlab.alloc`` is
    the TLAB allocation of the last GC epoch only, in words, rewritten at each collection).

    Between readings with no eden-emptying collection (young or full: collectors 0 and 1), the
    allocation is eden's growth. When k collections happened, it is what eden still had room
    for at the previous reading, plus k-1 whole edens, plus what eden holds now. A reading
    taken while a pause is under way is skipped (eden still shows its pre-collection value).

    Error, honestly: eden is assumed full at each collection, so a collection of a part-full
    eden (System.gc(), a metadata or heap-inspection GC) over-counts by the room left, and
    TLAB waste at the end of eden (up to one TLAB per thread) by that much; allocations made
    outside eden (arrays too large for it, G1 humongous objects) are not counted; when eden
    is resized between readings, the collections in between are counted at the current size.
    Eden's "used" is sampled by the JVM every 50 ms (PerfDataSamplingInterval), so the
    estimate lags by up to 50 ms of allocation, but that lag does not accumulate.
    Measured on JDK 17 (tests/fixtures/jvm/Churn.java, -Xmx64m, read every 20 ms): ParallelGC
    within 1 % at 100 MB/s and 1.5 GB/s (9 and 78 collections); G1 over by 6-7 % (its eden
    capacity counts regions it does not fill before collecting).
    """

    def __init__(self) -> None:
        self.alloc_bytes_total = 0.0
        self._previous: Optional[Tuple[float, float, int]] = None  # eden used, capacity, collections

    def update(self, counters: JvmCounters) -> float:
        """Fold in one reading; returns ``alloc_bytes_total`` (NaN when eden is not published)."""
        young, full = counters.collector(0), counters.collector(1)
        used, capacity = counters.eden_used_bytes, counters.eden_capacity_bytes
        if young is None or math.isnan(used) or math.isnan(capacity):
            return NAN
        if young.in_progress or (full is not None and full.in_progress):
            return self.alloc_bytes_total
        collections = young.collections_total + (full.collections_total if full else 0)
        previous, self._previous = self._previous, (used, capacity, collections)
        if previous is None:
            return self.alloc_bytes_total
        was_used, was_capacity, was_collections = previous
        emptied = collections - was_collections
        if emptied < 0:  # counters went back: another JVM, count afresh from here
            return self.alloc_bytes_total
        if emptied == 0 and used >= was_used:
            self.alloc_bytes_total += used - was_used
        elif emptied == 0:  # emptied under a counter we could not see: at least what it holds
            self.alloc_bytes_total += used
        else:
            self.alloc_bytes_total += max(was_capacity - was_used, 0.0) + (emptied - 1) * capacity + used
        return self.alloc_bytes_total


# HotSpot's GCCause for a cycle started because a thread could not allocate and waits for it (ZGC).
ALLOCATION_STALL = "Allocation Stall"


class StallTracker:
    """Seconds the application stalled waiting for the collector, sampled: ZGC collects
    concurrently, so its collector time counts only its three short pauses (0.1 % of wall time in
    a death spiral whose threads are stalled 70 % of it), and no counter of hsperfdata holds the
    stalls. What does show them is ``sun.gc.cause``, which reads "Allocation Stall" for as long
    as a cycle a stall started is running: each interval between two readings counts by how many
    of its two ends read that cause (whole, half or not at all: the trapezoid rule, which keeps
    a half-second poll's estimate from swinging between 0 and the interval). Measured on JDK 17
    (tests/e2e/measure_collectors.py): 76-82 % of samples in a spiral whose log has 70 % stalls,
    0 % in healthy runs, 2 % in a busy one with 1 % real stalls. No other collector ever gives
    that cause: for them this stays 0."""

    def __init__(self) -> None:
        self.stall_s_total = 0.0
        self._last: Optional[Tuple[float, bool]] = None     # uptime, stalled

    def update(self, counters: JvmCounters) -> float:
        t = counters.uptime_s
        if not math.isfinite(t):
            return self.stall_s_total
        stalled = counters.gc_cause == ALLOCATION_STALL
        if self._last is not None and t > self._last[0]:
            self.stall_s_total += (t - self._last[0]) * (self._last[1] + stalled) / 2
        self._last = (t, stalled)
        return self.stall_s_total


# --- discovery --------------------------------------------------------------------------------
PERFDATA_DIR_PREFIX = "hsperfdata_"
# A JVM's /proc/<pid>/maps is a few hundred lines (~100 KiB with many threads)
MAX_MAPS_BYTES = 4 << 20


@dataclass(frozen=True)
class JvmTarget:
    """One JVM's performance file: ``pid`` on this host, ``nspid`` in its own pid namespace (the
    file's name), the user of ``hsperfdata_<user>``, and the one-line reason when unreadable."""

    pid: int
    nspid: int
    path: str
    user: str
    proc_dir: str                 # /proc/<pid> under the proc root it was found with
    start_ticks: Optional[int]    # /proc/<pid>/stat starttime: tells a reused pid apart
    reason: str = ""

    @property
    def readable(self) -> bool:
        return not self.reason


def _read_small(path: str) -> Optional[bytes]:
    try:
        with open(path, "rb", buffering=0) as handle:
            return handle.read(65536)
    except OSError:
        return None


def _nspids(proc_dir: str) -> Tuple[int, ...]:
    """The NSpid line of /proc/<pid>/status: the pid in each nested pid namespace, outermost first."""
    data = _read_small(os.path.join(proc_dir, "status"))
    for line in (data or b"").split(b"\n"):
        if line.startswith(b"NSpid:"):
            fields = line[6:].split()
            if fields and all(f.isdigit() for f in fields):
                return tuple(int(f) for f in fields)
    return ()


def _start_ticks(stat: Optional[bytes]) -> Optional[int]:
    """Field 22 (starttime) of /proc/<pid>/stat, split after the last ')' (comm may hold any byte)."""
    if not stat:
        return None
    fields = stat[stat.rfind(b")") + 1:].split()
    # fields[0] is field 3 (state): starttime, field 22, is fields[19]
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def _listdir(path: str) -> List[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _identity(path: str) -> Optional[Tuple[int, int]]:
    """(device, inode) of a directory: the same /tmp seen through /proc/<pid>/root or not."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _files(tmp: str, nspid: Optional[int]) -> List[Tuple[str, str, int]]:
    """(path, user, nspid) of every hsperfdata_*/<number> under ``tmp`` (or only <nspid>)."""
    out = []
    for entry in _listdir(tmp):
        if not entry.startswith(PERFDATA_DIR_PREFIX):
            continue
        folder = os.path.join(tmp, entry)
        names = [str(nspid)] if nspid is not None else _listdir(folder)
        for name in names:
            path = os.path.join(folder, name)
            if name.isdigit() and os.path.isfile(path):
                out.append((path, entry[len(PERFDATA_DIR_PREFIX):], int(name)))
    return out


def _unreadable(path: str) -> str:
    try:
        os.close(open_readonly(path))
    except SourceUnavailable as err:
        reason = str(err)
        if reason.startswith("permission denied"):
            # measured: root whose capabilities are dropped (a container) is refused too
            reason += " (run as the JVM's user, or with CAP_DAC_READ_SEARCH)"
        return reason
    return ""


def _maps_file(proc_dir: str, path: str) -> bool:
    """False when /proc/<pid>/maps is readable and does not map ``path``: the file is stale (a
    JVM killed with SIGKILL leaves it) and its pid belongs to another process now."""
    try:
        inode = str(os.stat(path).st_ino).encode()
        with open(os.path.join(proc_dir, "maps"), "rb") as handle:
            maps = handle.read(MAX_MAPS_BYTES)
    except OSError:
        return True  # cannot tell: let the reader find out
    for line in maps.split(b"\n"):
        fields = line.split(None, 5)
        if len(fields) == 6 and fields[4] == inode and PERFDATA_DIR_PREFIX.encode() in fields[5]:
            return True
    return False


def _target(proc_root: str, pid: int, nspid: int, path: str, user: str) -> JvmTarget:
    proc_dir = os.path.join(proc_root, str(pid))
    start = _start_ticks(_read_small(os.path.join(proc_dir, "stat")))
    return JvmTarget(pid, nspid, path, user, proc_dir, start, _unreadable(path))


def jvm_files_changed(tmp_root: str = "/tmp") -> Tuple[Tuple[str, int], ...]:
    """The hsperfdata_<user> directories of ``tmp_root`` with their modification times: what
    changes when a JVM sharing our /tmp starts or exits. Cheap enough for every poll round, so a
    new JVM is read at once instead of at the next full scan."""
    out = []
    try:
        with os.scandir(tmp_root) as entries:
            for entry in entries:
                if entry.name.startswith("hsperfdata_"):
                    try:
                        out.append((entry.name, entry.stat(follow_symlinks=False).st_mtime_ns))
                    except OSError:
                        continue
    except OSError:
        return ()
    return tuple(sorted(out))


class JvmFilesWatch:
    """jvm_files_changed for every poll round, at the cost of a stat per hsperfdata_<user>
    directory (and one of ``tmp_root``): ``tmp_root`` is listed again only when its own
    modification time moves (a user's first JVM made its directory). Called, it returns a token
    that changes when a JVM sharing our /tmp starts or exits."""

    def __init__(self, tmp_root: str = "/tmp") -> None:
        self.tmp_root = tmp_root
        self._tmp_mtime: Optional[int] = None
        self._dirs: Tuple[str, ...] = ()
        self.listings = 0

    def __call__(self) -> Tuple[Tuple[str, int], ...]:
        try:
            mtime = os.stat(self.tmp_root).st_mtime_ns
        except OSError:
            return ()
        if mtime != self._tmp_mtime:
            self._tmp_mtime = mtime
            self._dirs = tuple(name for name, _ in jvm_files_changed(self.tmp_root))
            self.listings += 1
        out = []
        for name in self._dirs:
            try:
                out.append((name, os.stat(os.path.join(self.tmp_root, name)).st_mtime_ns))
            except OSError:
                continue
        return tuple(out)


def discover_jvms(proc_root: str = "/proc", tmp_root: str = "/tmp",
                  pid: Optional[int] = None, skip: Container[int] = ()) -> List[JvmTarget]:
    """Every live JVM with a performance file, by host pid (only ``pid`` when given).

    Looks in ``tmp_root``/hsperfdata_*/<pid> for JVMs that share our /tmp, then, for the other
    processes, in /proc/<pid>/root/tmp/hsperfdata_*/<nspid>: a JVM in a container (its own pid
    namespace, named by the last NSpid of /proc/<pid>/status) or with a private /tmp. A file
    whose process is gone, or whose process does not map it (the pid was reused), is stale (a
    JVM killed with SIGKILL leaves it) and is skipped.
    With ``pid``, a process without a file gives one target with the reason. The processes of
    ``skip`` are not looked into through /proc (JvmDiscovery: those already looked at).
    """
    check_pid(pid)
    found: Dict[int, JvmTarget] = {}
    for path, user, file_pid in _files(tmp_root, pid):
        proc_dir = os.path.join(proc_root, str(file_pid))
        nspids = _nspids(proc_dir)
        # a process in a child pid namespace names its file by its inner pid, not this one
        if (os.path.isdir(proc_dir) and (not nspids or nspids[-1] == file_pid)
                and _maps_file(proc_dir, path)):
            found.setdefault(file_pid, _target(proc_root, file_pid, file_pid, path, user))
    pids = [pid] if pid is not None else sorted(int(p) for p in _listdir(proc_root) if p.isdigit())
    ours = _identity(tmp_root)
    for host_pid in pids:
        if host_pid in found or host_pid in skip:
            continue
        proc_dir = os.path.join(proc_root, str(host_pid))
        nspids = _nspids(proc_dir)
        nspid = nspids[-1] if nspids else host_pid
        tmp = os.path.join(proc_dir, "root", "tmp")
        if nspid == host_pid and _identity(tmp) == ours:
            continue  # the same /tmp, already looked at
        for path, user, _ in _files(tmp, nspid)[:1]:
            if not _maps_file(proc_dir, path):
                continue
            found[host_pid] = _target(proc_root, host_pid, nspid, path, user)
    if pid is not None and pid not in found:
        return [JvmTarget(pid, pid, "", "", os.path.join(proc_root, str(pid)), None,
                          _why_no_file(proc_root, pid))]
    return [found[p] for p in sorted(found)]


def _why_no_file(proc_root: str, pid: int) -> str:
    proc_dir = os.path.join(proc_root, str(pid))
    if not os.path.isdir(proc_dir):
        return f"no process {pid}"
    try:
        os.listdir(os.path.join(proc_dir, "root", "tmp"))
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EPERM):
            return f"permission denied: {proc_dir}/root/tmp (run as its user, or with CAP_SYS_PTRACE)"
    return (f"no hsperfdata file for process {pid}: not a JVM, or one started with "
            "-XX:-UsePerfData or -XX:+PerfDisableSharedMem")


# --- reading ----------------------------------------------------------------------------------
class JvmReader:
    """One JVM's performance file, opened read-only once and read whole with pread per poll.

    ``read()`` returns the JVM's counters (allocation included), or None while the JVM is not
    ready; once the JVM is gone (exited, file deleted or truncated, pid reused) it raises
    SourceUnavailable with the reason, every time. The process is checked through its own
    /proc/<pid>/stat, held open: a pid reused by another process reads as exited.
    """

    def __init__(self, target: JvmTarget) -> None:
        if not target.path:
            raise SourceUnavailable(target.reason or f"no performance file for process {target.pid}")
        self.target = target
        self.reason = "not read yet"
        self.lost = False
        self.tracker = AllocationTracker()
        self._layout: Optional[PerfLayout] = None
        self._fd = -1
        self._stat_fd = -1
        self._stat_path = os.path.join(target.proc_dir, "stat")
        self._fd = open_readonly(target.path)
        try:
            self._stat_fd = open_readonly(self._stat_path)
            self._size = os.fstat(self._fd).st_size
            start = self._start_ticks()
        except (SourceUnavailable, OSError) as err:
            self.close()
            raise SourceUnavailable(f"JVM {target.pid} exited") from err
        if target.start_ticks is not None and start != target.start_ticks:
            self.close()
            raise SourceUnavailable(f"JVM {target.pid} exited (its pid now belongs to another process)")

    def _start_ticks(self) -> Optional[int]:
        try:
            return _start_ticks(os.pread(self._stat_fd, 4096, 0))
        except OSError as err:
            raise SourceUnavailable(os_error_reason(err, self._stat_path)) from err

    def _lose(self, reason: str) -> SourceUnavailable:
        log.debug("jvm %d lost: %s", self.target.pid, reason)
        self.lost, self.reason = True, reason
        self.close()
        return SourceUnavailable(reason)

    def _check_alive(self) -> None:
        pid = self.target.pid
        try:
            start = self._start_ticks()
        except SourceUnavailable as err:
            raise self._lose(f"JVM {pid} exited") from err
        if start is None:
            raise self._lose(f"JVM {pid} exited")
        if self.target.start_ticks is not None and start != self.target.start_ticks:
            raise self._lose(f"JVM {pid} exited (its pid now belongs to another process)")

    def read_perfdata(self) -> Optional[PerfData]:
        """The buffer, None while not ready; SourceUnavailable once the JVM is gone. The first read
        (and any after the JVM added entries) parses it whole; the others read the entries
        jvm_counters uses (USED) in place, so ``values`` then holds only those."""
        if self.lost:
            raise SourceUnavailable(self.reason)
        if self._fd < 0:
            raise ValueError("JvmReader: read after close()")
        self._check_alive()
        try:
            info = os.fstat(self._fd)
            data = os.pread(self._fd, min(info.st_size, MAX_READ_BYTES), 0)
        except OSError as err:
            raise self._lose(os_error_reason(err, self.target.path)) from err
        if info.st_nlink == 0:
            raise self._lose(f"JVM {self.target.pid} exited (its performance file was deleted)")
        if info.st_size < self._size:
            raise self._lose(f"JVM {self.target.pid}: performance file truncated")
        perf = self._layout.read(data) if self._layout is not None else None
        if perf is None:
            try:
                self._layout = PerfLayout(data, USED)
            except PerfDataNotReady as err:
                self.reason = str(err)
                return None
            except PerfDataError as err:
                raise self._lose(f"JVM {self.target.pid}: {err}") from err
            perf = self._layout.perf
        self.reason = f"reading {self.target.path}"
        return perf

    def read(self) -> Optional[JvmCounters]:
        """The JVM's counters now, with ``alloc_bytes_total`` from the tracker."""
        perf = self.read_perfdata()
        if perf is None:
            return None
        counters = jvm_counters(perf)
        return replace(counters, alloc_bytes_total=self.tracker.update(counters))

    def close(self) -> None:
        for name in ("_fd", "_stat_fd"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)

    def __enter__(self) -> "JvmReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<JvmReader pid={self.target.pid} {self.target.path}: {self.reason}>"


# --- as a runtime source (coherence.runtime) ---------------------------------------------------
class JvmRuntime:
    """One JVM read as a runtime source: its GC time, collections and allocation, totals."""

    runtime = "jvm"

    def __init__(self, target: JvmTarget) -> None:
        self.target = target
        self.pid: Optional[int] = target.pid
        self.name = f"jvm {target.pid}"
        self.reader: Optional[JvmReader] = None     # opened at the first read: finding is cheap
        self.stalls = StallTracker()

    def read(self) -> Dict[str, float]:
        """The counters it has now ({} while the JVM is starting); SourceUnavailable once gone.
        GC time is the collectors' pauses plus the allocation stalls sampled (StallTracker)."""
        if self.reader is None:
            self.reader = JvmReader(self.target)
        counters = self.reader.read()
        if counters is None:
            return {}
        values = {GC_SECONDS: counters.gc_time_s_total + self.stalls.update(counters),
                  GC_COLLECTIONS: counters.gc_collections_total,
                  ALLOC_BYTES: counters.alloc_bytes_total}
        return {name: v for name, v in values.items() if math.isfinite(v)}

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()

    def describe(self) -> str:
        """One read, in one line for `coherence sources`; SourceUnavailable if it cannot."""
        if self.reader is None:
            self.reader = JvmReader(self.target)
        counters = self.reader.read()
        if counters is None:
            return f"{self.target.path}: the JVM is starting (its counters are not ready)"
        names = " + ".join(c.name for c in counters.collectors) or "no collector"
        alloc = ("allocation from eden's use across collections" if math.isfinite(counters.eden_used_bytes)
                 else "no allocation figure (no eden: ZGC)")
        return (f"{self.target.path}: GC time and collections of {names}, and allocation stalls "
                f"(sun.gc.cause); {alloc}")


def jvm_runtimes(pid: Optional[int] = None, proc_root: str = "/proc", tmp_root: str = "/tmp",
                 skip: Container[int] = ()) -> Tuple[List[JvmRuntime], List[JvmTarget]]:
    """The JVMs on this host (only ``pid``'s with it) as runtime sources, and the targets that
    cannot be read, each with its reason (for `coherence sources`)."""
    runtimes: List[JvmRuntime] = []
    unreadable: List[JvmTarget] = []
    for target in discover_jvms(proc_root, tmp_root, pid, skip):
        if target.readable:
            runtimes.append(JvmRuntime(target))
        else:
            unreadable.append(target)
    return runtimes, unreadable


class JvmDiscovery:
    """jvm_runtimes as the runtime poller calls it, every DISCOVER_EVERY_S: the files in our /tmp
    each time (cheap), and through /proc/<pid>/root only the processes that were not there at
    the previous scan, all of them every ``full_every_s`` (a process that became a JVM by exec,
    a pid reused). A scan of every process costs ~10 us each (a few ms on a busy host)."""

    def __init__(self, pid: Optional[int] = None, proc_root: str = "/proc", tmp_root: str = "/tmp",
                 full_every_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.pid, self.proc_root, self.tmp_root = pid, proc_root, tmp_root
        self.full_every_s, self.clock = full_every_s, clock
        self._seen: frozenset = frozenset()
        self._full_at = -math.inf
        self.full_scans = self.partial_scans = 0

    def __call__(self) -> List[JvmRuntime]:
        now = self.clock()
        skip: Container[int] = ()
        if self.pid is None and now - self._full_at < self.full_every_s:
            skip = self._seen
            self.partial_scans += 1
        else:
            self._full_at = now
            self.full_scans += 1
        pids = frozenset(int(p) for p in _listdir(self.proc_root) if p.isdigit())
        runtimes = jvm_runtimes(self.pid, self.proc_root, self.tmp_root, skip)[0]
        self._seen = pids
        return runtimes
