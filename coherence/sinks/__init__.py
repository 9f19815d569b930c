"""Sinks render reports and own all output; they never compute statistics. Each is a Sink (one
method, ``emit(report)``): the live dashboard (rich), JSON lines for scripts, plain status lines
when stdout is not a terminal, and the Nagios check line."""
from coherence.sinks.base import Cadence, LineSink, Sink, SinkClosed, opened, write_line
from coherence.sinks.dashboard import Dashboard, render, sparkline
from coherence.sinks.jsonl import JsonLinesSink, report_json
from coherence.sinks.nagios import NagiosSink, check_line
from coherence.sinks.plain import PlainStatusSink, plain_line

__all__ = [
    "Cadence",
    "Dashboard",
    "JsonLinesSink",
    "LineSink",
    "NagiosSink",
    "PlainStatusSink",
    "Sink",
    "SinkClosed",
    "check_line",
    "opened",
    "plain_line",
    "render",
    "report_json",
    "sparkline",
    "write_line",
]
