"""What `coherence sources` prints: every candidate source per family, the one in use, and why
the others are not, as an aligned table or as JSON lines."""
from __future__ import annotations

import json
from typing import List, Sequence

from coherence.sources import Row

HEADER = ("FAMILY", "SOURCE", "STATE", "MAX HZ", "WHAT / WHY NOT")


def table_lines(rows: Sequence[Row], ncpu: float, why: str) -> List[str]:
    """The table, then what utilization is normalized to and where requests come from."""
    table = [HEADER]
    for r in rows:
        state = "in use" if r.in_use else ("available" if r.available else "unavailable")
        table.append((r.family, r.name, state, f"{r.max_hz:g}", r.reason))
    widths = [max(len(row[i]) for row in table) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    return lines + ["", f"CPU utilization is normalized to {ncpu:g} CPUs: {why}.",
                    "Requests: push counters with --statsd or coherence.hooks; the TCP proxy is "
                    "used while nothing is pushed."]


def json_lines(rows: Sequence[Row], ncpu: float, why: str) -> List[str]:
    """One JSON object per source, then one for the CPUs."""
    return [json.dumps(r._asdict()) for r in rows] + [json.dumps({"cpus": ncpu, "cpus_reason": why})]
