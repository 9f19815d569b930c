"""Sinks render reports and own all output; they never compute statistics. Each is a Sink (one
method, ``emit(report)``): the live dashboard (rich), JSON lines for scripts, plain status lines
when stdout is not a terminal, the Nagios check line, Prometheus /metrics (prometheus, served by
http) and the daemon's log lines (log)."""
from coherence.sinks.base import Cadence, LineSink, Sink, SinkClosed, SinkFailed, opened, write_line
from coherence.sinks.dashboard import Dashboard, render, sparkline
from coherence.sinks.jsonl import JsonLinesSink, report_json
from coherence.sinks.log import StateLog
from coherence.sinks.nagios import NagiosSink, check_line
from coherence.sinks.plain import PlainStatusSink, plain_line
from coherence.sinks.prometheus import PrometheusSink

__all__ = [
    "Cadence",
    "Dashboard",
    "JsonLinesSink",
    "LineSink",
    "NagiosSink",
    "PlainStatusSink",
    "PrometheusSink",
    "Sink",
    "SinkClosed",
    "SinkFailed",
    "StateLog",
    "check_line",
    "opened",
    "plain_line",
    "render",
    "report_json",
    "sparkline",
    "write_line",
]
