"""What every sink is (the Sink protocol: one method, ``emit(report)``), and what the line sinks
share: when a line is due (Cadence), how a line is written, and how a reader that went away
(`| head`) ends the run quietly (SinkClosed).

A sink that holds a resource (the dashboard's terminal, the check's final line) is also a
context manager; ``opened(sinks)`` enters those and hands back one callback for them all."""
from __future__ import annotations

import contextlib
import math
import os
import sys
from typing import IO, Callable, Iterator, Optional, Protocol, Sequence, runtime_checkable

from coherence.config import Config
from coherence.monitor import Report


@runtime_checkable
class Sink(Protocol):
    """Renders reports; never computes statistics. ``emit`` is called for every report (four a
    second live); the sink decides what to show and when. It returns True if it showed
    something, and raises SinkClosed when its reader went away."""

    def emit(self, report: Report) -> bool: ...


@contextlib.contextmanager
def opened(sinks: Sequence[Sink]) -> Iterator[Callable[[Report], None]]:
    """Enter the sinks that are context managers (in order; left in reverse order, Ctrl-C
    included) and yield one callback that gives each report to every sink."""
    with contextlib.ExitStack() as stack:
        for sink in sinks:
            if isinstance(sink, contextlib.AbstractContextManager):
                stack.enter_context(sink)

        def emit(report: Report) -> None:
            for sink in sinks:
                sink.emit(report)
        yield emit


# A routine line may come this fraction of an interval early: reports arrive on the CLI's own
# clock (every 0.25 s) with jitter and float drift, and a mark missed by a millisecond would
# otherwise cost a whole interval.
EARLY_FRACTION = 0.05


class SinkClosed(Exception):
    """The reader went away (a closed pipe: `coherence --json | head -1`). The run is over, and
    not in error: the CLI catches this and exits 0."""


class Cadence:
    """When a line sink writes: the first report, every report whose verdict changed, and
    otherwise one per `interval_s` of report time (`report.elapsed_s`, not the wall clock).

    Routine lines keep to a grid (no drift when reports come every 0.25 s); a change line
    restarts it, so no routine line follows a change line within less than an interval.

    >>> c = Cadence(1.0)
    >>> [c.due(t, changed=False) for t in (0.0, 0.5, 1.0, 1.5, 2.0)]
    [True, False, True, False, True]
    """

    def __init__(self, interval_s: float = 1.0) -> None:
        if isinstance(interval_s, bool) or not isinstance(interval_s, (int, float)) \
                or not math.isfinite(interval_s) or interval_s <= 0:
            raise ValueError(f"interval_s must be a positive number of seconds, got {interval_s!r}")
        self.interval_s = float(interval_s)
        self._next_due: Optional[float] = None

    def due(self, elapsed_s: float, changed: bool) -> bool:
        if self._next_due is None or changed:
            self._next_due = elapsed_s + self.interval_s
            return True
        if elapsed_s < self._next_due - EARLY_FRACTION * self.interval_s:
            return False
        self._next_due += self.interval_s
        if self._next_due <= elapsed_s:
            # reports stopped for longer than an interval (a suspended process): no burst of
            # catch-up lines, start a new grid from here
            self._next_due = elapsed_s + self.interval_s
        return True


class SinkFailed(Exception):
    """The output cannot be written (a full file system, no stdout at all): the run stops, and
    the CLI says why in one line; ``str(err)`` is that line."""


def write_line(stream: Optional[IO[str]], line: str) -> None:
    """Write and flush one line; a closed pipe becomes SinkClosed, any other failure to write
    SinkFailed, never a traceback. ``stream`` is None when the process started without a
    standard output (`>&-`): Python's sys.stdout is None then."""
    if stream is None:
        raise SinkFailed("stdout is closed: there is nowhere to write the reports")
    try:
        stream.write(line + "\n")
        stream.flush()
    except BrokenPipeError as err:
        _discard_further_output(stream)
        raise SinkClosed("the reader closed the output") from err
    except OSError as err:
        # a full disk (ENOSPC), a quota (EDQUOT), an I/O error: the line may be cut short
        _discard_further_output(stream)
        name = getattr(stream, "name", "")
        where = "stdout" if name in ("<stdout>", 1) else str(name or "the output")
        raise SinkFailed(f"cannot write the reports to {where}: {err.strerror or err}") from err


def _discard_further_output(stream: IO[str]) -> None:
    # Text still buffered in the stream would be flushed again at interpreter exit and print
    # "Exception ignored ... BrokenPipeError": point the descriptor at /dev/null first, as the
    # Python documentation advises for SIGPIPE (library/signal.html, "Note on SIGPIPE").
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


class LineSink:
    """One line per report interval and one at every state change, on a text stream (stdout by
    default); subclasses say how a report becomes a line. ``emit`` returns True if it wrote a
    line and raises SinkClosed when the reader went away."""

    def __init__(self, stream: Optional[IO[str]] = None, interval_s: float = 1.0) -> None:
        # resolved now, not at import: a redirected or captured sys.stdout is the one used
        self.stream: IO[str] = stream if stream is not None else sys.stdout
        self.cadence = Cadence(interval_s)

    def emit(self, report: Report) -> bool:
        if not self.cadence.due(report.elapsed_s, report.verdict.changed):
            return False
        write_line(self.stream, self.line(report))
        return True

    @classmethod
    def from_config(cls, config: Config, stream: Optional[IO[str]] = None) -> "LineSink":
        """A line every ``[output] report_interval_s``."""
        return cls(stream, interval_s=config.output.report_interval_s)

    def line(self, report: Report) -> str:
        raise NotImplementedError
