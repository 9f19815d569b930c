"""Smoke test of benchmarks/run_sampler.py: its machinery (build the floor, start each case,
measure, stop, report) runs for a fraction of a second per case, so CI keeps it working.

No timing is asserted: the figures of a 0.3 s run on a shared VM mean nothing. Run the runner
itself for the numbers: python benchmarks/run_sampler.py
"""
import json
import shutil
import sys

import pytest

import run_sampler as rs

HAVE_CC = shutil.which("gcc") is not None


@pytest.fixture(scope="module")
def result():
    return rs.run(duration=0.3, repeats=1, warmup=0.1)


@pytest.mark.parametrize("case", rs.CASES)
def test_each_case_measures_and_reports(result, case):
    if case == "floor" and not HAVE_CC:
        pytest.skip("no gcc: the floor loop cannot be built")
    if case == "psutil":
        pytest.importorskip("psutil")
    (rep,) = result["runs"][case]
    assert "error" not in rep, rep.get("error")
    assert rep["ticks"] > 0 and rep["ticks_expected"] > 0 and rep["overruns"] >= 0
    assert rep["elapsed_s"] > 0 and rep["wall_s"] > 0
    assert rep["cpu_ns"] >= 0 and rep["cpu_pct"] >= 0
    assert sum(n for _, n in rep["lateness_hist"]) > 0
    fig = rs.figures(rep)
    assert fig["achieved_hz"] > 0 and fig["p99_us"] >= fig["p50_us"] >= 1
    if case == "floor":
        assert rep["timer_slack_ns"] == rs.TIMER_SLACK_NS   # compared with the sampler fairly
        assert rep["read_errors"] == 0 and rep["bytes_per_read"] > 0
    if case == "sampler":
        assert rep["sources"]["cpu"] is not None
        assert rep["sampler_stats"]["ticks"] == rep["ticks"]


def test_report_has_every_row_and_target(result):
    text = rs.report_text(result)
    assert text.startswith("Machine: ")
    for label in rs.LABELS.values():
        assert f"| {label} |" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(verdicts) == 4
    assert all(line.split(":")[0][2:] in ("PASS", "MISS", "SKIP") for line in verdicts)
    json.dumps(result, default=str)          # what --json writes


def test_child_is_killed_when_it_never_gets_ready():
    child = rs.Child([sys.executable, "-c", "import time; time.sleep(60)"])
    with pytest.raises(rs.CaseError, match="no 'ready'"):
        with child:
            child.wait_ready(timeout=0.3)
    assert child.proc.poll() is not None


def test_child_that_dies_is_reported():
    with pytest.raises(rs.CaseError, match="exited"):
        with rs.Child([sys.executable, "-c", "import sys; sys.exit('boom')"]) as child:
            child.wait_ready(timeout=10)


def test_main_writes_json_and_exits_0(tmp_path, capsys):
    out = tmp_path / "raw.json"
    assert rs.main(["--duration", "0.1", "--warmup", "0.05", "--repeats", "1",
                    "--cases", "sampler", "--json", str(out)]) == 0
    raw = json.loads(out.read_text())
    assert raw["config"]["cases"] == ["sampler"] and len(raw["runs"]["sampler"]) == 1
    assert "| coherence sampler |" in capsys.readouterr().out
