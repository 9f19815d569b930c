"""Amplification on a real HTTP service: a retry storm (the backend fails a poisoned half of the
keys, client and frontend both retry) is CRITICAL within 10 s of its start and not before, its
ratio above 2, counted through StatsD and through the in-process hooks; a steady fan-out x3 and a
steady 1:1 service are never CRITICAL."""
import pytest

import amplification as amp

pytestmark = pytest.mark.e2e


def _summary(r: amp.CaseResult) -> str:
    """One line for the log (pytest -rP shows it): what the case measured."""
    return (f"{r.case}: time_to_critical={r.time_to_critical} "
            f"time_to_warning={r.notes.get('time_to_warning')} max_ratio={r.max_ratio} "
            f"median_ratio={r.median_ratio} baseline={r.baseline} "
            f"error_rate_alert={r.classic_alert_after} states={sorted(set(r.states))} "
            f"wall={r.wall_s:.1f}s")


def _check_storm(r: amp.CaseResult) -> None:
    print(_summary(r))
    why = f"{r}\n--- stderr ---\n{r.diagnostics}"
    assert not r.critical_before_fault, why
    assert r.time_to_critical is not None and r.time_to_critical <= amp.DEADLINE_S, why
    assert r.max_ratio is not None and r.max_ratio > amp.STORM_RATIO, why
    assert r.sources == ["pushed"], why          # judged on the pushed counts, not the TCP proxy


def test_retry_storm_counted_through_statsd(amplification_runs):
    _check_storm(amplification_runs["storm_via_statsd"].result())


def test_retry_storm_counted_in_process(amplification_runs):
    _check_storm(amplification_runs["storm_in_process"].result())


def _check_control(r: amp.CaseResult, ratio: float) -> None:
    print(_summary(r))
    why = f"{r}\n--- stderr ---\n{r.diagnostics}"
    assert r.observed_s >= amp.CONTROL_S, why
    assert r.sources == ["pushed"], why
    assert r.median_ratio == pytest.approx(ratio, rel=0.1), why    # the service did what it says
    assert r.baseline is not None, why           # the detector learned and judged the traffic
    assert not r.critical_in_control, why


def test_steady_fanout_of_three_never_critical(amplification_runs):
    _check_control(amplification_runs["control_fanout3"].result(), 3.0)


def test_steady_one_to_one_never_critical(amplification_runs):
    _check_control(amplification_runs["control_one_to_one"].result(), 1.0)
