"""The Sentinel wires a real sampler to the monitor and the sinks: reports at the evaluation
period reach every sink, the sinks and the sampler are opened and closed together, a StatsD
listener is part of it when asked, and a bad setting leaves nothing running."""
import dataclasses
import io
import json
import os
import signal
import socket
import time
from typing import Any, List

import pytest

from coherence._core import AtomicCounter
from coherence.config import Config
from coherence.monitor import Report, judged_requests
from coherence.sampler import SamplerError
from coherence.sentinel import EVAL_PERIOD_S, Sentinel, Stop, stop_signals
from coherence.sinks.jsonl import JsonLinesSink
from coherence.statsd import StatsdError

CFG = Config().with_overrides({"sampler.hz": 200.0})


class Recorder:
    def __init__(self) -> None:
        self.reports: List[Report] = []
        self.opened = self.closed = False

    def emit(self, report: Report) -> bool:
        assert self.opened and not self.closed
        self.reports.append(report)
        return True

    def __enter__(self) -> "Recorder":
        self.opened = True
        return self

    def __exit__(self, *exc: Any) -> None:
        self.closed = True


def test_run_gives_every_report_to_every_sink_and_returns_the_last():
    recorder, out = Recorder(), io.StringIO()
    sentinel = Sentinel.from_config(CFG, sinks=[recorder, JsonLinesSink(out, interval_s=0.5)])
    seen: List[Report] = []
    with sentinel:
        assert sentinel.sampler.running and recorder.opened
        last = sentinel.run(1.0, seen.append)
    assert recorder.closed and not sentinel.sampler.running
    assert recorder.reports == seen and last is seen[-1]
    # one report per evaluation period, the last at the duration
    assert 1.0 / EVAL_PERIOD_S - 1 <= len(seen) <= 1.0 / EVAL_PERIOD_S + 2
    assert seen[-1].elapsed_s >= 1.0
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) >= 2 and lines[-1]["sampler"]["hz"] == 200.0


def test_the_sinks_are_closed_and_the_sampler_stopped_on_ctrl_c():
    recorder = Recorder()

    def interrupt(report: Report) -> None:
        raise KeyboardInterrupt

    sentinel = Sentinel.from_config(CFG, sinks=[recorder])
    with pytest.raises(KeyboardInterrupt):
        with sentinel:
            sentinel.run(None, interrupt)
    assert recorder.closed and len(recorder.reports) == 1 and not sentinel.sampler.running


@pytest.mark.parametrize("signum, raised", [(signal.SIGINT, KeyboardInterrupt),
                                             (signal.SIGTERM, Stop)])
def test_a_stop_signal_during_a_step_is_raised_between_steps(signum, raised):
    # A signal that comes while a sink draws (or the monitor judges) must not raise there, half
    # way through: the sink finishes its report, and run raises at its next step.
    recorder, finished = Recorder(), []

    def slow_sink_step(report: Report) -> None:
        if len(recorder.reports) == 2:
            os.kill(os.getpid(), signum)        # handled at once, in this (the main) thread
            time.sleep(0.05)
            finished.append(len(recorder.reports))

    sentinel = Sentinel.from_config(CFG, sinks=[recorder])
    previous = signal.getsignal(signum)
    with pytest.raises(raised):
        with stop_signals(), sentinel:
            sentinel.run(None, slow_sink_step)
    assert finished == [2] and len(recorder.reports) == 2      # no third step
    assert recorder.closed and not sentinel.sampler.running
    assert signal.getsignal(signum) is previous                  # the handlers are restored


def test_a_second_stop_signal_raises_at_once_even_inside_a_step():
    # the loop may be blocked inside a step (a write to a pipe nobody reads): Ctrl-C twice
    # still stops it
    recorder, finished = Recorder(), []

    def blocked_step(report: Report) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        finished.append(True)

    sentinel = Sentinel.from_config(CFG, sinks=[recorder])
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with stop_signals(), sentinel:
            sentinel.run(None, blocked_step)
    assert not finished and time.monotonic() - started < 4
    assert recorder.closed and not sentinel.sampler.running


def test_outside_run_a_stop_signal_raises_at_once():
    with pytest.raises(KeyboardInterrupt):
        with stop_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    with pytest.raises(Stop):
        with stop_signals():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)


def test_statsd_counts_reach_the_amplification_detector():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sentinel = Sentinel.from_config(CFG, statsd=("127.0.0.1", port), statsd_prefix="svc")
    assert sentinel.listener is not None
    with sentinel, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        assert sentinel.listener.running
        for _ in range(20):
            client.sendto(b"svc.ingress:10|c\nsvc.egress:30|c", ("127.0.0.1", port))
            time.sleep(0.05)
        client.sendto(b"svc.ingress:oops|c\nsvc.egress|c\nother.metric:1|c", ("127.0.0.1", port))
        time.sleep(0.1)
        report = sentinel.run(0.5)
    assert not sentinel.listener.running
    assert report.snapshot.requests.source == "pushed"
    # what the JSON line and the dashboard say: the pushed counts judged, and what came in
    assert report.sampler is not None
    assert report.sampler["sources"]["requests"] == "requests.pushed"
    statsd = report.sampler["statsd"]
    assert statsd["packets"] == 21 and statsd["accepted"] == 40
    assert statsd["malformed"] == 2 and statsd["ignored"] == 1
    assert statsd["dropped"] == 0                 # the kernel dropped none (read from /proc/net/udp)
    reads = report.sampler["reads"]
    assert set(reads) == set(report.sampler["sources"].values()) - {"requests.pushed"} | {"requests.tcp_snmp"}
    assert all(r["reads"] > 0 and r["parse_misses"] == 0 and r["errors"] == 0 for r in reads.values())


def test_without_pushed_or_scraped_counts_the_tcp_source_is_named():
    # counters of its own: the process-wide ones have been pushed to by other tests
    with Sentinel.from_config(CFG, counters=(AtomicCounter(), AtomicCounter())) as sentinel:
        report = sentinel.run(0.3)
    assert report.sampler is not None and "statsd" not in report.sampler
    assert report.snapshot.requests.source == "tcp_proxy"
    assert report.sampler["sources"]["requests"].startswith("requests.tcp")
    assert "requests_origin" not in report.sampler


def test_a_scraped_services_counts_are_named_with_their_target():
    with Sentinel.from_config(CFG, counters=(AtomicCounter(), AtomicCounter())) as sentinel:
        report = sentinel.run(0.3)
    assert report.sampler is not None
    scraped = dataclasses.replace(report.snapshot, requests=dataclasses.replace(
        report.snapshot.requests, source="scraped", origin="scrape http://127.0.0.1:1/metrics"))
    figures = judged_requests(report.sampler, scraped)
    assert figures["sources"]["requests"] == "requests.scraped"
    assert figures["requests_origin"] == "scrape http://127.0.0.1:1/metrics"
    assert report.sampler["sources"]["requests"].startswith("requests.tcp")      # not changed in place


def test_a_bad_pid_leaves_no_listener_behind():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SamplerError, match="no process"):
        Sentinel.from_config(CFG, pid=4194305, statsd=("127.0.0.1", port))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))        # free again: the listener was stopped


def test_a_port_in_use_is_a_statsd_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        with pytest.raises(StatsdError, match="address already in use"):
            Sentinel.from_config(CFG, statsd=taken.getsockname())
