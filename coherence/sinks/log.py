"""Log lines for `coherence serve`, the headless daemon: stdout stays empty, and stderr (the
journal, under systemd) gets one line at start and stop and one per detector state change.

    log = configure_logging()          # "2026-11-27T06:01:02Z coherence INFO: ..." on stderr
    sink = StateLog()                  # a Sink: one line when a detector changes state
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Dict, Optional

from coherence.detectors import DETECTORS
from coherence.monitor import Report
from coherence.states import State

__all__ = ["StateLog", "configure_logging"]

LOGGER = "coherence"


def configure_logging(level: int = logging.INFO) -> logging.Logger:
    """Lines on stderr with a UTC time stamp, for the whole `coherence` logger tree."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s coherence %(levelname)s: %(message)s",
                                  datefmt="%Y-%m-%dT%H:%M:%SZ")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    logger = logging.getLogger(LOGGER)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger


class StateLog:
    """A sink that logs each detector's state change with its reason: WARNING for WARNING and
    CRITICAL, INFO for the rest (leaving warm-up, recovering)."""

    def __init__(self, logger: Optional[logging.Logger] = None) -> None:
        self.log = logger or logging.getLogger(LOGGER)
        self._states: Dict[str, State] = {}

    def emit(self, report: Report) -> bool:
        said = False
        for name in DETECTORS:
            state = report.verdict.states[name]
            before = self._states.get(name)
            self._states[name] = state
            if before is None or before == state:
                continue
            finding = report.findings[name]
            veto = next((str(v["action"]) for v in report.verdict.veto if v["detector"] == name), None)
            self.log.log(logging.WARNING if state.alarmed else logging.INFO, "%s %s -> %s: %s%s",
                         name, before, state, finding.reason, f" (recommends {veto})" if veto else "")
            said = True
        return said
