"""What every source is made of: Field rules, one-pread file readers, the Source base, cgroup lookup.

A source opens its files once, read-only, and reads each with one ``pread`` per tick; the bytes
are parsed by ``parse_fields``, whose rules the compiled sampler implements again in C.
"""
from __future__ import annotations

import errno
import logging
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

log = logging.getLogger("coherence.sources")

# Every file we read is far smaller (/proc/vmstat, the largest, is ~8 KiB on 6.x kernels).
READ_SIZE = 65536
# Counters are exposed by the kernel as unsigned 64-bit integers; anything longer is junk.
MAX_COUNTER = 2**64 - 1
# The compiled parser keeps a field's prefix and after_last in fixed buffers of these sizes
# (field_t in csrc/coherence/_sampler.pyx): a Field longer than that could not be sampled.
MAX_PREFIX_BYTES = 40
MAX_AFTER_LAST_BYTES = 8


def _sysconf(name: str, default: int) -> int:
    try:
        return os.sysconf(name)
    except (AttributeError, ValueError, OSError):  # not POSIX, or the name is unknown
        return default


PAGE_SIZE = _sysconf("SC_PAGE_SIZE", 4096)
# USER_HZ: the unit of /proc/stat and /proc/<pid>/stat times; 100 on every Linux ABI in practice.
USER_HZ = _sysconf("SC_CLK_TCK", 100)
NS_PER_TICK = 1e9 / USER_HZ


@dataclass(frozen=True)
class Field:
    """One number in a file, located by line prefix and token index (see parse_fields).

    >>> Field("pgfault_total", b"pgfault ", 0)
    Field(signal='pgfault_total', prefix=b'pgfault ', index=0, occurrence=0, after_last=b'', scale=1.0, counter=True)
    """

    signal: str
    prefix: bytes
    index: int
    occurrence: int = 0
    after_last: bytes = b""
    scale: float = 1.0
    counter: bool = True

    def __post_init__(self) -> None:
        if not self.signal:
            raise ValueError("Field.signal must be a non-empty name with its unit")
        if not isinstance(self.prefix, bytes) or not isinstance(self.after_last, bytes):
            raise ValueError(f"Field {self.signal!r}: prefix and after_last must be bytes")
        if len(self.prefix) > MAX_PREFIX_BYTES or len(self.after_last) > MAX_AFTER_LAST_BYTES:
            raise ValueError(f"Field {self.signal!r}: prefix longer than {MAX_PREFIX_BYTES} bytes or "
                             f"after_last longer than {MAX_AFTER_LAST_BYTES}")
        if self.index < 0 or self.occurrence < 0:
            raise ValueError(f"Field {self.signal!r}: index and occurrence must be >= 0")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"Field {self.signal!r}: scale must be finite and > 0, got {self.scale}")


def _token(data: bytes, lines: List[bytes], field: Field) -> Optional[bytes]:
    if field.after_last:
        at = data.rfind(field.after_last)
        if at < 0:
            return None
        tokens = data[at + len(field.after_last):].split()
    else:
        seen = 0
        for line in lines:
            if line.startswith(field.prefix):
                if seen == field.occurrence:
                    break
                seen += 1
        else:
            return None
        tokens = line[len(field.prefix):].split()
    return tokens[field.index] if field.index < len(tokens) else None


def _number(token: Optional[bytes]) -> Optional[int]:
    if token is None:
        return None
    _key, eq, value = token.partition(b"=")
    if eq:
        token = value
    # bytes.isdigit() is ASCII-only: signs, dots, "max" and junk are all rejected
    if not token.isdigit() or len(token) > 20:
        return None
    number = int(token)
    return number if number <= MAX_COUNTER else None


def parse_fields(data: bytes, fields: Iterable[Field]) -> Dict[str, float]:
    """Parse ``data`` (a whole file) into {signal: value}; a field not found is absent, never an error.

    Rules (the C parser follows them exactly):
    - lines are split on b"\\n"; a field's line is the ``occurrence``-th (0-based) line that starts
      with ``prefix`` at byte 0 (b"" matches every line, so occurrence 0 is the first line);
    - tokens are what follows the prefix, split on ASCII whitespace (space, \\t, \\n, \\r, \\v, \\f);
      with ``after_last`` set, tokens are everything after the last occurrence of those bytes in the
      file, newlines included, and prefix/occurrence are ignored;
    - ``index`` picks a token (0-based); a token ``key=value`` stands for its value (text after the
      first "=");
    - a value is 1 to 20 ASCII digits worth at most 2**64-1; anything else (sign, dot, "max",
      empty, junk) makes the field absent; the value is multiplied by ``scale``;
    - several fields with the same signal are summed, and the signal is present only when every one
      of them was found (a partial sum would be a wrong counter, not a smaller one).

    >>> parse_fields(b"some avg10=0.00 total=42\\n", [Field("psi_us_total", b"some ", 1)])
    {'psi_us_total': 42.0}
    """
    lines = data.split(b"\n")
    out: Dict[str, float] = {}
    missing = set()
    for field in fields:
        number = _number(_token(data, lines, field))
        if number is None:
            missing.add(field.signal)
            continue
        out[field.signal] = out.get(field.signal, 0.0) + number * field.scale
    for signal in missing:
        out.pop(signal, None)
    return out


@dataclass(frozen=True)
class Rule:
    """How a derived signal is made from the parsed fields that feed it (see Source.recipe)."""

    floor: float = -math.inf   # a value under it reads as it: usage - inactive_file is never < 0
    hold: bool = False         # never below the highest value seen: faults - major faults, read
    #                            apart, can step back by a few, which would read as a reset
    take_min: bool = False     # the smallest term present instead of the sum: a cgroup's limit
    #                            beside the host's memory ("max", no limit, is simply absent)


PLAIN = Rule()
# parsed signal -> ((derived signal, coefficient), ...): linear combinations, in units
Recipe = Mapping[str, Tuple[Tuple[str, float], ...]]


def identity(*signals: str) -> Dict[str, Tuple[Tuple[str, float], ...]]:
    """A recipe passing each signal through as itself."""
    return {s: ((s, 1.0),) for s in signals}


def combine(recipe: Recipe, rules: Mapping[str, Rule], values: Mapping[str, float],
            held: Dict[str, float]) -> Dict[str, float]:
    """The derived signals of ``recipe`` from parsed ``values``, by ``rules``: what the compiled
    sampler computes from the same declaration on every tick. A derived signal one of whose
    terms is missing is absent (a partial sum is a wrong value), unless it takes the minimum;
    ``held`` keeps the highest value of each held signal between calls."""
    out: Dict[str, float] = {}
    missing = set()
    for parsed, targets in recipe.items():
        value = values.get(parsed)
        for target, coef in targets:
            rule = rules.get(target, PLAIN)
            if value is None:
                if not rule.take_min:
                    missing.add(target)
                continue
            term = coef * value
            if target not in out:
                out[target] = term
            else:
                out[target] = min(out[target], term) if rule.take_min else out[target] + term
    for target in missing:
        out.pop(target, None)
    for target, value in out.items():
        rule = rules.get(target, PLAIN)
        value = max(value, rule.floor)
        if rule.hold:
            value = max(value, held.get(target, value))
            held[target] = value
        out[target] = value
    return out


# The counters a runtime source reports (coherence.runtime), totals since its process started.
GC_SECONDS = "gc_seconds_total"            # wall time spent in GC pauses
GC_COLLECTIONS = "gc_collections_total"
ALLOC_BYTES = "alloc_bytes_total"          # bytes allocated on the heap
REQUESTS_IN = "requests_in_total"          # requests served (ingress)
REQUESTS_OUT = "requests_out_total"        # calls made downstream, retries included (egress)
RUNTIME_COUNTERS = (GC_SECONDS, GC_COLLECTIONS, ALLOC_BYTES, REQUESTS_IN, REQUESTS_OUT)


class SourceUnavailable(Exception):
    """A source cannot read what it needs; ``str(err)`` is the one-line reason shown to the user."""


def os_error_reason(err: OSError, path: str) -> str:
    """The one place an OS error on a source file becomes a reason a user can act on."""
    if err.errno in (errno.ENOENT, errno.ENOTDIR):
        return f"no {path}"
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {path}"
    if err.errno == errno.ESRCH:  # an open /proc/<pid>/... file whose process has exited
        return f"process exited: {path}"
    if err.errno == errno.EOPNOTSUPP:  # e.g. /proc/pressure/* on a kernel booted with psi=0
        return f"not supported by this kernel: {path}"
    return f"{path}: {err.strerror or err}"


def open_readonly(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise SourceUnavailable(os_error_reason(err, path)) from err


def read_once(path: str) -> bytes:
    """Open, pread, close: for probing (cgroup membership, quotas), never on the tick path."""
    fd = open_readonly(path)
    try:
        return os.pread(fd, READ_SIZE, 0)
    except OSError as err:
        raise SourceUnavailable(os_error_reason(err, path)) from err
    finally:
        os.close(fd)


class FileReader:
    """One file opened once, read with one pread from offset 0 per call, and the Fields it holds."""

    __slots__ = ("path", "fields", "fd")

    def __init__(self, path: str, fields: Sequence[Field] = ()) -> None:
        self.path = path
        self.fields: Tuple[Field, ...] = tuple(fields)
        self.fd = -1
        self.fd = open_readonly(path)

    def read(self) -> bytes:
        try:
            return os.pread(self.fd, READ_SIZE, 0)
        except OSError as err:
            raise SourceUnavailable(os_error_reason(err, self.path)) from err

    def parse(self) -> Dict[str, float]:
        return parse_fields(self.read(), self.fields)

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __repr__(self) -> str:
        return f"FileReader({self.path!r}, fd={self.fd}, {len(self.fields)} fields)"


class Source:
    """Base of every source: probed at construction, never raising for a missing or garbled file.

    Subclasses set ``name``, ``family``, ``max_hz`` and ``required`` and call ``_probe(build)``,
    where ``build`` opens readers with ``_add`` and returns the one-line description of what is read.

    What the fields mean is declared once, here, and nowhere else: ``recipe`` says which parsed
    signal feeds which derived signal with which sign and scale, ``rules`` how each derived
    signal is bounded. ``read()`` applies them in Python; the compiled sampler is wired from the
    same two attributes. A source with no file to read sets ``clock`` (a CPU-time clock read as
    ``clock_signal`` in ns) or has no readers (called back, like psutil).
    """

    name = ""
    family = ""
    max_hz = 0.0
    required: Tuple[str, ...] = ()
    recipe: Recipe = {}
    rules: Mapping[str, Rule] = {}
    clock: Optional[int] = None
    clock_signal = ""
    clock_alive: Optional[int] = None   # an fd readable once the clock's process exited (pidfd)

    def __init__(self) -> None:
        self.readers: List[FileReader] = []
        self.available = False
        self.reason = "not probed"
        self.closed = False
        self._held: Dict[str, float] = {}

    def _add(self, path: str, fields: Sequence[Field] = ()) -> FileReader:
        reader = FileReader(path, fields)
        self.readers.append(reader)
        return reader

    def _probe(self, build: Callable[[], str]) -> None:
        try:
            description = build()
            values = self._collect()
        except SourceUnavailable as err:
            self._unavailable(str(err))
            return
        missing = [s for s in self.required if s not in self.derive(values)]
        if missing:
            where = ", ".join(r.path for r in self.readers) or self.name
            self._unavailable(f"{where}: no parsable {', '.join(missing)}")
            return
        self._held.clear()  # the probe's derived values must not hold back the first real read
        self.available, self.reason = True, description

    def _unavailable(self, reason: str) -> None:
        log.debug("source %s unavailable: %s", self.name, reason)
        self.available, self.reason = False, reason
        self._close_readers()

    def _collect(self) -> Dict[str, float]:
        values: Dict[str, float] = {}
        for reader in self.readers:
            values.update(reader.parse())
        return values

    def derive(self, values: Dict[str, float]) -> Dict[str, float]:
        """The parsed values with the derived signals of ``recipe`` and ``rules`` added."""
        return {**values, **combine(self.recipe, self.rules, values, self._held)}

    def read(self) -> Dict[str, float]:
        """Every reader's pread parsed and merged, plus derived signals; {} once unavailable.

        A file that fails at read time (the process exited) makes the source unavailable with
        the reason, once; it never raises on a tick.
        """
        if self.closed:
            raise ValueError(f"source {self.name}: read() after close()")
        if not self.available:
            return {}
        try:
            values = self._collect()
        except SourceUnavailable as err:
            self._unavailable(str(err))
            return {}
        return self.derive(values)

    def _close_readers(self) -> None:
        for reader in self.readers:
            reader.close()

    def close(self) -> None:
        self._close_readers()
        self.closed = True

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"<{self.name} {state}: {self.reason}>"


def positive_pid(pid: object) -> int:
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"pid must be a positive integer, got {pid!r}")
    return pid


def check_pid(pid: Optional[int]) -> Optional[int]:
    """None (watch the host or container) or a valid pid; ValueError otherwise."""
    return None if pid is None else positive_pid(pid)


def pid_dir(proc_root: str, pid: int) -> str:
    """/proc/<pid>, or SourceUnavailable: 'no process <pid>', or, when the process exists but
    /proc hides it from this user (mounted with hidepid=1 or 2), that it is hidden."""
    path = os.path.join(proc_root, str(pid))
    if not os.path.isdir(path):
        if proc_root == "/proc" and _exists_hidden(pid):
            raise SourceUnavailable(f"process {pid} is hidden from this user: {proc_root} is mounted "
                                    "with hidepid (run as its user, or root)")
        raise SourceUnavailable(f"no process {pid}")
    return path


def _exists_hidden(pid: int) -> bool:
    """Signal 0 checks that a process exists without touching it: EPERM means it does, and
    belongs to another user."""
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True
    except (OSError, OverflowError):
        return False
    return True


# --- cgroups ---------------------------------------------------------------------------------
# We watch the root of the cgroup hierarchy this process can see: inside a container (cgroup
# namespace, or Docker's bind-mounted v1 directories) that is the container; on a host it is the
# whole host. The process's own leaf cgroup would be wrong on a host: under systemd it is the
# sentinel's own service or login session, which would read ~0 % while the host burns.


def cgroup2_mount(sys_root: str) -> Optional[str]:
    """The cgroup v2 mount: /sys/fs/cgroup (pure v2) or /sys/fs/cgroup/unified (hybrid)."""
    base = os.path.join(sys_root, "fs", "cgroup")
    for mount in (base, os.path.join(base, "unified")):
        if os.path.isfile(os.path.join(mount, "cgroup.controllers")):
            return mount
    return None


def cgroup1_mount(sys_root: str, controller: str) -> Optional[str]:
    """The v1 mount holding ``controller``: named after its controllers ("cpuacct", "cpu,cpuacct")."""
    base = os.path.join(sys_root, "fs", "cgroup")
    if os.path.isfile(os.path.join(base, "cgroup.controllers")):
        return None  # pure v2: nothing under it is a v1 mount
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return None
    for name in names:
        path = os.path.join(base, name)
        if controller in name.split(",") and os.path.isdir(path):
            return path
    return None


def cgroup_membership(proc_root: str, pid: Optional[int] = None) -> Dict[str, str]:
    """{controller: path} from /proc/<pid|self>/cgroup; key "" is the v2 hierarchy. {} if unreadable."""
    path = os.path.join(proc_root, str(pid) if pid else "self", "cgroup")
    try:
        data = read_once(path)
    except SourceUnavailable:
        return {}
    out: Dict[str, str] = {}
    for line in data.split(b"\n"):
        parts = line.split(b":", 2)
        if len(parts) != 3 or not parts[2].startswith(b"/"):
            continue
        where = os.fsdecode(parts[2])
        if parts[0] == b"0" and parts[1] == b"":
            out[""] = where
        for controller in parts[1].split(b","):
            if controller:
                out[os.fsdecode(controller)] = where
    return out
