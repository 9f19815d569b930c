"""Fever on real memory load: the fault CRITICAL within 10 s of starting and not before, and
nothing else (not a seizure); the controls show no more than they may."""
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


def test_fever_controls_show_no_more_than_they_may(build):
    results = host.fever_controls(build)
    for r in results:
        print(host.summary(r))
    assert {r.case: host.control_violations(r) for r in results} == \
        {r.case: [] for r in results}
