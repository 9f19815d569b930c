"""The live terminal view (rich): a status header, one panel per detector (state, value against
its limit, the reason, a sparkline, the evidence), the veto line, incidents and the sampler's own
figures, redrawn at most `refresh_hz` times a second. On a stdout that is not a terminal the CLI
uses the plain status lines (coherence.sinks.plain) instead."""
from __future__ import annotations

import math
import socket
import time
from collections import deque
from datetime import datetime, timezone
from typing import Any, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Sequence

from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from coherence.config import Config
from coherence.detectors import DETECTORS
from coherence.format import MISSING, clock, duration, finite, num, setting
from coherence.monitor import Report
from coherence.states import State

STATE_STYLE = {State.OK: "green", State.WARNING: "yellow", State.CRITICAL: "bold red",
               State.WARMUP: "dim", State.UNAVAILABLE: "dim"}
BORDER_STYLE = {State.OK: "green", State.WARNING: "yellow", State.CRITICAL: "red",
                State.WARMUP: "dim", State.UNAVAILABLE: "dim"}
BLOCKS = "▁▂▃▄▅▆▇█"
# 32 points fit a panel a third of a 120-column terminal wide: 3.2 s of 100 ms CPU buckets,
# 8 s of fever/amplification values at the CLI's 4 reports a second.
SPARK_POINTS = 32
# Three panels of ~36 columns side by side; a narrower terminal gets them stacked.
SIDE_BY_SIDE_MIN_WIDTH = 108
UNIT_LABEL = {"pct_points": "points of CPU % (std)", "ratio": "calls out per request in"}


def _style(table: Mapping[State, str], state: object) -> str:
    return table.get(state, "") if isinstance(state, State) else ""


def _names(value: object) -> List[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def sparkline(values: Iterable[Any], lo: Optional[float] = None, hi: Optional[float] = None) -> str:
    """One block character per value, scaled between lo and hi (by default from 0, or the
    minimum if it is negative, to the maximum) and clipped to them; a missing value is a gap.

    >>> sparkline([0, 50, 100], 0, 100)
    '▁▅█'
    """
    points = [finite(v) for v in values]
    known = [v for v in points if v is not None]
    if not known:
        return " " * len(points)
    lo = min(0.0, min(known)) if lo is None else lo
    hi = max(known) if hi is None else hi
    span = hi - lo
    top = len(BLOCKS) - 1
    out = []
    for v in points:
        if v is None:
            out.append(" ")
        elif span <= 0:
            out.append(BLOCKS[0])
        else:
            out.append(BLOCKS[int((min(max(v, lo), hi) - lo) / span * top + 0.5)])
    return "".join(out)


# ------------------------------------------------------------------------------- rendering
def _veto_line(report: Report) -> Text:
    veto = report.verdict.veto
    if not veto:
        return Text("No veto", style="dim")
    line = Text.assemble(("Recommended (not done): ", "bold"))
    for i, v in enumerate(veto):
        if i:
            line.append("; ")
        line.append(str(v["action"]), style=_style(STATE_STYLE, v["state"]))
        line.append(f" — {v['detector']} {v['state']}")
    return line


def _incident_lines(report: Report) -> List[Text]:
    lines = []
    now = report.verdict.now
    for inc in report.verdict.incidents:
        if inc.get("kind") == "cascade":
            members = ", ".join(_names(inc.get("detectors")))
            since = finite(inc.get("since"))
            age = f", for {duration(now - since)}" if since is not None else ""
            lines.append(Text(f"Incident: cascade — {members} CRITICAL together{age}", style="bold red"))
        elif inc.get("kind") == "flapping":
            lines.append(Text(f"Incident: flapping — {inc.get('detector')} changed state "
                              f"{inc.get('changes')} times in {setting(inc.get('window_s'))} s",
                              style="yellow"))
        else:
            lines.append(Text(f"Incident: {inc}", style="yellow"))
    return lines


def _sampler_lines(sampler: Optional[Mapping[str, Any]]) -> List[Text]:
    if not sampler or sampler.get("simulated"):
        return [Text("Sampler: simulated", style="dim")]
    sources = ", ".join(str(v) for v in (sampler.get("sources") or {}).values()) or "none"
    line = Text(f"Sampler: {num(sampler.get('achieved_hz'))} of {setting(sampler.get('hz'))} Hz · "
                f"p99 lateness {num(sampler.get('tick_lateness_p99_us'))} µs · "
                f"own CPU {num(sampler.get('cpu_percent'))} % · "
                f"{sampler.get('overruns', MISSING)} overruns", style="dim")
    origin = sampler.get("requests_origin")
    if origin:
        sources += f" ({origin})"
    lines = [line, Text(f"Sources: {sources}", style="dim")]
    # what was lost on the way in: shown only when something was
    misses = {name: f for name, f in (sampler.get("reads") or {}).items()
              if f.get("parse_misses") or f.get("errors")}
    for name, f in misses.items():
        lines.append(Text(f"  {name}: {f.get('parse_misses', 0)} parse misses, {f.get('errors', 0)} read "
                          f"errors in {f.get('reads', 0)} reads", style="yellow"))
    statsd = sampler.get("statsd")
    if statsd:
        dropped = statsd.get("dropped")
        style = "yellow" if statsd.get("malformed") or dropped else "dim"
        lines.append(Text(f"StatsD: {statsd.get('accepted', 0)} accepted · {statsd.get('malformed', 0)} "
                          f"malformed · {MISSING if dropped is None else dropped} dropped by the kernel · "
                          f"{statsd.get('ignored', 0)} ignored", style=style))
    return lines + [Text(f"  note: {n}", style="dim") for n in sampler.get("notes") or []]


class _View:
    """The whole screen for one report; lays the panels out by the width it is given."""

    def __init__(self, report: Report, history: Mapping[str, Sequence[float]], host: str) -> None:
        self.report, self.history, self.host = report, history, host

    def _header(self) -> Table:
        r = self.report
        grid = Table.grid(expand=True)
        grid.add_column(justify="left")
        grid.add_column(justify="right")
        wall = datetime.fromtimestamp(r.ts, timezone.utc).strftime("%H:%M:%S UTC")
        grid.add_row(Text.assemble(("coherence ", "bold"), (str(r.status), STATE_STYLE[r.status])),
                     Text(f"elapsed {clock(r.elapsed_s)} · {self.host} · {wall}"))
        return grid

    def _spark(self, name: str) -> str:
        if name == "seizure":
            history = self.report.snapshot.cpu.history_pct
            return sparkline(list(history[-SPARK_POINTS:]), 0.0, 100.0)
        f = self.report.findings[name]
        values = list(self.history.get(name) or [f.value])[-SPARK_POINTS:]
        known = [v for v in (finite(x) for x in values) if v is not None]
        limit = finite(f.limit)
        # scaled from 0 to the limit (or the peak, if higher): a full block is at the limit
        hi = max(known + ([limit] if limit is not None else [])) if known else None
        return sparkline(values, None, hi)

    def _body(self, name: str) -> Group:
        f = self.report.findings[name]
        state = self.report.verdict.states[name]
        return Group(
            Text(f"{num(f.value)} / {setting(f.limit)} {UNIT_LABEL.get(f.unit, f.unit)}", style="bold"),
            Text(f.reason),
            Text(self._spark(name), style=BORDER_STYLE[state]),
            Text(f.evidence.line() if f.evidence is not None else MISSING, style="dim"),
        )

    def _panel(self, name: str, height: Optional[int] = None) -> Panel:
        v = self.report.verdict
        state = v.states[name]
        title = Text.assemble((name, "bold"), "  ", (str(state), STATE_STYLE[state]),
                              (f"  {duration(max(0.0, v.now - v.since[name]))}", "dim"))
        return Panel(self._body(name), title=title, title_align="left", height=height,
                     border_style=BORDER_STYLE[state])

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self._header()
        width = options.max_width
        if width >= SIDE_BY_SIDE_MIN_WIDTH:
            column = (width - 2) // 3
            # the same height for all three, so their borders line up
            inner = options.update(width=column - 4)
            height = 2 + max(len(console.render_lines(self._body(n), inner, pad=False))
                             for n in DETECTORS)
            grid = Table.grid(expand=True, padding=(0, 1, 0, 0))
            for _ in DETECTORS:
                grid.add_column(ratio=1)
            grid.add_row(*(self._panel(n, height) for n in DETECTORS))
            yield grid
        else:
            for n in DETECTORS:
                yield self._panel(n)
        yield _veto_line(self.report)
        yield from _incident_lines(self.report)
        yield from _sampler_lines(self.report.sampler)


def render(report: Report, history: Optional[Mapping[str, Sequence[float]]] = None,
           host: Optional[str] = None) -> RenderableType:
    """The dashboard for one report, as a rich renderable (print it, or give it to Live).

    ``history``: recent values per detector for the fever and amplification sparklines (the
    Dashboard keeps them); without it those show the current value only.
    """
    return _View(report, history or {}, host if host is not None else socket.gethostname())


# ------------------------------------------------------------------------------- the sinks
class Dashboard:
    """The live view on a terminal::

        with Dashboard(refresh_hz=10) as dash:
            for report in reports:
                dash.emit(report)         # cheap; redraws at most refresh_hz times a second

    Colours follow rich's Console: off with NO_COLOR set, or when not writing to a terminal.
    Leaving the ``with`` block (Ctrl-C included) draws the last report and restores the cursor.
    """

    def __init__(self, console: Optional[Console] = None, refresh_hz: float = 10.0, *,
                 host: Optional[str] = None, screen: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if isinstance(refresh_hz, bool) or not isinstance(refresh_hz, (int, float)) \
                or not math.isfinite(refresh_hz) or refresh_hz <= 0:
            raise ValueError(f"refresh_hz must be a positive number of redraws per second, got {refresh_hz!r}")
        self.console = console if console is not None else Console()
        self.refresh_hz = float(refresh_hz)
        self.host = host if host is not None else socket.gethostname()
        self._clock = clock
        self._live = Live(console=self.console, auto_refresh=False, screen=screen, transient=False)
        # display history only: the values as reported, never a statistic of them
        self._history: Dict[str, Deque[float]] = {n: deque(maxlen=SPARK_POINTS)
                                                  for n in ("fever", "amplification")}
        self._units: Dict[str, str] = {}
        self._report: Optional[Report] = None
        self._drawn = True
        self._last_draw = -math.inf

    def __enter__(self) -> "Dashboard":
        self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._report is not None and not self._drawn:
                self._live.update(self._view(self._report))   # stop() draws it once more
        finally:
            self._live.stop()

    @classmethod
    def from_config(cls, config: Config, console: Optional[Console] = None) -> "Dashboard":
        """Redrawn at most ``[output] refresh_hz`` times a second."""
        return cls(console, refresh_hz=config.output.refresh_hz)

    def emit(self, report: Report) -> bool:
        """Take a report; redraw if the last redraw is 1/refresh_hz old. True if it redrew."""
        if not self._live.is_started:
            raise RuntimeError("Dashboard.emit() outside `with Dashboard(...)`")
        self._remember(report)
        self._report, self._drawn = report, False
        now = self._clock()
        if now - self._last_draw < 1.0 / self.refresh_hz:
            return False
        self._last_draw = now
        self._live.update(self._view(report))
        self._live.refresh()
        self._drawn = True
        return True

    def _remember(self, report: Report) -> None:
        if self._report is not None and report.elapsed_s == self._report.elapsed_s:
            return      # the same report twice is not new history
        for name, values in self._history.items():
            f = report.findings[name]
            if self._units.get(name) != f.unit:     # fever's forecast is in another unit
                values.clear()
                self._units[name] = f.unit
            values.append(f.value)

    def _view(self, report: Report) -> RenderableType:
        return render(report, {n: list(v) for n, v in self._history.items()}, self.host)
