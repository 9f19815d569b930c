"""The runtime poller and board: counters that runtimes keep themselves become rates (GC share
of wall time, collections and bytes allocated per second, requests in and out), read off the
tick path; a source that fails is lost with its reason, the others go on."""
import math
import threading
import time

import pytest

from coherence.runtime import (ALLOC_BYTES, GC_COLLECTIONS, GC_SECONDS, REQUESTS_IN, REQUESTS_OUT,
                               RuntimeBoard, RuntimePoller, describe)
from coherence.signals import Signals
from coherence.sources import SourceUnavailable


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


class FakeRuntime:
    """A process whose counters grow at given rates per second of the fake clock."""

    def __init__(self, clock, rates, name="jvm 42", fail_after=None):
        self.clock, self.rates, self.name = clock, rates, name
        self.runtime, self.pid = "jvm", 42
        self.reads = 0
        self.fail_after = fail_after
        self.closed = False
        self.retries = False

    def read(self):
        self.reads += 1
        if self.fail_after is not None and self.reads > self.fail_after:
            raise SourceUnavailable("process 42 exited: /tmp/hsperfdata_x/42")
        return {name: rate * self.clock.t for name, rate in self.rates.items()}

    def close(self):
        self.closed = True


def run_rounds(poller, clock, seconds, period=0.25):
    for _ in range(int(seconds / period)):
        clock.t += period
        poller.poll_once()


def test_counters_become_the_rates_the_detectors_judge():
    clock = FakeClock()
    board = RuntimeBoard(half_life_s=1.0, ratio_points=20)
    poller = RuntimePoller(board, rate_hz=4.0, clock=clock)
    # a death spiral: 0.7 s of GC per second, 100 collections/s, 6 GB/s allocated
    poller.add(FakeRuntime(clock, {GC_SECONDS: 0.7, GC_COLLECTIONS: 100.0, ALLOC_BYTES: 6e9,
                                   REQUESTS_IN: 200.0, REQUESTS_OUT: 500.0}))
    run_rounds(poller, clock, 10.0)
    (p,) = board.snapshot()
    assert p.available and not p.lost and p.pid == 42 and p.runtime == "jvm"
    assert p.gc_share == pytest.approx(0.7) and p.collections_per_s == pytest.approx(100.0)
    assert p.alloc_bytes_per_s == pytest.approx(6e9)
    assert p.ratio == pytest.approx(2.5) and p.requests_in_per_s == pytest.approx(200.0)
    assert set(p.recognised) == {GC_SECONDS, GC_COLLECTIONS, ALLOC_BYTES, REQUESTS_IN, REQUESTS_OUT}


def test_a_source_that_fails_is_lost_with_its_reason_and_closed_the_others_go_on():
    clock = FakeClock()
    board = RuntimeBoard()
    poller = RuntimePoller(board, clock=clock)
    dying = FakeRuntime(clock, {GC_SECONDS: 0.1}, name="jvm 42", fail_after=3)
    healthy = FakeRuntime(clock, {GC_SECONDS: 0.02}, name="jvm 7")
    poller.add(dying)
    poller.add(healthy)
    run_rounds(poller, clock, 5.0)
    lost, alive = board.snapshot()
    assert lost.lost and not lost.available and "exited" in lost.reason and dying.closed
    assert dying.reads == 4                           # never read again once lost
    assert alive.available and alive.gc_share == pytest.approx(0.02)
    lines = describe(board)
    assert lines[0] == "jvm 42: lost: process 42 exited: /tmp/hsperfdata_x/42"
    assert lines[1] == "jvm 7: in use: gc_seconds_total"


def test_before_its_first_read_a_source_is_not_available_nor_lost():
    board = RuntimeBoard()
    board.add(FakeRuntime(FakeClock(), {}))
    (p,) = board.snapshot()
    assert not p.available and not p.lost and math.isnan(p.gc_share)


def test_a_service_restart_is_a_counter_reset_not_a_negative_rate():
    clock = FakeClock()
    board = RuntimeBoard(ratio_points=8)
    poller = RuntimePoller(board, clock=clock)
    src = FakeRuntime(clock, {REQUESTS_IN: 100.0, REQUESTS_OUT: 100.0})
    poller.add(src)
    run_rounds(poller, clock, 3.0)
    src.rates = {REQUESTS_IN: 1.0, REQUESTS_OUT: 1.0}   # restarted: counters from near zero
    clock.t += 0.25
    poller.poll_once()
    (p,) = board.snapshot()
    assert p.requests_in_per_s >= 0 and p.ratio >= 0


def test_the_poller_thread_reads_on_its_own_and_stops_promptly():
    board = RuntimeBoard()
    poller = RuntimePoller(board, rate_hz=50.0)
    src = FakeRuntime(FakeClock(), {GC_SECONDS: 0.0})
    poller.add(src)
    with poller:
        deadline = time.monotonic() + 5.0
        while src.reads < 5 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert src.reads >= 5 and src.closed
    assert not any(t.name == "coherence-runtime" for t in threading.enumerate())


def test_the_signals_snapshot_carries_each_runtime_process():
    s = Signals(ratio_window_s=5.0, runtime_hz=4.0)
    assert s.snapshot().runtime == ()
    clock = FakeClock()
    poller = RuntimePoller(s.runtime, clock=clock)
    poller.add(FakeRuntime(clock, {GC_SECONDS: 0.5}))
    run_rounds(poller, clock, 3.0)
    (p,) = s.snapshot().runtime
    assert p.gc_share == pytest.approx(0.5, rel=1e-6)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_bad_rate_is_refused(bad):
    with pytest.raises(ValueError, match="rate_hz"):
        RuntimePoller(RuntimeBoard(), rate_hz=bad)


def test_amplification_takes_pushed_counts_first_then_scraped_then_the_tcp_proxy():
    pushed = {"yes": False}
    s = Signals(ratio_window_s=5.0, runtime_hz=4.0, pushed=lambda: pushed["yes"])
    assert s.snapshot().requests.source == "tcp_proxy"
    clock = FakeClock()
    poller = RuntimePoller(s.runtime, clock=clock)
    poller.add(FakeRuntime(clock, {REQUESTS_IN: 10.0, REQUESTS_OUT: 35.0}, name="scrape http://127.0.0.1:1/metrics"))
    poller.add(FakeRuntime(clock, {REQUESTS_IN: 200.0, REQUESTS_OUT: 250.0}, name="scrape http://127.0.0.1:2/metrics"))
    run_rounds(poller, clock, 6.0)
    r = s.snapshot().requests
    assert r.source == "scraped" and r.origin == "scrape http://127.0.0.1:2/metrics"   # the busiest
    assert r.ratio == pytest.approx(1.25) and r.ingress_per_s == pytest.approx(200.0)
    pushed["yes"] = True
    assert s.snapshot().requests.source == "pushed"


def test_a_source_that_retries_is_read_again_after_a_failure_and_comes_back():
    clock = FakeClock()
    board = RuntimeBoard()
    poller = RuntimePoller(board, clock=clock)
    flaky = FakeRuntime(clock, {REQUESTS_IN: 10.0, REQUESTS_OUT: 10.0}, name="scrape http://x/metrics",
                        fail_after=2)
    flaky.retries = True
    poller.add(flaky)
    run_rounds(poller, clock, 1.0)
    (p,) = board.snapshot()
    assert p.lost and not p.available and not flaky.closed     # down for now, still watched
    flaky.fail_after = None                                      # the target answers again
    run_rounds(poller, clock, 1.0)
    (p,) = board.snapshot()
    assert p.available and not p.lost and flaky.reads > 4


def test_discovery_runs_at_once_when_what_it_watches_changes():
    clock = FakeClock()
    board = RuntimeBoard()
    poller = RuntimePoller(board, clock=clock)
    found: list = []
    token = {"v": 0}
    poller.watch(lambda: list(found), every_s=1000.0, changed=lambda: token["v"])
    assert not board.tracks
    found.append(FakeRuntime(clock, {GC_SECONDS: 0.1}, name="jvm 9"))
    assert not poller._due()                       # nothing changed, the full scan is far off
    token["v"] = 1                                 # a JVM created its performance file
    assert poller._due()
    poller.discover_now()
    assert [t.source.name for t in board.tracks] == ["jvm 9"]


def test_the_hsperfdata_directories_change_when_a_jvm_starts(tmp_path):
    from coherence.sources.jvm import jvm_files_changed
    assert jvm_files_changed(str(tmp_path)) == ()
    d = tmp_path / "hsperfdata_alice"
    d.mkdir()
    first = jvm_files_changed(str(tmp_path))
    assert [name for name, _ in first] == ["hsperfdata_alice"]
    import os
    os.utime(d, ns=(1, 1))
    (d / "4242").write_bytes(b"x")                 # a JVM's file appears: the directory changes
    assert jvm_files_changed(str(tmp_path)) != first
    assert jvm_files_changed(str(tmp_path / "nope")) == ()


def test_the_watch_stats_the_directories_and_lists_tmp_only_when_it_changes(tmp_path):
    import os

    from coherence.sources.jvm import JvmFilesWatch
    watch = JvmFilesWatch(str(tmp_path))
    assert watch() == () and watch.listings == 1
    d = tmp_path / "hsperfdata_alice"
    d.mkdir()                                      # /tmp changes: listed again
    first = watch()
    assert [name for name, _ in first] == ["hsperfdata_alice"] and watch.listings == 2
    assert watch() == first and watch.listings == 2
    os.utime(d, ns=(1, 1))
    (d / "4242").write_bytes(b"x")                 # a JVM's file appears: its directory changes
    second = watch()
    assert second != first and watch.listings == 2
    (d / "4242").unlink()                          # and when it exits
    assert watch() != second
    assert JvmFilesWatch(str(tmp_path / "nope"))() == ()
