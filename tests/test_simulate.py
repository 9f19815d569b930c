"""The simulator: each scripted fault is called by the right detector, in time, and only it; a
seed replays the same run; the lead-time table says what the classic alerts did."""
import functools
import json
import math
from dataclasses import replace
from typing import Any, Dict, List, NamedTuple, Tuple

import pytest

from coherence import simulate
from coherence.sinks.simulation import format_result, result_table
from coherence.config import Config
from coherence.monitor import DETECTORS, Report
from coherence.simulate import MAX_SPEED, SimulationResult, run
from coherence.sinks.jsonl import report_json
from coherence.states import State

FAULT_DEADLINE_S = 10.0       # the issue: a fault starting at T is CRITICAL by T + 10 s
WARMUP_S = 6.0                # half a window of buckets (seizure), of trend points (fever), and
                              # 5 s of traffic to seed the amplification baseline


class Played(NamedTuple):
    result: SimulationResult
    lines: Tuple[str, ...]               # every report as its JSON line
    snapshots: Tuple[Dict[str, Any], ...]  # a few figures of every report's snapshot


@functools.lru_cache(maxsize=None)
def play(scenario: str, seed: int = 0) -> Played:
    lines: List[str] = []
    snaps: List[Dict[str, Any]] = []

    def sink(report: Report) -> None:
        lines.append(json.dumps(report_json(report), sort_keys=True))
        s = report.snapshot
        snaps.append({"t": report.elapsed_s, "cpu_mean": s.cpu.util_mean_pct,
                      "cpu_std": s.cpu.util_std_pct,
                      "churn_mb_s": s.memory.churn_bytes_per_s / 1e6,
                      "resident_pct": 100 * s.memory.resident_bytes / s.memory.total_bytes,
                      "ratio": s.requests.ratio, "ingress": s.requests.ingress_per_s,
                      "source": s.requests.source})

    result = run(Config(), scenario, seed=seed, speed=MAX_SPEED, on_report=sink)
    return Played(result, tuple(lines), tuple(snaps))


def states_during(result: SimulationResult, t0: float, t1: float) -> Dict[str, set]:
    seen: Dict[str, set] = {name: set() for name in DETECTORS}
    for step in result.steps:
        if t0 <= step.t < t1:
            for name, state in step.states:
                seen[name].add(state)
    return seen


def at(result: SimulationResult, t: float) -> simulate.Step:
    return min(result.steps, key=lambda s: abs(s.t - t))


# --------------------------------------------------------------------------- arguments
def test_scenarios_are_listed_with_a_description_story_first():
    assert list(simulate.SCENARIOS)[0] == "story"
    assert {"story", "healthy", "seizure", "fever", "storm", "cascade"} <= set(simulate.SCENARIOS)
    assert all(isinstance(d, str) and d for d in simulate.SCENARIOS.values())
    story = simulate.phases("story")
    assert [p.name for p in story][:8] == ["healthy", "seizure", "recovery", "fever", "recovery",
                                           "retry storm", "cascade", "recovery"]
    assert simulate.phase_at("story", 31).name == "seizure"


def test_an_unknown_scenario_names_the_choices():
    with pytest.raises(ValueError, match="unknown scenario 'nope'.*story.*seizure.*cascade"):
        run(Config(), "nope", speed=MAX_SPEED)


@pytest.mark.parametrize("speed", [0, -1.0, math.nan])
def test_speed_must_be_positive(speed):
    with pytest.raises(ValueError, match="speed must be a number > 0"):
        run(Config(), "healthy", speed=speed)


# --------------------------------------------------------------------------- determinism
def test_same_seed_same_run_byte_for_byte():
    again = run(Config(), "story", seed=0, speed=MAX_SPEED)
    first = play("story", 0).result
    assert [(s.status, s.states) for s in again.steps] == [(s.status, s.states) for s in first.steps]
    assert format_result(again) == format_result(first)
    assert again == first


def test_reports_are_stamped_with_simulated_time():
    played = play("seizure")
    first, last = json.loads(played.lines[0]), json.loads(played.lines[-1])
    assert first["ts"] == simulate.EPOCH and first["elapsed_s"] == 0
    assert last["ts"] == simulate.EPOCH + 90 and last["elapsed_s"] == 90
    assert len(played.lines) == 90 / simulate.STEP_S + 1
    assert first["sampler"] is None


def test_another_seed_other_numbers_same_outcome():
    a, b = play("story", 0), play("story", 1)
    assert a.lines != b.lines
    assert [s["cpu_std"] for s in a.snapshots] != [s["cpu_std"] for s in b.snapshots]

    def outcome(r: SimulationResult):
        return [(i.name, i.detectors, i.warning_after_s is not None, i.critical_after_s is not None,
                 i.classic_alert) for i in r.incidents]

    assert outcome(a.result) == outcome(b.result)
    for i, j in zip(a.result.incidents, b.result.incidents):
        if i.critical_after_s is not None and j.critical_after_s is not None:
            assert abs(i.critical_after_s - j.critical_after_s) <= 2.0


# --------------------------------------------------------------------------- the synthetic host
def test_the_host_looks_like_the_readme_says():
    snaps = play("story").snapshots

    def during(t0, t1, key):
        return [s[key] for s in snaps if t0 <= s["t"] < t1]

    # healthy: ~35 % steady CPU, tens of MB/s churn, 40 % resident, 200 req/s at 1 call each
    assert all(30 < v < 40 for v in during(20, 30, "cpu_mean"))
    assert all(v < 6 for v in during(20, 30, "cpu_std"))
    assert all(10 < v < 100 for v in during(20, 30, "churn_mb_s"))
    assert all(39 < v < 41 for v in during(20, 30, "resident_pct"))
    assert all(0.98 < v < 1.05 for v in during(20, 30, "ratio"))
    assert all(150 < v < 250 for v in during(20, 30, "ingress"))
    assert set(during(0, 350, "source")) == {"pushed"}
    # seizure: the average says 50 %, the std says 40 points
    assert all(40 < v < 60 for v in during(45, 60, "cpu_mean"))
    assert all(v > 30 for v in during(45, 60, "cpu_std"))
    # fever: GB/s of churn, resident flat
    assert all(v > 1500 for v in during(95, 120, "churn_mb_s"))
    assert all(39 < v < 42 for v in during(95, 120, "resident_pct"))
    # storm: every request makes two calls or more
    assert all(v > 2 for v in during(160, 180, "ratio"))
    # leak: resident crosses 90 % before the phase ends, and comes back after the restart
    assert max(during(260, 325, "resident_pct")) > 90
    assert all(39 < v < 41 for v in during(326, 350, "resident_pct"))


# --------------------------------------------------------------------------- single scenarios
def test_healthy_is_ok_after_warmup():
    result = play("healthy").result
    seen = states_during(result, WARMUP_S, result.duration_s + 1)
    assert seen == {name: {"OK"} for name in DETECTORS}
    assert result.incidents == ()
    assert "No incident" in format_result(result)


@pytest.mark.parametrize("scenario, detector, worst", [
    ("seizure", "seizure", "CRITICAL"),
    ("fever", "fever", "CRITICAL"),
    ("storm", "amplification", "CRITICAL"),
    ("leak", "fever", "WARNING"),        # a forecast warns, it never escalates
])
def test_a_single_fault_trips_its_detector_only(scenario, detector, worst):
    result = play(scenario).result
    (incident,) = result.incidents
    assert incident.detectors == (detector,)
    seen = states_during(result, WARMUP_S, result.duration_s + 1)
    assert max(seen[detector], key=lambda s: State(s).severity) == worst
    for other in set(DETECTORS) - {detector}:
        assert seen[other] == {"OK"}, other
    assert incident.called_after_s is not None and incident.called_after_s <= FAULT_DEADLINE_S
    assert result.steps[-1].status == "OK"


def test_cascade_trips_all_three_and_the_verdict_names_it():
    result = play("cascade").result
    (incident,) = result.incidents
    assert incident.kind == "cascade"
    assert set(incident.detectors) == set(DETECTORS)
    seen = states_during(result, 30, 70)
    assert all("CRITICAL" in seen[name] for name in DETECTORS)
    assert incident.critical_after_s is not None and incident.critical_after_s <= FAULT_DEADLINE_S
    named = [s for s in result.steps if any(kind == "cascade" for kind, _ in s.incidents)]
    assert named and named[0].t == pytest.approx(30 + incident.critical_after_s)
    assert result.steps[-1].status == "OK"


# --------------------------------------------------------------------------- the story
def test_story_every_fault_called_in_time_and_not_before():
    result = play("story").result
    assert [i.name for i in result.incidents] == ["seizure", "fever", "retry storm", "cascade",
                                                  "leak"]
    for incident in result.incidents:
        before = at(result, incident.start_s - simulate.STEP_S)
        assert all(dict(before.states)[d] == "OK" for d in incident.detectors), incident.name
        assert incident.warning_after_s is not None and incident.warning_after_s > 0
        if incident.kind == "forecast":
            assert incident.critical_after_s is None
            assert incident.warning_after_s <= FAULT_DEADLINE_S
        else:
            assert incident.critical_after_s is not None, incident.name
            assert incident.warning_after_s <= incident.critical_after_s <= FAULT_DEADLINE_S


def test_story_recovers_to_ok_after_each_fault():
    result = play("story").result
    recoveries = [p for p in simulate.phases("story") if p.name == "recovery"]
    assert len(recoveries) == 4
    for p in recoveries:
        assert at(result, p.end_s - simulate.STEP_S).status == "OK", p
    # and nothing flaps on the way
    assert not any(kind == "flapping" for s in result.steps for kind, _ in s.incidents)


def test_story_cascade_is_reported_as_one():
    result = play("story").result
    cascade = next(p for p in simulate.phases("story") if p.name == "cascade")
    kinds = [dict(s.incidents).get("cascade") for s in result.steps
             if cascade.start_s <= s.t < cascade.end_s]
    assert any(members and len(members) >= 2 for members in kinds)
    outside = [s for s in result.steps if s.t < cascade.start_s]
    assert not any(kind == "cascade" for s in outside for kind, _ in s.incidents)


# --------------------------------------------------------------------------- the table
def test_lead_time_table_one_row_per_incident():
    result = play("story").result
    text = format_result(result)
    lines = text.splitlines()
    header = next(n for n, line in enumerate(lines) if line.startswith("INCIDENT"))
    rows = lines[header + 1:header + 1 + len(result.incidents)]
    assert [r.split("  ")[0].strip() for r in rows] == [i.name for i in result.incidents]
    assert lines[header + 1 + len(result.incidents)] == ""
    seizure = result.incidents[0]
    assert seizure.classic_after_s is None and seizure.lead_s == math.inf
    assert "∞ (classic never fired)" in rows[0]
    # the CPU > 80 % alert never fires in the whole story: the seizure averages 50 %
    assert not any(i.classic_alert and i.classic_alert.startswith("CPU") for i in result.incidents)
    assert "60 s rolling mean" in text
    missed = sum(1 for i in result.incidents if i.classic_after_s is None)
    assert f"Averages lie: the classic alerts missed {missed} of {len(result.incidents)} incidents." \
        in text
    assert missed == result.missed == 3


def test_lead_time_is_classic_minus_coherence():
    result = play("story").result
    cascade = next(i for i in result.incidents if i.kind == "cascade")
    assert cascade.classic_alert == "error rate > 5 %"
    assert cascade.classic_after_s is not None and cascade.critical_after_s is not None
    assert cascade.lead_s == cascade.classic_after_s - cascade.critical_after_s > 0
    leak = next(i for i in result.incidents if i.kind == "forecast")
    assert leak.classic_alert == "used memory > 90 %"
    assert leak.classic_after_s is not None and leak.warning_after_s is not None
    assert leak.lead_s == leak.classic_after_s - leak.warning_after_s > 30


def test_rich_table_has_the_same_rows():
    from rich.console import Console

    result = play("story").result
    table = result_table(result)
    assert table.row_count == len(result.incidents)
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    screen = console.export_text()
    assert "Averages lie" in screen and "retry storm" in screen


# --------------------------------------------------------------------------- the engine is the real one
def test_the_config_is_the_engines():
    slow = replace(Config(), verdict=replace(Config().verdict, for_s=8.0))
    result = run(slow, "fever", speed=MAX_SPEED)
    (incident,) = result.incidents
    default = play("fever").result.incidents[0]
    assert default.critical_after_s is not None
    assert incident.critical_after_s == pytest.approx(default.critical_after_s + 3.0)


# --------------------------------------------------------------------------- pacing
class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: List[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.mark.parametrize("speed", [5.0, 30.0])
def test_wall_time_is_paced_to_speed(speed):
    clock = FakeClock()
    result = run(Config(), "seizure", speed=speed, sleep=clock.sleep, clock=clock)
    assert clock.now - 1000.0 == pytest.approx(result.duration_s / speed, rel=1e-6)
    assert len(clock.sleeps) == len(result.steps) - 1      # one pause a step, none before t=0
    assert max(clock.sleeps) <= simulate.STEP_S / speed + 1e-9


def test_a_slow_sink_is_not_made_to_wait_more():
    clock = FakeClock()

    def slow_sink(report: Report) -> None:      # rendering takes longer than a step
        clock.now += 1.0

    result = run(Config(), "healthy", speed=10.0, on_report=slow_sink, sleep=clock.sleep,
                 clock=clock)
    assert clock.sleeps == []
    assert clock.now - 1000.0 == pytest.approx(len(result.steps) * 1.0)


def test_max_speed_never_sleeps_and_default_speed_tells_the_story_in_under_a_minute():
    clock = FakeClock()
    run(Config(), "healthy", speed=MAX_SPEED, sleep=clock.sleep, clock=clock)
    assert clock.sleeps == []
    story = simulate.phases("story")[-1].end_s
    assert 120 <= story and story / simulate.DEFAULT_SPEED < 60
    clock = FakeClock()
    result = run(Config(), "healthy", sleep=clock.sleep, clock=clock)
    assert result.speed == simulate.DEFAULT_SPEED
    assert clock.now - 1000.0 == pytest.approx(60 / simulate.DEFAULT_SPEED)
