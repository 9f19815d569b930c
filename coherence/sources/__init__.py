"""Where coherence's counters come from: per family, candidate sources in preference order.

>>> from coherence import sources
>>> chosen = sources.select()               # probes every candidate, keeps the first available
>>> rows = sources.describe(chosen)         # what `coherence sources` prints
>>> sources.close_all(chosen)
"""
from __future__ import annotations

from typing import Dict, List, Mapping, NamedTuple, Optional, Tuple

from coherence.sources import cpu, memory, netsnmp, pressure
from coherence.sources._base import (
    ALLOC_BYTES,
    GC_COLLECTIONS,
    GC_SECONDS,
    REQUESTS_IN,
    REQUESTS_OUT,
    RUNTIME_COUNTERS,
    Field,
    FileReader,
    Recipe,
    Rule,
    Source,
    SourceUnavailable,
    parse_fields,
    pid_dir,
    positive_pid,
)
from coherence.sources.cpu import cpu_capacity

__all__ = [
    "ALLOC_BYTES",
    "FAMILIES",
    "GC_COLLECTIONS",
    "GC_SECONDS",
    "REQUESTS_IN",
    "REQUESTS_OUT",
    "RUNTIME_COUNTERS",
    "Choice",
    "Field",
    "FileReader",
    "Recipe",
    "Row",
    "Rule",
    "Source",
    "SourceUnavailable",
    "close_all",
    "cpu_capacity",
    "describe",
    "discover",
    "parse_fields",
    "pid_dir",
    "positive_pid",
    "select",
]

FAMILIES = ("cpu", "memory", "pressure", "requests")
_DISCOVER = {"cpu": cpu.discover, "memory": memory.discover,
             "pressure": pressure.discover, "requests": netsnmp.discover}


def discover(pid: Optional[int] = None, proc_root: str = "/proc",
             sys_root: str = "/sys") -> Dict[str, List[Source]]:
    """Every candidate source of every family, probed, in preference order."""
    return {family: _DISCOVER[family](pid, proc_root, sys_root) for family in FAMILIES}


class Choice(NamedTuple):
    """The source used for one family (None: nothing available) and every candidate tried."""

    source: Optional[Source]
    tried: Tuple[Source, ...]


def select(discovered: Optional[Mapping[str, List[Source]]] = None, *, pid: Optional[int] = None,
           proc_root: str = "/proc", sys_root: str = "/sys") -> Dict[str, Choice]:
    """The first available source per family; the other candidates are closed (their files too)."""
    if discovered is None:
        discovered = discover(pid, proc_root, sys_root)
    chosen = {}
    for family, candidates in discovered.items():
        source = next((s for s in candidates if s.available), None)
        for other in candidates:
            if other is not source:
                other.close()
        chosen[family] = Choice(source, tuple(candidates))
    return chosen


class Row(NamedTuple):
    family: str
    name: str
    available: bool
    in_use: bool
    max_hz: float
    reason: str


def describe(chosen: Optional[Mapping[str, Choice]] = None, *, pid: Optional[int] = None,
             proc_root: str = "/proc", sys_root: str = "/sys") -> List[Row]:
    """One row per candidate: (family, name, available, in_use, max_hz, reason).

    Without ``chosen`` it probes the host itself and closes what it opened.
    """
    owned = chosen is None
    if chosen is None:
        chosen = select(pid=pid, proc_root=proc_root, sys_root=sys_root)
    rows = [Row(family, s.name, s.available, s is choice.source, s.max_hz, s.reason)
            for family, choice in chosen.items() for s in choice.tried]
    if owned:
        close_all(chosen)
    return rows


def close_all(chosen: Mapping[str, Choice]) -> None:
    """Close every source of a select() result."""
    for choice in chosen.values():
        for source in choice.tried:
            source.close()
