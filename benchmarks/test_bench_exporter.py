"""Smoke test of benchmarks/run_exporter.py: its machinery (start the sentinel with its exporter
in a child, scrape it as Prometheus does over a kept connection or on a new one each time,
measure, stop, report) runs for a second or two per case, so CI keeps it working.

No timing is asserted: the figures of a short run on a shared VM mean nothing. Run the runner
itself for the numbers: python benchmarks/run_exporter.py
"""
import json

import pytest

import run_exporter as rx


@pytest.fixture(scope="module")
def result():
    return rx.run(duration=2.5, repeats=1, warmup=1.0)


@pytest.mark.parametrize("case", rx.CASES)
def test_each_case_measures_and_reports(result, case):
    (rep,) = result["runs"][case]
    assert "error" not in rep, rep.get("error")
    assert rep["wall_s"] > 0 and rep["process_cpu_s"] > 0 and rep["sampler_cpu_s"] > 0
    assert sum(n for _, n in rep["lateness_hist"]) > 0 and rep["hz"] == 1000.0
    assert rep["bad_requests"] == {}
    fig = rx.figures(rep)
    assert fig["p99_us"] >= fig["p50_us"] >= 1 and fig["ticks_taken_pct"] > 0
    if case == "idle":
        assert rep["scrapes_served"] == rep["scrapes_sent"] == 0
        assert rep["http_threads_cpu_s"] == 0
    else:
        # every scrape sent was served and measured, the format as asked
        assert rep["scrapes_served"] == rep["scrapes_sent"] >= 2
        assert rep["http_threads_cpu_s"] > 0 and rep["exporter_cpu_s"] > 0
        assert rep["exposition_bytes"] > rep["wire_bytes"] > 0          # gzip was accepted
        if case == "scraped new connection":
            assert rep["connections_opened"] == rep["scrapes_sent"]
        else:                                   # one connection, kept alive throughout
            assert rep["connections_opened"] == 1 and rep["reconnections"] == 0
        assert rx.figures(rep)["reconnections"] == 0


def test_report_has_every_row_and_target(result):
    text = rx.report_text(result)
    assert text.startswith("Machine: ")
    for label in rx.LABELS.values():
        assert f"| {label} |" in text
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(verdicts) == 2
    assert all(line.split(":")[0][2:] in ("PASS", "MISS", "SKIP") for line in verdicts)
    json.dumps(result, default=str)


def test_main_writes_json_and_exits_0(tmp_path, capsys):
    out = tmp_path / "raw.json"
    assert rx.main(["--duration", "1.5", "--warmup", "0.5", "--repeats", "1", "--cases", "idle",
                    "--json", str(out)]) == 0
    raw = json.loads(out.read_text())
    assert raw["config"]["cases"] == ["idle"] and len(raw["runs"]["idle"]) == 1
    assert "| idle (listening, not scraped) |" in capsys.readouterr().out
