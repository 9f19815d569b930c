"""Plain status lines for a stdout that is not a terminal: plain text, one token per detector,
at the report interval and at every change; a closed pipe ends the run quietly."""
import io
import os
import re
from typing import List

import pytest

from coherence.config import Config, OutputConfig
from coherence.monitor import Report
from coherence.sinks.base import SinkClosed
from coherence.sinks.plain import PlainStatusSink, plain_line
from test_sinks_jsonl import report_at, scripted_reports

ESCAPE = "\x1b"


@pytest.fixture(scope="module")
def reports() -> List[Report]:
    return scripted_reports()


PLAIN = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (OK|WARMUP|UNAVAILABLE|WARNING|CRITICAL)"
                   r"( (seizure|fever|amplification)=[A-Z]+\(\S+\)){3} veto=\S+( incidents=\S+)?$")


def test_plain_lines_are_plain_and_parseable(reports):
    out = io.StringIO()
    sink = PlainStatusSink(out, interval_s=1.0)
    written = [r for r in reports if sink.emit(r)]
    lines = out.getvalue().splitlines()
    assert len(lines) == len(written) and len(lines) < len(reports) / 2
    assert all(r in written for r in reports if r.verdict.changed)
    assert ESCAPE not in out.getvalue()
    for line in lines:
        assert PLAIN.match(line), line


def test_plain_line_content(reports):
    healthy = plain_line(report_at(reports, 12.0))
    assert healthy.split(" ", 1)[1] == ("OK seizure=OK(±1.10/20) fever=OK(14.0/512MB/s) "
                                        "amplification=OK(1.00/1.3) veto=-")
    assert "amplification=OK(-)" in plain_line(reports[0])        # no ratio yet
    storm = plain_line(report_at(reports, 25.0))
    assert "veto=SHED_LOAD:seizure,THROTTLE:fever,CIRCUIT_BREAK:amplification" in storm
    assert storm.endswith("incidents=cascade:seizure+fever+amplification,flapping:seizure")
    assert "fever=CRITICAL(50.0/0.28MB/s-growth)" in plain_line(report_at(reports, 34.0))


def test_plain_sink_on_a_closed_pipe_is_sink_closed(reports):
    read_fd, write_fd = os.pipe()
    os.close(read_fd)
    with os.fdopen(write_fd, "w") as stream:
        with pytest.raises(SinkClosed):
            PlainStatusSink(stream).emit(reports[0])


def test_from_config_takes_the_report_interval(reports):
    out = io.StringIO()
    sink = PlainStatusSink.from_config(Config(output=OutputConfig(report_interval_s=60.0)), out)
    written = [r for r in reports if sink.emit(r)]
    assert written == [reports[0]] + [r for r in reports[1:] if r.verdict.changed]
