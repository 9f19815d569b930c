"""CPU usage counters in nanoseconds (signal ``cpu_usage_ns_total``) and the CPUs they are shared by.

Best first: a process's CPU-time clock, cgroup ns/µs counters, ``/proc/<pid>/schedstat``; then the 10 ms
tick counters of ``/proc/<pid>/stat`` and ``/proc/stat``; psutil last, for any OS.
"""
from __future__ import annotations

import errno
import os
import select
import time
from typing import Callable, Dict, List, Optional, Tuple, Type

from coherence.sources._base import (
    NS_PER_TICK,
    USER_HZ,
    Field,
    Source,
    SourceUnavailable,
    cgroup1_mount,
    cgroup2_mount,
    cgroup_membership,
    check_pid,
    identity,
    parse_fields,
    pid_dir,
    positive_pid,
    read_once,
)

SIGNAL = "cpu_usage_ns_total"
RECIPE = identity(SIGNAL)
# A ~1 µs pread of an ns/µs counter: the sampler's --hz ceiling.
FINE_HZ = 2000.0
# USER_HZ ticks (10 ms): more reads per second only repeat the same value.
TICK_HZ = float(USER_HZ)
TICK_NOTE = (f"{1000 / USER_HZ:g} ms ticks (USER_HZ={USER_HZ}): "
             "usable only for buckets of 100 ms or more")
# /proc/stat "cpu " columns counted as busy: user nice system [idle iowait] irq softirq steal.
# guest and guest_nice are already inside user and nice.
PROCSTAT_BUSY = (0, 1, 2, 5, 6, 7)


class Cgroup2Cpu(Source):
    """cgroup v2 ``cpu.stat`` usage_usec of the visible hierarchy's root (the container, or the host)."""

    name, family, max_hz, required = "cpu.cgroup2", "cpu", FINE_HZ, (SIGNAL,)
    recipe = RECIPE

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(sys_root))

    def _build(self, sys_root: str) -> str:
        mount = cgroup2_mount(sys_root)
        if mount is None:
            raise SourceUnavailable(f"no cgroup v2 hierarchy under {sys_root}/fs/cgroup")
        path = os.path.join(mount, "cpu.stat")
        self._add(path, [Field(SIGNAL, b"usage_usec ", 0, scale=1000.0)])
        return f"{path} usage_usec (µs counter of the cgroup root: container or host)"


class Cgroup1Cpu(Source):
    """cgroup v1 ``cpuacct.usage`` (ns) of the visible hierarchy's root."""

    name, family, max_hz, required = "cpu.cgroup1", "cpu", FINE_HZ, (SIGNAL,)
    recipe = RECIPE

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(sys_root))

    def _build(self, sys_root: str) -> str:
        mount = cgroup1_mount(sys_root, "cpuacct")
        if mount is None:
            raise SourceUnavailable(f"no cgroup v1 cpuacct hierarchy under {sys_root}/fs/cgroup")
        path = os.path.join(mount, "cpuacct.usage")
        self._add(path, [Field(SIGNAL, b"", 0)])
        return f"{path} (ns counter of the cgroup root: container or host)"


def _threads(base: str) -> int:
    values = parse_fields(read_once(os.path.join(base, "status")), [Field("threads", b"Threads:", 0)])
    return int(values.get("threads", 1))


class PidCpu(Source):
    """``/proc/<pid>/schedstat`` run time in ns: exact, but of the process's main thread only."""

    name, family, max_hz, required = "cpu.pid", "cpu", FINE_HZ, (SIGNAL,)
    recipe = RECIPE

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        super().__init__()
        self.pid = positive_pid(pid)
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        base = pid_dir(proc_root, self.pid)
        threads = _threads(base)
        if threads > 1:
            # schedstat is per thread: for a JVM or a Go binary the main thread is nearly idle.
            raise SourceUnavailable(
                f"{base}/schedstat counts the main thread only and process {self.pid} "
                f"has {threads} threads")
        path = os.path.join(base, "schedstat")
        self._add(path, [Field(SIGNAL, b"", 0)])
        return f"{path} (ns, process {self.pid}, single-threaded at probe time)"


def process_cpu_clock(pid: int) -> int:
    """The clock id of another process's CPU time, all threads (CPUCLOCK_SCHED, in ns).

    What clock_getcpuclockid(3) returns, built as the kernel encodes it: (~pid << 3) | 2. Read
    with clock_gettime: a syscall of ~1 us, no file, counts every thread of the process.
    """
    return ((~pid) << 3) | 2


def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


class PidClockCpu(Source):
    """The CPU-time clock of one process: every thread, in ns (clock_gettime, no file to read).

    The clock is named by the pid's number, which another process takes once this one exited
    and the number comes round: a pidfd held open (``clock_alive``) tells the two apart, and
    each read made after the process exited is refused (the sampler's engine does the same)."""

    name, family, max_hz, required = "cpu.pidclock", "cpu", FINE_HZ, (SIGNAL,)
    recipe = RECIPE

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        super().__init__()
        self.pid = positive_pid(pid)
        self.clock = self._clock_id = process_cpu_clock(self.pid)
        self.clock_signal = SIGNAL
        self.clock_alive: Optional[int] = None
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        pid_dir(proc_root, self.pid)
        if proc_root != "/proc":
            # a fake /proc tree cannot lend its processes' clocks
            raise SourceUnavailable(f"process CPU clocks need the real /proc, not {proc_root}")
        try:
            self.clock_alive = os.pidfd_open(self.pid)
        except AttributeError as err:       # Python built without it, or not Linux
            raise SourceUnavailable("no pidfd_open: a reused pid could not be told apart") from err
        except OSError as err:
            if err.errno == errno.ESRCH:
                raise SourceUnavailable(f"no process {self.pid}") from err
            raise SourceUnavailable(f"pidfd_open (Linux 5.3+): {err.strerror or err}: a reused pid "
                                    "could not be told apart") from err
        return f"CPU-time clock of process {self.pid} (clock_gettime, ns, all threads)"

    def _collect(self) -> Dict[str, float]:
        try:
            value = float(time.clock_gettime_ns(self._clock_id))
        except (OSError, AttributeError) as err:
            raise SourceUnavailable(f"process {self.pid} CPU clock: {err}") from err
        if self.clock_alive is not None and _exited(self.clock_alive):
            raise SourceUnavailable(f"process {self.pid} exited")
        return {SIGNAL: value}

    def _close_readers(self) -> None:
        super()._close_readers()
        if self.clock_alive is not None:
            fd, self.clock_alive = self.clock_alive, None
            os.close(fd)


class PidStatCpu(Source):
    """``/proc/<pid>/stat`` utime + stime: the whole process, every thread, in 10 ms ticks."""

    name, family, max_hz, required = "cpu.pidstat", "cpu", TICK_HZ, (SIGNAL,)
    recipe = RECIPE

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        super().__init__()
        self.pid = positive_pid(pid)
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        path = os.path.join(pid_dir(proc_root, self.pid), "stat")
        # utime, stime are fields 14, 15 of proc(5): tokens 11, 12 after the comm's last ")"
        self._add(path, [Field(SIGNAL, b"", i, after_last=b")", scale=NS_PER_TICK) for i in (11, 12)])
        return f"{path} utime+stime (process {self.pid}, all threads); {TICK_NOTE}"


class ProcStatCpu(Source):
    """``/proc/stat`` busy time of the whole host: user+nice+system+irq+softirq+steal."""

    name, family, max_hz, required = "cpu.procstat", "cpu", TICK_HZ, (SIGNAL,)
    recipe = RECIPE

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        path = os.path.join(proc_root, "stat")
        self._add(path, [Field(SIGNAL, b"cpu ", i, scale=NS_PER_TICK) for i in PROCSTAT_BUSY])
        return f"{path} cpu line, host-wide; {TICK_NOTE}"


class PsutilCpu(Source):
    """psutil's CPU times (any OS): busy fields of the host, or user+system of ``pid``; no readers."""

    name, family, max_hz, required = "cpu.psutil", "cpu", TICK_HZ, (SIGNAL,)
    recipe = RECIPE
    HOST_BUSY = ("user", "nice", "system", "irq", "softirq", "steal")

    def __init__(self, pid: Optional[int] = None) -> None:
        super().__init__()
        self.pid = check_pid(pid)
        self._times: Callable[[], object] = lambda: None
        self._errors: Tuple[Type[BaseException], ...] = ()
        self._busy: Tuple[str, ...] = ()
        self._probe(self._build)

    def _build(self) -> str:
        try:
            import psutil  # type: ignore[import-untyped, unused-ignore]
        except ImportError as err:
            raise SourceUnavailable("psutil is not installed") from err
        self._errors = (psutil.Error, OSError)
        busy: Tuple[str, ...]
        if self.pid is None:
            self._times, busy, scope = psutil.cpu_times, self.HOST_BUSY, "host"
        else:
            try:
                self._times = psutil.Process(self.pid).cpu_times
            except psutil.NoSuchProcess as err:
                raise SourceUnavailable(f"no process {self.pid}") from err
            busy, scope = ("user", "system"), f"process {self.pid}"
        self._busy = busy
        return f"psutil {psutil.__version__} cpu_times() {'+'.join(busy)} ({scope}); {TICK_NOTE}"

    def _collect(self) -> Dict[str, float]:
        try:
            times = self._times()
        except self._errors as err:
            raise SourceUnavailable(f"psutil: {err}") from err
        parts = [getattr(times, f) for f in self._busy if hasattr(times, f)]
        return {SIGNAL: sum(parts) * 1e9} if parts else {}


def _first_number(path: str) -> Optional[float]:
    try:
        data = read_once(path)
    except SourceUnavailable:
        return None
    return parse_fields(data, [Field("n", b"", 0)]).get("n")


def _v2_quota(directory: str) -> Tuple[Optional[float], str]:
    path = os.path.join(directory, "cpu.max")
    try:
        data = read_once(path)
    except SourceUnavailable:
        return None, path
    # "max 100000" parses no quota: no limit at this level
    v = parse_fields(data, [Field("quota", b"", 0), Field("period", b"", 1)])
    return (v["quota"] / v["period"] if v.get("period") and "quota" in v else None), path


def _v1_quota(directory: str) -> Tuple[Optional[float], str]:
    path = os.path.join(directory, "cpu.cfs_quota_us")
    # a quota of -1 (no limit) is not a number to parse_fields: None
    quota, period = _first_number(path), _first_number(os.path.join(directory, "cpu.cfs_period_us"))
    return (quota / period if quota is not None and period else None), path


def _cgroup_levels(mount: str, member: Optional[str]) -> List[str]:
    """``mount``/``member`` and its ancestors up to ``mount``; the mount alone without a member."""
    leaf = os.path.normpath(os.path.join(mount, (member or "/").lstrip("/")))
    if not (leaf.startswith(mount + os.sep) and os.path.isdir(leaf)):
        leaf = mount  # not visible from here (another cgroup namespace), or junk such as ".."
    levels = [leaf]
    while levels[-1] != mount and levels[-1].startswith(mount + os.sep):
        levels.append(os.path.dirname(levels[-1]))
    return levels


# No kernel numbers CPUs this high (CONFIG_NR_CPUS is at most 8192): a larger number is junk.
MAX_CPU_NUMBER = 1 << 16


def _cpu_number(text: str) -> int:
    # isdigit() alone would pass "²" and numbers too long for int() or float()
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 5 else MAX_CPU_NUMBER


def parse_cpu_list(text: str) -> int:
    """How many CPUs a kernel CPU list names ("0-3,8,10-11" is 7); 0 if it is not one."""
    count = 0
    for part in text.strip().split(","):
        lo_text, sep, hi_text = part.partition("-")
        lo = _cpu_number(lo_text)
        hi = _cpu_number(hi_text) if sep else lo
        if not lo <= hi < MAX_CPU_NUMBER:
            return 0
        count += hi - lo + 1
    return count


def _root_cpuset(sys_root: str) -> Tuple[float, str]:
    base = os.path.join(sys_root, "fs", "cgroup")
    for path in (os.path.join(base, "cpuset.cpus.effective"),
                 os.path.join(base, "cpuset", "cpuset.effective_cpus"),
                 os.path.join(base, "cpuset", "cpuset.cpus")):
        try:
            n = parse_cpu_list(read_once(path).decode("ascii", "replace"))
        except SourceUnavailable:
            continue
        if n > 0:
            return float(n), f"cpuset {path}"
    return float(os.cpu_count() or 1), "online CPUs"


def cpu_capacity(proc_root: str = "/proc", sys_root: str = "/sys",
                 pid: Optional[int] = None) -> Tuple[float, str]:
    """How many CPUs the watched scope may use: affinity, capped by every cgroup quota above it.

    >>> cpus, why = cpu_capacity()  # e.g. (1.5, "2 CPUs (affinity); quota 1.5 CPUs (/sys/fs/cgroup/cpu.max)")
    """
    check_pid(pid)
    try:
        if pid is None:
            # The host or container, not this process: a sentinel pinned to one CPU (taskset)
            # still watches every CPU of its cgroup. The cgroup root's cpuset, else all online.
            cpus, why = _root_cpuset(sys_root)
        else:
            cpus, why = float(len(os.sched_getaffinity(pid))), "affinity"
    except ProcessLookupError:
        cpus, why = float(os.cpu_count() or 1), f"no process {pid}: all online CPUs"
    except (AttributeError, OSError):  # no sched_getaffinity (macOS)
        cpus, why = float(os.cpu_count() or 1), "online CPUs"
    reasons = [f"{cpus:g} CPUs ({why})"]
    member = cgroup_membership(proc_root, pid) if pid else {}
    mounts = [(cgroup2_mount(sys_root), "", _v2_quota), (cgroup1_mount(sys_root, "cpu"), "cpu", _v1_quota)]
    for mount, key, quota_of in mounts:
        if mount is None:
            continue
        for level in _cgroup_levels(mount, member.get(key)):
            quota, path = quota_of(level)
            # 0 is no quota a kernel sets (it refuses under 1 ms a period): junk, not "no CPU"
            if quota is not None and 0 < quota < cpus:
                cpus = quota
                reasons.append(f"quota {quota:g} CPUs ({path})")
    return cpus, "; ".join(reasons)


def discover(pid: Optional[int] = None, proc_root: str = "/proc", sys_root: str = "/sys") -> List[Source]:
    """CPU sources in preference order: the process's own first with ``pid``, then cgroup, /proc/stat, psutil."""
    check_pid(pid)
    sources: List[Source] = []
    if pid is not None:
        sources += [PidClockCpu(pid, proc_root), PidCpu(pid, proc_root), PidStatCpu(pid, proc_root),
                    PsutilCpu(pid)]
    sources += [Cgroup2Cpu(proc_root, sys_root), Cgroup1Cpu(proc_root, sys_root), ProcStatCpu(proc_root, sys_root)]
    if pid is None:
        sources.append(PsutilCpu())
    return sources
