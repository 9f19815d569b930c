"""Replays of the e2e suite's real faults and controls (tests/fixtures/recordings, recorded by
tests/e2e/record_fixtures.py): the same states at the same times as coherence printed live while
recording, the faults called in time, the controls never CRITICAL, settings that change the
answer, and a file that is not a whole recording said so in one line with exit 2."""
import functools
import gzip
import json
import os
from typing import Any, Dict, List, Tuple

import pytest

from coherence.cli import run as cli
from coherence.config import ConfigError
from coherence.detectors import DETECTORS
from coherence.monitor import Report
from coherence.recording import Recording
from coherence.replay import ReplayResult, play, replay_config
from coherence.sinks.jsonl import report_json
from coherence.states import State

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "fixtures", "recordings")
CASES = ("seizure_fault", "seizure_control_steady", "fever_fault")
DEADLINE_S = 10.0            # the e2e bar: CRITICAL within 10 s of the fault starting
REPORT_INTERVAL_S = 1.0      # output.report_interval_s: the tolerance


def fixture(case: str, suffix: str = ".jsonl.gz") -> str:
    return os.path.join(FIXTURES, case + suffix)


def meta(case: str) -> Dict[str, Any]:
    with open(fixture(case, ".json")) as f:
        return json.load(f)


def live_lines(case: str) -> List[Dict[str, Any]]:
    with gzip.open(fixture(case, ".live.jsonl.gz"), "rt") as f:
        return [json.loads(line) for line in f]


@functools.lru_cache(maxsize=None)
def replayed(case: str, **overrides: Any) -> Tuple[ReplayResult, Tuple[Dict[str, Any], ...]]:
    rec = Recording(fixture(case))
    reports: List[Report] = []
    config = replay_config(rec.header, None, overrides)
    result = play(rec.header, rec.records(), config, on_report=reports.append, source=case)
    assert result.error is None
    return result, tuple(report_json(r) for r in reports)


def states(line: Dict[str, Any]) -> Dict[str, str]:
    return {d: line["detectors"][d]["state"] for d in DETECTORS}


@pytest.mark.parametrize("case", CASES)
def test_replay_gives_the_live_states_at_the_live_times(case):
    """Every state the live run printed is the replay's within one report interval, and every
    change of state the live run made, the replay made within one report interval."""
    live = live_lines(case)
    _, replay = replayed(case)
    assert len(live) >= 30
    for line in live:
        t = line["elapsed_s"]
        near = [r for r in replay if abs(r["elapsed_s"] - t) <= REPORT_INTERVAL_S]
        for d, state in states(line).items():
            assert any(r["detectors"][d]["state"] == state for r in near), (case, t, d, state)
    for d in DETECTORS:
        changes = [(b["elapsed_s"], b["detectors"][d]["state"]) for a, b in zip(live, live[1:])
                   if a["detectors"][d]["state"] != b["detectors"][d]["state"]]
        replay_changes = [(b["elapsed_s"], b["detectors"][d]["state"])
                          for a, b in zip(replay, replay[1:])
                          if a["detectors"][d]["state"] != b["detectors"][d]["state"]]
        for t, state in changes:
            assert any(abs(t - u) <= REPORT_INTERVAL_S and s == state
                       for u, s in replay_changes), (case, d, t, state, replay_changes)


def first_critical(lines: Tuple[Dict[str, Any], ...], detector: str, after: float) -> float:
    return next(r["elapsed_s"] for r in lines
                if r["elapsed_s"] >= after and r["detectors"][detector]["state"] == "CRITICAL")


@pytest.mark.parametrize("case", ["seizure_fault", "fever_fault"])
def test_a_recorded_fault_is_called_in_time_by_its_detector_only(case):
    m = meta(case)
    detector, start = m["detector"], m["load_started_s"]
    result, lines = replayed(case)
    before = [r["detectors"][detector]["state"] for r in lines if r["elapsed_s"] < start]
    assert "CRITICAL" not in before
    assert first_critical(lines, detector, start) - start <= DEADLINE_S
    during = [r for r in lines if start + 1 <= r["elapsed_s"] <= start + m["load_s"]]
    for other in DETECTORS:
        if other != detector:
            # as the e2e fault cases allow: OK, or the WARNING of a load's edge, raised as
            # seizure's swing (tests/e2e/host.py, EDGE_ONLY); never a forecast
            shown = {r["detectors"][other]["state"] for r in during}
            assert shown <= {"OK", "WARNING"}, (other, shown)
            raised_as = {b["detectors"][other]["unit"] for a, b in zip(lines, lines[1:])
                         if b["detectors"][other]["state"] == "WARNING"
                         and a["detectors"][other]["state"] != "WARNING"}
            assert raised_as <= {"pct_points"}, (other, raised_as)
    (incident,) = [i for i in result.incidents if i.detectors == (detector,)]
    assert incident.critical_after_s is not None and incident.kind == "single"


def test_a_wandering_working_set_is_not_a_forecast():
    """memory_wobble: a seizure fault recorded (2026-11-27) before the forecast needed a span of
    1/12 of what it forecasts. This shared host's cgroup working set wandered between 1 029 and
    1 080 MB, and the fever window's 10 s trend read one rise of it as exhaustion in 1.5 h:
    WARNING live (its .live lines), through the seizure. Replayed now: OK throughout."""
    with gzip.open(fixture("memory_wobble", ".live.jsonl.gz"), "rt") as f:
        live = [json.loads(line)["detectors"]["fever"] for line in f]
    assert any(d["state"] == "WARNING" and d["unit"] == "MB/s growth" for d in live)
    _, lines = replayed("memory_wobble")
    fever = [r["detectors"]["fever"] for r in lines]
    assert {d["state"] for d in fever} == {"WARMUP", "OK"}
    assert all("exhaustion_eta_s" not in d["evidence"] for d in fever if d["evidence"])
    assert {r["detectors"]["seizure"]["state"] for r in lines} >= {"CRITICAL"}


def test_a_recorded_control_is_never_critical():
    result, lines = replayed("seizure_control_steady")
    assert all(r["status"] != "CRITICAL" for r in lines)
    assert all(i.critical_after_s is None for i in result.incidents)


def test_what_if_the_seizure_limit_were_higher():
    """The seizure (1 s busy / 1 s idle on every CPU: a std near 50) is not one under a limit of
    60; it still is under the recording's own 20, and with buckets merged to 200 ms."""
    _, lines = replayed("seizure_fault", **{"seizure.std_limit_pct": 60.0})
    assert all(r["detectors"]["seizure"]["state"] in ("WARMUP", "OK") for r in lines)
    assert all(r["detectors"]["seizure"]["limit"] == 60.0 for r in lines)
    start = meta("seizure_fault")["load_started_s"]
    _, merged = replayed("seizure_fault", **{"seizure.resolution_s": 0.2})
    assert first_critical(merged, "seizure", start) - start <= DEADLINE_S
    assert merged[-1]["detectors"]["seizure"]["evidence"]["resolution_s"] == 0.2


def test_settings_a_recording_cannot_answer_are_refused():
    header = Recording(fixture("seizure_fault")).header
    with pytest.raises(ConfigError, match="--hz does not apply"):
        replay_config(header, None, {"sampler.hz": 100.0})
    with pytest.raises(ConfigError, match="finer than"):
        replay_config(header, None, {"seizure.resolution_s": 0.05})
    with pytest.raises(ConfigError, match="whole multiple"):
        replay_config(header, None, {"seizure.resolution_s": 0.15})


def test_the_cli_prints_json_lines_and_the_incident_table(capsys):
    assert cli(["replay", fixture("seizure_fault"), "--json"]) == 0
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["ts"] == pytest.approx(Recording(fixture("seizure_fault")).header.started_at,
                                           abs=1.0)
    assert {"ts", "status", "detectors", "veto"} <= set(lines[-1])
    assert "INCIDENT" in err and "seizure #" in err and "CLASSIC ALERT" in err
    assert cli(["replay", fixture("seizure_fault")]) == 0
    out, _ = capsys.readouterr()
    assert " seizure=CRITICAL(" in out and "WARNED AT" in out


def cut(tmp_path: Any, fraction: float) -> str:
    with gzip.open(fixture("seizure_fault"), "rb") as f:
        data = f.read()
    path = tmp_path / "cut.jsonl"
    path.write_bytes(data[:int(len(data) * fraction)])
    return str(path)


def test_a_truncated_recording_is_replayed_up_to_the_cut_then_one_line(tmp_path, capsys):
    assert cli(["replay", cut(tmp_path, 0.5), "--json"]) == 2
    out, err = capsys.readouterr()
    assert len(out.splitlines()) >= 10           # what preceded the cut was judged
    last = err.strip().splitlines()[-1]
    assert last.startswith("coherence: ") and "truncated" in last and "line" in last
    assert "Traceback" not in err


@pytest.mark.parametrize("args, says", [
    (["/nonexistent.jsonl"], "No such file"),
    ([fixture("seizure_fault"), "--hz", "100"], "--hz does not apply"),
    ([fixture("seizure_fault"), "--scenario", "story"], "are for coherence simulate"),
    ([HERE], "Is a directory"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, args, says):
    assert cli(["replay", *args]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_malformed_recording_is_one_line(tmp_path, capsys):
    with gzip.open(fixture("seizure_fault"), "rt") as f:
        lines = f.read().splitlines()
    lines[3] = json.dumps({"t": 1, "steps": [], "series": {"bogus": {"t": [1], "v": [1]}}})
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert cli(["replay", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"coherence: {path} line 4: unknown series 'bogus'"


def test_state_of_every_step_is_judged():
    result, _ = replayed("seizure_fault")
    assert result.duration_s > 30
    assert result.steps[-1].status in (State.OK, State.WARNING, State.CRITICAL)
