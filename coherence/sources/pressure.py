"""Pressure stall information: µs totals of time tasks waited for CPU, memory or IO.

Context for every verdict (a seizure under CPU pressure reads differently); kernels without
PSI (before 4.20, or booted with psi=0) make the source unavailable.
"""
from __future__ import annotations

import os
from typing import List, Optional

from coherence.sources._base import Field, FileReader, Source, SourceUnavailable, check_pid, identity

RESOURCES = ("cpu", "memory", "io")
# A ~2 µs pread of µs totals that the kernel aggregates at read time.
PSI_HZ = 1000.0


def _total_fields(reader: FileReader, resource: str) -> List[Field]:
    # Locate "total=" by its key once, at probe time, rather than trusting its position.
    fields = []
    for line in reader.read().split(b"\n"):
        tokens = line.split()
        if not tokens or tokens[0] not in (b"some", b"full"):
            continue
        keys = [t.partition(b"=")[0] for t in tokens[1:]]
        if b"total" in keys:
            kind = tokens[0].decode()
            fields.append(Field(f"psi_{resource}_{kind}_us_total", tokens[0] + b" ", keys.index(b"total")))
    return fields


class Psi(Source):
    """``/proc/pressure/{cpu,memory,io}`` some (and full) total=, in µs, as counters."""

    name, family, max_hz = "pressure.psi", "pressure", PSI_HZ

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self.required = tuple(f"psi_{r}_some_us_total" for r in RESOURCES)
        self.recipe = identity(*self.required)        # "full" is parsed, not used
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        directory = os.path.join(proc_root, "pressure")
        if not os.path.isdir(directory):
            raise SourceUnavailable(f"no {directory} (kernel without PSI, before 4.20)")
        for resource in RESOURCES:
            reader = self._add(os.path.join(directory, resource))
            reader.fields = tuple(_total_fields(reader, resource))
        return f"{directory}/{{{','.join(RESOURCES)}}} some/full total= (µs, host-wide)"


def discover(pid: Optional[int] = None, proc_root: str = "/proc", sys_root: str = "/sys") -> List[Source]:
    """Pressure sources in preference order (one: PSI is host-wide, whatever ``pid``)."""
    check_pid(pid)
    return [Psi(proc_root, sys_root)]
