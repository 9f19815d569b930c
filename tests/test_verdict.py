"""The verdict state machine on scripted findings: hysteresis, CRITICAL after `for`, OK only
after `clear`, the overall status, vetoes, cascades and flapping."""

from coherence.config import VerdictConfig
from coherence.detectors import Finding
from coherence.states import Condition, State, Veto
from coherence.verdict import Tracker, VerdictEngine

CLEAR, FIRING, UNAVAILABLE, WARMUP = Condition.CLEAR, Condition.FIRING, Condition.UNAVAILABLE, Condition.WARMUP
CFG = VerdictConfig(for_s=5.0, clear_s=10.0, cascade_window_s=60.0, flap_changes=4, flap_window_s=60.0)
VETO = {"seizure": Veto.SHED_LOAD, "fever": Veto.THROTTLE, "amplification": Veto.CAP_RETRIES}


def finding(condition, name="seizure", max_state=State.CRITICAL):
    return Finding(detector=name, condition=condition, value=1.0, limit=1.0, unit="u",
                   reason="r", max_state=max_state, veto=VETO[name])


def run(tracker, script, step=1.0, t0=0.0):
    """script: a condition per second; returns the state after each."""
    states = []
    for i, cond in enumerate(script):
        tracker.update(finding(cond), t0 + i * step)
        states.append(tracker.state)
    return states


def test_warning_at_once_critical_after_for_ok_only_after_clear():
    t = Tracker(CFG)
    states = run(t, [CLEAR] * 3 + [FIRING] * 8 + [CLEAR] * 12)
    assert states[:3] == ["OK"] * 3
    assert states[3:8] == ["WARNING"] * 5            # fault at t=3: WARNING for 5 s
    assert states[8:11] == ["CRITICAL"] * 3          # held for `for` (5 s): CRITICAL at t=8
    assert states[11:21] == ["CRITICAL"] * 10        # clear since t=11: stays 10 s
    assert states[21:] == ["OK"] * 2                 # OK at t=21


def test_a_steady_condition_is_critical_exactly_for_seconds_after_it_starts():
    t = Tracker(VerdictConfig())                     # the defaults: for 5 s
    states = run(t, [CLEAR] * 2 + [FIRING] * 48, step=0.25)
    first_critical = states.index("CRITICAL") * 0.25
    assert first_critical - 0.5 == VerdictConfig().for_s == 5.0


def test_brief_blips_do_not_flap_the_verdict():
    t = Tracker(CFG)
    # firing 2 s, clear 2 s, repeated: WARNING the whole time, never back to OK in between,
    # and never CRITICAL: no stretch of the condition lasted `for`
    states = run(t, ([FIRING] * 2 + [CLEAR] * 2) * 6)
    assert states == ["WARNING"] * 24


def test_a_clear_reading_restarts_the_time_the_condition_must_hold():
    # true at t=0, clear from 1 to 5, true again from 6: it has held since 6, not since 0
    t = Tracker(CFG)
    states = run(t, [FIRING] + [CLEAR] * 5 + [FIRING] * 8)
    assert states[:11] == ["WARNING"] * 11
    assert states[11:] == ["CRITICAL"] * 3           # held 5 s at t=11


def test_flickers_shorter_than_for_never_escalate_however_many():
    t = Tracker(CFG)
    # 4.75 s on, 0.25 s off, for ten minutes: each stretch falls short of `for` (5 s)
    script = ([FIRING] * 19 + [CLEAR]) * 120
    states = run(t, script, step=0.25)
    assert "CRITICAL" not in states
    assert set(states) == {"WARNING"}


def test_a_reading_that_cannot_judge_restarts_the_hold_too():
    t = Tracker(CFG)
    states = run(t, [FIRING] * 4 + [WARMUP] + [FIRING] * 6)
    assert states[:10] == ["WARNING"] * 10 and states[10] == "CRITICAL"   # held 5 s at t=10


def test_condition_returning_during_clear_keeps_critical():
    t = Tracker(CFG)
    states = run(t, [FIRING] * 6 + [CLEAR] * 5 + [FIRING] * 1 + [CLEAR] * 3)
    assert states[5:] == ["CRITICAL"] * 10


def test_a_forecast_warns_but_never_escalates():
    t = Tracker(CFG)
    for i in range(30):
        t.update(finding(FIRING, "fever", max_state=State.WARNING), float(i))
    assert t.state == "WARNING"


def test_warmup_and_unavailable_pass_through():
    t = Tracker(CFG)
    assert run(t, [WARMUP, WARMUP, UNAVAILABLE, CLEAR]) == ["WARMUP", "WARMUP", "UNAVAILABLE", "OK"]


def engine_step(engine, conditions, now):
    return engine.update({n: finding(c, n) for n, c in conditions.items()}, now)


def test_overall_status_is_the_worst_detector_and_maps_to_nagios_codes():
    e = VerdictEngine(["seizure", "fever", "amplification"], CFG)
    v = engine_step(e, {"seizure": WARMUP, "fever": WARMUP, "amplification": WARMUP}, 0.0)
    assert v.status == "WARMUP" and v.exit_code == 3
    v = engine_step(e, {"seizure": CLEAR, "fever": WARMUP, "amplification": CLEAR}, 1.0)
    assert v.status == "WARMUP" and v.exit_code == 3         # not judged yet: unknown
    v = engine_step(e, {"seizure": CLEAR, "fever": CLEAR, "amplification": UNAVAILABLE}, 1.5)
    assert v.status == "UNAVAILABLE" and v.exit_code == 3
    v = engine_step(e, {"seizure": CLEAR, "fever": CLEAR, "amplification": CLEAR}, 1.75)
    assert v.status == "OK" and v.exit_code == 0
    v = engine_step(e, {"seizure": FIRING, "fever": CLEAR, "amplification": CLEAR}, 2.0)
    assert v.status == "WARNING" and v.exit_code == 1 and v.changed
    assert v.veto == [{"detector": "seizure", "state": "WARNING", "action": "SHED_LOAD"}]
    v = engine_step(e, {"seizure": FIRING, "fever": CLEAR, "amplification": CLEAR}, 8.0)
    assert v.status == "CRITICAL" and v.exit_code == 2
    v = engine_step(e, {"seizure": WARMUP, "fever": CLEAR, "amplification": CLEAR}, 9.0)
    assert v.status == "CRITICAL"   # hysteresis: a reading that cannot judge does not clear it
    v = engine_step(e, {n: UNAVAILABLE for n in ("seizure", "fever", "amplification")}, 9.5)
    assert v.status == "UNAVAILABLE"   # the source vanished: no verdict stands on frozen data
    assert {s.value: s.exit_code for s in State} == {"OK": 0, "WARNING": 1, "CRITICAL": 2,
                                                     "WARMUP": 3, "UNAVAILABLE": 3}
    assert all(isinstance(s, State) for s in v.states.values()) and isinstance(v.status, State)


def test_all_unavailable_is_unavailable():
    e = VerdictEngine(["seizure", "fever"], CFG)
    v = engine_step(e, {"seizure": UNAVAILABLE, "fever": UNAVAILABLE}, 0.0)
    assert v.status == "UNAVAILABLE" and v.exit_code == 3


def test_amplification_escalates_from_cap_retries_to_circuit_break():
    e = VerdictEngine(["amplification"], CFG)
    v = engine_step(e, {"amplification": FIRING}, 0.0)
    assert v.veto[0]["action"] == "CAP_RETRIES"
    v = engine_step(e, {"amplification": FIRING}, 6.0)
    assert v.veto[0] == {"detector": "amplification", "state": "CRITICAL", "action": "CIRCUIT_BREAK"}


def test_two_detectors_critical_within_the_window_is_a_cascade():
    e = VerdictEngine(["seizure", "fever", "amplification"], CFG)
    for now in range(0, 7):
        v = engine_step(e, {"seizure": FIRING, "fever": CLEAR, "amplification": CLEAR}, float(now))
    assert v.incidents == []
    for now in range(7, 20):
        v = engine_step(e, {"seizure": FIRING, "fever": FIRING, "amplification": CLEAR}, float(now))
    cascade = [i for i in v.incidents if i["kind"] == "cascade"]
    assert cascade and cascade[0]["detectors"] == ["seizure", "fever"] and cascade[0]["since"] == 5.0


def test_criticals_far_apart_are_not_a_cascade():
    e = VerdictEngine(["seizure", "fever"], CFG)
    for now in range(0, 100):
        v = engine_step(e, {"seizure": FIRING, "fever": FIRING if now >= 80 else CLEAR}, float(now))
    assert not [i for i in v.incidents if i["kind"] == "cascade"]


def test_many_changes_in_the_window_is_flapping():
    cfg = VerdictConfig(for_s=100.0, clear_s=1.0, flap_changes=4, flap_window_s=60.0)
    e = VerdictEngine(["seizure"], cfg)
    incidents = []
    for now in range(40):
        v = e.update({"seizure": finding(FIRING if (now // 3) % 2 else CLEAR)}, float(now))
        incidents = v.incidents
    assert incidents and incidents[0]["kind"] == "flapping" and incidents[0]["detector"] == "seizure"


def test_a_forecast_turning_into_churn_times_for_from_the_churn():
    t = Tracker(CFG)
    for i in range(60):
        t.update(finding(FIRING, "fever", max_state=State.WARNING), float(i))
    t.update(finding(FIRING, "fever"), 60.0)
    assert t.state == "WARNING"                  # not CRITICAL at once: the churn just began
    t.update(finding(FIRING, "fever"), 65.0)
    assert t.state == "CRITICAL"
