"""JSON lines for scripts and log shippers: one compact object per report interval and one at
every state change. The serialisation of a Report lives here: ``report_json`` is the documented
object (schema: coherence/report.schema.json, docs/json-schema.md)."""
from __future__ import annotations

import json
import math
from enum import Enum
from typing import Any, Dict

from coherence.detectors import DETECTORS
from coherence.monitor import Report
from coherence.snapshot import RuntimeProcess
from coherence.sinks.base import EARLY_FRACTION, Cadence, LineSink, SinkClosed, write_line

__all__ = ["EARLY_FRACTION", "Cadence", "JsonLinesSink", "SinkClosed", "clean", "report_json",
           "write_line"]


def report_json(report: Report) -> Dict[str, Any]:
    """The documented JSON-lines object for one report, JSON-safe (NaN and inf as null)."""
    verdict = report.verdict
    detectors = {}
    for name in DETECTORS:
        f = report.findings[name]
        detectors[name] = {
            "state": verdict.states[name],
            "for_s": round(verdict.now - verdict.since[name], 3),
            "value": f.value, "limit": f.limit, "unit": f.unit,
            "reason": f.reason, "evidence": f.evidence.as_dict() if f.evidence else {},
            "veto": next((v["action"] for v in verdict.veto if v["detector"] == name), None),
        }
    return clean({
        "ts": round(report.ts, 3),
        "elapsed_s": round(report.elapsed_s, 3),
        "status": verdict.status,
        "changed": verdict.changed,
        "detectors": detectors,
        "veto": verdict.veto,
        "incidents": [_incident(i, report) for i in verdict.incidents],
        "sampler": report.sampler,
        "runtime": [_runtime(p) for p in report.snapshot.runtime],
    })


def _runtime(p: RuntimeProcess) -> Dict[str, Any]:
    """A runtime source (a JVM, a scrape target) as /metrics shows it, with why it is down."""
    return {"source": p.name, "runtime": p.runtime, "pid": p.pid, "up": p.available,
            "reason": p.reason}


def _incident(incident: Dict[str, object], report: Report) -> Dict[str, object]:
    """`since` on the monitor's clock becomes Unix time, comparable with `ts`."""
    since = incident.get("since")
    if not isinstance(since, (int, float)):
        return incident
    return {**incident, "since": round(report.ts - (report.verdict.now - since), 3)}


def clean(value: Any) -> Any:
    """JSON-safe: NaN and inf become null, enums their values, tuples lists, numpy scalars
    floats."""
    if isinstance(value, Enum):
        return clean(value.value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, int)):
        return value
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f if math.isfinite(f) else None


class JsonLinesSink(LineSink):
    """Reports as JSON lines::

        sink = JsonLinesSink(sys.stdout, interval_s=1.0)
        for report in reports:
            sink.emit(report)     # True if it wrote a line; SinkClosed if the reader went away
    """

    def line(self, report: Report) -> str:
        # report_json() has already turned NaN into null; allow_nan=False makes a slip loud
        # instead of writing `NaN`, which is not JSON. ASCII escapes keep the line safe for any
        # locale a log shipper runs in.
        return json.dumps(report_json(report), allow_nan=False, separators=(",", ":"))
