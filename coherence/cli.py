"""The `coherence` command line. Bad input of any kind ends in one line on stderr and a
non-zero exit, never a traceback."""
from __future__ import annotations

import json
import sys
from typing import List, Optional, Sequence

import click

from coherence import __version__
from coherence.sources import Row, cpu_capacity, describe


def _table(rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="coherence")
def main() -> None:
    """coherence: a read-only sentinel that watches the variance of a host, not its averages."""


@main.command()
@click.option("--pid", type=click.IntRange(min=1), help="Watch one process instead of the host/container.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per source, one per line.")
def sources(pid: Optional[int], as_json: bool) -> None:
    """Which counters this host offers, which are in use, and why the others are not.

    Per family (cpu, memory, pressure, requests) the candidates are listed in preference
    order; the first available one is used.
    """
    rows: List[Row] = describe(pid=pid)
    ncpu, why = cpu_capacity(pid=pid)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r._asdict()))
        click.echo(json.dumps({"cpus": ncpu, "cpus_reason": why}))
        return
    table = [("FAMILY", "SOURCE", "STATE", "MAX HZ", "WHAT / WHY NOT")]
    for r in rows:
        state = "in use" if r.in_use else ("available" if r.available else "unavailable")
        table.append((r.family, r.name, state, f"{r.max_hz:g}", r.reason))
    for line in _table(table):
        click.echo(line)
    click.echo(f"\nCPU utilization is normalized to {ncpu:g} CPUs: {why}.")
    if not any(r.family == "requests" and r.in_use for r in rows):
        click.echo("Requests: nothing available; push counters with StatsD or coherence.hooks.")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
