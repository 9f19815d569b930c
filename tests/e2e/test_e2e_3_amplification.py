"""Amplification on a real HTTP service: a retry storm (the backend fails a poisoned half of the
keys, client and frontend both retry) is CRITICAL within 10 s of its start and not before, its
ratio above 2, the other detectors quiet, counted through StatsD and through the in-process hooks;
a steady fan-out x3 and a steady 1:1 service show no more than they may. Each case runs alone,
after the host cases."""
import pytest

import amplification as amp
import host

pytestmark = pytest.mark.e2e


def _summary(r: amp.CaseResult) -> str:
    """One line for the log (pytest -rP shows it): what the case measured."""
    margin = None if r.time_to_critical is None else amp.DEADLINE_S - r.time_to_critical
    return (f"{r.case}: time_to_critical={r.time_to_critical} margin={margin} "
            f"time_to_warning={r.notes.get('time_to_warning')} max_ratio={r.max_ratio} "
            f"median_ratio={r.median_ratio} baseline={r.baseline} "
            f"error_rate_alert={r.classic_alert_after} states={sorted(set(r.states))} "
            f"warning_s={r.warning_s:.1f} others={ {d: sorted(set(s)) for d, s in r.others.items()} } "
            f"wall={r.wall_s:.1f}s")


def _check_storm(r: amp.CaseResult) -> None:
    print(_summary(r))
    why = f"{r}\n--- stderr ---\n{r.diagnostics}"
    # CRITICAL within 10 s and not before, the ratio above 2 on the pushed counts (not the TCP
    # proxy), seizure and fever OK throughout (a retry storm is not a seizure or a fever)
    assert amp.storm_violations(r) == [], why


def test_retry_storm_counted_through_statsd():
    _check_storm(amp.storm_via_statsd())


def test_retry_storm_counted_in_process():
    _check_storm(amp.storm_in_process())


def _check_control(r: amp.CaseResult, ratio: float) -> None:
    print(_summary(r))
    why = f"{r}\n--- stderr ---\n{r.diagnostics}"
    assert r.observed_s >= amp.CONTROL_S, why
    assert r.sources == ["pushed"], why
    assert r.median_ratio == pytest.approx(ratio, rel=0.1), why    # the service did what it says
    assert r.baseline is not None, why           # the detector learned and judged the traffic
    assert host.control_violations(r) == [], why


def test_steady_fanout_of_three_shows_no_more_than_it_may():
    _check_control(amp.control_fanout3(), 3.0)


def test_steady_one_to_one_shows_no_more_than_it_may():
    _check_control(amp.control_one_to_one(), 1.0)
