"""Requests, by proxy: TCP connections opened out of (ActiveOpens) and into (PassiveOpens) this host.

Only a proxy for requests: keep-alive, pooling and HTTP/2 carry many requests per connection.
Counters pushed by the application (StatsD, the Python API) are preferred when present.
"""
from __future__ import annotations

import os
from typing import List, Optional

from coherence.sources._base import Field, Source, SourceUnavailable, check_pid, identity

# /proc/net/snmp costs ~12 µs a read; connection rates need only tens of Hz.
SNMP_HZ = 50.0
COLUMNS = {"tcp_active_opens_total": b"ActiveOpens", "tcp_passive_opens_total": b"PassiveOpens"}


class TcpSnmp(Source):
    """``/proc/net/snmp`` Tcp ActiveOpens (egress proxy) and PassiveOpens (ingress proxy)."""

    name, family, max_hz = "requests.tcp_snmp", "requests", SNMP_HZ
    required = tuple(COLUMNS)
    recipe = identity(*COLUMNS)

    def __init__(self, proc_root: str = "/proc", sys_root: str = "/sys") -> None:
        super().__init__()
        self._probe(lambda: self._build(proc_root))

    def _build(self, proc_root: str) -> str:
        reader = self._add(os.path.join(proc_root, "net", "snmp"))
        # The first "Tcp:" line names the columns, the second holds the values; columns are
        # found by name because kernels have added some over time.
        header = next((line for line in reader.read().split(b"\n") if line.startswith(b"Tcp:")), b"")
        names = header[len(b"Tcp:"):].split()
        missing = [column.decode() for column in COLUMNS.values() if column not in names]
        if missing:
            raise SourceUnavailable(f"{reader.path}: no Tcp {', '.join(missing)} column")
        reader.fields = tuple(Field(signal, b"Tcp:", names.index(column), occurrence=1)
                              for signal, column in COLUMNS.items())
        return (f"proxy: {reader.path} Tcp ActiveOpens (egress) / PassiveOpens (ingress): "
                "connections, not requests; this network namespace")


def discover(pid: Optional[int] = None, proc_root: str = "/proc", sys_root: str = "/sys") -> List[Source]:
    """Request-proxy sources in preference order (one: the sentinel's network namespace)."""
    check_pid(pid)
    return [TcpSnmp(proc_root, sys_root)]
