"""The dashboard shows what a person on call needs (states, reasons, veto, incidents, the
sampler's own figures), respects NO_COLOR and non-terminals, redraws at most refresh_hz times a
second however often it is fed, and leaves the terminal clean."""
import io
import re
import time
from typing import Any, List
from unittest import mock

import pytest
from rich.console import Console

from coherence.config import Config, OutputConfig
from coherence.monitor import DETECTORS, Report
from coherence.sinks.dashboard import Dashboard, render, sparkline
from test_sinks_jsonl import report_at, scripted_reports

ESCAPE = "\x1b"
# SGR parameters that set a colour: 30-37/90-97 foreground, 40-47/100-107 background, 38/48 extended
COLOUR_SGR = re.compile(r"\x1b\[(?:[0-9;]*;)?(?:3[0-8]|4[0-8]|9[0-7]|10[0-7])(?:;[0-9;]*)?m")
SHOW_CURSOR, HIDE_CURSOR = "\x1b[?25h", "\x1b[?25l"


@pytest.fixture(scope="module")
def reports() -> List[Report]:
    return scripted_reports()


def text_of(report: Report, width: int = 120, **console: Any) -> str:
    c = Console(record=True, width=width, force_terminal=True, **console)
    c.print(render(report, host="web-1"))
    return c.export_text()


def panel_text(screen: str, index: int) -> str:
    """The words inside the index-th of three side-by-side panels, joined back into lines."""
    parts = []
    for line in screen.splitlines():
        cells = line.split("│")
        if len(cells) == 7:
            parts.append(cells[2 * index + 1].strip())
    return " ".join(" ".join(parts).split())


def ansi_of(report: Report, **console: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=120, **console).print(render(report, host="web-1"))
    return out.getvalue()


# ------------------------------------------------------------------------------- render()
def test_each_panel_shows_its_detector_state_value_and_reason(reports):
    r = report_at(reports, 25.0)          # all three CRITICAL: a cascade
    screen = text_of(r)
    for i, name in enumerate(DETECTORS):
        f = r.findings[name]
        assert f"{name}  {r.verdict.states[name]}" in screen
        assert " ".join(f.reason.split()) in panel_text(screen, i)
    assert "35.0 / 20 points of CPU % (std)" in panel_text(screen, 0)
    assert "900 / 512 MB/s" in panel_text(screen, 1)
    assert "3.00 / 1.3 calls out per request in" in panel_text(screen, 2)
    assert screen.splitlines()[0].startswith("coherence CRITICAL")
    assert "web-1" in screen.splitlines()[0] and "elapsed 0:00:25" in screen.splitlines()[0]


def test_the_veto_line_says_what_is_recommended_and_that_it_is_not_done(reports):
    seizing = report_at(reports, 6.0)
    assert [v["detector"] for v in seizing.verdict.veto] == ["seizure"]
    assert "Recommended (not done): SHED_LOAD — seizure WARNING" in text_of(seizing)
    storm = text_of(report_at(reports, 25.0))
    assert "CIRCUIT_BREAK — amplification CRITICAL" in storm
    healthy = report_at(reports, 3.0)
    assert not healthy.verdict.veto
    assert "No veto" in text_of(healthy)


def test_incidents_are_shown(reports):
    screen = text_of(report_at(reports, 25.0))
    assert "Incident: cascade — seizure, fever, amplification CRITICAL together" in screen
    assert "Incident: flapping — seizure changed state 4 times in 60 s" in screen
    assert "Incident" not in text_of(report_at(reports, 3.0))


def test_evidence_and_sparklines(reports):
    screen = text_of(report_at(reports, 25.0))
    assert "▁█▁█▁█▁█" in panel_text(screen, 0)          # the CPU buckets flipping 0/100 %
    assert "mean 40.0 % · std 35.0" in panel_text(screen, 0)
    assert "churn 900 MB/s · resident 4000 of 16000 MB" in panel_text(screen, 1)
    assert "ratio 3.00 · baseline 1.00 · in 100/s · out 300/s · pushed counters" in panel_text(screen, 2)
    leak = text_of(report_at(reports, 34.0))
    assert "exhausted in ~80 s" in panel_text(leak, 1)


def test_the_sampler_reports_on_itself_or_says_simulated(reports):
    screen = text_of(report_at(reports, 3.0))
    assert "Sampler: 999 of 1000 Hz · p99 lateness 114 µs · own CPU 3.03 % · 3 overruns" in screen
    # the scripted requests are pushed counts: the line names what amplification judges
    assert "Sources: cpu.cgroup2, memory.cgroup1, pressure.psi, requests.pushed" in screen
    for sampler in (None, {"simulated": True}):
        simulated = scripted_reports(until=1.0, sampler=sampler)[-1]
        assert "Sampler: simulated" in text_of(simulated)


def test_what_was_lost_on_the_way_in_is_shown_only_when_something_was():
    base = {"hz": 1000.0, "achieved_hz": 999.0, "ticks": 10, "overruns": 0, "tick_lateness_p50_us": 1.0,
            "tick_lateness_p99_us": 2.0, "cpu_percent": 1.0, "sources": {"cpu": "cpu.proc_stat"}, "notes": [],
            "reads": {"cpu.proc_stat": {"reads": 900, "errors": 0, "parse_misses": 0}}}
    quiet = text_of(scripted_reports(until=1.0, sampler=base)[-1])
    assert "parse misses" not in quiet and "StatsD" not in quiet
    lossy = {**base, "reads": {"cpu.proc_stat": {"reads": 900, "errors": 2, "parse_misses": 7}},
             "statsd": {"packets": 50, "accepted": 90, "ignored": 1, "malformed": 3, "dropped": 12}}
    screen = text_of(scripted_reports(until=1.0, sampler=lossy)[-1])
    assert "cpu.proc_stat: 7 parse misses, 2 read errors in 900 reads" in screen
    assert "StatsD: 90 accepted · 3 malformed · 12 dropped by the kernel · 1 ignored" in screen


def test_a_narrow_terminal_stacks_the_panels(reports):
    r = report_at(reports, 25.0)
    screen = text_of(r, width=80)
    assert max(len(line) for line in screen.splitlines()) <= 80
    flat = " ".join(screen.replace("│", " ").split())
    for name in DETECTORS:
        assert " ".join(r.findings[name].reason.split()) in flat


def test_warmup_with_no_values_yet_renders(reports):
    screen = text_of(reports[0])
    assert "seizure  WARMUP" in screen and "– / 1.1 calls out per request in" in screen


# ------------------------------------------------------------------------------- colour
def test_colours_by_state_on_a_terminal(reports):
    out = ansi_of(report_at(reports, 25.0), force_terminal=True, color_system="standard")
    assert COLOUR_SGR.search(out)       # the control for the two tests below


def test_no_color_means_no_colour_codes(reports):
    out = ansi_of(report_at(reports, 25.0), force_terminal=True, color_system="standard",
                  no_color=True)
    assert ESCAPE in out and not COLOUR_SGR.search(out)


def test_the_no_color_environment_variable_is_respected(reports, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    out = ansi_of(report_at(reports, 25.0), force_terminal=True, color_system="standard")
    assert not COLOUR_SGR.search(out)
    assert Dashboard(host="h").console.no_color       # the default console decides the same


def test_not_a_terminal_means_no_escape_codes_at_all(reports, monkeypatch):
    for var in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(var, raising=False)
    out = ansi_of(report_at(reports, 25.0))
    assert "seizure" in out and ESCAPE not in out


# ------------------------------------------------------------------------------- Live
def terminal() -> Console:
    return Console(file=io.StringIO(), width=120, force_terminal=True, color_system="standard")


def test_redraws_are_capped_at_refresh_hz_however_fast_updates_come(reports):
    with Dashboard(terminal(), refresh_hz=10.0, host="h") as dash:
        with mock.patch.object(dash._live, "refresh", wraps=dash._live.refresh) as refresh:
            start = time.monotonic()
            for i in range(1000):
                dash.emit(reports[i % len(reports)])
            elapsed = time.monotonic() - start
            assert 1 <= refresh.call_count <= 10.0 * elapsed + 2


def test_redraw_cap_on_a_scripted_clock(reports):
    now = [0.0]
    with Dashboard(terminal(), refresh_hz=10.0, host="h", clock=lambda: now[0]) as dash:
        with mock.patch.object(dash._live, "refresh", wraps=dash._live.refresh) as refresh:
            drawn = []
            for i in range(1000):          # 1000 updates over one second
                now[0] = i / 1000
                drawn.append(dash.emit(reports[i % len(reports)]))
            assert refresh.call_count == sum(drawn) == 10
            assert drawn[0] and not any(drawn[1:100])


def test_leaving_draws_the_last_report_and_restores_the_cursor(reports):
    console = terminal()
    now = [0.0]
    with pytest.raises(KeyboardInterrupt):
        with Dashboard(console, refresh_hz=10.0, host="h", clock=lambda: now[0]) as dash:
            assert dash.emit(report_at(reports, 3.0))
            now[0] = 0.01
            assert not dash.emit(report_at(reports, 25.0))      # too soon to redraw
            raise KeyboardInterrupt                               # Ctrl-C
    out = console.file.getvalue()                                 # type: ignore[attr-defined]
    assert HIDE_CURSOR in out and out.rstrip("\n").endswith(SHOW_CURSOR)
    last = re.sub(r"\x1b\[[0-9;]*m", "", out[out.rindex("coherence "):])
    assert "coherence CRITICAL" in last and "Incident: cascade" in last


def test_on_a_non_terminal_it_prints_the_last_frame_once(reports):
    out = io.StringIO()
    with Dashboard(Console(file=out, width=120), host="h") as dash:
        for r in reports[:20]:
            dash.emit(r)
    text = out.getvalue()
    assert ESCAPE not in text and text.count("coherence ") == 1


def test_fever_and_amplification_sparklines_come_from_the_dashboards_history(reports):
    out = io.StringIO()
    with Dashboard(Console(file=out, width=120), host="h") as dash:
        for r in reports:
            if 18.0 <= r.elapsed_s <= 26.0:
                dash.emit(r)
    storm = panel_text(out.getvalue(), 2)
    assert re.search("[▁▂▃]{4,}[▇█]{4,}", storm)          # ratio 1, then the storm at 3


def test_update_outside_the_with_block_is_an_error(reports):
    with pytest.raises(RuntimeError, match="with Dashboard"):
        Dashboard(terminal(), host="h").emit(reports[0])


@pytest.mark.parametrize("bad", [0, -10.0, float("nan"), float("inf")])
def test_a_bad_refresh_rate_is_a_value_error(bad):
    with pytest.raises(ValueError, match="refresh_hz"):
        Dashboard(terminal(), refresh_hz=bad)


# ------------------------------------------------------------------------------- sparkline
def test_sparkline_scales_and_leaves_gaps():
    assert sparkline([0, 50, 100], 0, 100) == "▁▅█"
    assert sparkline([-5, 150], 0, 100) == "▁█"              # clipped to the bounds
    assert sparkline([1.0, float("nan"), None, 2.0]) == "▅  █"  # from 0 to the peak
    assert sparkline([3.0, 3.0]) == "██" and sparkline([0.0, 0.0]) == "▁▁"
    assert sparkline([]) == "" and sparkline([float("nan")]) == " "


def test_from_config_takes_the_refresh_rate():
    dash = Dashboard.from_config(Config(output=OutputConfig(refresh_hz=4.0)), terminal())
    assert dash.refresh_hz == 4.0


def test_the_evidence_line_is_the_findings_own(reports):
    r = report_at(reports, 25.0)
    screen = text_of(r)
    for i, name in enumerate(DETECTORS):
        evidence = r.findings[name].evidence
        assert evidence is not None
        assert " ".join(evidence.line().split()) in panel_text(screen, i)
