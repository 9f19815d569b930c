"""End-to-end harness: run `coherence --live --json` as a user would (a subprocess), read its
JSON lines as they come, wait on the stream for a state or a deadline (never sleep-and-hope),
and start load generators that are always cleaned up, even when a test fails."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

COHERENCE = os.path.join(os.path.dirname(sys.executable), "coherence")
HERE = os.path.dirname(os.path.abspath(__file__))
LOADS = os.path.join(HERE, "loads")
DETECTORS = ("seizure", "fever", "amplification")


@dataclass
class Line:
    received: float            # time.monotonic() when the line arrived
    report: Dict[str, Any]

    def state(self, detector: str) -> str:
        return self.report["detectors"][detector]["state"]


class Sentinel:
    """`coherence --live --hz 1000 --json --duration D ...` in a subprocess, its lines in a list.

    >>> with Sentinel(duration=30) as s:
    ...     s.wait_for(lambda line: line.report["status"] == "OK", timeout=15)
    """

    def __init__(self, *args: str, duration: float = 60.0, hz: int = 1000,
                 env: Optional[Dict[str, str]] = None, cmd: Optional[Sequence[str]] = None) -> None:
        self.cmd = list(cmd) if cmd else [COHERENCE, "--live", "--json", "--hz", str(hz),
                                          "--duration", str(duration), *args]
        self.env = {**os.environ, **(env or {})}
        self.lines: List[Line] = []
        self._new = threading.Condition()
        self.proc: Optional[subprocess.Popen] = None
        self.stderr = ""

    def __enter__(self) -> "Sentinel":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env=self.env, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = Line(time.monotonic(), json.loads(raw))
            with self._new:
                self.lines.append(line)
                self._new.notify_all()
        with self._new:
            self._new.notify_all()

    def __exit__(self, *exc: object) -> None:
        kill_group(self.proc)
        if self.proc is not None and self.proc.stderr is not None:
            self.stderr = self.proc.stderr.read()

    def wait_for(self, predicate: Callable[[Line], bool], timeout: float) -> Optional[Line]:
        """The first line (already received or to come) for which predicate holds, or None at
        the deadline or when the sentinel has exited."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._new:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.proc is not None and self.proc.poll() is not None
                                 and not self._reader.is_alive()):
                    return None
                self._new.wait(min(left, 0.5))

    def warmed_up(self, detector: str, timeout: float = 20.0) -> Line:
        """Wait until `detector` has left WARMUP (and say why not if it does not)."""
        line = self.wait_for(lambda l: l.state(detector) not in ("WARMUP", "UNAVAILABLE"), timeout)
        assert line is not None, f"{detector} still warming up after {timeout} s; stderr: {self.stderr_now()}"
        return line

    def stderr_now(self) -> str:
        if self.proc is None or self.proc.poll() is None or self.proc.stderr is None:
            return ""
        return self.proc.stderr.read()

    def since(self, t: float) -> Iterator[Line]:
        return (line for line in list(self.lines) if line.received >= t)


def kill_group(proc: Optional[subprocess.Popen], grace: float = 3.0) -> None:
    """SIGTERM the process group, then SIGKILL what is left; reap it."""
    if proc is None:
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:
        os.killpg(proc.pid, signal.SIGKILL)   # children the leader left behind
    except ProcessLookupError:
        pass


class Load:
    """A load generator process in its own process group, killed (with its children) on exit."""

    def __init__(self, *cmd: str) -> None:
        self.cmd = list(cmd)
        self.proc: Optional[subprocess.Popen] = None
        self.started = 0.0

    def __enter__(self) -> "Load":
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        self.started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        kill_group(self.proc)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def compile_c(name: str, build_dir: str, extra: Sequence[str] = ()) -> str:
    """Compile tests/e2e/loads/<name>.c into build_dir; the path of the binary."""
    src = os.path.join(LOADS, name + ".c")
    exe = os.path.join(build_dir, name)
    proc = subprocess.run(["cc", "-O2", "-Wall", "-o", exe, src, "-lpthread", *extra],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"compiling {src} failed:\n{proc.stderr}")
    return exe


def first_critical_after(lines: Sequence[Line], detector: str, t: float) -> Optional[float]:
    """Seconds from t to the first line at or after t where detector is CRITICAL."""
    for line in lines:
        if line.received >= t and line.state(detector) == "CRITICAL":
            return line.received - t
    return None


def states_between(lines: Sequence[Line], detector: str, t0: float, t1: float) -> List[str]:
    return [line.state(detector) for line in lines if t0 <= line.received < t1]


def seconds_in(lines: Sequence[Line], detector: str, state: str, t0: float, t1: float) -> float:
    """Seconds of [t0, t1) during which detector's last reported state was `state` (a state
    holds from the line that reports it to the next line)."""
    total, current, since = 0.0, None, t0
    for line in lines:
        if line.received >= t1:
            break
        if line.received > t0 and current == state:
            total += line.received - since
        if line.received >= t0:
            since = line.received
        current = line.state(detector)
    if current == state:
        total += t1 - max(since, t0)
    return total


def warning_starts(lines: Sequence[Line], detector: str, t0: float, t1: float) -> List[str]:
    """For each WARNING episode in effect during [t0, t1), the unit of the finding on the line
    where it began (e.g. fever's "MB/s growth", its resident-growth forecast, against "MB/s", its
    churn): what raised the WARNING, even when the episode began before t0. A state holds from the
    line that reports it to the next line."""
    episodes: List[List[Any]] = []      # [unit at the start, in effect during [t0, t1)]
    previous = None
    for line in lines:
        if line.received >= t1:
            break
        state = line.state(detector)
        if state == "WARNING" and previous != "WARNING":
            episodes.append([line.report["detectors"][detector]["unit"], False])
        if episodes and line.received > t0 and (state == "WARNING" or previous == "WARNING"):
            episodes[-1][1] = True
        previous = state
    if episodes and previous == "WARNING":
        episodes[-1][1] = True
    return [unit for unit, in_effect in episodes if in_effect]


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="coherence-e2e-")
