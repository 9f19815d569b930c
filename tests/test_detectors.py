"""Each detector on scripted signals: what fires, what must not, and the evidence it gives.
Signals go through the real accumulators (coherence.signals), as the sampler feeds them."""

import dataclasses
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coherence._sampler import Slot
from coherence.config import Config
from coherence.detectors import (
    Amplification,
    AmplificationEvidence,
    E,
    Fever,
    FeverEvidence,
    Finding,
    Seizure,
    SeizureEvidence,
)
from coherence.signals import FORECAST_REACH, Signals, forecast_spans, trend_over
from coherence.snapshot import RuntimeProcess
from coherence.states import Condition, State, Veto

CLEAR, FIRING, UNAVAILABLE, WARMUP = Condition.CLEAR, Condition.FIRING, Condition.UNAVAILABLE, Condition.WARMUP

CFG = Config().validate()
GB = 1 << 30


def signals(pushed=False):
    return Signals(resolution_s=0.1, window_s=10.0, slow_hz=20.0, ratio_window_s=5.0,
                   trend_window_s=10.0, ncpu=2.0, pushed=lambda: pushed)


def evidence(f: Finding[E]) -> E:
    assert f.evidence is not None
    return f.evidence


def cpu_snapshot(buckets):
    s = signals()
    for u in buckets:
        s.cpu_buckets.push(u)
        s.cpu_history.push(u)
    return s.snapshot()


# ------------------------------------------------------------------ seizure
def test_seizure_fires_on_idle_busy_flips_every_second():
    flips = [90.0 if (i // 10) % 2 else 10.0 for i in range(100)]    # 1 s at 10 %, 1 s at 90 %
    f = Seizure(CFG.seizure).evaluate(cpu_snapshot(flips), 0.0)
    assert f.condition == FIRING and f.veto == Veto.SHED_LOAD == "SHED_LOAD"
    assert f.value == pytest.approx(40.0, abs=0.5) and evidence(f).mean_pct == pytest.approx(50.0)
    assert "shed load" in f.reason and "±40" in f.reason


@pytest.mark.parametrize("level", [0.0, 35.0, 100.0])
def test_steady_load_of_any_level_is_not_a_seizure(level):
    rng = np.random.default_rng(1)
    f = Seizure(CFG.seizure).evaluate(cpu_snapshot(level + rng.normal(0, 2, 100).clip(-level, 100 - level)), 0.0)
    assert f.condition == CLEAR


def test_switching_every_10_ms_is_steady_at_100_ms_buckets():
    # 10 ms on / 10 ms off averages to 50 % in every 100 ms bucket: noise, not a seizure
    f = Seizure(CFG.seizure).evaluate(cpu_snapshot([50.0 + (i % 3 - 1) for i in range(100)]), 0.0)
    assert f.condition == CLEAR and f.value < 2


def test_busy_and_swinging_is_load_not_seizure():
    f = Seizure(CFG.seizure).evaluate(cpu_snapshot([100.0 if i % 10 else 20.0 for i in range(100)]), 0.0)
    assert f.condition == CLEAR and "load, not a seizure" in f.reason


def test_seizure_warms_up_on_too_few_buckets():
    assert Seizure(CFG.seizure).evaluate(cpu_snapshot([10.0, 90.0]), 0.0).condition == WARMUP


# ------------------------------------------------------------------ fever
def memory_snapshot(churn_mb_s, resident_fn, total=16 * GB, seconds=12.0):
    s = signals()
    s.gauges.update({Slot.MEM_TOTAL_BYTES: total})
    faults = 0.0
    for i in range(int(seconds * 20)):
        t = i / 20
        faults += churn_mb_s * 1e6 / 4096 / 20
        s.rates[Slot.MINOR_FAULTS].update(t, faults)
        resident = resident_fn(t)
        s.resident_history.push(resident)
        s.gauges.update({Slot.RESIDENT_BYTES: resident}, t)
    return s.snapshot()


def test_fever_fires_on_high_churn_with_flat_resident_memory():
    f = Fever(CFG.fever).evaluate(memory_snapshot(2000.0, lambda t: 4 * GB + (t % 1) * 64e6), 0.0)
    assert f.condition == FIRING and f.veto == Veto.THROTTLE and f.max_state == State.CRITICAL
    assert f.value == pytest.approx(2000.0, rel=0.05) and "throttle" in f.reason


def test_holding_a_lot_of_memory_is_not_a_fever():
    f = Fever(CFG.fever).evaluate(memory_snapshot(5.0, lambda t: 15 * GB), 0.0)
    assert f.condition == CLEAR


def test_steady_growth_is_a_forecast_that_only_warns():
    # +100 MB/s with 8 GB free: exhausted in ~80 s, far inside the 4 h horizon
    f = Fever(CFG.fever).evaluate(memory_snapshot(50.0, lambda t: 8 * GB + t * 100e6), 0.0)
    assert f.condition == FIRING and f.max_state == State.WARNING
    assert evidence(f).exhaustion_eta_s == pytest.approx((16 * GB - 8 * GB - 11.95 * 100e6) / 100e6, rel=0.1)
    assert "exhausted in about" in f.reason


def run_memory(resident_fn, seconds, total=16 * GB, every_s=0.25, on_report=None, s=None):
    """Resident memory at 20 Hz for `seconds`, the monitor's snapshot every `every_s`: the fever
    finding at each report, or `on_report(t, finding)`'s."""
    s = s or signals()
    s.gauges.update({Slot.MEM_TOTAL_BYTES: total})
    fever, out = Fever(CFG.fever), []
    per_report = max(1, int(round(every_s * 20)))
    for i in range(int(seconds * 20)):
        t = i / 20
        s.rates[Slot.MINOR_FAULTS].update(t, t * 1000.0)
        resident = resident_fn(t)
        s.resident_history.push(resident)
        s.gauges.update({Slot.RESIDENT_BYTES: resident}, t)
        if (i + 1) % per_report == 0:
            f = fever.evaluate(s.snapshot(), t)
            out.append((t, f) if on_report is None else on_report(t, f))
    return out


def test_a_step_is_not_a_forecast():
    # a process taking 1 GB at once: the 10 s trend stands far out of the noise and forecasts
    # exhaustion in under 2 min, but the growth is all in one half of the span: not steady
    s = signals()
    step = run_memory(lambda t: 4 * GB + (GB if t >= 6.0 else 0.0), 12.0, s=s)
    (trend,) = s.snapshot().memory.growth_trends
    assert trend.t > 3 and (16 - 5) * GB / trend.bytes_per_s < FORECAST_REACH * trend.span_s
    assert min(trend.early_bytes_per_s, trend.late_bytes_per_s) < trend.bytes_per_s / 3
    assert {f.condition for _, f in step} <= {WARMUP, CLEAR}


def test_ten_seconds_of_growth_is_not_a_forecast_of_hours():
    # what a live seizure run recorded on this shared host: the working set wandered up 4 MB/s
    # for 10 s. The old rule (the 10 s trend, t > 3) read it as exhaustion in 1.5 h; a 1.5 h
    # forecast needs 7.5 min of growth
    wobble = run_memory(lambda t: 1 * GB + 4e6 * min(t, 20.0), 30.0, total=24 * GB)
    assert {f.condition for _, f in wobble} <= {WARMUP, CLEAR}
    assert all(evidence(f).exhaustion_eta_s is None for _, f in wobble)


def test_slow_steady_growth_is_forecast_once_its_span_is_long_enough():
    # 1 MB/s with 12 GB free (noise of 2 MB): exhaustion in ~3.6 h, inside the 4 h horizon; it
    # needs 1/12 of that, 18 min, of growth: the 20 min span, once the history covers it
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 2e6, 1300 * 20 + 1)
    free = 12 * GB

    def resident(t):
        return 16 * GB - free + 1e6 * t + noise[int(round(t * 20))]

    states = run_memory(resident, 1300.0, on_report=lambda t, f: (t, f.condition, f))
    before = [c for t, c, _ in states if t < 1199.0]
    after = [(c, f) for t, c, f in states if t >= 1201.0]
    assert set(before) <= {WARMUP, CLEAR}
    assert after and all(c == FIRING for c, _ in after)
    f = after[-1][1]
    assert f.unit == "MB/s growth" and f.max_state == State.WARNING
    assert f.value == pytest.approx(1.0 * 1e6 / 1e6, rel=0.05)
    assert "steadily over the last 20 min" in f.reason
    eta = evidence(f).exhaustion_eta_s
    assert eta == pytest.approx((free - 1e6 * 1300) / 1e6, rel=0.05)


def test_a_fast_leak_is_forecast_within_seconds():
    # 150 MB/s with 10 GB free from t = 5 s: exhaustion in ~70 s, the 10 s span is enough once
    # the growth shows in both of its halves
    start = 5.0
    leak = run_memory(lambda t: 6 * GB + 150e6 * max(0.0, t - start), 20.0)
    first = next(t for t, f in leak if f.condition == FIRING)
    assert start + 5.0 < first <= start + 9.0
    assert all(f.condition == FIRING for t, f in leak if t >= first)


@pytest.mark.parametrize("seconds, eta_s, fires", [
    (12.0, 115.0, True), (12.0, 125.0, False),      # the 10 s span reaches 120 s
    (22.0, 235.0, True), (22.0, 245.0, False),      # the 20 s span, once covered, 240 s
])
def test_a_forecast_reaches_no_further_than_twelve_times_its_span(seconds, eta_s, fires):
    # perfectly straight growth at 50 MB/s, exhaustion eta_s away at the end
    out = run_memory(lambda t: 16 * GB - 50e6 * (eta_s + seconds - t), seconds)
    assert (out[-1][1].condition == FIRING) is fires
    if fires:
        assert evidence(out[-1][1]).exhaustion_eta_s == pytest.approx(eta_s + 0.05)  # last read: -0.05 s


def test_forecast_spans_double_from_the_window_to_the_horizon_over_the_reach():
    assert forecast_spans(10.0, 4 * 3600 / FORECAST_REACH) == (10, 20, 40, 80, 160, 320, 640, 1200)
    assert forecast_spans(10.0, 5.0) == (10.0,)
    s = Signals(slow_hz=20.0, trend_window_s=10.0, forecast_span_s=24 * 3600 / FORECAST_REACH)
    assert s.coarse_interval_s == 6.0 and s.resident_coarse.capacity == 1200


def reference_fit(x, y):
    """Slope and t by the textbook's two passes (numpy's polyfit for the slope)."""
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    se = math.sqrt(float(residual @ residual) / (len(x) - 2) / float(((x - x.mean()) ** 2).sum()))
    return slope, slope / se if se else math.inf


@given(st.lists(st.floats(-1e9, 1e9), min_size=6, max_size=300), st.floats(0.01, 10.0),
       st.sets(st.integers(0, 299), max_size=20))
@settings(max_examples=300, deadline=None)
def test_trend_over_is_least_squares_over_the_span_and_each_half(values, interval, gaps):
    y = np.array(values)
    y[[g for g in gaps if g < len(y)]] = np.nan        # gaps: fitted around, at their times
    trend = trend_over(y, interval, 1.0)
    t = np.arange(len(y)) * interval
    ok = np.isfinite(y)
    half = np.arange(len(y)) < len(y) // 2
    scale = 1e-6 * (np.ptp(y[ok]) + 1) / interval if ok.any() else 0
    for got, part in ((trend.bytes_per_s, ok), (trend.early_bytes_per_s, ok & half),
                      (trend.late_bytes_per_s, ok & ~half)):
        if part.sum() < 3:
            assert math.isnan(got)
            continue
        want = reference_fit(t[part], y[part])[0]
        assert got == pytest.approx(want, rel=1e-6, abs=scale)
    if ok.sum() >= 3 and np.ptp(y[ok]) > 0:
        want_t = reference_fit(t[ok], y[ok])[1]
        if abs(want_t) < 1e6:       # a nearly perfect line: either is a huge t
            assert trend.t == pytest.approx(want_t, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("every_s", [0.05, 0.25, 1.0, 7.0, 29.0])
def test_the_coarse_points_are_the_means_of_whole_seconds_whenever_the_monitor_steps(every_s):
    # a second may be folded over several snapshots (every 0.05 or 0.25 s) or many seconds at
    # one (every 29 s): the same means either way
    s = signals()
    series = np.arange(60 * 20, dtype=np.float64) ** 1.5
    it = iter(series)
    run_memory(lambda t: next(it), 60.0, every_s=every_s, s=s)
    coarse = s.resident_coarse.to_array()
    want = series.reshape(-1, 20).mean(axis=1)
    last = int(60 // every_s * every_s) if every_s >= 1 else 60    # the last snapshot's second
    assert len(coarse) == last
    np.testing.assert_allclose(coarse, want[:last], rtol=1e-13)


@pytest.mark.parametrize("every_s, seconds", [
    (13.0, list(range(195))),                                  # nothing lost: every whole second
    (50.0, [k for step in (50, 100, 150, 200) for k in range(step - 30, step)]),
    (77.0, list(range(47, 77)) + list(range(124, 154))),      # 77 s after 154: 30 s kept of each
])
def test_seconds_the_history_dropped_are_gaps_in_the_coarse_ring_not_closed_up(every_s, seconds):
    # the history holds 30 s: a monitor that steps less often loses the seconds before those;
    # each lost second is a NaN in its place, so that the ring keeps one point a second
    s = signals()
    series = np.arange(200 * 20, dtype=np.float64)
    it = iter(series)
    run_memory(lambda t: next(it), 200.0, every_s=every_s, s=s)
    coarse = s.resident_coarse.to_array()
    assert len(coarse) == seconds[-1] + 1
    kept = np.flatnonzero(np.isfinite(coarse))
    assert kept.tolist() == seconds
    assert ((coarse[kept] - 9.5) / 20).tolist() == seconds   # second k's mean is 20 k + 9.5


def test_a_trend_across_a_gap_keeps_its_rate():
    # 1 MB/s for 200 s, the monitor stepping every 77 s: the coarse ring keeps 60 of the 154 s
    # it covers, with NaN between; the 80 s span fitted around the gap still reads 1 MB/s
    s = signals()
    run_memory(lambda t: 4 * GB + 1e6 * t, 200.0, every_s=77.0, s=s)
    coarse = s.resident_coarse.to_array()
    trend = trend_over(coarse[-80:], s.coarse_interval_s, 80.0)
    assert np.isnan(coarse[-80:]).sum() == 47
    assert trend.bytes_per_s == pytest.approx(1e6, rel=1e-9)
    assert trend.early_bytes_per_s == pytest.approx(1e6, rel=1e-9)


def test_a_horizon_whose_blocks_are_longer_than_the_history_still_fills_the_coarse_ring():
    # 200 h: a coarse point every 50 s, 1 000 points of the 20 Hz history (which holds 600),
    # folded over many snapshots
    s = Signals(slow_hz=20.0, trend_window_s=10.0, forecast_span_s=200 * 3600 / FORECAST_REACH)
    assert s.coarse_interval_s == 50.0 and s.resident_history.capacity < 1000
    run_memory(lambda t: 4 * GB + 1e6 * t, 1000.0, s=s)
    coarse = s.resident_coarse.to_array()
    assert len(coarse) == 20 and np.isfinite(coarse).all()
    np.testing.assert_allclose(np.diff(coarse), 50e6, rtol=1e-9)


def test_the_horizon_sets_the_longest_span():
    config = dataclasses.replace(CFG, fever=dataclasses.replace(CFG.fever, horizon_h=24.0))
    s = Signals.from_config(config, ncpu=2.0)
    assert s.spans[-1] == 24 * 3600 / FORECAST_REACH == 7200.0
    assert s.coarse_interval_s == 6.0 and s.resident_coarse.capacity == 1200


def test_churn_while_memory_moves_is_not_a_fever():
    # resident falling 500 MB/s (a big free) under heavy churn: not churn over flat memory
    f = Fever(CFG.fever).evaluate(memory_snapshot(2000.0, lambda t: 12 * GB - t * 500e6), 0.0)
    assert f.condition == CLEAR and "not churn over flat memory" in f.reason


def test_fever_unavailable_without_a_memory_source_and_warming_up_before_its_first_read():
    s = signals()
    assert Fever(CFG.fever).evaluate(s.snapshot(), 0.0).condition == WARMUP
    s.available = frozenset({"cpu"})
    assert Fever(CFG.fever).evaluate(s.snapshot(), 0.0).condition == UNAVAILABLE


# ------------------------------------------------------------------ amplification
def request_snapshot(ratio, rate=200.0, seconds=6.0, pushed=True):
    s = signals(pushed=pushed)
    ing = eg = 0.0
    for i in range(int(seconds * 20)):
        t = i / 20
        di, de = rate / 20, rate / 20 * ratio
        ing, eg = ing + di, eg + de
        (s.pushed_ratio if pushed else s.proxy_ratio).update(de, di)
        s.rates[Slot.INGRESS if pushed else Slot.TCP_PASSIVE].update(t, ing)
        s.rates[Slot.EGRESS if pushed else Slot.TCP_ACTIVE].update(t, eg)
    return s.snapshot()


def test_the_baseline_is_seeded_from_a_full_window_of_traffic():
    a = Amplification(CFG.amplification)
    assert a.evaluate(request_snapshot(2.0), 0.0).condition == WARMUP      # traffic just began
    assert a.evaluate(request_snapshot(2.0), 4.9).condition == WARMUP
    assert a.evaluate(request_snapshot(3.0), 5.0).condition == CLEAR       # 5 s: seeded at 3
    assert a.baseline == 3.0
    b = Amplification(CFG.amplification)
    b.evaluate(request_snapshot(2.0), 0.0)
    b.evaluate(request_snapshot(2.0, rate=0.1), 3.0)                       # a gap restarts it
    assert b.evaluate(request_snapshot(2.0), 6.0).condition == WARMUP


def test_retry_storm_fires_against_a_learned_baseline():
    a = Amplification(CFG.amplification)
    a.learn(1.0, 0.0)
    f = a.evaluate(request_snapshot(2.2), 1.0)
    assert f.condition == FIRING and f.value == pytest.approx(2.2) and evidence(f).baseline == 1.0
    assert "retry storm" in f.reason and f.veto == Veto.CAP_RETRIES


def test_a_learned_fan_out_of_three_is_normal():
    a = Amplification(CFG.amplification)
    for t in range(10):
        f = a.evaluate(request_snapshot(3.0), float(t))
        assert f.condition == (WARMUP if t < 5 else CLEAR)
        if f.condition == CLEAR:
            a.learn(f.value, float(t))
    assert a.baseline == pytest.approx(3.0)
    assert a.evaluate(request_snapshot(3.3), 11.0).condition == CLEAR
    assert a.evaluate(request_snapshot(6.0), 12.0).condition == FIRING


def test_below_the_ratio_limit_never_fires_even_above_baseline():
    a = Amplification(CFG.amplification)
    a.learn(0.5, 0.0)
    assert a.evaluate(request_snapshot(1.05), 1.0).condition == CLEAR


def test_too_little_traffic_is_ignored():
    a = Amplification(CFG.amplification)
    a.learn(1.0, 0.0)
    f = a.evaluate(request_snapshot(5.0, rate=0.5), 1.0)
    assert f.condition == CLEAR and "too little traffic" in f.reason


def test_the_tcp_proxy_is_labelled():
    a = Amplification(CFG.amplification)
    a.learn(1.0, 0.0)
    f = a.evaluate(request_snapshot(1.0, pushed=False), 0.0)
    assert evidence(f).source == "tcp_proxy" and "proxy" in f.reason


@pytest.mark.parametrize("shape, expected", [
    ([0.0] * 50 + [100.0] * 50, 1),                     # a load starts: a step
    ([0.0] * 30 + [100.0] * 30 + [0.0] * 40, 2),        # a batch job: a pulse
    ([0.0, 100.0] * 5, 9),
    ([0.0] * 80 + [90.0] * 10 + [10.0] * 10, 2),        # idle, then one flip: not yet three
    ([3.0] * 100, 0),
])
def test_swings_count_moves_between_low_and_high(shape, expected):
    from coherence.detectors import swings
    assert swings(shape) == expected


@settings(max_examples=400, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, width=64), min_size=1,
                max_size=300),
       st.sampled_from([0.05, 0.95, 0.0, 0.5, 1.0, 0.33]))
def test_swings_percentile_is_numpys_to_the_last_bit(values, q):
    # swings takes its 5th and 95th percentiles by sort, not np.percentile (which leaves blocks
    # in numpy's caches): same floats, so that no verdict moves
    from coherence.detectors import _percentile
    x = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        want = float(np.percentile(x, 100 * q))
        got = _percentile(x, q)
    assert got == want or (math.isnan(got) and math.isnan(want)), (got, want)


@pytest.mark.parametrize("shape", [
    [0.0] * 50 + [100.0] * 50,                          # idle, then every CPU busy
    [5.0] * 40 + [60.0] * 60,                           # a deploy raises the level
    [0.0] * 30 + [70.0] * 30 + [0.0] * 40,              # a 3 s batch job
])
def test_a_step_or_a_pulse_is_not_a_seizure(shape):
    f = Seizure(CFG.seizure).evaluate(cpu_snapshot(shape), 0.0)
    assert f.condition == CLEAR and "not a seizure" in f.reason


def test_a_seizure_starting_from_idle_fires_after_three_swings():
    # idle for 8 s, then flipping every second: fires once three swings are in the window
    fired_at = None
    for k in range(1, 60):
        shape = [0.0] * 80 + [90.0 if (i // 10) % 2 == 0 else 10.0 for i in range(k)]
        if Seizure(CFG.seizure).evaluate(cpu_snapshot(shape[-100:]), 0.0).condition == FIRING:
            fired_at = k / 10
            break
    assert fired_at is not None and fired_at <= 3.0


# ------------------------------------------------------------------ evidence
def test_evidence_is_typed_per_detector_with_the_documented_keys():
    flips = [90.0 if (i // 10) % 2 else 10.0 for i in range(100)]
    seizure = evidence(Seizure(CFG.seizure).evaluate(cpu_snapshot(flips), 0.0))
    assert isinstance(seizure, SeizureEvidence)
    assert list(seizure.as_dict()) == ["mean_pct", "std_pct", "buckets", "swings", "resolution_s",
                                       "window_s", "pressure_cpu_some_pct"]
    fever = evidence(Fever(CFG.fever).evaluate(memory_snapshot(5.0, lambda t: 15 * GB), 0.0))
    assert isinstance(fever, FeverEvidence)
    # the forecast's key appears only once there is a forecast
    assert list(fever.as_dict()) == ["alloc_rate_mb_s", "minor_faults_per_s", "pgalloc_mb_s",
                                     "resident_mb", "total_mb", "resident_growth_mb_s",
                                     "pressure_memory_some_pct"]
    growing = evidence(Fever(CFG.fever).evaluate(memory_snapshot(50.0, lambda t: 8 * GB + t * 100e6), 0.0))
    assert list(growing.as_dict())[-1] == "exhaustion_eta_s"
    a = Amplification(CFG.amplification)
    amp = evidence(a.evaluate(request_snapshot(2.0), 0.0))
    assert isinstance(amp, AmplificationEvidence) and amp.as_dict()["baseline"] is None
    assert list(amp.as_dict()) == ["ratio", "baseline", "ingress_per_s", "egress_per_s", "source",
                                   "window_s", "pressure_cpu_some_pct"]


def test_evidence_reads_in_one_line():
    flips = [90.0 if (i // 10) % 2 else 10.0 for i in range(100)]
    line = evidence(Seizure(CFG.seizure).evaluate(cpu_snapshot(flips), 0.0)).line()
    assert line.startswith("mean 50.0 % · std 40.") and "100 buckets" in line
    growing = evidence(Fever(CFG.fever).evaluate(memory_snapshot(50.0, lambda t: 8 * GB + t * 100e6), 0.0))
    assert "exhausted in ~" in growing.line() and growing.line().startswith("churn ")
    a = Amplification(CFG.amplification)
    a.learn(1.0, 0.0)
    proxy = evidence(a.evaluate(request_snapshot(1.0, pushed=False), 0.0))
    assert proxy.line().endswith("TCP opens (a proxy)") and "baseline 1.00" in proxy.line()


def test_a_lost_cpu_source_has_no_evidence():
    s = signals()
    s.available = frozenset({"memory"})
    f = Seizure(CFG.seizure).evaluate(s.snapshot(), 0.0)
    assert f.condition == UNAVAILABLE and f.evidence is None


def test_amplification_learns_only_from_an_ok_verdict_with_traffic():
    a = Amplification(CFG.amplification)
    a.learn(1.0, 0.0)
    storm = a.evaluate(request_snapshot(3.0), 1.0)
    a.learn_from(storm, State.WARNING, 1.0)
    assert a.baseline == 1.0                           # never from the storm
    quiet = a.evaluate(request_snapshot(3.0, rate=0.5), 2.0)
    a.learn_from(quiet, State.OK, 2.0)
    assert a.baseline == 1.0                           # too little traffic to learn from
    a.learn_from(storm, State.OK, 200.0)
    assert 1.0 < a.baseline <= 3.0


# ------------------------------------------------------------------ fever from runtime counters
def runtime_process(gc_share, alloc_mb_s, name="jvm 42", collections_per_s=50.0, available=True):
    return RuntimeProcess(
        name=name, runtime="jvm", pid=42, available=available, lost=not available, reason="read",
        recognised=("gc_seconds_total", "gc_collections_total", "alloc_bytes_total"),
        gc_share=gc_share, collections_per_s=collections_per_s, alloc_bytes_per_s=alloc_mb_s * 1e6,
        requests_in_per_s=math.nan, requests_out_per_s=math.nan, ratio=math.nan,
        ingress_in_window=0.0)


def with_runtime(snap, *processes):
    return dataclasses.replace(snap, runtime=processes)


FLAT = (200.0, lambda t: 4 * GB)       # kernel view of a JVM: little churn, flat resident memory


def test_a_jvm_in_a_gc_death_spiral_is_a_fever_whatever_the_page_faults_say():
    # the kernel sees 200 MB/s of faults over flat memory: under the churn limit
    f = Fever(CFG.fever).evaluate(with_runtime(memory_snapshot(*FLAT), runtime_process(0.70, 6000.0)), 0.0)
    assert f.condition == Condition.FIRING and f.max_state == State.CRITICAL
    assert f.unit == "pct_gc_time" and f.value == pytest.approx(70.0) and f.limit == 25.0
    assert "jvm 42 spends 70 % of its time in garbage collection" in f.reason
    e = f.evidence
    assert e is not None and e.runtime_process == "jvm 42" and e.runtime_pid == 42
    assert e.gc_time_pct == pytest.approx(70.0) and e.runtime_alloc_mb_s == pytest.approx(6000.0)


def test_a_busy_healthy_jvm_allocating_1_gb_s_is_never_a_fever_and_sets_the_baseline():
    fever = Fever(CFG.fever)
    snap = memory_snapshot(*FLAT)
    for step in range(200):
        f = fever.evaluate(with_runtime(snap, runtime_process(0.02, 1000.0)), step * 0.25)
        assert f.condition == Condition.CLEAR, f.reason
    assert f.evidence is not None and f.evidence.runtime_alloc_baseline_mb_s == pytest.approx(1000.0)
    assert "jvm 42: 2.0 % of its time in GC" in f.reason
    # then a spiral: judged against the usual rate, and never learned as the usual
    for step in range(200, 240):
        f = fever.evaluate(with_runtime(snap, runtime_process(0.7, 6000.0)), step * 0.25)
    assert f.condition == Condition.FIRING and "against a usual 1000 MB/s" in f.reason
    assert fever.alloc_baseline["jvm 42"] == pytest.approx(1000e6)


def test_the_usual_rates_of_runtimes_that_are_gone_are_forgotten():
    """JVMs that come and go (a build agent starts thousands a day) leave nothing behind: the
    runtime board keeps the last few that exited, and fever keeps only their usual rates."""
    fever = Fever(CFG.fever)
    snap = memory_snapshot(*FLAT)
    for n in range(1000):
        fever.evaluate(with_runtime(snap, runtime_process(0.02, 100.0, name=f"jvm {n}"),
                                    runtime_process(0.02, 100.0, name="jvm 1", available=False)), n)
    assert set(fever.alloc_baseline) == {"jvm 999", "jvm 1"} and set(fever._learned_at) == {"jvm 999", "jvm 1"}


def test_the_worst_of_several_runtimes_is_judged_and_a_lost_one_is_not():
    snap = with_runtime(memory_snapshot(*FLAT), runtime_process(0.9, 10.0, name="jvm 7", available=False),
                        runtime_process(0.05, 300.0, name="jvm 8"), runtime_process(0.4, 900.0, name="jvm 9"))
    f = Fever(CFG.fever).evaluate(snap, 0.0)
    assert f.condition == Condition.FIRING and f.evidence is not None and f.evidence.runtime_process == "jvm 9"


def test_without_a_kernel_memory_source_a_runtime_is_still_judged():
    s = signals()
    s.available = frozenset({"cpu"})
    healthy = Fever(CFG.fever).evaluate(with_runtime(s.snapshot(), runtime_process(0.01, 100.0)), 0.0)
    assert healthy.condition == Condition.CLEAR and "no kernel memory source" in healthy.reason
    spiral = Fever(CFG.fever).evaluate(with_runtime(s.snapshot(), runtime_process(0.5, 100.0)), 0.0)
    assert spiral.condition == Condition.FIRING
    assert Fever(CFG.fever).evaluate(s.snapshot(), 0.0).condition == Condition.UNAVAILABLE


def test_runtime_evidence_is_valid_json_against_the_schema():
    import jsonschema  # type: ignore[import-untyped]

    from coherence.monitor import Monitor
    from coherence.sinks.jsonl import report_json
    from test_sinks_jsonl import load_schema
    snap = with_runtime(memory_snapshot(*FLAT), runtime_process(0.7, 6000.0))
    report = Monitor(CFG, lambda: snap).step(0.0, 1_795_000_000.0)
    obj = report_json(report)
    jsonschema.validate(obj, load_schema())
    assert obj["detectors"]["fever"]["evidence"]["runtime_process"] == "jvm 42"
    assert obj["detectors"]["fever"]["unit"] == "pct_gc_time"
