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
for it.
"""
from __future__ import annotations

import functools
import ipaddress
import math
import platform
import time
from dataclasses import dataclass, field
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                    InfoMetricFamily, Metric)
from prometheus_client.exposition import make_wsgi_app
from prometheus_client.registry import Collector

from coherence import __version__
from coherence.config import Config, parse_listen
from coherence.detectors import DETECTORS, Amplification, Fever, Seizure
from coherence.monitor import Report
from coherence.snapshot import PUSHED, SCRAPED, TCP_PROXY
from coherence.states import State
from coherence.verdict import CRITICAL_VETO
from coherence.sinks.http import BAD_REASONS, HttpServer, Request, Response, call_wsgi

if TYPE_CHECKING:
    from coherence._core import AtomicCounter
    from coherence.runtime import RuntimePoller
    from coherence.sampler import Sampler
    from coherence.statsd import StatsdListener
    from coherence.webconfig import WebConfigFile

__all__ = ["LATENESS_BUCKETS_US", "PrometheusSink", "Series", "report_families"]

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


@functools.lru_cache(maxsize=None)
def _unit(name: str) -> str:
    """The OpenMetrics unit of a name that ends with one (`# UNIT` lines)."""
    base = name[:-len("_total")] if name.endswith("_total") else name
    return next((u for u in _UNITS if base.endswith("_" + u)), "")


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels), unit=_unit(name))


def _counter(name: str, doc: str, labels: Sequence[str] = ()) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, labels=list(labels), unit=_unit(name))


def _finite(x: Any) -> Optional[float]:
    if x is None or isinstance(x, (bool, str)):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _add(family: Metric, labels: Sequence[str], value: Any, scale: float = 1.0) -> None:
    """A sample only when there is a finite value: a figure the JSON writes as null is absent
    here (a NaN would poison every sum() over a fleet)."""
    f = _finite(value)
    if f is not None:
        family.add_metric(list(labels), f * scale)  # type: ignore[attr-defined]


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


def report_families(report: Report, changes: Mapping[str, int]) -> List[Metric]:
    """The series of one report: the verdict, each finding with its evidence, the incidents and
    the runtime sources judged. ``changes``: state changes per detector so far (the sink counts
    them across reports)."""
    verdict = report.verdict
    out: List[Metric] = []
    status = _gauge("coherence_status", "Overall status (the worst detector's state): 1 for the "
                    "state it is in, 0 for the others.", ["state"])
    for s in STATES:
        status.add_metric([str(s)], float(verdict.status == s))
    ts = _gauge("coherence_report_timestamp_seconds", "Unix time of the last report (JSON ts).")
    ts.add_metric([], report.ts)
    start = _gauge("coherence_monitor_start_time_seconds",
                   "Unix time the monitor started judging (JSON ts - elapsed_s).")
    start.add_metric([], report.ts - report.elapsed_s)
    out += [status, ts, start]

    state = _gauge("coherence_detector_state", "Each detector's state: 1 for the state it is in, "
                   "0 for the others (WARMUP, OK, WARNING, CRITICAL, UNAVAILABLE).",
                   ["detector", "state"])
    since = _gauge("coherence_detector_state_start_time_seconds",
                   "Unix time the detector entered its current state (JSON ts - for_s).", ["detector"])
    changed = _counter("coherence_detector_state_changes_total",
                       "State changes of the detector since the exporter started.", ["detector"])
    value = _gauge("coherence_detector_value", "The figure the detector compares with its limit, in "
                   "the JSON's unit, named by the unit label (pct_points, MB/s, MB/s growth, "
                   "pct_gc_time, ratio); absent while there is none.", ["detector", "unit"])
    limit = _gauge("coherence_detector_limit", "The limit the value is judged against, in the same "
                   "unit.", ["detector", "unit"])
    veto = _gauge("coherence_detector_veto", "The recommendation in force (1) per detector and "
                  "action; 0 for the detector's other actions. coherence never acts.",
                  ["detector", "action"])
    in_force = {v["detector"]: str(v["action"]) for v in verdict.veto}
    for name in DETECTORS:
        f = report.findings[name]
        for s in STATES:
            state.add_metric([name, str(s)], float(verdict.states[name] == s))
        since.add_metric([name], report.ts - (verdict.now - verdict.since[name]))
        changed.add_metric([name], float(changes.get(name, 0)))
        _add(value, [name, f.unit], f.value)
        _add(limit, [name, f.unit], f.limit)
        for action in VETOES[name]:
            veto.add_metric([name, action], float(in_force.get(name) == action))
    out += [state, since, changed, value, limit, veto]
    out += _evidence(report)
    out += _incidents(report)
    out += _runtime(report)
    return out


def _evidence_rows(evidence: Any, rows: Sequence[Tuple[str, str, str, float]],
                   labels: Sequence[str] = (), names: Sequence[str] = ()) -> List[Metric]:
    out: List[Metric] = []
    for key, name, doc, scale in rows:
        family = _gauge(name, doc, names)
        if evidence is not None:
            _add(family, labels, getattr(evidence, key, None), scale)
        out.append(family)
    return out


def _evidence(report: Report) -> List[Metric]:
    seizure = report.findings[Seizure.name].evidence
    fever = report.findings[Fever.name].evidence
    amp = report.findings[Amplification.name].evidence
    out: List[Metric] = _evidence_rows(seizure, SEIZURE_EVIDENCE)
    pressure = _gauge("coherence_pressure_some_ratio", "PSI: share of time some task waited for "
                      "the resource (smoothed), 0-1.", ["resource"])
    _add(pressure, ["cpu"], getattr(seizure, "pressure_cpu_some_pct", None), 0.01)
    _add(pressure, ["memory"], getattr(fever, "pressure_memory_some_pct", None), 0.01)
    out.append(pressure)
    out += _evidence_rows(fever, FEVER_EVIDENCE)
    process = getattr(fever, "runtime_process", None)
    info = InfoMetricFamily("coherence_fever_runtime", "The runtime fever judges: the one read "
                            "through its own counters that spends the largest share of its time in GC.")
    runtime_rows = _evidence_rows(fever if process else None, FEVER_RUNTIME_EVIDENCE,
                                  [process or ""], ["process"])
    if process:
        pid = getattr(fever, "runtime_pid", None)
        info.add_metric([], {"process": process, "pid": "" if pid is None else str(pid)})
    out += [info, *runtime_rows]
    out += _evidence_rows(amp, AMPLIFICATION_EVIDENCE)
    source = _gauge("coherence_amplification_source", "Where amplification's request counts come "
                    "from: 1 for the source in use (pushed, scraped, tcp_proxy), 0 for the others.",
                    ["source"])
    if amp is not None:
        for s in REQUEST_SOURCES:
            source.add_metric([s], float(amp.source == s))
    out.append(source)
    return out


def _incidents(report: Report) -> List[Metric]:
    active = _gauge("coherence_incident_active", "1 while an incident of this kind is on "
                    "(cascade, flapping), else 0.", ["kind"])
    member = _gauge("coherence_cascade_member", "1 for each detector in the cascade, 0 for the "
                    "others.", ["detector"])
    start = _gauge("coherence_cascade_start_time_seconds", "Unix time the first detector of the "
                   "cascade turned CRITICAL; absent when there is no cascade.")
    flapping = _gauge("coherence_detector_flapping", "1 while the detector flaps (changes state "
                      "verdict.flap_changes times within verdict.flap_window_s), else 0.", ["detector"])
    flaps = _gauge("coherence_detector_flapping_changes", "State changes within the window, "
                   "while the detector flaps.", ["detector"])
    window = _gauge("coherence_detector_flapping_window_seconds", "The window they are counted "
                    "over, while the detector flaps.", ["detector"])
    kinds = {str(i.get("kind")) for i in report.verdict.incidents}
    for kind in INCIDENTS:
        active.add_metric([kind], float(kind in kinds))
    cascade = next((i for i in report.verdict.incidents if i.get("kind") == "cascade"), None)
    members = set(cascade.get("detectors", ())) if cascade else set()  # type: ignore[call-overload]
    flappers = {str(i.get("detector")): i for i in report.verdict.incidents
                if i.get("kind") == "flapping"}
    for name in DETECTORS:
        member.add_metric([name], float(name in members))
        flapping.add_metric([name], float(name in flappers))
        if name in flappers:
            _add(flaps, [name], flappers[name].get("changes"))
            _add(window, [name], flappers[name].get("window_s"))
    if cascade is not None:
        since = _finite(cascade.get("since"))
        if since is not None:
            start.add_metric([], report.ts - (report.verdict.now - since))
    return [active, member, start, flapping, flaps, window]


def _runtime(report: Report) -> List[Metric]:
    """Each runtime source (a JVM, a scrape target) as judged: up, and its rates."""
    info = InfoMetricFamily("coherence_runtime_source", "A runtime read through its own counters "
                            "(a JVM's performance data, a /metrics endpoint).", labels=["source"])
    up = _gauge("coherence_runtime_source_up", "1 while the source is read, 0 once it failed (the "
                "process exited, the target stopped answering: `coherence sources` says why).",
                ["source"])
    rows = (("gc_share", "coherence_runtime_gc_time_ratio", "Share of wall time spent in GC.", ()),
            ("collections_per_s", "coherence_runtime_gc_collections_per_second",
             "Collections per second.", ()),
            ("alloc_bytes_per_s", "coherence_runtime_alloc_bytes_per_second",
             "Heap allocation rate.", ()),
            ("requests_in_per_s", "coherence_runtime_requests_per_second",
             "Requests per second, in (received) and out (calls made, retries included).", ("in",)),
            ("requests_out_per_s", "coherence_runtime_requests_per_second", "", ("out",)),
            ("ratio", "coherence_runtime_requests_ratio",
             "Requests out per request in over the amplification window.", ()))
    families: Dict[str, GaugeMetricFamily] = {}
    for _attr, name, doc, extra in rows:
        if name not in families:
            families[name] = _gauge(name, doc, ["source", "direction"] if extra else ["source"])
    for p in report.snapshot.runtime:
        info.add_metric([p.name], {"runtime": p.runtime, "pid": "" if p.pid is None else str(p.pid)})
        up.add_metric([p.name], float(p.available))
        if not p.available:
            continue
        for attr, name, _doc, extra in rows:
            _add(families[name], [p.name, *extra], getattr(p, attr))
    return [info, up, *families.values()]


@dataclass
class _Latest:
    report: Optional[Report] = None
    changes: Dict[str, int] = field(default_factory=dict)
    received: float = math.nan            # monotonic time emit() took it


class Series(Collector):
    """The collector behind /metrics: the latest report's series, and the live figures of what
    it watches (the sampler, the StatsD listener, the runtime poller, the pushed request
    counters, the HTTP server). Reads only: never locks what the sampler writes."""

    def __init__(self) -> None:
        self.latest = _Latest()
        self.sampler: Optional["Sampler"] = None
        self.statsd: Optional["StatsdListener"] = None
        self.runtime: Optional["RuntimePoller"] = None
        self.counters: Optional[Tuple["AtomicCounter", "AtomicCounter"]] = None
        self.server: Optional[HttpServer] = None
        self.healthy: Callable[[], Tuple[bool, str]] = lambda: (True, "")

    def update(self, report: Report) -> None:
        """Take a report (the main thread's, four a second); the swap is one assignment."""
        previous, changes = self.latest.report, dict(self.latest.changes)
        if previous is not None:
            for name, state in report.verdict.states.items():
                if previous.verdict.states.get(name) != state:
                    changes[name] = changes.get(name, 0) + 1
        self.latest = _Latest(report, changes, time.monotonic())

    def collect(self) -> Iterator[Metric]:
        latest = self.latest                    # one read: the report and its counts belong together
        build = InfoMetricFamily("coherence_build", "coherence's version, and the Python running it.")
        build.add_metric([], {"version": __version__, "python_version": platform.python_version(),
                              "python_implementation": platform.python_implementation()})
        yield build
        ok, _reason = self.healthy()
        health = _gauge("coherence_healthy", "1 while /healthz answers 200 (the sampler ticks and "
                        "reports are fresh), else 0.")
        health.add_metric([], float(ok))
        yield health
        if latest.report is not None:
            yield from report_families(latest.report, latest.changes)
            yield from self._sampler_from_report(latest.report)
        yield from self._sampler()
        yield from self._requests()
        yield from self._statsd()
        yield from self._poller()
        yield from self._http()

    def _sampler_from_report(self, report: Report) -> Iterable[Metric]:
        figures = report.sampler or {}
        sources = InfoMetricFamily("coherence_sampler_source", "The counter source in use per "
                                   "family (cpu, memory, pressure, requests).", labels=["family"])
        for family, name in sorted((figures.get("sources") or {}).items()):
            sources.add_metric([family], {"source": str(name)})
        notes = InfoMetricFamily("coherence_sampler_note", "A caveat about the sources in use "
                                 "(a coarse CPU counter, ...).")
        for note in figures.get("notes") or ():
            notes.add_metric([], {"note": str(note)})
        return [sources, notes]

    def _sampler(self) -> Iterable[Metric]:
        s = self.sampler
        if s is None:
            return []
        from coherence.sampler import lateness_percentile
        stats = s.stats()
        hist = s.engine.lateness_histogram()
        target = _gauge("coherence_sampler_target_hertz", "CPU samples per second asked for (--hz).")
        target.add_metric([], s.hz)
        achieved = _gauge("coherence_sampler_achieved_hertz", "Ticks taken per second since the "
                          "sampler started.")
        _add(achieved, [], stats.achieved_hz)
        ticks = _counter("coherence_sampler_ticks_total", "Ticks taken.")
        ticks.add_metric([], stats.ticks)
        overruns = _counter("coherence_sampler_overruns_total", "Ticks that missed their deadline "
                            "and were skipped (never caught up in a burst).")
        overruns.add_metric([], stats.overruns)
        cpu = _counter("coherence_sampler_cpu_seconds_total", "CPU time of the sampler's thread.")
        cpu.add_metric([], stats.cpu_s)
        p50 = _gauge("coherence_sampler_tick_lateness_p50_seconds",
                     "Median lateness of a tick against its deadline, since the sampler started.")
        p99 = _gauge("coherence_sampler_tick_lateness_p99_seconds",
                     "99th percentile of the lateness, since the sampler started.")
        _add(p50, [], lateness_percentile(hist, 0.50), 1e-6)
        _add(p99, [], lateness_percentile(hist, 0.99), 1e-6)
        lateness = HistogramMetricFamily("coherence_sampler_tick_lateness_seconds",
                                         "Lateness of each tick against its deadline.", unit="seconds")
        cumulative, i, count = [], 0, 0
        for bound in LATENESS_BUCKETS_US:
            # a bin whose largest value is within the bound: (upper - 1) us for the 1 us bins,
            # under `upper` for the powers of two
            while i < len(hist) and hist[i][0] - 1 <= bound:
                count += hist[i][1]
                i += 1
            cumulative.append((repr(bound / 1e6), float(count)))
        total = float(sum(n for _, n in hist))
        cumulative.append(("+Inf", total))
        lateness.add_metric([], cumulative, sum_value=stats.tick_lateness_sum_s)
        age = _gauge("coherence_sampler_last_tick_age_seconds", "Time since the sampler's last "
                     "tick (a heartbeat: it stays under a tick's period while the sampler runs).")
        _add(age, [], time.monotonic() - stats.last_tick_s)
        return [target, achieved, ticks, overruns, cpu, lateness, p50, p99, age]

    def _requests(self) -> Iterable[Metric]:
        if self.counters is None:
            return []
        pushed = _counter("coherence_requests_pushed_total", "Requests counted by the application "
                          "(StatsD, coherence.hooks): in (received) and out (calls made).", ["direction"])
        ingress, egress = self.counters
        pushed.add_metric(["in"], ingress.value)
        pushed.add_metric(["out"], egress.value)
        return [pushed]

    def _statsd(self) -> Iterable[Metric]:
        listener = self.statsd
        if listener is None:
            return []
        packets = _counter("coherence_statsd_packets_total", "StatsD datagrams received.")
        packets.add_metric([], listener.packets)
        lines = _counter("coherence_statsd_lines_total", "StatsD lines received, by outcome: "
                         "accepted (ours), ignored (another metric), malformed (counted, dropped).",
                         ["outcome"])
        for outcome in ("accepted", "ignored", "malformed"):
            lines.add_metric([outcome], getattr(listener, outcome))
        dropped = _counter("coherence_statsd_dropped_packets_total", "StatsD datagrams the kernel "
                           "dropped because the socket's receive queue was full.")
        _add(dropped, [], listener.dropped())
        return [packets, lines, dropped]

    def _poller(self) -> Iterable[Metric]:
        poller = self.runtime
        if poller is None:
            return []
        rounds = _counter("coherence_runtime_poller_rounds_total", "Rounds of the runtime poller "
                          "(every runtime source read once).")
        rounds.add_metric([], poller.rounds)
        skipped = _counter("coherence_runtime_poller_skipped_rounds_total", "Rounds skipped because "
                           "one ran past the next one's deadline.")
        skipped.add_metric([], poller.skipped)
        return [rounds, skipped]

    def _http(self) -> Iterable[Metric]:
        if self.server is None:
            return []
        f = self.server.figures()
        requests = _counter("coherence_http_requests_total", "HTTP requests answered, by path "
                            "(/metrics, /healthz, /, other) and status code.", ["path", "code"])
        for (path, code), n in sorted(f["requests"].items()):
            requests.add_metric([path, str(code)], n)
        bad = _counter("coherence_http_bad_requests_total", "Connections dropped or refused, by "
                       "reason: " + ", ".join(BAD_REASONS) + ".", ["reason"])
        for reason, n in f["bad"].items():
            bad.add_metric([reason], n)
        conns = _gauge("coherence_http_connections", "HTTP connections open now.")
        conns.add_metric([], f["connections"])
        cpu = _counter("coherence_http_cpu_seconds_total", "CPU time of the threads that served "
                       "HTTP connections (TLS, authentication and rendering included).")
        cpu.add_metric([], f["cpu_s"])
        return [requests, bad, conns, cpu]


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
            ProcessCollector(registry=self.registry)
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

    def health(self) -> Tuple[bool, str]:
        """(healthy, why): the last report and the sampler's last tick are both fresher than
        stale_after_s, and the sampler's thread runs."""
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
            tick_age = now - s.stats().last_tick_s
            if not tick_age <= limit:           # NaN (never ticked) is stale too
                return False, f"the sampler has not ticked for {tick_age:.1f} s (limit {limit:g} s)"
            return True, (f"ok: last report {age:.2f} s ago, last tick {tick_age * 1e3:.1f} ms ago, "
                          f"status {latest.report.status}")
        return True, f"ok: last report {age:.2f} s ago, status {latest.report.status}"

    def app(self, request: Request) -> Response:
        if request.path == "/metrics":
            return call_wsgi(self._metrics, request)
        if request.path == "/healthz":
            ok, why = self.health()
            return Response.text(200 if ok else 503, why + "\n", (("Cache-Control", "no-store"),))
        if request.path == "/":
            return Response.text(200, LANDING.format(version=__version__))
        return Response.text(404, f"{request.path}: not found (try /metrics or /healthz)\n")

    def __enter__(self) -> "PrometheusSink":
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop()
