"""Fever on real memory load: the fault CRITICAL within 10 s of starting and not before; the
controls never CRITICAL. The amplification cases start in the background here."""
import pytest

import host

pytestmark = pytest.mark.e2e


def test_fever_churn_with_flat_resident_memory(build, amplification_runs):
    r = host.fever_fault(build)
    assert not r.critical_before_fault, r.states
    assert r.time_to_critical is not None and r.time_to_critical <= host.DEADLINE_S, r
    assert r.notes["value_at_critical"] > 512
    assert r.classic_alert_after is None      # resident memory flat: no "memory > 90 %" alert


def test_fever_controls_never_critical(build):
    for r in host.fever_controls(build):
        assert not r.critical_in_control, (r.case, r.states)
