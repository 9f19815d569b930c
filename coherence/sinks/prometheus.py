"""The Prometheus sink: every report as series, so that what a JSON line says a scrape says
(docs/metrics.md lists each series and the JSON key it mirrors), with the sampler's, StatsD's,
the runtime sources' and the exporter's own figures beside; served on /metrics (text or
OpenMetrics, as the scraper asks) with /healthz by coherence.sinks.http.

    sink = PrometheusSink(("127.0.0.1", 21950))          # bound now: a port in use fails here
    sink.watch(sampler=sentinel.sampler, statsd=sentinel.listener, runtime=sentinel.runtime)
    with sink:                                           # serving
        sink.emit(report)                                # every report: the latest is served

A scrape reads the latest report (replaced whole by `emit`, never changed) and the sampler's
lock-free figures: it takes no lock the sampler's tick waits on, and the sampler never waits
for it. What it answers is prometheus_client's encoders' output, byte for byte; the Exposition
keeps each family's encoded bytes while its samples stay the same, and fills a template made of
them when only its values change, so that the encoder runs only for a family that is new or
whose labels changed (benchmarks/run_exporter.py measures what a scrape costs).
"""
from __future__ import annotations

import bisect
import functools
import gzip
import ipaddress
import itertools
import math
import os
import platform
import re
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.exposition import choose_encoder, gzip_accepted, make_wsgi_app
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from coherence import __version__
from coherence.config import Config, parse_listen
from coherence.detectors import DETECTORS, Amplification, Fever, Seizure
from coherence.monitor import Report
from coherence.snapshot import PUSHED, SCRAPED, TCP_PROXY
from coherence.sources._base import (PAGE_SIZE, USER_HZ, Field, FileReader, SourceUnavailable,
                                     parse_fields, read_once)
from coherence.states import State
from coherence.verdict import CRITICAL_VETO
from coherence.sinks.http import BAD_REASONS, HttpServer, Request, Response, call_wsgi

if TYPE_CHECKING:
    from coherence._core import AtomicCounter
    from coherence.runtime import RuntimePoller
    from coherence.sampler import Sampler, SamplerStats
    from coherence.statsd import StatsdListener
    from coherence.webconfig import WebConfigFile

__all__ = ["Exposition", "Family", "LATENESS_BUCKETS_US", "PrometheusSink", "Series",
           "report_families", "report_rows"]

MB = 1e6                     # the JSON's MB are 10^6 bytes (coherence.detectors.MB)
STATES: Tuple[State, ...] = tuple(State)
# Every recommendation each detector can make: its own, and the stronger one at CRITICAL.
VETOES: Dict[str, Tuple[str, ...]] = {
    d.name: tuple(dict.fromkeys([str(d.veto), str(CRITICAL_VETO.get(d.name, d.veto))]))
    for d in (Seizure, Fever, Amplification)}
REQUEST_SOURCES = (PUSHED, SCRAPED, TCP_PROXY)
INCIDENTS = ("cascade", "flapping")
# Bucket bounds of coherence_sampler_tick_lateness_seconds, in us. Each is a bound of the
# engine's own bins (1 us wide up to 2048 us, then powers of two from 4096 us), so that the
# cumulative counts are exact, not interpolated.
LATENESS_BUCKETS_US = (10, 25, 50, 100, 250, 500, 1000, 2048, 4096, 16384, 65536, 262144, 1048576)
_UNITS = ("seconds", "bytes", "ratio", "hertz")
# Compression of a gzipped scrape: level 1 costs half of gzip's default 9 on a ~20 KB scrape
# and the body comes out a few hundred bytes larger (about 5 KB instead of 4.3 KB).
GZIP_LEVEL = 1
# Encodings kept (one per content type negotiated: OpenMetrics, text, their escapings); a
# client that asks for ever new versions only evicts the oldest.
MAX_FORMATS = 8


@functools.lru_cache(maxsize=None)
def _unit(name: str) -> str:
    """The OpenMetrics unit of a name that ends with one (`# UNIT` lines)."""
    base = name[:-len("_total")] if name.endswith("_total") else name
    return next((u for u in _UNITS if base.endswith("_" + u)), "")


# One family's samples: (label values, value) per sample, in the order they are exposed. The
# value is a float for gauges and counters, the info's (label, value) pairs for an info, and
# (buckets, sum) for a histogram. Built afresh by every scrape and never changed after.
Rows = List[Tuple[Tuple[str, ...], Any]]
Samples = Sequence[Tuple[Tuple[str, ...], Any]]


class Family:
    """What a metric family never changes: its name, help, type, unit and label names. Made
    once; a scrape gives it rows, and ``metric(rows)`` is prometheus_client's family object
    (GaugeMetricFamily, ...) that the encoders take."""

    __slots__ = ("type", "name", "doc", "labels", "unit")

    def __init__(self, type: str, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self.type, self.name, self.doc, self.labels = type, name, doc, tuple(labels)
        self.unit = "" if type == "info" else _unit(name)

    def metric(self, rows: Samples) -> Metric:
        m: Any
        if self.type == "gauge":
            m = GaugeMetricFamily(self.name, self.doc, labels=self.labels, unit=self.unit)
        elif self.type == "counter":
            m = CounterMetricFamily(self.name, self.doc, labels=self.labels, unit=self.unit)
        elif self.type == "info":
            m = InfoMetricFamily(self.name, self.doc, labels=self.labels)
            for labels, items in rows:
                m.add_metric(labels, dict(items))
            return m
        elif self.type == "histogram":
            m = HistogramMetricFamily(self.name, self.doc, labels=self.labels, unit=self.unit)
            for labels, (buckets, sum_value) in rows:
                m.add_metric(labels, buckets, sum_value)
            return m
        else:
            raise ValueError(f"{self.name}: no such family type {self.type!r}")
        for labels, value in rows:
            m.add_metric(labels, value)
        return m

    def __repr__(self) -> str:
        return f"Family({self.type!r}, {self.name!r})"


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> Family:
    return Family("gauge", name, doc, labels)


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> Family:
    return Family("counter", name, doc, labels)


def _info(name: str, doc: str, labels: Sequence[str] = ()) -> Family:
    return Family("info", name, doc, labels)


def _finite(x: Any) -> Optional[float]:
    if x is None or isinstance(x, (bool, str)):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _add(rows: Rows, labels: Tuple[str, ...], value: Any, scale: float = 1.0) -> None:
    """A sample only when there is a finite value: a figure the JSON writes as null is absent
    here (a NaN would poison every sum() over a fleet). (+ 0.0 makes a -0.0 zero: equal values
    encode alike, which the encoded-bytes cache relies on.)"""
    f = _finite(value)
    if f is not None:
        rows.append((labels, f * scale + 0.0))


# Evidence fields as series: (JSON key, name, help, scale to base units).
SEIZURE_EVIDENCE = (
    ("mean_pct", "coherence_seizure_cpu_utilization_mean_ratio",
     "Mean CPU utilization over the window of buckets (of the CPUs available), 0-1.", 0.01),
    ("std_pct", "coherence_seizure_cpu_utilization_stddev_ratio",
     "Standard deviation of the bucketed CPU utilization, 0-1 (the seizure's value / 100).", 0.01),
    ("buckets", "coherence_seizure_buckets", "CPU buckets in the window so far.", 1.0),
    ("swings", "coherence_seizure_swings",
     "Moves of the CPU utilization between its low and its high over the window.", 1.0),
    ("resolution_s", "coherence_seizure_resolution_seconds", "Length of a CPU bucket.", 1.0),
    ("window_s", "coherence_seizure_window_seconds", "Window of CPU buckets.", 1.0),
)
FEVER_EVIDENCE = (
    ("alloc_rate_mb_s", "coherence_fever_alloc_churn_bytes_per_second",
     "Allocation churn: anonymous-page (minor) faults x page size.", MB),
    ("minor_faults_per_s", "coherence_fever_minor_faults_per_second",
     "Minor page faults per second.", 1.0),
    ("pgalloc_mb_s", "coherence_fever_page_alloc_bytes_per_second",
     "Kernel page allocations (pgalloc_*), page cache included.", MB),
    ("resident_mb", "coherence_fever_resident_bytes", "Resident memory of what is watched.", MB),
    ("total_mb", "coherence_fever_memory_total_bytes",
     "Memory available to what is watched (the cgroup limit if lower than the host's).", MB),
    ("resident_growth_mb_s", "coherence_fever_resident_growth_bytes_per_second",
     "Trend of resident memory over fever.window_s.", MB),
    ("exhaustion_eta_s", "coherence_fever_exhaustion_eta_seconds",
     "Time until resident memory reaches the total, while it grows out of the noise.", 1.0),
)
FEVER_RUNTIME_EVIDENCE = (
    ("gc_time_pct", "coherence_fever_runtime_gc_time_ratio",
     "Share of wall time the runtime spending the most in GC spends there, 0-1.", 0.01),
    ("gc_collections_per_s", "coherence_fever_runtime_gc_collections_per_second",
     "Its collections per second.", 1.0),
    ("runtime_alloc_mb_s", "coherence_fever_runtime_alloc_bytes_per_second",
     "Its heap allocation rate.", MB),
    ("runtime_alloc_baseline_mb_s", "coherence_fever_runtime_alloc_baseline_bytes_per_second",
     "Its usual allocation rate, learned while its GC share was under half the limit.", MB),
)
AMPLIFICATION_EVIDENCE = (
    ("ratio", "coherence_amplification_ratio",
     "Calls out per request in over the window (the amplification's value).", 1.0),
    ("baseline", "coherence_amplification_baseline_ratio",
     "The ratio learned while healthy.", 1.0),
    ("ingress_per_s", "coherence_amplification_ingress_requests_per_second",
     "Requests in per second.", 1.0),
    ("egress_per_s", "coherence_amplification_egress_requests_per_second",
     "Calls out per second, retries included.", 1.0),
    ("window_s", "coherence_amplification_window_seconds", "The ratio's sliding window.", 1.0),
)

STATUS = _gauge("coherence_status", "Overall status (the worst detector's state): 1 for the state "
                "it is in, 0 for the others.", ["state"])
REPORT_TS = _gauge("coherence_report_timestamp_seconds", "Unix time of the last report (JSON ts).")
MONITOR_START = _gauge("coherence_monitor_start_time_seconds",
                       "Unix time the monitor started judging (JSON ts - elapsed_s).")
DETECTOR_STATE = _gauge("coherence_detector_state", "Each detector's state: 1 for the state it is "
                        "in, 0 for the others (WARMUP, OK, WARNING, CRITICAL, UNAVAILABLE).",
                        ["detector", "state"])
STATE_SINCE = _gauge("coherence_detector_state_start_time_seconds",
                     "Unix time the detector entered its current state (JSON ts - for_s).",
                     ["detector"])
STATE_CHANGES = _counter("coherence_detector_state_changes_total",
                         "State changes of the detector since the exporter started.", ["detector"])
DETECTOR_VALUE = _gauge("coherence_detector_value", "The figure the detector compares with its "
                        "limit, in the JSON's unit, named by the unit label (pct_points, MB/s, MB/s "
                        "growth, pct_gc_time, ratio); absent while there is none.", ["detector", "unit"])
DETECTOR_LIMIT = _gauge("coherence_detector_limit", "The limit the value is judged against, in the "
                        "same unit.", ["detector", "unit"])
DETECTOR_VETO = _gauge("coherence_detector_veto", "The recommendation in force (1) per detector and "
                       "action; 0 for the detector's other actions. coherence never acts.",
                       ["detector", "action"])
EVIDENCE_FAMILIES: Dict[str, Family] = {
    name: _gauge(name, doc, ["process"] if rows is FEVER_RUNTIME_EVIDENCE else ())
    for rows in (SEIZURE_EVIDENCE, FEVER_EVIDENCE, FEVER_RUNTIME_EVIDENCE, AMPLIFICATION_EVIDENCE)
    for _key, name, doc, _scale in rows}
PRESSURE = _gauge("coherence_pressure_some_ratio", "PSI: share of time some task waited for the "
                  "resource (smoothed), 0-1.", ["resource"])
FEVER_RUNTIME = _info("coherence_fever_runtime", "The runtime fever judges: the one read through "
                      "its own counters that spends the largest share of its time in GC.")
AMPLIFICATION_SOURCE = _gauge("coherence_amplification_source", "Where amplification's request "
                              "counts come from: 1 for the source in use (pushed, scraped, "
                              "tcp_proxy), 0 for the others.", ["source"])
INCIDENT_ACTIVE = _gauge("coherence_incident_active", "1 while an incident of this kind is on "
                         "(cascade, flapping), else 0.", ["kind"])
CASCADE_MEMBER = _gauge("coherence_cascade_member", "1 for each detector in the cascade, 0 for the "
                        "others.", ["detector"])
CASCADE_START = _gauge("coherence_cascade_start_time_seconds", "Unix time the first detector of "
                       "the cascade turned CRITICAL; absent when there is no cascade.")
FLAPPING = _gauge("coherence_detector_flapping", "1 while the detector flaps (changes state "
                  "verdict.flap_changes times within verdict.flap_window_s), else 0.", ["detector"])
FLAPPING_CHANGES = _gauge("coherence_detector_flapping_changes", "State changes within the "
                          "window, while the detector flaps.", ["detector"])
FLAPPING_WINDOW = _gauge("coherence_detector_flapping_window_seconds", "The window they are "
                         "counted over, while the detector flaps.", ["detector"])
RUNTIME_SOURCE = _info("coherence_runtime_source", "A runtime read through its own counters (a "
                       "JVM's performance data, a /metrics endpoint).", ["source"])
RUNTIME_UP = _gauge("coherence_runtime_source_up", "1 while the source is read, 0 once it failed "
                    "(the process exited, the target stopped answering: `coherence sources` says "
                    "why).", ["source"])
# Each runtime source's rates: (attribute, family, extra label values).
RUNTIME_ROWS: Tuple[Tuple[str, Family, Tuple[str, ...]], ...] = ()
_RUNTIME_GAUGES: Dict[str, Family] = {}
for _attr, _name, _doc, _extra in (
        ("gc_share", "coherence_runtime_gc_time_ratio", "Share of wall time spent in GC.", ()),
        ("collections_per_s", "coherence_runtime_gc_collections_per_second",
         "Collections per second.", ()),
        ("alloc_bytes_per_s", "coherence_runtime_alloc_bytes_per_second",
         "Heap allocation rate.", ()),
        ("requests_in_per_s", "coherence_runtime_requests_per_second",
         "Requests per second, in (received) and out (calls made, retries included).", ("in",)),
        ("requests_out_per_s", "coherence_runtime_requests_per_second", "", ("out",)),
        ("ratio", "coherence_runtime_requests_ratio",
         "Requests out per request in over the amplification window.", ())):
    if _name not in _RUNTIME_GAUGES:
        _RUNTIME_GAUGES[_name] = _gauge(_name, _doc, ["source", "direction"] if _extra else ["source"])
    RUNTIME_ROWS += ((_attr, _RUNTIME_GAUGES[_name], _extra),)

BUILD = _info("coherence_build", "coherence's version, and the Python running it.")
HEALTHY = _gauge("coherence_healthy", "1 while /healthz answers 200 (the sampler ticks and reports "
                 "are fresh), else 0.")
SAMPLER_SOURCE = _info("coherence_sampler_source", "The counter source in use per family (cpu, "
                       "memory, pressure, requests).", ["family"])
SAMPLER_NOTE = _info("coherence_sampler_note", "A caveat about the sources in use (a coarse CPU "
                     "counter, ...).")
SAMPLER_TARGET = _gauge("coherence_sampler_target_hertz", "CPU samples per second asked for (--hz).")
SAMPLER_ACHIEVED = _gauge("coherence_sampler_achieved_hertz", "Ticks taken per second since the "
                          "sampler started.")
SAMPLER_TICKS = _counter("coherence_sampler_ticks_total", "Ticks taken.")
SAMPLER_OVERRUNS = _counter("coherence_sampler_overruns_total", "Ticks that missed their deadline "
                            "and were skipped (never caught up in a burst).")
SAMPLER_CPU = _counter("coherence_sampler_cpu_seconds_total", "CPU time of the sampler's thread.")
SAMPLER_LATENESS = Family("histogram", "coherence_sampler_tick_lateness_seconds",
                          "Lateness of each tick against its deadline.")
SAMPLER_P50 = _gauge("coherence_sampler_tick_lateness_p50_seconds",
                     "Median lateness of a tick against its deadline, since the sampler started.")
SAMPLER_P99 = _gauge("coherence_sampler_tick_lateness_p99_seconds",
                     "99th percentile of the lateness, since the sampler started.")
SAMPLER_AGE = _gauge("coherence_sampler_last_tick_age_seconds", "Time since the sampler's last tick "
                     "(a heartbeat: it stays under a tick's period while the sampler runs).")
REQUESTS_PUSHED = _counter("coherence_requests_pushed_total", "Requests counted by the application "
                           "(StatsD, coherence.hooks): in (received) and out (calls made).",
                           ["direction"])
STATSD_PACKETS = _counter("coherence_statsd_packets_total", "StatsD datagrams received.")
STATSD_LINES = _counter("coherence_statsd_lines_total", "StatsD lines received, by outcome: "
                        "accepted (ours), ignored (another metric), malformed (counted, dropped).",
                        ["outcome"])
STATSD_DROPPED = _counter("coherence_statsd_dropped_packets_total", "StatsD datagrams the kernel "
                          "dropped because the socket's receive queue was full.")
POLLER_ROUNDS = _counter("coherence_runtime_poller_rounds_total", "Rounds of the runtime poller "
                         "(every runtime source read once).")
POLLER_SKIPPED = _counter("coherence_runtime_poller_skipped_rounds_total", "Rounds skipped because "
                          "one ran past the next one's deadline.")
HTTP_REQUESTS = _counter("coherence_http_requests_total", "HTTP requests answered, by path "
                         "(/metrics, /healthz, /, other) and status code.", ["path", "code"])
HTTP_BAD = _counter("coherence_http_bad_requests_total", "Connections dropped or refused, by "
                    "reason: " + ", ".join(BAD_REASONS) + ".", ["reason"])
HTTP_CONNECTIONS = _gauge("coherence_http_connections", "HTTP connections open now.")
HTTP_CPU = _counter("coherence_http_cpu_seconds_total", "CPU time of the threads that served HTTP "
                    "connections (TLS, authentication and rendering included).")
# The process's own figures, as every client library names them (prometheus_client's
# ProcessCollector, client_golang's): what dashboards and the usual alerts already query.
PROCESS_VMEM = _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.")
PROCESS_RSS = _gauge("process_resident_memory_bytes", "Resident memory size in bytes.")
PROCESS_START = _gauge("process_start_time_seconds",
                       "Start time of the process since unix epoch in seconds.")
PROCESS_CPU = _counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.")
PROCESS_OPEN_FDS = _gauge("process_open_fds", "Number of open file descriptors.")
PROCESS_MAX_FDS = _gauge("process_max_fds", "Maximum number of open file descriptors.")
# (labels of each state's sample), made once
_STATE_LABELS = {name: tuple((name, str(s)) for s in STATES) for name in DETECTORS}
_STATUS_LABELS = tuple((str(s),) for s in STATES)
_ONE = {name: (name,) for name in DETECTORS}

Snapshot = List[Tuple[Family, Samples]]


def report_families(report: Report, changes: Mapping[str, int]) -> List[Metric]:
    """The series of one report: the verdict, each finding with its evidence, the incidents and
    the runtime sources judged. ``changes``: state changes per detector so far (the sink counts
    them across reports)."""
    return [family.metric(rows) for family, rows in report_rows(report, changes)]


def report_rows(report: Report, changes: Mapping[str, int]) -> Snapshot:
    """report_families' families with their rows, before they are made prometheus_client's."""
    verdict = report.verdict
    status = [(labels, float(verdict.status == s)) for labels, s in zip(_STATUS_LABELS, STATES)]
    ts: Rows = [((), float(report.ts))]
    # start times to the millisecond, as the JSON writes ts, elapsed_s and for_s: a wall-clock
    # time less a monotonic one, they would otherwise change in the microseconds at each report
    start: Rows = [((), round(report.ts - report.elapsed_s, 3))]
    state: Rows = []
    since: Rows = []
    changed: Rows = []
    value: Rows = []
    limit: Rows = []
    veto: Rows = []
    in_force = {v["detector"]: str(v["action"]) for v in verdict.veto}
    for name in DETECTORS:
        f = report.findings[name]
        now_state, one = verdict.states[name], _ONE[name]
        state += [(labels, float(now_state == s)) for labels, s in zip(_STATE_LABELS[name], STATES)]
        since.append((one, round(report.ts - (verdict.now - verdict.since[name]), 3)))
        changed.append((one, float(changes.get(name, 0))))
        _add(value, (name, f.unit), f.value)
        _add(limit, (name, f.unit), f.limit)
        action_in_force = in_force.get(name)
        veto += [((name, action), float(action_in_force == action)) for action in VETOES[name]]
    out: Snapshot = [(STATUS, status), (REPORT_TS, ts), (MONITOR_START, start),
                     (DETECTOR_STATE, state), (STATE_SINCE, since), (STATE_CHANGES, changed),
                     (DETECTOR_VALUE, value), (DETECTOR_LIMIT, limit), (DETECTOR_VETO, veto)]
    out += _evidence(report)
    out += _incidents(report)
    out += _runtime(report)
    return out


def _evidence_rows(evidence: Any, table: Sequence[Tuple[str, str, str, float]],
                   labels: Tuple[str, ...] = ()) -> Snapshot:
    out: Snapshot = []
    for key, name, _doc, scale in table:
        rows: Rows = []
        if evidence is not None:
            _add(rows, labels, getattr(evidence, key, None), scale)
        out.append((EVIDENCE_FAMILIES[name], rows))
    return out


def _evidence(report: Report) -> Snapshot:
    seizure = report.findings[Seizure.name].evidence
    fever = report.findings[Fever.name].evidence
    amp = report.findings[Amplification.name].evidence
    out = _evidence_rows(seizure, SEIZURE_EVIDENCE)
    pressure: Rows = []
    _add(pressure, ("cpu",), getattr(seizure, "pressure_cpu_some_pct", None), 0.01)
    _add(pressure, ("memory",), getattr(fever, "pressure_memory_some_pct", None), 0.01)
    out.append((PRESSURE, pressure))
    out += _evidence_rows(fever, FEVER_EVIDENCE)
    process = getattr(fever, "runtime_process", None)
    info: Rows = []
    if process:
        pid = getattr(fever, "runtime_pid", None)
        info.append(((), (("process", process), ("pid", "" if pid is None else str(pid)))))
    out.append((FEVER_RUNTIME, info))
    out += _evidence_rows(fever if process else None, FEVER_RUNTIME_EVIDENCE, (process or "",))
    out += _evidence_rows(amp, AMPLIFICATION_EVIDENCE)
    source: Rows = []
    if amp is not None:
        source = [((s,), float(amp.source == s)) for s in REQUEST_SOURCES]
    out.append((AMPLIFICATION_SOURCE, source))
    return out


def _incidents(report: Report) -> Snapshot:
    kinds = {str(i.get("kind")) for i in report.verdict.incidents}
    active = [((kind,), float(kind in kinds)) for kind in INCIDENTS]
    cascade = next((i for i in report.verdict.incidents if i.get("kind") == "cascade"), None)
    members = set(cascade.get("detectors", ())) if cascade else set()  # type: ignore[call-overload]
    flappers = {str(i.get("detector")): i for i in report.verdict.incidents
                if i.get("kind") == "flapping"}
    member: Rows = []
    flapping: Rows = []
    flaps: Rows = []
    window: Rows = []
    for name in DETECTORS:
        one = _ONE[name]
        member.append((one, float(name in members)))
        flapping.append((one, float(name in flappers)))
        if name in flappers:
            _add(flaps, one, flappers[name].get("changes"))
            _add(window, one, flappers[name].get("window_s"))
    start: Rows = []
    if cascade is not None:
        since = _finite(cascade.get("since"))
        if since is not None:
            start.append(((), round(report.ts - (report.verdict.now - since), 3)))
    return [(INCIDENT_ACTIVE, active), (CASCADE_MEMBER, member), (CASCADE_START, start),
            (FLAPPING, flapping), (FLAPPING_CHANGES, flaps), (FLAPPING_WINDOW, window)]


def _runtime(report: Report) -> Snapshot:
    """Each runtime source (a JVM, a scrape target) as judged: up, and its rates."""
    info: Rows = []
    up: Rows = []
    rates: Dict[Family, Rows] = {family: [] for family in _RUNTIME_GAUGES.values()}
    for p in report.snapshot.runtime:
        source = (p.name,)
        info.append((source, (("runtime", p.runtime), ("pid", "" if p.pid is None else str(p.pid)))))
        up.append((source, float(p.available)))
        if not p.available:
            continue
        for attr, family, extra in RUNTIME_ROWS:
            _add(rates[family], (p.name, *extra), getattr(p, attr))
    return [(RUNTIME_SOURCE, info), (RUNTIME_UP, up), *rates.items()]


# /proc/self/stat, tokens after the command's last ")": proc(5)'s utime and stime (fields 14,
# 15), starttime (22), vsize (23) and rss (24, in pages)
_STAT = (Field("cpu_s", b"", 11, after_last=b")", scale=1.0 / USER_HZ),
         Field("cpu_s", b"", 12, after_last=b")", scale=1.0 / USER_HZ),
         Field("start_s", b"", 19, after_last=b")", scale=1.0 / USER_HZ),
         Field("vsize_bytes", b"", 20, after_last=b")"),
         Field("rss_bytes", b"", 21, after_last=b")", scale=float(PAGE_SIZE)))


class ProcessFigures:
    """The process's CPU, memory, descriptors and start time (the process_* families), read as
    cheaply as a scrape a second allows: /proc/self/stat through a FileReader (opened once, one
    pread a scrape) and the sources' own field parser, the descriptor limit from getrlimit (not
    by parsing /proc/self/limits), the boot time and the start time once. The same figures as
    prometheus_client's ProcessCollector, which opens and parses three files per scrape. A
    figure that cannot be read is left out, as that collector leaves it out."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._lock = threading.Lock()     # held while the reader is read: close() frees no fd in use
        self._reader: Optional[FileReader] = None
        self._start: Optional[float] = None
        self._btime: Optional[float] = None
        try:
            btime = parse_fields(read_once(os.path.join(proc, "stat")), (Field("btime", b"btime ", 0),))
            self._btime = btime.get("btime")
        except SourceUnavailable:
            pass

    def _stat(self) -> Dict[str, float]:
        with self._lock:
            try:
                if self._reader is None:
                    self._reader = FileReader(os.path.join(self.proc, "self", "stat"), _STAT)
                return self._reader.parse()
            except SourceUnavailable:
                return {}

    def rows(self) -> "Snapshot":
        stat = self._stat()
        if self._start is None and self._btime is not None and "start_s" in stat:
            self._start = stat["start_s"] + self._btime
        out: Snapshot = [(family, [((), stat[key])]) for family, key in
                         ((PROCESS_VMEM, "vsize_bytes"), (PROCESS_RSS, "rss_bytes")) if key in stat]
        if self._start is not None:
            out.append((PROCESS_START, [((), self._start)]))
        if "cpu_s" in stat:
            out.append((PROCESS_CPU, [((), stat["cpu_s"])]))
        try:
            open_fds = float(len(os.listdir(os.path.join(self.proc, "self", "fd"))))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except OSError:
            return out
        max_fds = math.inf if soft == resource.RLIM_INFINITY else float(soft)
        return out + [(PROCESS_OPEN_FDS, [((), open_fds)]), (PROCESS_MAX_FDS, [((), max_fds)])]

    def close(self) -> None:
        with self._lock:
            reader, self._reader = self._reader, None
            if reader is not None:
                reader.close()


def lateness_buckets(hist: Sequence[Tuple[int, int]]) -> Tuple[Tuple[str, float], ...]:
    """The cumulative bucket counts of the engine's lateness histogram ((upper bound in us,
    count) per non-empty bin) at LATENESS_BUCKETS_US, and +Inf."""
    uppers = [upper for upper, _ in hist]
    cumulative = list(itertools.accumulate(n for _, n in hist))
    out = []
    for bound in LATENESS_BUCKETS_US:
        # the bins whose largest value is within the bound: (upper - 1) us for the 1 us bins,
        # under `upper` for the powers of two
        i = bisect.bisect_right(uppers, bound + 1)
        out.append((_BOUNDS[bound], float(cumulative[i - 1]) if i else 0.0))
    out.append(("+Inf", float(cumulative[-1]) if cumulative else 0.0))
    return tuple(out)


_BOUNDS = {bound: repr(bound / 1e6) for bound in LATENESS_BUCKETS_US}


def _always_healthy(stats: Optional["SamplerStats"] = None) -> Tuple[bool, str]:
    return True, ""


@dataclass
class _Latest:
    report: Optional[Report] = None
    changes: Dict[str, int] = field(default_factory=dict)
    received: float = math.nan            # monotonic time emit() took it


class Series(Collector):
    """The collector behind /metrics: the latest report's series, and the live figures of what
    it watches (the sampler, the StatsD listener, the runtime poller, the pushed request
    counters, the HTTP server). Reads only: never locks what the sampler writes.

    ``snapshot()`` is every family with its rows (what the Exposition encodes, family by
    family); ``collect()`` the same as prometheus_client's family objects."""

    def __init__(self) -> None:
        self.latest = _Latest()
        self.sampler: Optional["Sampler"] = None
        self.statsd: Optional["StatsdListener"] = None
        self.runtime: Optional["RuntimePoller"] = None
        self.counters: Optional[Tuple["AtomicCounter", "AtomicCounter"]] = None
        self.server: Optional[HttpServer] = None
        self.process: Optional[ProcessFigures] = None
        # (healthy, why), given the sampler's figures when there is a sampler
        self.healthy: Callable[[Optional["SamplerStats"]], Tuple[bool, str]] = _always_healthy
        self._build: Rows = [((), (("version", __version__),
                                   ("python_version", platform.python_version()),
                                   ("python_implementation", platform.python_implementation())))]
        self._report_rows: Tuple[Optional[_Latest], Snapshot] = (None, [])

    def update(self, report: Report) -> None:
        """Take a report (the main thread's, four a second); the swap is one assignment."""
        previous, changes = self.latest.report, dict(self.latest.changes)
        if previous is not None:
            for name, state in report.verdict.states.items():
                if previous.verdict.states.get(name) != state:
                    changes[name] = changes.get(name, 0) + 1
        self.latest = _Latest(report, changes, time.monotonic())

    def collect(self) -> Iterator[Metric]:
        for family, rows in self.snapshot():
            yield family.metric(rows)

    def snapshot(self) -> Snapshot:
        """Every family, with its rows as of now."""
        latest = self.latest                    # one read: the report and its counts belong together
        s = self.sampler
        stats = s.stats() if s is not None else None
        ok, _reason = self.healthy(stats)
        out: Snapshot = [(BUILD, self._build), (HEALTHY, [((), float(ok))])]
        if latest.report is not None:
            seen, rows = self._report_rows       # a report's rows are made once (reports: 4/s)
            if seen is not latest:
                rows = report_rows(latest.report, latest.changes) + \
                    self._sampler_from_report(latest.report)
                self._report_rows = (latest, rows)
            out += rows
        if s is not None and stats is not None:
            out += self._sampler(s, stats)
        out += self._requests()
        out += self._statsd()
        out += self._poller()
        out += self._http()
        if self.process is not None:
            out += self.process.rows()
        return out

    @staticmethod
    def _sampler_from_report(report: Report) -> Snapshot:
        figures = report.sampler or {}
        sources = [((family,), (("source", str(name)),))
                   for family, name in sorted((figures.get("sources") or {}).items())]
        notes = [((), (("note", str(note)),)) for note in figures.get("notes") or ()]
        return [(SAMPLER_SOURCE, sources), (SAMPLER_NOTE, notes)]

    @staticmethod
    def _sampler(s: "Sampler", stats: "SamplerStats") -> Snapshot:
        achieved: Rows = []
        _add(achieved, (), stats.achieved_hz)
        p50: Rows = []
        p99: Rows = []
        # the sampler's own percentiles (its stats(), from the engine's counts)
        _add(p50, (), stats.tick_lateness_p50_us, 1e-6)
        _add(p99, (), stats.tick_lateness_p99_us, 1e-6)
        age: Rows = []
        _add(age, (), time.monotonic() - stats.last_tick_s)
        buckets = lateness_buckets(s.engine.lateness_histogram())     # the list: once a scrape
        return [(SAMPLER_TARGET, [((), float(s.hz))]), (SAMPLER_ACHIEVED, achieved),
                (SAMPLER_TICKS, [((), float(stats.ticks))]),
                (SAMPLER_OVERRUNS, [((), float(stats.overruns))]),
                (SAMPLER_CPU, [((), float(stats.cpu_s))]),
                (SAMPLER_LATENESS, [((), (buckets, float(stats.tick_lateness_sum_s)))]),
                (SAMPLER_P50, p50), (SAMPLER_P99, p99), (SAMPLER_AGE, age)]

    def _requests(self) -> Snapshot:
        if self.counters is None:
            return []
        ingress, egress = self.counters
        return [(REQUESTS_PUSHED, [(("in",), float(ingress.value)), (("out",), float(egress.value))])]

    def _statsd(self) -> Snapshot:
        listener = self.statsd
        if listener is None:
            return []
        lines = [((outcome,), float(getattr(listener, outcome)))
                 for outcome in ("accepted", "ignored", "malformed")]
        dropped: Rows = []
        _add(dropped, (), listener.dropped())
        return [(STATSD_PACKETS, [((), float(listener.packets))]), (STATSD_LINES, lines),
                (STATSD_DROPPED, dropped)]

    def _poller(self) -> Snapshot:
        poller = self.runtime
        if poller is None:
            return []
        return [(POLLER_ROUNDS, [((), float(poller.rounds))]),
                (POLLER_SKIPPED, [((), float(poller.skipped))])]

    def _http(self) -> Snapshot:
        if self.server is None:
            return []
        f = self.server.figures()
        requests = [((path, str(code)), float(n)) for (path, code), n in sorted(f["requests"].items())]
        bad = [((reason,), float(n)) for reason, n in f["bad"].items()]
        return [(HTTP_REQUESTS, requests), (HTTP_BAD, bad),
                (HTTP_CONNECTIONS, [((), float(f["connections"]))]),
                (HTTP_CPU, [((), float(f["cpu_s"]))])]


class _Collected:
    """Given families as a collector, for prometheus_client's encoders."""

    def __init__(self, metrics: Sequence[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Sequence[Metric]:
        return self.metrics


def _signature(metric: Metric) -> Tuple[Any, Optional[Tuple[float, ...]]]:
    """(shape, sample values) of a family from another collector; (None, None) if it cannot be
    compared (an exemplar, a native histogram)."""
    names = []
    values = []
    for s in metric.samples:
        if s.exemplar is not None or s.native_histogram is not None:
            return None, None
        names.append((s.name, tuple(s.labels.items()), s.timestamp))
        values.append(s.value)
    return (metric.type, metric.documentation, metric.unit, tuple(names)), tuple(values)


_OM_ESCAPING = "underscores", "allow-utf-8"
_PLAIN = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@functools.lru_cache(maxsize=4096)
def _plain(name: str) -> bool:
    return _PLAIN.match(name) is not None


def _plain_names(metric: Metric) -> bool:
    """The family's name, its samples' names and their label names are all of
    [a-zA-Z_][a-zA-Z0-9_]* (every series of ours and of the process collector)."""
    return _plain(metric.name) and all(_plain(s.name) and all(_plain(k) for k in s.labels)
                                       for s in metric.samples)


def _plain_encoder(encoder: Callable[[Any], bytes]) -> Optional[Callable[[Any], bytes]]:
    """For OpenMetrics with the "underscores" escaping (what Prometheus gets by default),
    the same encoder with "allow-utf-8", for the families whose names are all plain: it writes
    them byte for byte as "underscores" does, since "underscores" only rewrites the characters
    outside [a-zA-Z0-9_] and "allow-utf-8" only quotes a name outside the legacy set, but
    prometheus_client (0.26 here) rewrites each sample's name one character at a time under
    "underscores" (half the encoder's time), and under "allow-utf-8" checks it with one
    regular expression. tests/test_sinks_prometheus.py compares the two outputs for every
    family and every Accept header. None for any other format or escaping."""
    if not (isinstance(encoder, functools.partial) and encoder.func is openmetrics_latest
            and encoder.keywords.get("escaping") == _OM_ESCAPING[0]):
        return None
    return functools.partial(encoder.func, *encoder.args,
                             **{**encoder.keywords, "escaping": _OM_ESCAPING[1]})


class _Template:
    """One family's encoded text with its sample values taken out: the lines before its
    samples, and each sample line's text up to its value. Filled with new values it is the
    encoder's output for the same samples with those values, because both encoders write a
    sample without a timestamp or an exemplar as its name and labels, a space, the value as
    prometheus_client's floatToGoString writes it, and a newline. ``of`` makes one only after
    checking that filling it with the values it was made from gives back the encoder's bytes
    exactly (None otherwise: that family is always encoded)."""

    __slots__ = ("head", "prefixes")

    def __init__(self, head: str, prefixes: Tuple[str, ...]) -> None:
        self.head, self.prefixes = head, prefixes

    @classmethod
    def of(cls, metric: Metric, encoded: bytes, values: Sequence[float]) -> Optional["_Template"]:
        samples = metric.samples
        if len(samples) != len(values) or not samples:
            return None
        for sample, value in zip(samples, values):
            if (sample.timestamp is not None or sample.exemplar is not None
                    or sample.native_histogram is not None or not sample.value == value):
                return None
        try:
            text = encoded.decode("utf-8")
        except UnicodeDecodeError:
            return None
        lines = text.split("\n")
        n = len(samples)
        if lines[-1] != "" or len(lines) < n + 1:
            return None
        prefixes = []
        for line, value in zip(lines[-1 - n:-1], values):
            shown = floatToGoString(value)
            if not line.endswith(" " + shown):
                return None
            prefixes.append(line[:len(line) - len(shown)])
        head = "".join(line + "\n" for line in lines[:-1 - n])
        template = cls(head, tuple(prefixes))
        return template if template.fill(values) == encoded else None

    def fill(self, values: Sequence[float]) -> bytes:
        return (self.head + "".join([f"{prefix}{floatToGoString(value)}\n"
                                     for prefix, value in zip(self.prefixes, values)])).encode()


class _Kept:
    """What a family was last encoded from in one format: what it was given (its rows), its
    shape (everything but the sample values), its values, its bytes and its template."""

    __slots__ = ("source", "shape", "values", "out", "template")

    def __init__(self, source: Any, shape: Any, values: Optional[Tuple[float, ...]], out: bytes,
                 template: Optional[_Template]) -> None:
        self.source, self.shape, self.values = source, shape, values
        self.out, self.template = out, template


# (shape, sample values) of a family: its shape is everything the encoder writes but the sample
# values (None: never kept); its values, in the order the encoder writes them (None: not known
# without the family object; a template is then never made).
Split = Tuple[Any, Optional[Tuple[float, ...]]]
# One family as a scrape gives it to _Format.render: its key (a Family, or another collector's
# family name), what it is made from (compared with the last scrape's first: the cheapest test),
# and `arg`, `split` and `make`: split(key, arg) is its (shape, values), make(key, arg) the
# family object (no closure is made per family and scrape).
Part = Tuple[Any, Any, Any, Callable[[Any, Any], Split], Callable[[Any, Any], Metric]]


class _Format:
    """One negotiated format: prometheus_client's encoder for it, what it ends every exposition
    with ("# EOF" for OpenMetrics), and what each family was last encoded from.

    A family is served, in order of cost:
      - the bytes kept for it, when it is made from what it was at the last scrape (states,
        vetoes, limits, info series, counters that did not move), or its shape and values are
        the same;
      - its template filled with the new values, when only its values changed (timestamps,
        rates, the sampler's counters and histogram, the process's CPU): no family object is
        made and the encoder is not called;
      - the encoder's bytes for it, when it is new or its shape changed (a label value came or
        went), from which its template is made. Families without a shape are encoded
        together, each run of them in one call of the encoder."""

    def __init__(self, encoder: Callable[[Any], bytes]) -> None:
        self.encoder = encoder
        self.tail = encoder(_Collected(()))
        # each entry is replaced by one assignment, so that a scrape beside sees the old entry
        # or the new one, either whole
        self.families: Dict[Any, _Kept] = {}
        self.plain = _plain_encoder(encoder)

    def encode(self, metrics: Sequence[Metric]) -> bytes:
        """The families as the encoder writes them, without the tail."""
        plain = self.plain is not None and all(_plain_names(m) for m in metrics)
        out = (self.plain if plain else self.encoder)(_Collected(metrics))   # type: ignore[misc]
        if not out.endswith(self.tail):
            raise ValueError(f"{metrics[0].name}...: the encoder did not end with {self.tail!r}")
        return out[:len(out) - len(self.tail)]

    def render(self, families: Iterable[Part]) -> List[bytes]:
        """The encoded parts, in order."""
        parts: List[bytes] = []
        run: List[Metric] = []
        kept = self.families
        for key, source, arg, split, make in families:
            seen = kept.get(key)
            if seen is not None and seen.source == source:
                out: Optional[bytes] = seen.out
            else:
                shape, values = split(key, arg)
                if shape is None:
                    run.append(make(key, arg))
                    continue
                out = None
                if seen is not None and seen.shape == shape:
                    if seen.values == values:
                        out = seen.out
                        kept[key] = _Kept(source, shape, values, out, seen.template)
                    elif seen.template is not None and values is not None:
                        out = seen.template.fill(values)
                        kept[key] = _Kept(source, shape, values, out, seen.template)
            if run:
                parts.append(self.encode(run))
                run = []
            if out is None:
                # new, or its shape changed: encoded on its own, and a template made of it
                metric = make(key, arg)
                out = self.encode((metric,))
                template = None if values is None else _Template.of(metric, out, values)
                kept[key] = _Kept(source, shape, values, out, template)
            parts.append(out)
        if run:
            parts.append(self.encode(run))
        return parts


def _shape_of_rows(family: Family, rows: Samples) -> Split:
    """(shape, sample values in the encoder's order) of one of our families' rows."""
    if family.type in ("gauge", "counter"):
        return tuple([labels for labels, _ in rows]), tuple([value for _, value in rows])
    if family.type == "histogram":
        # HistogramMetricFamily's samples: each bucket, then _count (the +Inf bucket), _sum
        shape = tuple([(labels, tuple([le for le, _ in buckets])) for labels, (buckets, _) in rows])
        values: List[float] = []
        for _labels, (buckets, sum_value) in rows:
            values.extend([count for _, count in buckets])
            values.append(buckets[-1][1])
            values.append(sum_value)
        return shape, tuple(values)
    return tuple(rows), ()                     # info: its labels are all it has


def _make_from_rows(family: Family, rows: Samples) -> Metric:
    return family.metric(rows)


def _rows_of(snapshot: Snapshot) -> Iterator[Part]:
    for family, rows in snapshot:
        yield family, rows, rows, _shape_of_rows, _make_from_rows


def _split_given(_name: str, given: Tuple[Split, Metric]) -> Split:
    return given[0]


def _metric_given(_name: str, given: Tuple[Split, Metric]) -> Metric:
    return given[1]


def _metrics_of(collector: Collector) -> Iterator[Part]:
    for metric in collector.collect():
        split = _signature(metric)
        yield metric.name, split, (split, metric), _split_given, _metric_given


class Exposition:
    """What /metrics answers: the format negotiated by prometheus_client (choose_encoder), each
    family encoded by prometheus_client's encoder for it when new, then served from its kept
    bytes while unchanged, or its template filled with its new values (_Format). The result is
    the bytes the encoder writes for the whole registry (tests/test_sinks_prometheus.py
    compares them at every report of scripted incidents, in every format).
    ``others``: collectors beside the Series, their families compared sample by sample."""

    def __init__(self, series: Series, others: Sequence[Collector] = ()) -> None:
        self.series, self.others = series, tuple(others)
        self._formats: Dict[str, _Format] = {}
        self._lock = threading.Lock()            # the scrapes' own, for the dict of formats

    def _format(self, content_type: str, encoder: Callable[[Any], bytes]) -> _Format:
        with self._lock:
            fmt = self._formats.get(content_type)
            if fmt is None:
                if len(self._formats) >= MAX_FORMATS:
                    del self._formats[next(iter(self._formats))]
                fmt = self._formats[content_type] = _Format(encoder)
            return fmt

    def render(self, accept: Optional[str]) -> Tuple[bytes, str]:
        """(body, content type) for a request's Accept header."""
        encoder, content_type = choose_encoder(accept or "")
        fmt = self._format(content_type, encoder)
        parts = fmt.render(itertools.chain(_rows_of(self.series.snapshot()),
                                           *(_metrics_of(c) for c in self.others)))
        parts.append(fmt.tail)
        return b"".join(parts), content_type


def _header(request: Request, name: str) -> Optional[str]:
    """A request header, its repeats joined by commas (as a WSGI server passes them)."""
    values = request.headers.get_all(name)
    return ",".join(values) if values else None


LANDING = """coherence {version}: a read-only sentinel that watches the variance of this host.

/metrics   Prometheus series (text, or OpenMetrics when asked): docs/metrics.md
/healthz   200 while the sampler ticks and reports are fresh, 503 with the reason otherwise
"""


class PrometheusSink:
    """The Prometheus exporter as a sink: ``emit`` keeps the latest report; entering it starts
    serving /metrics and /healthz on ``listen`` (bound at construction), leaving it drains the
    requests in flight and closes the socket."""

    def __init__(self, listen: Tuple[str, int], web_config: Optional["WebConfigFile"] = None,
                 stale_after_s: float = 5.0, *, process_collectors: bool = True) -> None:
        if not (stale_after_s > 0 and math.isfinite(stale_after_s)):
            raise ValueError(f"stale_after_s must be a positive number of seconds, got {stale_after_s!r}")
        self.stale_after_s = stale_after_s
        self.series = Series()
        self.series.healthy = self.health
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self.series)
        if process_collectors:
            # the process's own CPU, memory and file descriptors, as every client library has
            # (not python_gc_* nor python_info: each scrape pays for every sample, and
            # coherence_build_info already names the Python)
            self.series.process = ProcessFigures()
        # a scrape (GET /metrics): the Series, as the registry's collector
        self.exposition = Exposition(self.series)
        # the rest of what prometheus_client's app answers (OPTIONS, ?name[]=...)
        self._metrics = make_wsgi_app(self.registry)
        self.server = HttpServer(listen[0], listen[1], self.app, web_config)
        self.series.server = self.server
        self._started = time.monotonic()

    @classmethod
    def from_config(cls, config: Config, listen: Optional[Tuple[str, int]] = None) -> "PrometheusSink":
        """The exporter the [exporter] settings describe; ``listen`` overrides exporter.listen."""
        from coherence.webconfig import WebConfigFile
        e = config.exporter
        if listen is None:
            listen = parse_listen(e.listen)
        web = WebConfigFile(e.web_config) if e.web_config else None
        return cls(listen, web, e.stale_after_s)

    def watch(self, sampler: Optional["Sampler"] = None, statsd: Optional["StatsdListener"] = None,
              runtime: Optional["RuntimePoller"] = None,
              counters: Optional[Tuple["AtomicCounter", "AtomicCounter"]] = None) -> None:
        """The live figures to serve beside the reports (a Sentinel's parts)."""
        self.series.sampler, self.series.statsd = sampler, statsd
        self.series.runtime, self.series.counters = runtime, counters

    @property
    def url(self) -> str:
        return self.server.url

    def security(self) -> str:
        """What protects the endpoint, in words: "TLS on, basic auth off"."""
        web = self.server.web_config
        config = web.current()[0] if web is not None else None
        tls = "on" if config is not None and config.tls else "off"
        auth = "on" if config is not None and config.users else "off"
        return f"TLS {tls}, basic auth {auth}"

    def exposed_without_protection(self) -> Optional[str]:
        """A warning when the endpoint listens beyond loopback with neither TLS nor basic auth."""
        host = self.server.address[0]
        try:
            loopback = ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            loopback = False
        if loopback or self.security() != "TLS off, basic auth off":
            return None
        return (f"{self.server.url} is reachable beyond this host with neither TLS nor basic auth: "
                "anyone who can reach it reads what this host is doing (--web-config protects it)")

    def emit(self, report: Report) -> bool:
        self.series.update(report)
        return False                           # nothing shown: it is served when scraped

    def health(self, stats: Optional["SamplerStats"] = None) -> Tuple[bool, str]:
        """(healthy, why): the last report and the sampler's last tick are both fresher than
        stale_after_s, and the sampler's thread runs. ``stats``: the sampler's, when the caller
        has just read them."""
        now = time.monotonic()
        latest, limit = self.series.latest, self.stale_after_s
        if latest.report is None:
            return False, f"no report yet (started {now - self._started:.1f} s ago)"
        age = now - latest.received
        if age > limit:
            return False, (f"no report for {age:.1f} s (limit {limit:g} s): the main loop is "
                           "stuck (a blocked output?)")
        s = self.series.sampler
        if s is not None:
            if not s.running:
                return False, "the sampler's thread has stopped"
            tick_age = now - (stats if stats is not None else s.stats()).last_tick_s
            if not tick_age <= limit:           # NaN (never ticked) is stale too
                return False, f"the sampler has not ticked for {tick_age:.1f} s (limit {limit:g} s)"
            return True, (f"ok: last report {age:.2f} s ago, last tick {tick_age * 1e3:.1f} ms ago, "
                          f"status {latest.report.status}")
        return True, f"ok: last report {age:.2f} s ago, status {latest.report.status}"

    def app(self, request: Request) -> Response:
        if request.path == "/metrics":
            if request.method == "GET" and "name[]" not in parse_qs(request.query):
                return self.scrape(request)
            return call_wsgi(self._metrics, request)
        if request.path == "/healthz":
            ok, why = self.health()
            return Response.text(200 if ok else 503, why + "\n", (("Cache-Control", "no-store"),))
        if request.path == "/":
            return Response.text(200, LANDING.format(version=__version__))
        return Response.text(404, f"{request.path}: not found (try /metrics or /healthz)\n")

    def scrape(self, request: Request) -> Response:
        """GET /metrics: negotiated as prometheus_client's app negotiates (choose_encoder,
        gzip_accepted), encoded by the Exposition; gzip at GZIP_LEVEL."""
        body, content_type = self.exposition.render(_header(request, "Accept"))
        headers: Tuple[Tuple[str, str], ...] = (("Content-Type", content_type),)
        if gzip_accepted(_header(request, "Accept-Encoding") or ""):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL, mtime=0)
            headers += (("Content-Encoding", "gzip"),)
        return Response(200, body, headers)

    def __enter__(self) -> "PrometheusSink":
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
        if self.series.process is not None:
            self.series.process.close()
