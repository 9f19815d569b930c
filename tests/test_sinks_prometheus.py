"""The Prometheus series: what a JSON line says, a scrape says (every key of every scripted
report has its series, with the same figure in base units), the series list in docs/metrics.md
is the one served, and `promtool check metrics` finds nothing to say about a real scrape."""
import dataclasses
import math
import os
import re
import shutil
import subprocess
from typing import Any, Dict, FrozenSet, List, Tuple

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from coherence.config import Config
from coherence.monitor import Monitor, Report
from coherence.sinks import prometheus as prom
from coherence.sinks.jsonl import report_json
from coherence.sinks.prometheus import PrometheusSink, Series, report_families
from coherence.snapshot import RuntimeProcess
from test_sinks_jsonl import SCRIPT_CONFIG, WALL0, scripted_reports, snapshot_at

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Samples = Dict[Tuple[str, FrozenSet[Tuple[str, str]]], float]
JVM = RuntimeProcess(name="jvm 4242", runtime="jvm", pid=4242, available=True, lost=False,
                     reason="read", recognised=("gc_seconds_total",), gc_share=0.62,
                     collections_per_s=40.0, alloc_bytes_per_s=2.5e9, requests_in_per_s=math.nan,
                     requests_out_per_s=math.nan, ratio=math.nan, ingress_in_window=0.0)
LOST = dataclasses.replace(JVM, name="scrape http://127.0.0.1:1/metrics", runtime="service",
                           pid=None, available=False, lost=True, reason="connection refused")


def runtime_reports(until: float = 12.0) -> List[Report]:
    """The scripted incident with a JVM, healthy then in a GC spiral from 6 s (its usual
    allocation rate learned before), and a lost scrape target beside it."""
    clock = {"t": 0.0}

    def snapshot() -> Any:
        jvm = JVM if clock["t"] >= 6 else dataclasses.replace(JVM, gc_share=0.02)
        return dataclasses.replace(snapshot_at(clock["t"]), runtime=(jvm, LOST))
    monitor = Monitor(SCRIPT_CONFIG, snapshot, lambda: None)
    out = []
    for i in range(int(until / 0.25) + 1):
        clock["t"] = i * 0.25
        out.append(monitor.step(clock["t"], WALL0 + clock["t"]))
    return out


def samples(report: Report, changes: Dict[str, int] = {}) -> Samples:  # noqa: B006 - read only
    out: Samples = {}
    for family in report_families(report, changes):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def one(found: Samples, name: str, **labels: str) -> Any:
    """The value of the series, None if absent."""
    return found.get((name, frozenset(labels.items())))


def close(a: Any, b: Any) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=2e-3)


@pytest.fixture(scope="module")
def reports() -> List[Report]:
    return scripted_reports() + runtime_reports()


# JSON evidence keys that are not a number: they are labels (of *_info, *_source series).
LABEL_KEYS = {"runtime_process", "runtime_pid", "source"}


def test_every_key_of_a_json_line_has_its_series(reports):
    """Walks every key of every report's JSON object and finds its series and value."""
    tables = {"seizure": prom.SEIZURE_EVIDENCE, "fever": prom.FEVER_EVIDENCE + prom.FEVER_RUNTIME_EVIDENCE,
              "amplification": prom.AMPLIFICATION_EVIDENCE}
    seen_keys = set()
    for report in reports:
        j, found = report_json(report), samples(report)
        assert one(found, "coherence_status", state=j["status"]) == 1
        assert sum(v for (n, _), v in found.items() if n == "coherence_status") == 1
        assert close(one(found, "coherence_report_timestamp_seconds"), j["ts"])
        assert close(j["ts"] - one(found, "coherence_monitor_start_time_seconds"), j["elapsed_s"])
        in_force = {v["detector"]: v["action"] for v in j["veto"]}
        for name, d in j["detectors"].items():
            assert one(found, "coherence_detector_state", detector=name, state=d["state"]) == 1
            assert close(j["ts"] - one(found, "coherence_detector_state_start_time_seconds",
                                       detector=name), d["for_s"])
            for key in ("value", "limit"):
                got = one(found, f"coherence_detector_{key}", detector=name, unit=d["unit"])
                assert (got is None) if d[key] is None else close(got, d[key]), (name, key)
            for action in prom.VETOES[name]:
                assert one(found, "coherence_detector_veto", detector=name, action=action) == \
                    float(in_force.get(name) == action == d["veto"])
            rows = {key: (series, scale) for key, series, _doc, scale in tables[name]}
            process = d["evidence"].get("runtime_process")
            for key, value in d["evidence"].items():
                seen_keys.add(f"{name}.{key}")
                if key in LABEL_KEYS:
                    continue
                if key.startswith("pressure_"):
                    resource = key.split("_")[1]
                    got = one(found, "coherence_pressure_some_ratio", resource=resource)
                    assert (got is None) if value is None else close(got, value / 100)
                    continue
                series, scale = rows[key]
                labels = {"process": process} if key in {r[0] for r in prom.FEVER_RUNTIME_EVIDENCE} else {}
                got = one(found, series, **labels)
                assert (got is None) if value is None else close(got, value * scale), (series, value)
            if "source" in d["evidence"]:
                assert one(found, "coherence_amplification_source", source=d["evidence"]["source"]) == 1
            if process is not None:
                assert one(found, "coherence_fever_runtime_info", process=process,
                           pid=str(d["evidence"]["runtime_pid"])) == 1
        kinds = {i["kind"] for i in j["incidents"]}
        for kind in prom.INCIDENTS:
            assert one(found, "coherence_incident_active", kind=kind) == float(kind in kinds)
        for incident in j["incidents"]:
            if incident["kind"] == "cascade":
                for name in j["detectors"]:
                    assert one(found, "coherence_cascade_member", detector=name) == \
                        float(name in incident["detectors"])
                assert close(one(found, "coherence_cascade_start_time_seconds"), incident["since"])
            else:
                det = incident["detector"]
                assert one(found, "coherence_detector_flapping", detector=det) == 1
                assert one(found, "coherence_detector_flapping_changes", detector=det) == incident["changes"]
                assert one(found, "coherence_detector_flapping_window_seconds", detector=det) == \
                    incident["window_s"]
    # the scripts reach every evidence key, so the walk above checked each of them
    every = {f"{n}.{f.name}" for n, cls in (("seizure", prom.Seizure), ("fever", prom.Fever),
                                            ("amplification", prom.Amplification))
             for f in dataclasses.fields(_evidence_class(cls))}
    assert every <= seen_keys, every - seen_keys


def _evidence_class(detector: Any) -> Any:
    import coherence.detectors as d
    return {"seizure": d.SeizureEvidence, "fever": d.FeverEvidence,
            "amplification": d.AmplificationEvidence}[detector.name]


def test_a_figure_the_json_writes_as_null_is_absent(reports):
    first = samples(reports[0])                         # t = 0: warm-up, no traffic yet
    j = report_json(reports[0])
    assert j["detectors"]["amplification"]["value"] is None
    assert not any(n == "coherence_detector_value" and dict(lab)["detector"] == "amplification"
                   for n, lab in first)
    assert all(not math.isnan(v) for v in first.values())


def test_state_changes_are_counted_across_reports(reports):
    series = Series()
    expected: Dict[str, int] = {}
    previous = None
    for report in scripted_reports():
        series.update(report)
        if previous is not None:
            for name, state in report.verdict.states.items():
                expected[name] = expected.get(name, 0) + (previous.verdict.states[name] != state)
        previous = report
    assert series.latest.changes == {k: v for k, v in expected.items() if v}
    assert sum(expected.values()) >= 6          # the script changes state many times


def test_runtime_sources_and_their_health(reports):
    found = samples(runtime_reports()[-1])
    assert one(found, "coherence_runtime_source_up", source="jvm 4242") == 1
    assert one(found, "coherence_runtime_source_up", source=LOST.name) == 0
    assert one(found, "coherence_runtime_source_info", source="jvm 4242", runtime="jvm", pid="4242") == 1
    assert one(found, "coherence_runtime_source_info", source=LOST.name, runtime="service", pid="") == 1
    assert one(found, "coherence_runtime_gc_time_ratio", source="jvm 4242") == pytest.approx(0.62)
    assert one(found, "coherence_runtime_alloc_bytes_per_second", source="jvm 4242") == 2.5e9
    assert one(found, "coherence_runtime_gc_time_ratio", source=LOST.name) is None
    assert one(found, "coherence_detector_state", detector="fever", state="CRITICAL") == 1
    assert one(found, "coherence_detector_value", detector="fever", unit="pct_gc_time") == pytest.approx(62)


def served_names(text: str) -> set:
    return {f.name for f in parse_text(text)}


@pytest.fixture(scope="module")
def live_scrape() -> str:
    """A scrape of a real sentinel on this host (sampler, StatsD, runtime poller), after every
    scripted report's series have been seen too."""
    from coherence import hooks
    from coherence.sentinel import Sentinel
    sink = PrometheusSink(("127.0.0.1", 0))
    sentinel = Sentinel.from_config(Config(), statsd=("127.0.0.1", 0), sinks=[sink])
    sink.watch(sentinel.sampler, sentinel.listener, sentinel.runtime, (hooks.INGRESS, hooks.EGRESS))
    with sentinel:
        sentinel.run(0.6)
        return sink.exposition.render(None)[0].decode()        # what /metrics serves


def test_promtool_finds_nothing_in_a_real_scrape(live_scrape, reports):
    # promtool comes with Debian's prometheus package, which tools/test-deps.sh installs
    promtool = shutil.which("promtool")
    assert promtool, "no promtool: run tools/test-deps.sh (the README's test command does)"
    texts = [live_scrape]
    for report in (reports[100], runtime_reports()[-1]):      # a cascade; a JVM spiral
        registry = CollectorRegistry(auto_describe=False)
        series = Series()
        series.update(report)
        registry.register(series)
        texts.append(generate_latest(registry).decode())
    for text in texts:
        proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0 and proc.stdout == proc.stderr == "", proc.stdout + proc.stderr


def documented() -> set:
    with open(os.path.join(ROOT, "docs", "metrics.md")) as f:
        return set(re.findall(r"^\| `(coherence_[a-z0-9_]+)`", f.read(), re.M))


def test_docs_list_every_series_served_and_no_other(live_scrape, reports):
    names = served_names(live_scrape)
    for report in (reports[100], runtime_reports()[-1]):
        registry = CollectorRegistry(auto_describe=False)
        series = Series()
        series.update(report)
        registry.register(series)
        names |= served_names(generate_latest(registry).decode())
    # the text parser names a counter without _total and an info as its gauge, *_info
    ours = {n + "_total" if f"{n}_total" in live_scrape else n for n in names if n.startswith("coherence_")}
    ours |= {"coherence_statsd_dropped_packets_total"}
    docs = documented()
    http_only = {"coherence_http_requests_total"}     # appears once a request has been answered
    assert ours - docs == set(), "served but not in docs/metrics.md"
    assert docs - ours - http_only == set(), "in docs/metrics.md but never served"


# ---------------------------------------------------------------------- the encoded-bytes cache
# Accept headers of every kind choose_encoder tells apart: the default, the text format,
# OpenMetrics as Prometheus asks for it, and each escaping.
ACCEPTS = (None, "text/plain;version=0.0.4", "text/plain;version=1.0.0;escaping=values",
           "application/openmetrics-text;version=1.0.0",
           "application/openmetrics-text;version=1.0.0;escaping=dots",
           "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
           "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
           "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


class Collected:
    def __init__(self, metrics: List[Any]) -> None:
        self.metrics = metrics

    def collect(self) -> List[Any]:
        return self.metrics


class FrozenSeries(Series):
    """A Series whose snapshot is the one given, however often it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: prom.Snapshot = []

    def snapshot(self) -> prom.Snapshot:
        return self.frozen


def other_families(step: int) -> List[Any]:
    """Families of another collector: a counter with _created (the text format moves it to a
    gauge of its own), one with an exemplar (never cached), one that changes with `step`."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.samples import Exemplar
    created = CounterMetricFamily("other_created", "A counter with its creation time.", labels=["k"])
    created.add_metric(["a"], 3.0, created=1700000000.0)
    exemplar = CounterMetricFamily("other_exemplar", "A counter with an exemplar.")
    exemplar.add_metric([], float(step), exemplar=Exemplar({"trace_id": str(step)}, 0.5))
    moving = GaugeMetricFamily("other_moving_bytes", "A gauge that moves.", unit="bytes")
    moving.add_metric([], float(step // 3))
    return [created, exemplar, moving]


def test_the_exposition_is_the_encoders_own_output_at_every_report(reports):
    """Encoded family by family, the bytes of a family reused while its samples stay the same,
    the body is still byte for byte what prometheus_client's encoder writes for all the
    families at once: at every report of the scripts (values, states, vetoes, incidents,
    runtime sources changing), in every format and escaping, the formats taking turns. A family
    served from the cache with stale samples would differ."""
    from prometheus_client.exposition import choose_encoder
    series = FrozenSeries()
    others: List[Any] = []
    exposition = prom.Exposition(series, [Collected(others)])
    for step, report in enumerate(reports):
        series.update(report)
        series.frozen = Series.snapshot(series)
        others[:] = other_families(step)
        metrics = [family.metric(rows) for family, rows in series.frozen] + others
        for accept in ACCEPTS:
            encoder, content_type = choose_encoder(accept or "")
            assert exposition.render(accept) == (encoder(Collected(metrics)), content_type)


def count_encodes(monkeypatch) -> List[List[str]]:
    """The names of the families of each call of the encoder, as the Exposition calls it."""
    calls: List[List[str]] = []
    real = prom._Format.encode

    def encode(self, metrics):
        calls.append([m.name for m in metrics])
        return real(self, metrics)
    monkeypatch.setattr(prom._Format, "encode", encode)
    return calls


def test_the_encoder_is_called_only_for_new_shapes(reports, monkeypatch):
    """A family is encoded when it is new or its shape changes (a label value comes or goes);
    when only its values change it is its template filled, and unchanged it is served as
    kept: the encoder is not called, and the new values are served at once."""
    calls = count_encodes(monkeypatch)
    series = FrozenSeries()
    series.update(reports[100])
    histogram = [((), ((("1e-05", 3.0), ("2.5e-05", 5.0), ("+Inf", 9.0)), 0.001))]
    series.frozen = Series.snapshot(series) + [(prom.SAMPLER_TICKS, [((), 5.0)]),
                                               (prom.SAMPLER_LATENESS, histogram)]
    names = [family.metric(rows).name for family, rows in series.frozen]
    exposition = prom.Exposition(series)
    om = "application/openmetrics-text;version=1.0.0"
    first = exposition.render(om)
    assert calls == [[name] for name in names]                # all new: each encoded alone
    calls.clear()
    assert exposition.render(om) == first and calls == []    # unchanged: served as kept
    assert exposition.render(None)[0] != first[0]            # the text format: its own
    assert calls == [[name] for name in names]
    calls.clear()
    # values change (a gauge, a counter, the histogram): no encoder call, served at once
    hist = next(rows for f, rows in series.frozen if f is prom.SAMPLER_LATENESS)
    (labels, (buckets, total)), = hist
    moved = [(le, n + 1.0) for le, n in buckets]
    changed: Dict[Any, Any] = {prom.REPORT_TS: [((), 12345.5)], prom.SAMPLER_TICKS: [((), 1e21)],
               prom.SAMPLER_LATENESS: [(labels, (moved, total + 0.25))]}
    series.frozen = [(f, changed.get(f, rows)) for f, rows in series.frozen]
    body = exposition.render(om)[0].decode()
    assert calls == []
    assert "\ncoherence_report_timestamp_seconds 12345.5\n" in body
    assert "\ncoherence_sampler_ticks_total 1e+21\n" in body
    assert f"\ncoherence_sampler_tick_lateness_seconds_count {moved[-1][1]}\n" in body
    metrics = [family.metric(rows) for family, rows in series.frozen]
    assert body.encode() == prom.openmetrics_latest(Collected(metrics))
    # a shape changes (a label value comes): that family alone is encoded
    series.frozen = [(f, list(rows) + [(("extra",), 2.0)] if f is prom.DETECTOR_LIMIT else rows)
                     for f, rows in series.frozen]
    body = exposition.render(om)[0].decode()
    assert calls == [["coherence_detector_limit"]]
    assert '\ncoherence_detector_limit{detector="extra"} 2.0\n' in body


def test_a_template_is_made_only_where_it_gives_the_encoders_bytes():
    """Samples with a timestamp or an exemplar, or values that are not the samples', get no
    template: such a family is encoded whenever it changes."""
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.samples import Exemplar
    plain = GaugeMetricFamily("g", "help", labels=["a"])
    plain.add_metric(["x"], 1.5)
    plain.add_metric(["y"], 2.0)
    out = prom.openmetrics_latest(Collected([plain]))[:-len(b"# EOF\n")]
    template = prom._Template.of(plain, out, (1.5, 2.0))
    assert template is not None and template.fill((1.5, 2.0)) == out
    assert template.fill((3.0, float("inf"))) == out.replace(b"} 1.5", b"} 3.0").replace(b"} 2.0", b"} +Inf")
    assert prom._Template.of(plain, out, (1.5, 7.0)) is None          # not its values
    assert prom._Template.of(plain, out, (1.5,)) is None
    stamped = GaugeMetricFamily("g", "help", labels=["a"])
    stamped.add_metric(["x"], 1.5, timestamp=10)
    out = prom.openmetrics_latest(Collected([stamped]))[:-len(b"# EOF\n")]
    assert prom._Template.of(stamped, out, (1.5,)) is None
    from prometheus_client.core import CounterMetricFamily
    ex = CounterMetricFamily("c", "help", labels=["a"])
    ex.add_metric(["x"], 1.0)
    ex.samples[0] = ex.samples[0]._replace(exemplar=Exemplar({"t": "1"}, 1.0))
    out = prom.openmetrics_latest(Collected([ex]))[:-len(b"# EOF\n")]
    assert prom._Template.of(ex, out, (1.0,)) is None


def test_the_process_figures_are_the_process_collectors():
    """process_* as prometheus_client's ProcessCollector reads them, from a descriptor kept
    open; after close() they are read again from a new one."""
    from prometheus_client import ProcessCollector
    figures = prom.ProcessFigures()
    try:
        ours = {f.metric(rows).name: rows[0][1] for f, rows in figures.rows()}
        theirs = {m.name: m.samples[0].value for m in ProcessCollector(registry=None).collect()}
        assert set(ours) == set(theirs) == {"process_virtual_memory_bytes", "process_resident_memory_bytes",
                                            "process_start_time_seconds", "process_cpu_seconds",
                                            "process_open_fds", "process_max_fds"}
        assert ours["process_start_time_seconds"] == theirs["process_start_time_seconds"]
        assert ours["process_max_fds"] == theirs["process_max_fds"]
        assert abs(ours["process_open_fds"] - theirs["process_open_fds"]) <= 2
        assert 0 < ours["process_cpu_seconds"] <= theirs["process_cpu_seconds"] + 0.05
        assert abs(ours["process_resident_memory_bytes"] - theirs["process_resident_memory_bytes"]) < 64e6
    finally:
        figures.close()
    again = {f.metric(rows).name for f, rows in figures.rows()}
    assert "process_cpu_seconds" in again
    figures.close()
    assert prom.ProcessFigures(proc="/nonexistent").rows() == []


def test_a_live_series_changes_at_the_next_scrape():
    """A real sink's collector, scraped through the Exposition in both formats: a state change,
    a counter that moves and a sampler figure appear at the very next scrape."""
    from test_sinks_http import FakeSampler
    sink = PrometheusSink(("127.0.0.1", 0), process_collectors=False)
    try:
        sampler: Any = FakeSampler()
        sink.watch(sampler=sampler)
        script = scripted_reports(until=30.0)
        states = [r.verdict.states["seizure"] for r in script]
        i = next(k for k in range(1, len(script)) if states[k] != states[k - 1])
        for accept, parse in (("text/plain;version=0.0.4", parse_text),
                              ("application/openmetrics-text;version=1.0.0", parse_openmetrics)):
            for report in script[:i]:
                sink.emit(report)
            before = {f.name: f for f in parse(sink.exposition.render(accept)[0].decode())}
            on = [s.labels["state"] for s in before["coherence_detector_state"].samples
                  if s.labels["detector"] == "seizure" and s.value == 1]
            assert on == [str(states[i - 1])]
            ticks = before["coherence_sampler_ticks"].samples[0].value
            sink.emit(script[i])
            sampler.ticks += 7
            after = {f.name: f for f in parse(sink.exposition.render(accept)[0].decode())}
            on = [s.labels["state"] for s in after["coherence_detector_state"].samples
                  if s.labels["detector"] == "seizure" and s.value == 1]
            assert on == [str(states[i])]
            assert after["coherence_sampler_ticks"].samples[0].value == ticks + 7
            changes = {s.labels["detector"]: s.value
                       for s in after["coherence_detector_state_changes"].samples}
            assert changes["seizure"] > {s.labels["detector"]: s.value for s in
                                         before["coherence_detector_state_changes"].samples}["seizure"]
    finally:
        sink.server.stop()
