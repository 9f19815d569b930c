"""The recorder: what the live engine and runtime poller read goes into the file with its times,
a replay of it ends where the live monitor ended, SIGTERM leaves a whole file, and values the
taps could not hold are counted, not invented."""
import gzip
import os
import signal
import subprocess
import sys
import time
from typing import List, Mapping

import numpy as np
import pytest

from coherence import AtomicCounter
from coherence._core import RingBuffer
from coherence.cli import run as cli
from coherence.config import Config
from coherence.monitor import Monitor, Report
from coherence.record import Recorder, _since, _stable
from coherence.recording import CPU_SERIES, Chunk, End, Recording
from coherence.replay import play, replay_config
from coherence.runtime import RuntimePoller
from coherence.sampler import Sampler

COHERENCE = os.path.join(os.path.dirname(sys.executable), "coherence")


class FakeRuntime:
    """A runtime source whose GC counter grows by 0.25 s a read."""

    name, runtime, pid = "jvm 4242", "jvm", 4242

    def __init__(self) -> None:
        self.reads = 0

    def read(self) -> Mapping[str, float]:
        self.reads += 1
        return {"gc_seconds_total": 0.25 * self.reads, "alloc_bytes_total": 1e6 * self.reads}

    def close(self) -> None:
        pass


def test_a_recording_replays_to_what_the_live_monitor_saw(tmp_path):
    path = str(tmp_path / "live.jsonl.gz")
    config = Config()
    ingress, egress = AtomicCounter(), AtomicCounter()
    sampler = Sampler(hz=200, ingress=ingress, egress=egress)
    monitor = Monitor(config, sampler.snapshot)
    poller = RuntimePoller(sampler.signals.runtime, rate_hz=10)
    poller.add(FakeRuntime())
    reports: List[Report] = []
    recorder = Recorder(path, sampler, monitor, config)
    with recorder, sampler, poller:
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            ingress.add(10)
            egress.add(30)
            time.sleep(0.02)
            reports.append(monitor.step(time.monotonic(), time.time()))
            recorder.poll(reports[-1])
        recorder.end_reason = "duration"
    rec = Recording(path)
    h = rec.header
    assert (h.hz, h.slow_hz, h.ncpu, h.resolution_s) == (200.0, 20.0, sampler.ncpu, 0.1)
    cpu = sampler.chosen["cpu"].source
    assert cpu is not None and h.sources["cpu"] == cpu.name
    records = list(rec.records())
    assert isinstance(records[-1], End) and records[-1].reason == "duration"
    chunks = [r for r in records if isinstance(r, Chunk)]
    assert sum(len(c.steps) for c in chunks) == len(reports)
    names = {n for c in chunks for n in c.series}
    assert {CPU_SERIES, "ingress_total", "egress_total", "mem_resident_bytes"} <= names
    assert [t.name for c in chunks for t in c.tracks] == ["jvm 4242"]
    assert sum(len(c.runtime) for c in chunks) >= 10
    # the replay's last judgement is the live one's: same instant, same figures
    replayed: List[Report] = []
    result = play(h, iter(records), replay_config(h), on_report=replayed.append)
    assert result.error is None and len(replayed) == len(reports)
    live, again = reports[-1].snapshot, replayed[-1].snapshot
    assert replayed[-1].elapsed_s == pytest.approx(reports[-1].elapsed_s, abs=1e-5)
    assert again.requests.source == live.requests.source == "pushed"
    assert again.requests.ratio == pytest.approx(live.requests.ratio, rel=1e-9)
    assert again.cpu.buckets == live.cpu.buckets
    assert again.cpu.util_mean_pct == pytest.approx(live.cpu.util_mean_pct, abs=1e-3)
    assert again.memory.resident_bytes == live.memory.resident_bytes
    assert again.memory.minor_faults_per_s == pytest.approx(live.memory.minor_faults_per_s,
                                                            rel=1e-4)   # times to the us
    (p,) = again.runtime
    assert p.gc_share == pytest.approx(live.runtime[0].gc_share, rel=1e-4)


def test_values_the_taps_lost_are_counted_not_invented():
    ring = RingBuffer(4)
    for x in range(10):
        ring.push(x)
    values, total = _stable(ring)
    assert total == 10 and values.tolist() == [6, 7, 8, 9]
    new, lost = _since(values, total, 3, total)
    assert new.tolist() == [6, 7, 8, 9] and lost == 3
    new, lost = _since(values, total, 8, total)
    assert new.tolist() == [8, 9] and lost == 0
    new, lost = _since(values, total, 8, 9)
    assert new.tolist() == [8] and lost == 0
    assert _since(np.array([]), 0, 0, 0)[0].tolist() == []


def lines_of(path: str) -> int:
    """Whole lines of a recording being written: its gzip stream is sync-flushed at every
    record but has no end yet, so reading it ends in EOFError after the lines written so far."""
    n = 0
    try:
        with gzip.open(path, "rt") as f:
            for line in f:
                n += line.endswith("\n")
    except (OSError, EOFError):
        pass
    return n


def test_sigterm_leaves_a_whole_recording(tmp_path):
    path = str(tmp_path / "r.jsonl.gz")
    proc = subprocess.Popen([COHERENCE, "record", "-o", path, "--hz", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while lines_of(path) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "recorded" in err and path in err
    assert out.splitlines()[0].split()[1] in ("WARMUP", "OK", "WARNING", "CRITICAL")
    records = list(Recording(path).records())
    assert isinstance(records[-1], End) and records[-1].reason == "interrupted"


@pytest.mark.parametrize("output, says", [
    ("/nonexistent-dir/r.jsonl", "cannot write /nonexistent-dir/r.jsonl: No such file"),
])
def test_an_unwritable_output_is_one_line(capsys, output, says):
    assert cli(["record", "-o", output, "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1


def test_record_needs_an_output(capsys):
    assert cli(["record", "--duration", "1"]) == 2
    assert "-o" in capsys.readouterr().err
