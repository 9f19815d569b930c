"""The shared vocabulary of judgement: what a finding says about its condition, the states the
verdict engine gives, and the recommendations (vetoes). Detectors, verdicts and every sink use
these enums; their values are the strings written in JSON, so they compare equal to them."""
from __future__ import annotations

from enum import Enum
from typing import Iterable


class _Word(str, Enum):
    """A str-valued enum that reads as its value everywhere: f-strings, str(), JSON."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Condition(_Word):
    """What a detector says about its condition at one instant; verdicts turn it into a State."""

    WARMUP = "warmup"              # not enough data yet to judge
    UNAVAILABLE = "unavailable"    # no source to judge from
    CLEAR = "clear"                # the condition does not hold
    FIRING = "firing"              # the condition holds


class State(_Word):
    """A detector's state (and the overall status), with hysteresis applied."""

    WARMUP = "WARMUP"
    OK = "OK"
    WARNING = "WARNING"
    CRITICAL = "CRITICAL"
    UNAVAILABLE = "UNAVAILABLE"

    @property
    def severity(self) -> int:
        """Rank for the overall status (the worst detector's): a detector that cannot judge yet
        or at all ranks above OK and below an alarm."""
        return _SEVERITY[self]

    @property
    def alarmed(self) -> bool:
        """WARNING or CRITICAL: the states that carry a recommendation."""
        return self in (State.WARNING, State.CRITICAL)

    @property
    def exit_code(self) -> int:
        """The Nagios plugin convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN."""
        return _EXIT_CODE[self]

    @property
    def nagios(self) -> str:
        """The word a Nagios plugin prints for this state (UNKNOWN when it cannot judge)."""
        return self.value if self.exit_code < 3 else "UNKNOWN"


_SEVERITY = {State.OK: 0, State.WARMUP: 1, State.UNAVAILABLE: 2, State.WARNING: 3,
             State.CRITICAL: 4}
_EXIT_CODE = {State.OK: 0, State.WARNING: 1, State.CRITICAL: 2, State.WARMUP: 3,
              State.UNAVAILABLE: 3}


class Veto(_Word):
    """What coherence recommends (never does) while a detector is alarmed."""

    SHED_LOAD = "SHED_LOAD"
    THROTTLE = "THROTTLE"
    CAP_RETRIES = "CAP_RETRIES"
    CIRCUIT_BREAK = "CIRCUIT_BREAK"


def worst(states: Iterable[State]) -> State:
    """The overall status: the most severe of ``states``."""
    return max(states, key=lambda s: s.severity)
