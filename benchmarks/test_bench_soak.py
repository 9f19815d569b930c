"""The soak in short, for CI: half an hour of simulated host time through the detectors and the
verdict engine, and 30 s of the live sentinel at --hz 1000 (benchmarks/run_soak.py, about 45 s
in all). Nothing may grow beyond noise after the warm-up: the heap and resident memory by their
least-squares slopes against the bounds below, file descriptors and threads not at all.

The bounds are set from what the full soak and these short runs measured on this VM (README,
"Soak"): a few times the largest slope seen, far under what a leak of one report a step would
give. No timing is asserted: tick lateness is the full runner's to report, not a test's.
"""
import pytest

import run_soak as rs

MIB = 1 << 20
# The simulator judges 4 reports a simulated second, 14 400 a simulated hour: a leak of 70 bytes
# a report is 1 MiB an hour. Measured after two stories of warm-up: the heap +0.15 MiB per
# simulated hour (numpy's cache of small buffers filling; flat from the sixth story on).
SIM_HOURS = 0.5
SIM_WARMUP_S = 700.0
SIM_HEAP_MAX_PER_H = 1 * MIB
SIM_RSS_MAX_PER_H = 4 * MIB
# Live, a 20 s window after 10 s: the heap measured -1.1 to +2.7 MiB/h (its warm-up still
# settling), resident memory +11 to +17 MiB/h. A Report kept each step would be ~70 MiB/h.
LIVE_S = 30.0
LIVE_WARMUP_S = 10.0
LIVE_HEAP_MAX_PER_H = 16 * MIB
LIVE_RSS_MAX_PER_H = 64 * MIB


def flat(trends, heap_max, rss_max):
    # resident memory less tracemalloc's own tables: they double in one 2 MiB step when the
    # blocks traced cross a power of two, which a 0.3 h window reads as +7 MiB/h (CI, once)
    heap, rss, fds, threads = (trends[k] for k in ("heap_bytes", "rss_untraced_bytes", "fds",
                                                   "threads"))
    assert heap["points"] >= 10, heap
    assert heap["slope_per_h"] < heap_max, f"heap grows {heap['slope_per_h'] / MIB:.2f} MiB/h: {heap}"
    assert rss["slope_per_h"] < rss_max, f"resident memory grows {rss['slope_per_h'] / MIB:.2f} MiB/h: {rss}"
    # a file read by another thread at the instant of a sample is one more, once
    assert fds["max_after"] - fds["min_after"] <= 1, fds
    assert threads["max_after"] == threads["min_after"], threads


@pytest.fixture(scope="module")
def simulated():
    return rs.sim(SIM_HOURS, every_s=50.0, warmup_s=SIM_WARMUP_S, timeout_s=120.0)


@pytest.fixture(scope="module")
def live():
    return rs.live(1000.0, LIVE_S, every_s=1.0, warmup_s=LIVE_WARMUP_S)


def test_half_a_simulated_hour_grows_nothing(simulated):
    assert simulated["done"]["simulated_s"] >= SIM_HOURS * 3600
    assert simulated["done"]["state_changes"] > 20          # the story's incidents, every one
    flat(simulated["trends"], SIM_HEAP_MAX_PER_H, SIM_RSS_MAX_PER_H)


def test_the_live_sentinel_at_1000_hz_grows_nothing(live):
    assert live["samples"][-1]["ticks"] > 0.5 * LIVE_S * 1000      # it ran: half its ticks at least
    flat(live["trends"], LIVE_HEAP_MAX_PER_H, LIVE_RSS_MAX_PER_H)
    reachable = live["trends"]["heap_live_bytes"]
    assert reachable["slope_per_h"] < LIVE_HEAP_MAX_PER_H, reachable


def test_the_report_has_every_figure_and_both_minutes(simulated, live):
    text = rs.report_text({"machine": rs.machine(), "sim": simulated, "live": live})
    for key, label, _unit, _scale in rs.FIGURES:
        # the heap after a full collection is the live case's only (its child collects)
        assert text.count(f"| {label} |") == (1 if key == "heap_live_bytes" else 2), label
    assert "| first " in text and "| last " in text
    for name in ("first", "last"):
        assert live["lateness"][name]["ticks"] > 0


def test_a_child_that_dies_is_a_case_error(tmp_path):
    import sys
    with pytest.raises(rs.CaseError, match="exited"):
        rs.run_child([sys.executable, "-c", "import sys; sys.exit('boom')"], timeout_s=10)
