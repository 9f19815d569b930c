"""Fever on real memory load: the fault CRITICAL within 10 s of starting and not before, and
nothing else (not a seizure); a real leak forecast (WARNING) within 15 s, never CRITICAL; the
controls show no more than they may."""
import pytest

import host

pytestmark = pytest.mark.e2e


def test_fever_churn_with_flat_resident_memory(build):
    r = host.fever_fault(build)
    print(host.summary(r))
    # CRITICAL within 10 s and not before; seizure and amplification OK throughout (a fever is
    # not also a seizure)
    assert host.fault_violations(r) == [], r
    assert r.notes["value_at_critical"] > 512


def test_a_leak_is_forecast_within_15_s_and_never_escalates(build):
    r = host.fever_leak(build)
    print(host.summary(r))
    assert host.forecast_violations(r) == [], r
    # the forecast is of this leak: about the free memory over the rate, not a figure from
    # elsewhere. The 10 s span it stands on still holds a few seconds from before the leak, so
    # its slope is under the rate (~0.8 of it at 7 s) and its time to exhaustion over free / rate
    eta, free, rate = r.notes["eta_at_warning_s"], r.notes["free_mb"], r.notes["rate_mb_s"]
    assert 0.4 * free / rate < eta < 2.0 * free / rate, r.notes
    assert 0.5 * rate < r.notes["growth_at_warning_mb_s"] < 1.2 * rate, r.notes
    # the classic rule (MemAvailable < 10 % for 2 min) saw nothing: the leak took ~22 % of it
    assert "condition false" in r.classic_reading.text(), r.classic


def test_fever_controls_show_no_more_than_they_may(build):
    results = host.fever_controls(build)
    for r in results:
        print(host.summary(r))
    assert {r.case: host.control_violations(r) for r in results} == \
        {r.case: [] for r in results}
