"""What every sink shares: the Sink protocol (one method, emit), `opened` entering the sinks that
hold a resource, and the cadence of line sinks (a grid of intervals, a line at every change)."""
import errno
import io
from typing import Any, List

import numpy as np
import pytest

from coherence.monitor import Report
from coherence.sinks import Dashboard, JsonLinesSink, NagiosSink, PlainStatusSink, Sink, opened
from coherence.sinks.base import Cadence, LineSink, SinkClosed, SinkFailed, write_line
from test_sinks_jsonl import scripted_reports


@pytest.fixture(scope="module")
def reports() -> List[Report]:
    return scripted_reports(until=6.0)


class Recorder:
    """A sink written the way a new sink is: one method, no base class."""

    def __init__(self) -> None:
        self.seen: List[float] = []

    def emit(self, report: Report) -> bool:
        self.seen.append(report.elapsed_s)
        return True


class Held(Recorder):
    def __init__(self, log: List[str], name: str) -> None:
        super().__init__()
        self.log, self.name = log, name

    def __enter__(self) -> "Held":
        self.log.append(f"open {self.name}")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.log.append(f"close {self.name}")


def test_every_sink_is_a_sink():
    from rich.console import Console
    sinks = [JsonLinesSink(io.StringIO()), PlainStatusSink(io.StringIO()), NagiosSink(io.StringIO()),
             Dashboard(Console(file=io.StringIO())), Recorder()]
    for sink in sinks:
        assert isinstance(sink, Sink)
    assert not isinstance(object(), Sink)


def test_opened_gives_every_report_to_every_sink_and_closes_in_reverse(reports):
    log: List[str] = []
    plain, first, second = Recorder(), Held(log, "a"), Held(log, "b")
    with opened([first, plain, second]) as emit:
        assert log == ["open a", "open b"]
        for r in reports:
            emit(r)
    assert log == ["open a", "open b", "close b", "close a"]
    assert plain.seen == first.seen == second.seen == [r.elapsed_s for r in reports]


def test_opened_closes_the_sinks_when_interrupted(reports):
    log: List[str] = []
    with pytest.raises(KeyboardInterrupt):
        with opened([Held(log, "a")]) as emit:
            emit(reports[0])
            raise KeyboardInterrupt
    assert log == ["open a", "close a"]


def test_a_line_sink_needs_only_its_line(reports):
    class Status(LineSink):
        def line(self, report: Report) -> str:
            return str(report.status)

    out = io.StringIO()
    sink = Status(out, interval_s=1.0)
    written = [r for r in reports if sink.emit(r)]
    assert out.getvalue().splitlines() == [str(r.status) for r in written]


def test_cadence_keeps_its_grid_through_jitter_and_does_not_burst_after_a_pause():
    rng = np.random.default_rng(7)
    cadence = Cadence(1.0)
    times = [i * 0.25 + float(rng.uniform(-0.01, 0.01)) for i in range(1, 401)]
    due = [t for t in [0.0] + times if cadence.due(t, changed=False)]
    assert len(due) == 101     # 0 s, then one per second for 100 s: no drift, none skipped
    paused = Cadence(1.0)
    assert paused.due(0.0, False) and paused.due(30.0, False)
    assert not paused.due(30.5, False) and paused.due(31.0, False)


class Failing(io.StringIO):
    """A stream whose flush fails as a file on a full disk does."""

    name = "<stdout>"

    def __init__(self, error: OSError) -> None:
        super().__init__()
        self.error = error

    def flush(self) -> None:
        raise self.error


def test_a_closed_reader_a_full_disk_and_no_stdout_are_told_apart():
    with pytest.raises(SinkClosed):
        write_line(Failing(BrokenPipeError(errno.EPIPE, "Broken pipe")), "x")
    with pytest.raises(SinkFailed, match="^cannot write the reports to stdout: No space left on device$"):
        write_line(Failing(OSError(errno.ENOSPC, "No space left on device")), "x")
    with pytest.raises(SinkFailed, match="^stdout is closed: there is nowhere to write the reports$"):
        write_line(None, "x")
