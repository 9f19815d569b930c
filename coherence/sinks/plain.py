"""Plain status lines, for a stdout that is not a terminal (a log file, a pipe) when JSON was not
asked: one line per report interval and one per state change, space-separated tokens without
spaces inside, no escape codes."""
from __future__ import annotations

from typing import Any, List

from coherence.detectors import DETECTORS
from coherence.format import finite, num, setting, utc
from coherence.monitor import Report
from coherence.sinks.base import LineSink


def _figure(unit: str, value: Any, limit: Any) -> str:
    if finite(value) is None:
        return "-"
    v, lim = num(value, "-"), setting(limit, "-")
    if unit == "pct_points":
        return f"±{v}/{lim}"
    if unit == "ratio":
        return f"{v}/{lim}"
    return f"{v}/{lim}{unit.replace(' ', '-')}"


def _names(value: object) -> List[str]:
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else []


def plain_line(report: Report) -> str:
    """One line of plain text, space-separated tokens without spaces inside::

        2026-11-27T06:01:02Z OK seizure=OK(±1.1/20) fever=OK(14/512MB/s) amplification=OK(-) veto=-
    """
    states = report.verdict.states
    tokens = [utc(report.ts), str(report.status)]
    for name in DETECTORS:
        f = report.findings[name]
        tokens.append(f"{name}={states[name]}({_figure(f.unit, f.value, f.limit)})")
    veto = ",".join(f"{v['action']}:{v['detector']}" for v in report.verdict.veto)
    tokens.append(f"veto={veto or '-'}")
    incidents = []
    for inc in report.verdict.incidents:
        if inc.get("kind") == "cascade":
            incidents.append("cascade:" + "+".join(_names(inc.get("detectors"))))
        else:
            incidents.append(f"{inc.get('kind')}:{inc.get('detector')}")
    if incidents:
        tokens.append("incidents=" + ",".join(incidents))
    return " ".join(tokens)


class PlainStatusSink(LineSink):
    """Plain status lines on a stream; the cadence of JsonLinesSink::

        sink = PlainStatusSink(sys.stdout, interval_s=1.0)
        sink.emit(report)         # True if it wrote a line; SinkClosed if the reader went away
    """

    def line(self, report: Report) -> str:
        return plain_line(report)
