"""Memory: resident bytes and allocation churn as minor page faults, with pgalloc/pgfree beside.

Minor faults count anonymous memory being touched; streaming a file through the page cache
allocates pages (pgalloc) but raises almost none, so churn stays flat while a file is read.
"""
from __future__ import annotations

import os
from typing import List, Optional

from coherence.sources._base import (
    MAX_PREFIX_BYTES,
    PAGE_SIZE,
    Field,
    Recipe,
    Rule,
    Source,
    SourceUnavailable,
    cgroup1_mount,
    cgroup2_mount,
    check_pid,
    identity,
    pid_dir,
    positive_pid,
)

# meminfo/vmstat/memory.stat cost 5-20 µs a read; churn in MB/s needs only tens of Hz.
MEMORY_HZ = 50.0
KIB = 1024.0
REQUIRED = ("mem_resident_bytes", "mem_total_bytes", "minor_faults_total")


def _gauge(signal: str, prefix: bytes, scale: float = 1.0) -> Field:
    return Field(signal, prefix, 0, scale=scale, counter=False)


# Beside a cgroup limit: "no limit" is the host's memory.
HOST_MEM_TOTAL = _gauge("host_mem_total_bytes", b"MemTotal:", KIB)


# Minor faults = all faults - major ones: anonymous memory touched (the churn evidence).
MINOR = {"pgfault_total": (("minor_faults_total", 1.0),),
         "pgmajfault_total": (("minor_faults_total", -1.0),)}
# The working set of a cgroup, as the kubelet computes it: usage less inactive page cache, so a
# file streamed once does not read as resident growth; its memory, the limit or the host's.
CGROUP: Recipe = {
    "mem_usage_bytes": (("mem_resident_bytes", 1.0),),
    "mem_inactive_file_bytes": (("mem_resident_bytes", -1.0),),
    "mem_limit_bytes": (("mem_total_bytes", 1.0),),
    "host_mem_total_bytes": (("mem_total_bytes", 1.0),),
    **MINOR,
}


class _Memory(Source):
    family, max_hz, required = "memory", MEMORY_HZ, REQUIRED
    rules = {"minor_faults_total": Rule(floor=0.0, hold=True),
             "mem_resident_bytes": Rule(floor=0.0),
             "mem_total_bytes": Rule(take_min=True)}


class HostMemory(_Memory):
    """Host: ``/proc/meminfo`` MemTotal - MemAvailable, ``/proc/vmstat`` faults, pgalloc_*, pgfree."""

    name = "memory.host"
    recipe: Recipe = {
        "mem_total_bytes": (("mem_resident_bytes", 1.0), ("mem_total_bytes", 1.0)),
        "mem_available_bytes": (("mem_resident_bytes", -1.0),),
        "pgalloc_total": (("pgalloc_total", 1.0),),
        "pgfree_total": (("pgfree_total", 1.0),),
        **MINOR,
    }

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        meminfo = os.path.join(proc_root, "meminfo")
        self._add(meminfo, [_gauge("mem_total_bytes", b"MemTotal:", KIB),
                            _gauge("mem_available_bytes", b"MemAvailable:", KIB)])
        vmstat = self._add(os.path.join(proc_root, "vmstat"))
        # Zones differ by kernel and arch (dma, dma32, normal, movable, device): take those present
        # (a name too long to be a zone's is junk the sampler could not look for).
        names = [line.split()[0] for line in vmstat.read().split(b"\n") if line.startswith(b"pgalloc_")]
        zones = [name + b" " for name in names if len(name) < MAX_PREFIX_BYTES]
        vmstat.fields = tuple([Field("pgalloc_total", zone, 0) for zone in zones] + [
            Field("pgfree_total", b"pgfree ", 0),
            Field("pgfault_total", b"pgfault ", 0),
            Field("pgmajfault_total", b"pgmajfault ", 0)])
        return (f"{meminfo} MemTotal-MemAvailable; {vmstat.path} pgfault-pgmajfault "
                f"(pgalloc_total, pgfree_total in pages of {PAGE_SIZE} bytes)")

class PidMemory(_Memory):
    """One process: ``/proc/<pid>/stat`` minflt/majflt (all threads) and ``/proc/<pid>/status`` VmRSS."""

    name = "memory.pid"
    recipe = identity("minor_faults_total", "mem_resident_bytes", "mem_total_bytes")

    def __init__(self, pid: int, proc_root: str = "/proc") -> None:
        super().__init__()
        self.pid = positive_pid(pid)
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        base = pid_dir(proc_root, self.pid)
        # minflt, majflt are fields 10, 12 of proc(5): tokens 7, 9 after the comm's last ")"
        self._add(os.path.join(base, "stat"), [Field("minor_faults_total", b"", 7, after_last=b")"),
                                               Field("pgmajfault_total", b"", 9, after_last=b")")])
        self._add(os.path.join(base, "status"), [_gauge("mem_resident_bytes", b"VmRSS:", KIB)])
        self._add(os.path.join(proc_root, "meminfo"), [_gauge("mem_total_bytes", b"MemTotal:", KIB)])
        return f"{base}/stat minflt, {base}/status VmRSS (process {self.pid}; kernel threads have none)"


class Cgroup2Memory(_Memory):
    """cgroup v2 root: ``memory.current`` less inactive_file, ``memory.stat`` faults, ``memory.max``."""

    name, recipe = "memory.cgroup2", CGROUP

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(proc_root, sys_root))

    def _build(self, proc_root: str, sys_root: str) -> str:
        mount = cgroup2_mount(sys_root)
        if mount is None:
            raise SourceUnavailable(f"no cgroup v2 hierarchy under {sys_root}/fs/cgroup")
        # The host's root cgroup has no memory.current: memory.host covers that case.
        self._add(os.path.join(mount, "memory.current"), [_gauge("mem_usage_bytes", b"")])
        self._add(os.path.join(mount, "memory.stat"), [
            _gauge("mem_inactive_file_bytes", b"inactive_file "),
            Field("pgfault_total", b"pgfault ", 0),
            Field("pgmajfault_total", b"pgmajfault ", 0)])
        self._add(os.path.join(mount, "memory.max"), [_gauge("mem_limit_bytes", b"")])  # "max": absent
        self._add(os.path.join(proc_root, "meminfo"), [HOST_MEM_TOTAL])
        return f"{mount}/memory.current - inactive_file, memory.stat pgfault-pgmajfault (cgroup root)"


class Cgroup1Memory(_Memory):
    """cgroup v1 root: ``memory.usage_in_bytes`` less total_inactive_file, hierarchical faults and limit."""

    name, recipe = "memory.cgroup1", CGROUP

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(proc_root, sys_root))

    def _build(self, proc_root: str, sys_root: str) -> str:
        mount = cgroup1_mount(sys_root, "memory")
        if mount is None:
            raise SourceUnavailable(f"no cgroup v1 memory hierarchy under {sys_root}/fs/cgroup")
        self._add(os.path.join(mount, "memory.usage_in_bytes"), [_gauge("mem_usage_bytes", b"")])
        # total_* are hierarchical (this cgroup and its children), like v2's memory.stat
        self._add(os.path.join(mount, "memory.stat"), [
            _gauge("mem_inactive_file_bytes", b"total_inactive_file "),
            _gauge("mem_limit_bytes", b"hierarchical_memory_limit "),
            Field("pgfault_total", b"total_pgfault ", 0),
            Field("pgmajfault_total", b"total_pgmajfault ", 0)])
        self._add(os.path.join(proc_root, "meminfo"), [HOST_MEM_TOTAL])
        return (f"{mount}/memory.usage_in_bytes - total_inactive_file, "
                f"memory.stat total_pgfault-total_pgmajfault (cgroup root)")


def discover(pid: Optional[int] = None, proc_root: str = "/proc", sys_root: str = "/sys") -> List[Source]:
    """Memory sources in preference order: the process with ``pid``, then cgroup v2, v1, the host."""
    check_pid(pid)
    sources: List[Source] = [PidMemory(pid, proc_root)] if pid is not None else []
    return sources + [Cgroup2Memory(proc_root, sys_root), Cgroup1Memory(proc_root, sys_root),
                      HostMemory(proc_root, sys_root)]
