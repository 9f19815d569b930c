"""The daemon's log: one line per detector state change, with its reason and recommendation;
WARNING for an alarm, INFO otherwise; nothing for a report that changes nothing."""
import logging

from coherence.sinks.log import StateLog, configure_logging
from test_sinks_jsonl import scripted_reports


def test_one_line_per_state_change(caplog):
    reports = scripted_reports(until=30.0)
    logger = logging.getLogger("coherence.test-statelog")
    sink = StateLog(logger)
    with caplog.at_level(logging.INFO, logger=logger.name):
        said = [sink.emit(r) for r in reports]
    changes = sum(1 for a, b in zip(reports, reports[1:]) for d in a.verdict.states
                  if a.verdict.states[d] != b.verdict.states[d])
    assert len(caplog.records) == changes > 3 and said.count(True) <= changes
    critical = [r for r in caplog.records if "-> CRITICAL" in r.getMessage()]
    assert critical and all(r.levelno == logging.WARNING for r in critical)
    assert any("(recommends SHED_LOAD)" in r.getMessage() for r in critical)
    assert all(r.levelno == logging.INFO for r in caplog.records if "-> OK" in r.getMessage())


def test_configure_logging_writes_stamped_lines_to_stderr(capsys):
    log = configure_logging()
    try:
        log.info("hello")
        err = capsys.readouterr().err
        assert err.endswith("Z coherence INFO: hello\n") and err[:4].isdigit()
    finally:
        log.handlers[:] = []
        log.propagate = True
        log.setLevel(logging.NOTSET)
