"""Sinks render reports; they never compute statistics: the live dashboard (rich), JSON lines
for scripts, and plain status lines when stdout is not a terminal."""
from coherence.sinks.dashboard import Dashboard, PlainStatusSink, plain_line, render, sparkline
from coherence.sinks.jsonl import Cadence, JsonLinesSink, SinkClosed, write_line

__all__ = [
    "Cadence",
    "Dashboard",
    "JsonLinesSink",
    "PlainStatusSink",
    "SinkClosed",
    "plain_line",
    "render",
    "sparkline",
    "write_line",
]
