"""The e2e judging rules themselves (no load, no sentinel): what the other detectors may show
while a fault runs. Kept with the e2e modules they test; not marked e2e, they run in a second."""
from host import EDGE_ONLY, CaseResult, MayShow, control_violations, other_violations


def _fault(others, warning):
    return CaseResult("a fault", "fever", fault=True, others=others, others_warning=warning)


def test_a_fault_allows_the_others_only_ok():
    assert other_violations(_fault({"seizure": ["OK"] * 10, "amplification": ["OK"] * 10},
                                   {"seizure": (0.0, []), "amplification": (0.0, [])})) == []
    assert other_violations(_fault({"seizure": []}, {"seizure": (0.0, [])})) == [
        "seizure showed no lines"]
    assert other_violations(_fault({"seizure": ["OK", "CRITICAL"]},
                                   {"seizure": (0.0, [])})) == ["seizure showed ['CRITICAL']"]
    assert other_violations(_fault({"seizure": ["WARMUP", "OK"]},
                                   {"seizure": (0.0, [])})) == ["seizure showed ['WARMUP']"]


def test_a_fault_allows_the_others_a_load_edge_warning_and_no_more():
    edge = EDGE_ONLY.warning_s
    ok = _fault({"seizure": ["OK", "WARNING", "WARNING"]}, {"seizure": (edge, ["pct_points"])})
    assert other_violations(ok) == []
    long = _fault({"seizure": ["WARNING"] * 3}, {"seizure": (edge + 0.5, ["pct_points"])})
    assert len(other_violations(long)) == 1 and "WARNING for" in other_violations(long)[0]
    churn = _fault({"fever": ["WARNING"]}, {"fever": (1.0, ["MB/s"])})
    assert len(other_violations(churn)) == 1 and "['MB/s']" in other_violations(churn)[0]
    both = _fault({"seizure": ["WARNING", "CRITICAL"]}, {"seizure": (1.0, ["pct_points"])})
    assert other_violations(both) == ["seizure showed ['CRITICAL', 'WARNING']"]
    unmeasured = _fault({"seizure": ["WARNING"]}, {})
    assert len(other_violations(unmeasured)) == 1


def test_a_control_allows_the_others_only_ok():
    control = CaseResult("a control", "fever", fault=False, states=["OK"] * 5,
                         others={"seizure": ["OK", "WARNING"]},
                         others_warning={"seizure": (1.0, ["pct_points"])}, may_show=MayShow())
    assert control_violations(control) == ["seizure showed ['WARNING']"]
