"""The Nagios check line: status word, one reason per detector, perfdata with limits and `U` for
a missing figure; the sink writes it once, when the run ends normally, and knows the exit code."""
import io
import re
from typing import List

import pytest

from coherence.config import Config, FeverConfig
from coherence.monitor import Report
from coherence.sinks.nagios import NagiosSink, check_line
from test_sinks_jsonl import report_at, scripted_reports

LINE = re.compile(r"^COHERENCE (OK|WARNING|CRITICAL|UNKNOWN) - seizure \S+: .+; fever \S+: .+; "
                  r"amplification \S+: .+ \| (\S+=\S+)( \S+=\S+){7}$")


@pytest.fixture(scope="module")
def reports() -> List[Report]:
    return scripted_reports()


def test_the_status_word_follows_the_plugin_convention(reports):
    assert check_line(reports[0]).startswith("COHERENCE UNKNOWN - seizure WARMUP: ")
    assert check_line(report_at(reports, 12.0)).startswith("COHERENCE OK - seizure OK: CPU steady")
    assert check_line(report_at(reports, 6.0)).startswith("COHERENCE WARNING - ")
    assert check_line(report_at(reports, 25.0)).startswith("COHERENCE CRITICAL - ")
    for r in reports:
        assert LINE.match(check_line(r)), check_line(r)


def test_perfdata(reports):
    perf = check_line(report_at(reports, 25.0)).split(" | ", 1)[1].split()
    assert perf == [
        "seizure_cpu_std_pct=35.0;20;;0;100", "seizure_cpu_mean_pct=40.0;;;0;100",
        "fever_alloc_mb_s=900.0;512;;0;", "fever_resident_mb=4000;;;0;",
        "amplification_ratio=3.000;1.3;;0;", "sampler_hz=998.6;;;0;",
        "sampler_p99_lateness_us=114;;;0;", "sampler_cpu_pct=3.03;;;0;100"]
    first = check_line(reports[0]).split(" | ", 1)[1]
    assert "amplification_ratio=U;1.1;;0;" in first          # no ratio yet
    simulated = check_line(scripted_reports(until=1.0, sampler=None)[-1])
    assert "sampler_hz=U;;;0;" in simulated
    assert "fever_alloc_mb_s=14.0;256;;0;" in check_line(report_at(reports, 12.0),
                                                         Config(fever=FeverConfig(churn_limit_mb_s=256)))


def test_the_sink_writes_one_line_at_the_end_with_the_exit_code(reports):
    out = io.StringIO()
    with NagiosSink(out) as sink:
        for r in reports[:100]:
            assert not sink.emit(r)
        assert out.getvalue() == ""
    assert out.getvalue() == check_line(reports[99]) + "\n"
    assert sink.exit_code == reports[99].status.exit_code


@pytest.mark.parametrize("t, code", [(0.0, 3), (12.0, 0), (6.0, 1), (25.0, 2)])
def test_exit_codes(reports, t, code):
    sink = NagiosSink(io.StringIO())
    sink.emit(report_at(reports, t))
    assert sink.exit_code == code


def test_an_interrupted_check_writes_nothing_and_is_unknown(reports):
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt):
        with NagiosSink(out) as sink:
            sink.emit(reports[-1])
            raise KeyboardInterrupt
    assert out.getvalue() == ""
    assert NagiosSink(out).exit_code == 3                     # no report at all
