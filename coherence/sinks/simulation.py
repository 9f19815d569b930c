"""What the simulator's run ends with: the lead-time table of every incident (when coherence
called it, when the classic alerts did), as plain columns for a pipe or a log, or as a rich
table for a terminal."""
from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple

from coherence.simulate import (
    CLASSIC_CPU_PCT,
    CLASSIC_ERROR_PCT,
    CLASSIC_MEMORY_PCT,
    CLASSIC_WINDOW_S,
    HEADERS,
    Incident,
    NEVER_FIRED,
    SimulationResult,
)


def _after(seconds: Optional[float]) -> str:
    return "never" if seconds is None else f"{seconds:+g} s"


def _row(i: Incident) -> Tuple[str, ...]:
    if i.kind == "forecast":
        critical = "— (a forecast only warns)"
    elif i.kind == "cascade" and i.critical_after_s is not None:
        critical = f"{_after(i.critical_after_s)} (cascade)"
    else:
        critical = _after(i.critical_after_s)
    classic = "never" if i.classic_after_s is None else \
        f"{_after(i.classic_after_s)} ({i.classic_alert})"
    lead = i.lead_s
    if lead is None:
        shown = "— (coherence never called it)"
    elif math.isinf(lead):
        shown = NEVER_FIRED
    else:
        shown = f"{lead:g} s" + (" (from the WARNING)" if i.kind == "forecast" else "")
    return (i.name, f"{i.start_s:g} s", " + ".join(i.detectors), _after(i.warning_after_s),
            critical, classic, shown)


def _title(result: SimulationResult) -> str:
    return (f"coherence --simulate --scenario {result.scenario} --seed {result.seed}: "
            f"{result.duration_s:g} simulated seconds, {len(result.incidents)} incidents")


def _footer(result: SimulationResult) -> List[str]:
    lines = [f"Classic alerts: CPU > {CLASSIC_CPU_PCT:g} % on its {CLASSIC_WINDOW_S:g} s rolling mean, "
             f"used memory > {CLASSIC_MEMORY_PCT:g} %, error rate > {CLASSIC_ERROR_PCT:g} % over "
             f"{CLASSIC_WINDOW_S:g} s.",
             "Times are seconds after the fault starts; lead time = classic alert - coherence "
             "CRITICAL (for a forecast, - its WARNING)."]
    if result.incidents:
        lines.append(f"Averages lie: the classic alerts missed {result.missed} of "
                     f"{len(result.incidents)} incidents.")
    else:
        lines.append("No incident in this scenario: nothing for either to call.")
    return lines


def format_result(result: SimulationResult) -> str:
    """The lead-time table as plain text columns (for a pipe, a log, a test)."""
    return plain_table(_title(result), result.incidents, _footer(result))


def result_table(result: SimulationResult) -> Any:
    """The lead-time table as a rich Table (rich is imported only here: the CLI's dependency)."""
    return rich_table(_title(result), result.incidents, _footer(result))


def plain_table(title: str, incidents: Sequence[Incident], footer: Sequence[str],
                headers: Sequence[str] = HEADERS) -> str:
    """Incidents as plain text columns under ``title``, ``footer`` lines after them."""
    rows = [tuple(headers)] + [_row(i) for i in incidents]
    widths = [max(len(r[c]) for r in rows) for c in range(len(headers))]
    lines = [title, ""]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines + [""] + list(footer))


def rich_table(title: str, incidents: Sequence[Incident], footer: Sequence[str],
               headers: Sequence[str] = HEADERS) -> Any:
    """Incidents as a rich Table (rich is imported only here: the CLI's dependency)."""
    from rich.table import Table

    table = Table(title=title, caption="\n".join(footer),
                  caption_justify="left", header_style="bold")
    for h in headers:
        table.add_column(h.capitalize() if h.isupper() else h,
                         justify="right" if h == headers[1] else "left")
    for i in incidents:
        row = list(_row(i))
        row[-1] = f"[green]{row[-1]}[/green]" if i.lead_s is not None and i.lead_s > 0 \
            else f"[red]{row[-1]}[/red]"
        table.add_row(*row)
    return table
