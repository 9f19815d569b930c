"""The sampler: its C parser against the Python one, the tick loop's behaviour (deadlines,
overruns, lost files, the GIL), and the Sampler on fake trees and on this machine."""
import array
import math
import os
import random
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coherence import RingBuffer, RollingStats
from coherence._sampler import Engine, Gauges, Slot, parse_fields_c
from coherence.sampler import SLOTS, Sampler, SamplerError, lateness_percentiles
from coherence.sources import Field, parse_fields, select
from coherence.sources._base import MAX_AFTER_LAST_BYTES, MAX_PREFIX_BYTES, READ_SIZE

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def tree(name):
    base = os.path.join(FIXTURES, name)
    return {"proc_root": os.path.join(base, "proc"), "sys_root": os.path.join(base, "sys")}


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ------------------------------------------------------------------ the C parser
TOKENS = [b"1", b"0", b"42", b"18446744073709551615", b"18446744073709551616", b"-3", b"1.5",
          b"a=7", b"x=", b"=9", b"total=100", b"max", b")", b") (", b"cpu", b"cpu ", b"",
          b"\xff\xfe", b"0x10", b"123456789012345678901"]
SPACES = [b" ", b"\t", b"\n", b"\r\n", b"  ", b"\x0b", b"\x0c"]


@settings(max_examples=1500, deadline=None)
@given(parts=st.lists(st.tuples(st.sampled_from(TOKENS), st.sampled_from(SPACES)), max_size=20),
       prefix=st.sampled_from([b"", b"cpu", b"cpu ", b"a", b"total=", b"1"]),
       index=st.integers(0, 4), occurrence=st.integers(0, 2),
       after=st.sampled_from([b"", b")", b"="]))
def test_c_parser_agrees_with_parse_fields(parts, prefix, index, occurrence, after):
    data = b"".join(t + w for t, w in parts)
    expected = parse_fields(data, [Field("s", prefix, index, occurrence, after)]).get("s")
    assert parse_fields_c(data, [(prefix, index, occurrence, after)]) == [expected]


def test_c_parser_on_every_real_file_the_sources_read():
    chosen = select()
    try:
        for choice in chosen.values():
            for reader in (choice.source.readers if choice.source else []):
                data = reader.read()
                for f in reader.fields:
                    py = parse_fields(data, [Field("s", f.prefix, f.index, f.occurrence, f.after_last)])
                    assert parse_fields_c(data, [(f.prefix, f.index, f.occurrence, f.after_last)]) \
                        == [py.get("s")], (reader.path, f)
    finally:
        for choice in chosen.values():
            for s in choice.tried:
                s.close()


def test_the_c_parser_holds_every_field_a_source_may_declare():
    # Field refuses what the compiled parser's fixed buffers cannot hold (found by fuzz/fuzz_procfs.py:
    # a vmstat line "pgalloc_<40 bytes of junk>" made HostMemory declare a zone the sampler refused)
    widest = Field("s", b"p" * MAX_PREFIX_BYTES, 0, after_last=b")" * MAX_AFTER_LAST_BYTES)
    assert parse_fields_c(b"x", [(widest.prefix, 0, 0, widest.after_last)]) == [None]
    for prefix, after in ((b"p" * (MAX_PREFIX_BYTES + 1), b""), (b"", b")" * (MAX_AFTER_LAST_BYTES + 1))):
        with pytest.raises(ValueError, match="too long"):
            parse_fields_c(b"x", [(prefix, 0, 0, after)])
        with pytest.raises(ValueError, match="longer than"):
            Field("s", prefix, 0, after_last=after)


def test_the_engine_reads_as_many_bytes_of_a_file_as_the_sources_parse(tmp_path):
    # the tick loop read one byte less than Source.read(): a number ending a 64 KiB file lost its
    # last digit in C only
    path = tmp_path / "big"
    tail = b"\nmemtotal 123"
    path.write_bytes(b"#" * (READ_SIZE - len(tail)) + tail)
    expected = parse_fields(path.read_bytes(), [Field("m", b"memtotal ", 0)])["m"]
    engine, gauges = Engine(200.0, 0.1, 1.0), Gauges()
    engine.feed_gauges(gauges)
    fd = os.open(path, os.O_RDONLY)
    try:
        engine.add_file(fd, 1, 0, [(b"memtotal ", 0, 0, b"", Slot.RESIDENT_BYTES, 1.0)])
        run_engine(engine, 0.2)
    finally:
        os.close(fd)
    assert engine.file_stats()[0]["reads"] > 0
    assert gauges.values()[Slot.RESIDENT_BYTES] == expected == 123


@pytest.mark.parametrize("where", ["host", "cgroup2", "cgroup1", "nopsi"])
def test_every_source_declares_how_its_fields_feed_the_sampler(where):
    from coherence.sources import discover
    for candidates in discover(**({} if where == "host" else tree(where))).values():
        for source in candidates:
            derived = {t for targets in source.recipe.values() for t, _ in targets}
            assert derived <= set(SLOTS), (source.name, derived - set(SLOTS))
            assert set(source.required) <= derived | set(source.recipe), source.name
            assert set(source.rules) <= derived, source.name
            source.close()


@pytest.mark.parametrize("name", ["cgroup2", "cgroup1", "nopsi"])
def test_the_compiled_engine_derives_what_the_sources_derive(name):
    # One declaration (recipe, rules), two implementations: the engine's slots on a fake tree
    # hold what Source.read() derives from the same files.
    expected = {}
    chosen = select(**tree(name))
    for choice in chosen.values():
        if choice.source is not None:
            expected.update(choice.source.read())
        for source in choice.tried:
            source.close()
    with Sampler(hz=200, **tree(name)) as s:
        assert wait_for(lambda: s.stats().ticks > 50)
        values = s.signals.gauges.values()
    checked = 0
    for signal, slot in SLOTS.items():
        if signal in expected and slot != Slot.CPU_NS:    # CPU is published as buckets
            assert values[slot] == pytest.approx(expected[signal], rel=1e-12), signal
            checked += 1
    assert checked >= 4, expected


# ------------------------------------------------------------------ the tick loop
class FakeCounter:
    """A file whose `usage_usec` grows like `busy` CPUs would, rewritten in place by a thread."""

    def __init__(self, path, busy):
        self.path, self.busy = path, busy
        self.t0 = time.monotonic()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self._write()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _write(self):
        usec = int((time.monotonic() - self.t0) * 1e6 * self.busy)
        os.pwrite(self.fd, b"usage_usec %020d\n" % usec, 0)

    def _run(self):
        while not self.stop.is_set():
            self._write()
            time.sleep(0.0005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        os.close(self.fd)


def run_engine(engine, seconds):
    t = threading.Thread(target=engine.run)
    t.start()
    try:
        time.sleep(seconds)
    finally:
        engine.stop()
        t.join(2)
    assert not t.is_alive()


def test_cpu_buckets_are_utilization_of_the_cpus_available(tmp_path):
    # 1.5 CPUs busy out of 2 available: 75 % in every bucket, whatever the jitter of the ticks.
    engine = Engine(500.0, 0.1, 2.0)
    buckets, history = RollingStats(50), RingBuffer(50)
    engine.feed_cpu(buckets, history)
    with FakeCounter(str(tmp_path / "cpu.stat"), busy=1.5) as fake:
        ro = os.open(fake.path, os.O_RDONLY)
        engine.add_file(ro, 1, 0, [(b"usage_usec ", 0, 0, b"", Slot.CPU_NS, 1000.0)])
        run_engine(engine, 1.5)
        os.close(ro)
    assert buckets.count >= 10
    assert buckets.mean == pytest.approx(75.0, abs=3.0)
    # The fake counter is written by a Python thread: when the machine holds it back for a few
    # ms, the counter reads stale, one bucket reads low and the next as much high. Utilization
    # is conserved (the mean above); most buckets read the 75 % exactly as it is.
    values = history.to_array()
    assert np.median(values) == pytest.approx(75.0, abs=2.0), values
    assert np.mean(np.abs(values - 75.0) <= 5.0) >= 0.75, values


def test_a_tick_that_overruns_skips_deadlines_instead_of_bursting():
    # A callback source that takes 35 ms at 100 Hz: each tick overruns 3 deadlines. Ticks must
    # not catch up (no burst): about one tick per 40 ms, and the skipped ones counted.
    engine = Engine(100.0, 0.1, 1.0)
    def slow_source():
        time.sleep(0.035)
        return {}

    engine.add_callback(1, 0, slow_source, {})
    run_engine(engine, 1.0)
    s = engine.stats()
    assert 10 <= s["ticks"] <= 40, s
    assert s["overruns"] >= 2 * s["ticks"] - 5, s
    assert s["ticks"] + s["overruns"] == pytest.approx(s["elapsed_s"] * 100, abs=6)


def test_gauges_start_unknown_and_have_one_writer():
    g = Gauges()
    values, times, lost = g.state()
    assert all(math.isnan(v) for v in values) and all(math.isnan(t) for t in times)
    assert not any(lost)
    g.update({Slot.RESIDENT_BYTES: 5.0, Slot.MEM_TOTAL_BYTES: 9.0}, 1.5)
    values, times, _ = g.state()
    assert (values[Slot.RESIDENT_BYTES], values[Slot.MEM_TOTAL_BYTES], times[Slot.RESIDENT_BYTES]) == (5.0, 9.0, 1.5)
    engine = Engine(10.0, 0.1, 1.0)
    engine.feed_gauges(g)
    with pytest.raises(RuntimeError, match="one writer"):
        g.update({Slot.RESIDENT_BYTES: 1.0})
    with pytest.raises(ValueError, match="already fed"):
        Engine(10.0, 0.1, 1.0).feed_gauges(g)


def test_the_engine_is_configured_before_it_runs_never_after():
    engine = Engine(100.0, 0.1, 1.0)
    run_engine(engine, 0.05)
    with pytest.raises(RuntimeError, match="before it runs"):
        engine.feed_gauges(Gauges())
    with pytest.raises(RuntimeError, match="before it runs"):
        engine.set_rule(Slot.RESIDENT_BYTES, 0.0)


def test_stop_is_prompt_even_at_one_hertz():
    engine = Engine(1.0, 0.5, 1.0)
    t = threading.Thread(target=engine.run)
    t.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    engine.stop()
    t.join(2)
    assert not t.is_alive() and time.monotonic() - t0 < 0.5


def test_engine_runs_once_and_validates():
    with pytest.raises(ValueError, match="hz"):
        Engine(0.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="resolution"):
        Engine(10.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="ncpu"):
        Engine(10.0, 0.1, 0.0)
    engine = Engine(10.0, 0.1, 1.0)
    with pytest.raises(ValueError, match="slot"):
        engine.add_file(0, 1, 0, [(b"x", 0, 0, b"", 99, 1.0)])
    with pytest.raises(ValueError, match="schedule"):
        engine.add_file(0, 2, 2, [])
    run_engine(engine, 0.05)
    with pytest.raises(RuntimeError, match="once"):
        engine.run()


def test_ticks_continue_while_another_thread_holds_the_gil():
    # list.sort() holds the GIL for its whole run: a loop that needed the GIL would stall.
    with Sampler(hz=1000) as s:
        assert wait_for(lambda: s.stats().ticks > 50)
        data = [random.random() for _ in range(2_000_000)]
        before, t0 = s.stats().ticks, time.monotonic()
        data.sort()
        held = time.monotonic() - t0
        during = s.stats().ticks - before
    assert held > 0.2, "the sort was too short to show anything"
    assert during > 0.25 * held * 1000, (during, held)


def test_a_process_that_exits_is_lost_once_not_an_error_per_tick():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        s = Sampler(hz=200, pid=child.pid).start()
        assert wait_for(lambda: s.stats().ticks > 20)
        child.kill()
        child.wait()
        ticks = s.stats().ticks
        assert wait_for(lambda: s.stats().ticks > ticks + 100)   # still ticking
        assert s.running
        lost = [f for f in s.engine.file_stats() if f["lost"]]
        assert len(lost) >= 2 and all(f["errors"] == 1 for f in lost)   # stat, status
        rows = {r.name: r for r in s.sources()}
        assert not rows["memory.pid"].available and "lost" in rows["memory.pid"].reason
        s.stop()
    finally:
        child.kill()
        child.wait()


def test_a_process_that_exited_is_lost_even_while_its_clock_still_reads():
    """An exited process unreaped (a zombie) still has a CPU clock, and once reaped its pid may
    be given to another process, whose clock the same id reads: the engine asks the process's
    pidfd after each read, and loses the clock as soon as it exited."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        s = Sampler(hz=200, pid=child.pid).start()
        assert s.chosen["cpu"].source is not None and s.chosen["cpu"].source.name == "cpu.pidclock"
        assert wait_for(lambda: s.stats().ticks > 20)
        assert not s.signals.gauges.state()[2][Slot.CPU_NS]
        child.kill()                            # not reaped: its clock still answers
        assert wait_for(lambda: s.signals.gauges.state()[2][Slot.CPU_NS])
        rows = {r.name: r for r in s.sources()}
        assert not rows["cpu.pidclock"].available and "lost" in rows["cpu.pidclock"].reason
        s.stop()
    finally:
        child.kill()
        child.wait()


# ------------------------------------------------------------------ the Sampler
@pytest.mark.parametrize("kwargs, match", [
    ({"hz": 0}, "hz must be a positive"),
    ({"hz": -5}, "hz must be a positive"),
    ({"hz": "abc"}, "hz must be a number"),
    ({"hz": 2001}, "between 1 and 2000"),
    ({"hz": 100, "window_s": 0.1, "resolution_s": 0.1}, "at least two buckets"),
    ({"hz": 5, "resolution_s": 0.1}, "shorter than one tick"),
    ({"pid": 0}, "pid must be a positive integer"),
    ({"pid": "42"}, "pid must be a positive integer"),
])
def test_bad_arguments_are_one_clear_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampler(**kwargs)


def test_a_pid_that_does_not_exist_is_a_sampler_error():
    with pytest.raises(SamplerError, match="no process 4194305"):
        Sampler(pid=4_194_305)


@pytest.mark.parametrize("name", ["cgroup2", "cgroup1", "nopsi", "garbage"])
def test_sampler_runs_on_every_fake_tree_without_an_error(name):
    try:
        s = Sampler(hz=200, **tree(name))
    except SamplerError as err:        # garbage: no CPU source at all is a clean error
        assert name == "garbage" and "no CPU source" in str(err)
        return
    with s:
        assert wait_for(lambda: s.stats().ticks > 50)
        snap = s.snapshot()
    in_use = {r.family: r.name for r in s.sources() if r.in_use}
    assert "cpu" in in_use
    assert snap.cpu.available
    if name in ("cgroup2", "cgroup1") and "memory" in in_use:
        assert snap.memory.resident_bytes > 0


def test_sampler_on_this_machine_reads_every_family_and_reports_on_itself():
    with Sampler(hz=1000) as s:
        assert wait_for(lambda: s.signals.cpu_buckets.count >= 5)
        # allocate and touch 64 MB a few times: minor faults must show as churn
        for _ in range(5):
            bytearray(64 << 20)
        assert wait_for(lambda: s.snapshot().memory.minor_faults_per_s > 0)
        snap, stats = s.snapshot(), s.stats()
    assert 0.0 <= snap.cpu.util_mean_pct <= 105.0
    assert snap.memory.resident_bytes > 0 and snap.memory.total_bytes > 0
    assert stats.ticks > 0 and stats.achieved_hz > 0 and stats.cpu_percent > 0
    assert stats.tick_lateness_p50_us <= stats.tick_lateness_p99_us <= stats.tick_lateness_max_us
    for (source, path), f in zip(s._files, s.engine.file_stats()):
        assert f["errors"] == 0, path
        # cgroup v2's memory.max reads "max" when unlimited: an expected absence
        assert f["parse_misses"] == 0 or path.endswith("memory.max"), (source, path, f)


def test_pushed_request_counters_feed_the_ratio():
    from coherence import AtomicCounter
    ingress, egress = AtomicCounter(), AtomicCounter()
    with Sampler(hz=200, slow_hz=50, ingress=ingress, egress=egress) as s:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            ingress.add(10)
            egress.add(25)
            time.sleep(0.005)
        assert wait_for(lambda: s.snapshot().requests.ingress_in_window > 100)
        req = s.snapshot().requests
    assert req.source == "pushed"
    assert req.ratio == pytest.approx(2.5, rel=0.05)
    assert req.ingress_per_s > 0


def test_files_are_opened_read_only_and_closed_by_stop():
    from test_sources_real import open_fds as fds   # without the listing's own descriptor

    before = fds()
    s = Sampler(hz=100).start()
    checked = 0
    for fd in fds() - before:
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                flags = int(next(line for line in f if line.startswith("flags:")).split()[1], 8)
        except FileNotFoundError:      # the descriptor listdir used for itself
            continue
        assert flags & os.O_ACCMODE == os.O_RDONLY
        checked += 1
    assert checked >= 3
    s.stop()
    assert fds() == before


def test_lateness_quantiles_are_the_histograms_percentiles_without_the_list():
    # reports take p50 and p99 from the engine's counts in one pass (no list of up to 2 072
    # pairs four times a second): the same floats lateness_percentiles gives of the histogram
    qs = [0.0, 1e-9, 0.01, 0.25, 0.5, 0.9, 0.99, 0.999, 0.999999, 1.0, 1.5]
    idle = Sampler(hz=500)
    assert all(math.isnan(x) for x in idle.engine.lateness_quantiles(qs))
    with Sampler(hz=2000) as s:
        assert wait_for(lambda: s.stats().ticks > 500)
    hist = s.engine.lateness_histogram()               # stopped: the counts hold still
    assert len(hist) >= 2
    assert s.engine.lateness_quantiles(qs) == lateness_percentiles(hist, qs) + [float(hist[-1][0])]
    stats = s.stats()
    assert [stats.tick_lateness_p50_us, stats.tick_lateness_p99_us, stats.tick_lateness_max_us] == \
        lateness_percentiles(hist, (0.50, 0.99)) + [float(hist[-1][0])]
    with pytest.raises(ValueError, match="at most 16"):
        s.engine.lateness_quantiles([0.5] * 17)
    # the raw counts, every bin, in one bytes object: the same histogram
    counts = array.array("q", s.engine.lateness_counts())
    bounds = s.engine.lateness_bounds()
    assert len(counts) == len(bounds) == 2048 + 24
    assert [(b, n) for b, n in zip(bounds, counts) if n] == hist


def test_heartbeat_and_lateness_sum_are_read_live():
    """/healthz judges a stalled sampler by its last tick, and /metrics' tick-lateness
    histogram takes its _sum from the engine: both move while the loop runs, and the sum lies
    within the histogram's own bins."""
    with Sampler(hz=500) as s:
        assert math.isnan(s.stats().last_tick_s) or s.stats().last_tick_s > 0
        assert wait_for(lambda: s.stats().ticks > 20)
        first = s.stats().last_tick_s
        assert first <= time.monotonic()
        assert wait_for(lambda: s.stats().last_tick_s > first)
    stats, hist = s.stats(), s.engine.lateness_histogram()
    low = sum((upper - 1 if upper <= 2048 else upper // 2) * n for upper, n in hist)
    high = sum(upper * n for upper, n in hist)
    assert low / 1e6 <= stats.tick_lateness_sum_s <= high / 1e6
    assert stats.cpu_s > 0
