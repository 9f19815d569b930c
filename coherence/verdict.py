"""Verdicts: findings over time become states with hysteresis (WARNING while a condition holds,
CRITICAL once it has held for `for`, OK only after it has been clear for `clear`), the overall
status, a veto recommendation per detector, and incidents across detectors (cascade, flapping).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence

from coherence.config import Config, VerdictConfig
from coherence.detectors import Finding
from coherence.states import Condition, State, Veto, worst

# The strongest recommendation per detector once CRITICAL (at WARNING the finding's own).
CRITICAL_VETO = {"amplification": Veto.CIRCUIT_BREAK}
# What a finding's condition becomes when no hysteresis holds the state.
_PLAIN_STATE = {Condition.WARMUP: State.WARMUP, Condition.UNAVAILABLE: State.UNAVAILABLE,
                Condition.CLEAR: State.OK}


@dataclass
class Tracker:
    """One detector's state machine."""

    config: VerdictConfig
    state: State = State.WARMUP
    since: Optional[float] = None      # when the current state began (None: never updated)
    firing_since: Optional[float] = None
    firing_cap: State = State.CRITICAL   # the max_state of the condition being timed
    clear_since: Optional[float] = None
    changes: Deque[float] = field(default_factory=deque)

    def update(self, finding: Finding[Any], now: float) -> bool:
        """Advance with one finding; True if the state changed."""
        c = self.config
        if finding.condition == Condition.FIRING:
            self.clear_since = None
            if self.firing_since is None or finding.max_state != self.firing_cap:
                # a different condition (fever's forecast, then its churn) times from its start
                self.firing_since, self.firing_cap = now, finding.max_state
            held = now - self.firing_since
            target = State.CRITICAL if held >= c.for_s and finding.max_state == State.CRITICAL \
                else State.WARNING
            if self.state == State.CRITICAL:
                target = State.CRITICAL    # a condition that held once keeps it until clear
            return self._go(target, now)
        # Any reading on which the condition does not hold restarts the time it must hold
        # for CRITICAL, as Prometheus' `for` does on a false evaluation: flickers shorter
        # than `for` never escalate, however many there are.
        self.firing_since = None
        if self.state.alarmed and finding.condition != Condition.UNAVAILABLE:
            # hysteresis: stay until clear long enough (a source that vanished is another
            # matter: the verdict cannot stand on frozen data, below)
            if finding.condition == Condition.CLEAR:
                if self.clear_since is None:
                    self.clear_since = now
                if now - self.clear_since >= c.clear_s:
                    self.clear_since = None
                    return self._go(State.OK, now)
            return False
        self.clear_since = None
        return self._go(_PLAIN_STATE[finding.condition], now)

    def _go(self, state: State, now: float) -> bool:
        if self.since is None:
            self.since = now
        if state == self.state:
            return False
        if self.state != State.WARMUP:              # leaving warm-up is not flapping
            self.changes.append(now)
        self.state, self.since = state, now
        return True

    def flapping(self, now: float) -> bool:
        while self.changes and now - self.changes[0] > self.config.flap_window_s:
            self.changes.popleft()
        return len(self.changes) >= self.config.flap_changes


@dataclass(frozen=True)
class Verdict:
    """The judgement at one instant."""

    status: State
    states: Dict[str, State]
    since: Dict[str, float]            # when each detector entered its state
    now: float
    veto: List[Dict[str, str]]         # {"detector", "state", "action"}: enums, str-valued
    incidents: List[Dict[str, object]]
    changed: bool

    @property
    def exit_code(self) -> int:
        return self.status.exit_code


class VerdictEngine:
    """Trackers for every detector, plus the incidents that span them."""

    def __init__(self, detectors: Sequence[str], config: VerdictConfig) -> None:
        self.config = config
        self.trackers = {name: Tracker(config) for name in detectors}
        self.critical_at: Dict[str, float] = {}

    @classmethod
    def from_config(cls, config: Config, detectors: Sequence[str]) -> "VerdictEngine":
        return cls(detectors, config.verdict)

    def update(self, findings: Mapping[str, Finding[Any]], now: float) -> Verdict:
        changed = False
        for name, finding in findings.items():
            tracker = self.trackers[name]
            if tracker.update(finding, now):
                changed = True
                if tracker.state == State.CRITICAL:
                    self.critical_at[name] = now
        states = {name: t.state for name, t in self.trackers.items()}
        # the worst detector: one that cannot judge yet (WARMUP) or at all (UNAVAILABLE) makes
        # the whole verdict unknown unless another is already alarmed
        status = worst(states.values())
        veto: List[Dict[str, str]] = [
            {"detector": name, "state": state,
             "action": CRITICAL_VETO.get(name, findings[name].veto) if state == State.CRITICAL
             else findings[name].veto}
            for name, state in states.items() if state.alarmed]
        since = {n: (now if t.since is None else t.since) for n, t in self.trackers.items()}
        return Verdict(status, states, since, now, veto, self._incidents(states, now), changed)

    def _incidents(self, states: Mapping[str, State], now: float) -> List[Dict[str, object]]:
        incidents: List[Dict[str, object]] = []
        critical = {n: at for n, at in self.critical_at.items() if states[n] == State.CRITICAL}
        window = self.config.cascade_window_s
        members = sorted((at, n) for n, at in critical.items()
                         if any(m != n and abs(at - other) <= window for m, other in critical.items()))
        if members:
            incidents.append({"kind": "cascade", "detectors": [n for _, n in members],
                              "since": members[0][0]})
        for name, tracker in self.trackers.items():
            if tracker.flapping(now):
                incidents.append({"kind": "flapping", "detector": name,
                                  "changes": len(tracker.changes),
                                  "window_s": self.config.flap_window_s})
        return incidents
