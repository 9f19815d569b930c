"""JSON lines: every line is valid against the shipped schema, NaN is null, lines come at the
report interval and at every state change, and a reader that goes away ends the run quietly.

The scripted reports here (a Monitor over a fake snapshot) are shared with the dashboard tests."""
import copy
import importlib.resources
import io
import json
import math
import os
import subprocess
import sys
import textwrap
import time
from typing import Any, Dict, List, Optional

import jsonschema  # type: ignore[import-untyped]
import numpy as np
import pytest

from coherence.config import Config, VerdictConfig
from coherence.monitor import Monitor, Report
from coherence.sinks.base import EARLY_FRACTION, SinkClosed
from coherence.sinks.jsonl import JsonLinesSink, clean, report_json
from coherence.snapshot import CpuSignals, MemorySignals, PressureSignals, RequestSignals, Snapshot, Trend

MB = 1e6
WALL0 = 1_795_000_000.0        # a fixed Unix time for scripted reports
STEP_S = 0.25                  # the CLI judges 4 times a second
# Short hysteresis so one 40 s script shows every state, a cascade and a flapping detector.
SCRIPT_CONFIG = Config(verdict=VerdictConfig(for_s=2.0, clear_s=2.0, cascade_window_s=60.0,
                                             flap_changes=4, flap_window_s=60.0)).validate()
SAMPLER_FIGURES: Dict[str, Any] = {
    "hz": 1000.0, "achieved_hz": 998.6, "ticks": 14720, "overruns": 3,
    "tick_lateness_p50_us": 44.0, "tick_lateness_p99_us": 114.0, "cpu_percent": 3.03,
    "sources": {"cpu": "cpu.cgroup2", "memory": "memory.cgroup1", "pressure": "pressure.psi",
                "requests": "requests.tcp_snmp"},
    "notes": [],
}


def snapshot_at(t: float) -> Snapshot:
    """The signals of a scripted incident: warm-up, a seizure that comes, goes and comes back
    (flapping), a fever and a retry storm on top of it (a cascade), then a memory leak."""
    seizing = 5 <= t < 9 or 13 <= t < 30
    churning = 16 <= t < 30
    storm = 20 <= t < 30
    leaking = 32 <= t < 36
    resident = (12_000 if leaking else 4_000) * MB
    history = np.array([0.0, 100.0] * 16 if seizing else [30.0, 31.0] * 16)
    return Snapshot(
        cpu=CpuSignals(available=True, util_mean_pct=40.0 if seizing else 30.0,
                       util_std_pct=35.0 if seizing else 1.1,
                       buckets=min(100, int(t * 10)), buckets_per_window=100, ncpu=2.0,
                       history_pct=history),
        memory=MemorySignals(available=True, resident_bytes=resident,
                             resident_growth_bytes_per_s=50 * MB if leaking else 0.0,
                             resident_growth_t=math.inf if leaking else 0.0,
                             trend_points=min(200, int(t * 20)), trend_points_needed=200,
                             total_bytes=16_000 * MB, minor_faults_per_s=1000.0,
                             churn_bytes_per_s=(900 if churning else 14) * MB,
                             pgalloc_bytes_per_s=math.nan,
                             growth_trends=(Trend(10.0, 50 * MB, math.inf, 50 * MB, 50 * MB),)
                             if leaking else ()),
        pressure=PressureSignals(cpu_some_pct=2.0, memory_some_pct=0.5),
        requests=RequestSignals(source="pushed",
                                ingress_per_s=0.0 if t < 2 else 100.0,
                                egress_per_s=0.0 if t < 2 else (300.0 if storm else 100.0),
                                ratio=math.nan if t < 2 else (3.0 if storm else 1.0),
                                ingress_in_window=0.0, egress_in_window=0.0, window_points=0,
                                window_capacity=100),
    )


def scripted_reports(until: float = 40.0, step: float = STEP_S,
                     sampler: Optional[Dict[str, Any]] = SAMPLER_FIGURES) -> List[Report]:
    clock = {"t": 0.0}
    monitor = Monitor(SCRIPT_CONFIG, lambda: snapshot_at(clock["t"]), lambda: sampler)
    reports = []
    for i in range(int(round(until / step)) + 1):
        clock["t"] = i * step
        reports.append(monitor.step(clock["t"], WALL0 + clock["t"]))
    return reports


def report_at(reports: List[Report], t: float) -> Report:
    return min(reports, key=lambda r: abs(r.elapsed_s - t))


def load_schema() -> Dict[str, Any]:
    """The schema as installed with the package (package data), not from the source tree."""
    return json.loads(importlib.resources.files("coherence").joinpath("report.schema.json").read_text())


@pytest.fixture(scope="module")
def validator() -> Any:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture(scope="module")
def reports() -> List[Report]:
    return scripted_reports()


def emit_all(reports: List[Report], interval_s: float = 1.0) -> List[Dict[str, Any]]:
    out = io.StringIO()
    sink = JsonLinesSink(out, interval_s=interval_s)
    for r in reports:
        sink.emit(r)
    text = out.getvalue()
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# ------------------------------------------------------------------------------- the schema
def test_the_schema_ships_with_the_package():
    assert importlib.resources.files("coherence").joinpath("report.schema.json").is_file()
    assert load_schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_every_line_of_a_scripted_incident_validates(reports, validator):
    lines = emit_all(reports)
    for line in lines:
        validator.validate(line)
    # the script reaches every branch of the schema, so the test above means something
    states = {d["state"] for line in lines for d in line["detectors"].values()}
    assert states == {"WARMUP", "OK", "WARNING", "CRITICAL"}
    kinds = {i["kind"] for line in lines for i in line["incidents"]}
    assert kinds == {"cascade", "flapping"}
    actions = {v["action"] for line in lines for v in line["veto"]}
    assert actions == {"SHED_LOAD", "THROTTLE", "CAP_RETRIES", "CIRCUIT_BREAK"}
    assert any(line["detectors"]["fever"]["unit"] == "MB/s growth"
               and line["detectors"]["fever"]["evidence"]["exhaustion_eta_s"] > 0 for line in lines)


def test_simulated_reports_validate(validator):
    for sampler in (None, {"simulated": True, "speed": 20.0}):
        for line in emit_all(scripted_reports(until=3.0, sampler=sampler)):
            validator.validate(line)
            assert line["sampler"] == sampler


def test_lines_from_a_real_sampler_validate(validator):
    from coherence.monitor import sampler_figures
    from coherence.sampler import Sampler
    sampler = Sampler(hz=500).start()
    try:
        monitor = Monitor(Config().validate(), sampler.snapshot, sampler_figures(sampler))
        out = io.StringIO()
        sink = JsonLinesSink(out, interval_s=0.2)
        for _ in range(12):
            time.sleep(0.1)
            sink.emit(monitor.step(time.monotonic(), time.time()))
    finally:
        sampler.stop()
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) >= 3
    for line in lines:
        validator.validate(line)
    assert lines[-1]["sampler"]["hz"] == 500 and lines[-1]["sampler"]["ticks"] > 0


@pytest.mark.parametrize("mutate", [
    pytest.param(lambda o: o.pop("status"), id="missing-status"),
    pytest.param(lambda o: o.update(status="FINE"), id="bad-status"),
    pytest.param(lambda o: o["detectors"]["fever"].update(state="BROKEN"), id="bad-state"),
    pytest.param(lambda o: o["detectors"].pop("amplification"), id="missing-detector"),
    pytest.param(lambda o: o["detectors"]["seizure"].update(value="3.1"), id="value-as-string"),
    pytest.param(lambda o: o["detectors"]["seizure"].update(veto="REBOOT"), id="bad-veto"),
    pytest.param(lambda o: o.update(veto=[{"detector": "seizure", "state": "OK",
                                           "action": "SHED_LOAD"}]), id="veto-while-ok"),
    pytest.param(lambda o: o.update(incidents=[{"kind": "cascade", "detectors": ["fever"],
                                                "since": 1.0}]), id="cascade-of-one"),
    pytest.param(lambda o: o.update(sampler={"hz": 1000}), id="sampler-incomplete"),
    pytest.param(lambda o: o.update(sampler={"simulated": False}), id="simulated-false"),
])
def test_the_schema_rejects_a_malformed_object(reports, validator, mutate):
    good = emit_all(reports[:1])[0]
    validator.validate(good)
    bad = copy.deepcopy(good)
    mutate(bad)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(bad)


# ------------------------------------------------------------------------------- the lines
def test_lines_are_compact_json_and_nan_becomes_null(reports):
    out = io.StringIO()
    JsonLinesSink(out).emit(reports[0])
    text = out.getvalue()
    assert text.count("\n") == 1 and ", " not in text and '": ' not in text
    assert "NaN" not in text and "Infinity" not in text
    first = json.loads(text)
    amp = first["detectors"]["amplification"]
    assert math.isnan(reports[0].findings["amplification"].value)
    assert amp["value"] is None and amp["evidence"]["ratio"] is None
    assert first["detectors"]["fever"]["evidence"]["pgalloc_mb_s"] is None


def test_one_line_per_interval_and_one_per_change(reports):
    out = io.StringIO()
    sink = JsonLinesSink(out, interval_s=1.0)
    written = [r for r in reports if sink.emit(r)]
    assert len(out.getvalue().splitlines()) == len(written)
    changed = [r for r in reports if r.verdict.changed]
    assert reports[0] in written and all(r in written for r in changed)
    # never two lines closer than an interval unless the second is a change, and never
    # silent for longer than an interval plus one report
    for before, after in zip(written, written[1:]):
        gap = after.elapsed_s - before.elapsed_s
        assert after.verdict.changed or gap >= 1.0 * (1 - EARLY_FRACTION)
        assert gap <= 1.0 + STEP_S
    assert len(written) < len(reports) / 2


def test_every_state_change_is_written_even_within_an_interval(reports):
    out = io.StringIO()
    sink = JsonLinesSink(out, interval_s=60.0)
    written = [r for r in reports if sink.emit(r)]
    assert written == [reports[0]] + [r for r in reports[1:] if r.verdict.changed]
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert all(line["changed"] for line in lines[1:])


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, "1", True])
def test_a_bad_interval_is_a_value_error(bad):
    with pytest.raises(ValueError, match="interval_s"):
        JsonLinesSink(io.StringIO(), interval_s=bad)


# ------------------------------------------------------------------------------- a closed reader
def test_a_closed_pipe_is_sink_closed_not_broken_pipe(reports):
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    stream = os.fdopen(write_fd, "w")
    sink = JsonLinesSink(stream)
    with pytest.raises(SinkClosed) as info:
        sink.emit(reports[0])
    assert isinstance(info.value.__cause__, BrokenPipeError)
    stream.write("more\n")
    stream.flush()             # the descriptor now goes to /dev/null: nothing left to fail
    stream.close()


def test_piped_into_head_the_run_ends_quietly_with_exit_0():
    # What `coherence --json | head -1` does: the CLI catches SinkClosed and exits 0. Nothing may
    # reach stderr, even when the CLI still prints afterwards (the simulation's summary table).
    child = textwrap.dedent("""
        import json, sys, types
        from coherence.sinks.jsonl import JsonLinesSink, SinkClosed
        class Big(JsonLinesSink):
            def line(self, report):
                return json.dumps({"ts": 0, "padding": "x" * 3000})
        sink = Big(sys.stdout, interval_s=1.0)
        try:
            for i in range(100000):
                sink.emit(types.SimpleNamespace(elapsed_s=float(i),
                                                verdict=types.SimpleNamespace(changed=False)))
        except SinkClosed:
            print("summary table")
            sys.exit(0)
        sys.exit(5)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd="/")
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=20) == 0
    assert json.loads(first)["ts"] == 0
    assert err == b""


def test_report_json_keys_and_types(reports):
    obj = report_json(report_at(reports, 25.0))
    assert list(obj) == ["ts", "elapsed_s", "status", "changed", "detectors", "veto", "incidents",
                         "sampler", "runtime"]
    assert list(obj["detectors"]) == ["seizure", "fever", "amplification"]
    for d in obj["detectors"].values():
        assert list(d) == ["state", "for_s", "value", "limit", "unit", "reason", "evidence", "veto"]
    # enums are written as their plain strings, never as objects
    assert type(obj["status"]) is str and obj["status"] == "CRITICAL"
    assert all(type(v["state"]) is str and type(v["action"]) is str for v in obj["veto"])
    assert type(obj["detectors"]["amplification"]["veto"]) is str
    cascade = obj["incidents"][0]
    assert cascade["kind"] == "cascade" and WALL0 < cascade["since"] < obj["ts"]   # Unix time


def test_clean_makes_anything_json_safe():
    from coherence.states import State
    assert clean({1: (np.float64(1.5), math.nan, math.inf, State.OK, True, None)}) == \
        {"1": [1.5, None, None, "OK", True, None]}


def test_the_documented_example_line_validates(validator):
    doc = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "docs", "json-schema.md")
    examples = [line for line in open(doc, encoding="utf-8") if line.startswith('{"ts":')]
    assert examples
    for line in examples:
        validator.validate(json.loads(line))
