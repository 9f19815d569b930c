"""The JVM source: hsperfdata parsing (real fixtures, synthetic and hostile buffers), the counters
and the allocation estimate, discovery and reading through fake trees, and a real JVM."""
import math
import os
import re
import struct
import subprocess
import time
from datetime import timedelta
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coherence.sources import SourceUnavailable
from coherence.sources.jvm import (
    MAX_ENTRIES,
    AllocationTracker,
    CollectorCounters,
    JvmCounters,
    JvmDiscovery,
    JvmReader,
    JvmTarget,
    PerfDataError,
    PerfDataNotReady,
    USED,
    PerfLayout,
    StallTracker,
    discover_jvms,
    jvm_counters,
    jvm_runtimes,
    parse_perfdata,
)

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "jvm")
MIB = 1 << 20


def fixture(name: str) -> bytes:
    with open(os.path.join(HERE, name), "rb") as f:
        return f.read()


def jcmd_text(text: str) -> Dict[str, Union[int, str]]:
    """`jcmd <pid> PerfCounter.print` output as {name: int or str}."""
    out: Dict[str, Union[int, str]] = {}
    for line in text.splitlines():
        name, eq, value = line.partition("=")
        if not eq:
            continue
        out[name] = value[1:-1] if value.startswith('"') else int(value)
    return out


PARALLEL = fixture("parallel-gc.hsperf")
G1 = fixture("g1.hsperf")


# --------------------------------------------------------------------- real fixtures
@pytest.mark.parametrize("name", ["parallel-gc", "g1"])
def test_fixture_agrees_with_jcmd_on_every_counter(name):
    perf = parse_perfdata(fixture(f"{name}.hsperf"))
    with open(os.path.join(HERE, f"{name}.jcmd.txt")) as f:
        expected = jcmd_text(f.read())
    # jcmd adds sun.perfdata.* from the prologue; the clock moved between the copy and jcmd
    expected = {k: v for k, v in expected.items()
                if not k.startswith("sun.perfdata.") and k != "sun.os.hrt.ticks"}
    assert len(expected) > 150
    assert {k: perf.values.get(k) for k in expected} == expected
    assert perf.byte_order == "little" and (perf.major_version, perf.minor_version) == (2, 0)
    assert perf.accessible and perf.num_entries == len(perf.values)


def test_parallel_fixture_counters():
    c = jvm_counters(parse_perfdata(PARALLEL))
    assert c.ticks_per_s == 1e9
    assert [(k.index, k.name, k.collections_total) for k in c.collectors] == [
        (0, "Parallel young collection pauses", 17), (1, "Parallel full collection pauses", 0)]
    assert c.gc_collections_total == 17
    assert c.gc_time_s_total == pytest.approx(0.012324704)
    assert c.eden_capacity_bytes == 19398656 and c.eden_used_bytes == 7011728
    assert c.heap_used_bytes == 7626256 and c.heap_capacity_bytes == 66584576
    assert c.uptime_s == pytest.approx(2.783, abs=0.001)
    assert c.last_gc_cause == "Allocation Failure"
    assert math.isnan(c.alloc_bytes_total)  # only a tracker knows


def test_g1_fixture_sums_all_three_collectors_like_jstat_gct():
    c = jvm_counters(parse_perfdata(G1))
    assert [k.name for k in c.collectors] == [
        "G1 young collection pauses", "G1 full collection pauses", "G1 concurrent cycle pauses"]
    assert c.gc_collections_total == 9
    assert c.gc_time_s_total == pytest.approx(sum(k.time_s_total for k in c.collectors))
    assert c.gc_time_s_total == pytest.approx(0.007037092)


# --------------------------------------------------------------------- synthetic buffers
Entry = Tuple[str, Union[int, str, bytes]]


def build(entries: Sequence[Entry], order: str = "<", accessible: int = 1) -> bytes:
    """A perfdata 2.0 buffer: longs for ints, constant strings for str, an unsupported 'I' for bytes."""
    body = b""
    for name, value in entries:
        raw = name.encode() + b"\0"
        raw += b"\0" * (-(20 + len(raw)) % 8)
        if isinstance(value, int):
            dtype, vector, units, data = b"J", 0, 4, struct.pack(order + "q", value)
        elif isinstance(value, str):
            dtype, vector, units, data = b"B", len(value) + 1, 5, value.encode() + b"\0"
        else:
            dtype, vector, units, data = b"I", 0, 1, value
        data += b"\0" * (-len(data) % 8)
        length = 20 + len(raw) + len(data)
        body += struct.pack(order + "iii", length, 20, vector) + dtype + bytes([0, units, 1])
        body += struct.pack(order + "i", 20 + len(raw)) + raw + data
    used = 32 + len(body)
    head = struct.pack(">I", 0xCAFEC0C0) + bytes([1 if order == "<" else 0, 2, 0, accessible])
    return head + struct.pack(order + "iiqii", used, 0, 7, 32, len(entries)) + body


COUNTERS: List[Entry] = [
    ("sun.os.hrt.frequency", 1_000_000_000),
    ("sun.os.hrt.ticks", 5_000_000_000),
    ("sun.gc.collector.0.name", "young"),
    ("sun.gc.collector.0.invocations", 10),
    ("sun.gc.collector.0.time", 250_000_000),
    ("sun.gc.collector.1.name", "full"),
    ("sun.gc.collector.1.invocations", 2),
    ("sun.gc.collector.1.time", 750_000_000),
    ("sun.gc.generation.0.space.0.used", 3 * MIB),
    ("sun.gc.generation.0.space.0.capacity", 8 * MIB),
    ("sun.gc.generation.1.space.0.used", 5 * MIB),
    ("sun.gc.generation.1.space.0.capacity", 20 * MIB),
    ("sun.misc.opaque", b"\1\2\3\4\0\0\0\0"),
    ("sun.misc.negative", -5),
]


@pytest.mark.parametrize("order", ["<", ">"])
def test_both_byte_orders_parse_to_the_same_values(order):
    perf = parse_perfdata(build(COUNTERS, order))
    assert perf.byte_order == ("little" if order == "<" else "big")
    assert "sun.misc.opaque" not in perf.values  # not a long, not a string: skipped
    assert perf.long("sun.misc.negative") == -5
    c = jvm_counters(perf)
    assert (c.uptime_s, c.gc_time_s_total, c.gc_collections_total) == (5.0, 1.0, 12.0)
    assert (c.heap_used_bytes, c.heap_capacity_bytes) == (8 * MIB, 28 * MIB)
    assert [k.name for k in c.collectors] == ["young", "full"]


def test_missing_counters_are_nan_not_errors():
    c = jvm_counters(parse_perfdata(build([("java.property.x", "y")])))
    assert c.collectors == ()
    for value in (c.ticks_per_s, c.uptime_s, c.gc_time_s_total, c.gc_collections_total,
                  c.eden_used_bytes, c.heap_used_bytes, c.alloc_bytes_total):
        assert math.isnan(value)
    no_clock = jvm_counters(parse_perfdata(build(COUNTERS[2:])))
    assert math.isnan(no_clock.gc_time_s_total) and no_clock.gc_collections_total == 12


def test_a_half_initialised_buffer_is_not_ready():
    with pytest.raises(PerfDataNotReady, match="not ready"):
        parse_perfdata(build(COUNTERS, accessible=0))


def poke(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(data)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


GOOD = build(COUNTERS)
FIRST = 32  # the first entry


@pytest.mark.parametrize("data, reason", [
    (b"", "short buffer"),
    (GOOD[:31], "short buffer"),
    (poke(GOOD, 0, ">I", 0xDEADBEEF), "bad magic"),
    (poke(GOOD, 4, "B", 7), "byte order"),
    (poke(GOOD, 5, "B", 1), "version 1.0"),
    (poke(GOOD, 8, "<i", 1 << 30), "used size"),
    (GOOD[:200], "used size"),
    (poke(GOOD, 28, "<i", MAX_ENTRIES + 1), "absurd entry count"),
    (poke(GOOD, 28, "<i", -1), "absurd entry count"),
    (poke(GOOD, 24, "<i", 1 << 30), "entry offset"),
    (poke(GOOD, 24, "<i", 33), "entry offset"),
    (poke(GOOD, FIRST, "<i", 1 << 30), "bad length"),
    (poke(GOOD, FIRST, "<i", -8), "bad length"),
    (poke(GOOD, FIRST + 4, "<i", 1 << 30), "outside"),
    (poke(GOOD, FIRST + 16, "<i", -4), "outside"),
    (poke(GOOD, FIRST + 8, "<i", -1), "outside"),
    (GOOD.replace(b"sun.os.hrt.frequency" + b"\0" * 8, b"sun.os.hrt.frequency" + b"X" * 8), "name without NUL"),
    (GOOD.replace(b"sun.os.hrt.frequency\0", b"\0un.os.hrt.frequency\0"), "empty"),
    (poke(GOOD, FIRST + 16, "<i", 52), "long runs past"),  # the first entry is 56 bytes
])
def test_malformed_buffers_give_one_line_reasons(data, reason):
    with pytest.raises(PerfDataError, match=reason) as err:
        parse_perfdata(data)
    assert "\n" not in str(err.value)


def test_entries_stop_at_the_first_empty_one():
    padded = poke(GOOD + b"\0" * 64, 8, "<i", len(GOOD) + 64)  # used covers the zeros
    perf = parse_perfdata(poke(padded, 28, "<i", len(COUNTERS) + 2))
    assert perf.long("sun.os.hrt.frequency") == 1_000_000_000


# --------------------------------------------------------------------- hostile input
HOSTILE = settings(max_examples=400, deadline=timedelta(seconds=2),
                   suppress_health_check=[HealthCheck.too_slow])
PROLOGUE_OK = bytes.fromhex("cafec0c0") + bytes([1, 2, 0, 1])


def parse_or_reason(data: bytes) -> Optional[str]:
    try:
        perf = parse_perfdata(data)
    except PerfDataError as err:
        assert str(err) and "\n" not in str(err)
        return str(err)
    jvm_counters(perf)  # whatever parsed must also be interpretable
    return None


@HOSTILE
@given(st.binary(max_size=4096))
def test_random_bytes_only_raise_perfdata_error(data):
    parse_or_reason(data)


@HOSTILE
@given(st.binary(max_size=4096))
def test_random_bytes_after_a_valid_prologue_head(data):
    parse_or_reason(PROLOGUE_OK + data)


INT32 = st.one_of(st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, 2**31 - 1, -(2**31), 1 << 20]))


@HOSTILE
@given(source=st.sampled_from([PARALLEL, G1, GOOD]), data=st.data())
def test_mutations_of_real_buffers_only_raise_perfdata_error(source, data):
    buf = bytearray(source)
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "int", "truncate", "extend"]), label="kind")
        if kind == "flip" and buf:
            at = data.draw(st.integers(0, len(buf) - 1), label="at")
            buf[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
        elif kind == "int" and len(buf) >= 4:
            # header fields sit at multiples of 4: lengths, offsets, counts
            at = data.draw(st.integers(0, len(buf) // 4 - 1), label="word") * 4
            struct.pack_into("<i", buf, at, data.draw(INT32, label="value"))
        elif kind == "truncate":
            del buf[data.draw(st.integers(0, len(buf)), label="keep"):]
        else:
            buf += data.draw(st.binary(max_size=64), label="tail")
    parse_or_reason(bytes(buf))


def test_every_truncation_of_a_real_buffer_is_an_error_with_a_reason():
    for cut in range(0, len(PARALLEL), 7):
        assert parse_or_reason(PARALLEL[:cut])


# --------------------------------------------------------------------- allocation tracker
def counters(eden_used: float, young: int, full: int = 0, capacity: float = 16 * MIB,
             busy: bool = False) -> JvmCounters:
    collectors = (CollectorCounters(0, "young", young, 0.0, busy), CollectorCounters(1, "full", full, 0.0, False))
    return JvmCounters(1e9, 1.0, 0.0, float(young + full), collectors, eden_used, capacity,
                       eden_used, capacity, "")


def zgc(uptime_s: float, cause: str) -> JvmCounters:
    return JvmCounters(1e9, uptime_s, 0.004, 141.0, (CollectorCounters(2, "Z concurrent cycle pauses", 141, 0.004,
                                                                       False),),
                       math.nan, math.nan, 8e8, 1e9, "", gc_cause=cause)


def test_allocation_stalls_are_counted_by_the_cause_at_each_end_of_an_interval():
    t = StallTracker()
    assert t.update(zgc(10.0, "Allocation Stall")) == 0.0        # the first reading: no interval yet
    assert t.update(zgc(10.5, "Allocation Stall")) == 0.5        # both ends stalled: whole
    assert t.update(zgc(11.0, "Proactive")) == 0.75              # one end: half
    assert t.update(zgc(11.5, "No GC")) == 0.75                  # neither (a cycle, but no stall)
    assert t.update(zgc(12.5, "Allocation Stall")) == 1.25
    assert t.update(zgc(12.5, "Allocation Stall")) == 1.25       # no time passed
    assert t.update(zgc(math.nan, "Allocation Stall")) == 1.25   # no clock published
    assert t.update(zgc(5.0, "Allocation Stall")) == 1.25        # another JVM's clock: from here on
    assert t.update(zgc(5.5, "Allocation Stall")) == 1.75


def test_a_zgc_runtimes_gc_time_is_its_pauses_and_its_stalls(roots):
    proc, tmp = roots
    fake_process(proc, 100, start=4321)
    perf_file(tmp, "alice", 100)
    (runtime,), _ = jvm_runtimes(proc_root=proc, tmp_root=tmp)
    readings = iter([zgc(10.0, "Allocation Stall"), zgc(10.5, "Allocation Stall"), zgc(11.0, "No GC")])

    class Reader:
        def read(self) -> JvmCounters:
            return next(readings)

        def close(self) -> None:
            pass

    runtime.reader = Reader()  # type: ignore[assignment]
    assert runtime.read() == {"gc_seconds_total": 0.004, "gc_collections_total": 141.0}
    assert runtime.read()["gc_seconds_total"] == pytest.approx(0.504)
    assert runtime.read()["gc_seconds_total"] == pytest.approx(0.754)


def test_allocation_between_collections_is_eden_growth():
    t = AllocationTracker()
    assert t.update(counters(1 * MIB, 0)) == 0  # the first reading is the baseline
    assert t.update(counters(5 * MIB, 0)) == 4 * MIB


def test_allocation_across_collections_counts_the_rest_of_eden_and_whole_edens():
    t = AllocationTracker()
    t.update(counters(10 * MIB, 3))
    # one young collection: 6 MiB to fill eden, then 2 MiB since
    assert t.update(counters(2 * MIB, 4)) == 8 * MIB
    # two more (a young and a full): 14 MiB to fill, one whole eden of 16 MiB, 1 MiB since
    assert t.update(counters(1 * MIB, 5, full=1)) == 8 * MIB + 14 * MIB + 16 * MIB + 1 * MIB


def test_a_reading_during_a_pause_is_skipped():
    t = AllocationTracker()
    t.update(counters(10 * MIB, 3))
    # the collection has begun (counted) but eden still shows its old content
    assert t.update(counters(15 * MIB, 4, busy=True)) == 0
    assert t.update(counters(1 * MIB, 4)) == 6 * MIB + 1 * MIB


def test_eden_emptied_without_a_visible_collection_counts_what_it_holds():
    t = AllocationTracker()
    t.update(counters(10 * MIB, 3))
    assert t.update(counters(3 * MIB, 3)) == 3 * MIB


def test_counters_going_back_restart_the_baseline_and_no_eden_is_nan():
    t = AllocationTracker()
    t.update(counters(10 * MIB, 30))
    assert t.update(counters(1 * MIB, 2)) == 0
    assert t.update(counters(2 * MIB, 2)) == 1 * MIB
    assert math.isnan(t.update(counters(math.nan, 2)))


# --------------------------------------------------------------------- fake trees
def stat_line(pid: int, start: int) -> str:
    # comm with a space and a ')' in it: the parser must split at the last ')'
    fields = ["S"] + ["0"] * 18 + [str(start)] + ["0"] * 30
    return f"{pid} (java) x) " + " ".join(fields) + "\n"


def fake_process(proc: str, pid: int, nspids: Sequence[int] = (), start: int = 1000) -> str:
    d = os.path.join(proc, str(pid))
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "stat"), "w") as f:
        f.write(stat_line(pid, start))
    with open(os.path.join(d, "status"), "w") as f:
        f.write(f"Name:\tjava\nPid:\t{pid}\nNSpid:\t" + "\t".join(map(str, nspids or [pid])) + "\n")
    return d


def perf_file(tmp: str, user: str, name: int, data: bytes = PARALLEL) -> str:
    d = os.path.join(tmp, f"hsperfdata_{user}")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, str(name))
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.fixture
def roots(tmp_path) -> Tuple[str, str]:
    proc, tmp = str(tmp_path / "proc"), str(tmp_path / "tmp")
    os.makedirs(proc)
    os.makedirs(tmp)
    return proc, tmp


def test_discovery_finds_live_jvms_and_skips_stale_files(roots):
    proc, tmp = roots
    fake_process(proc, 100, start=4321)
    path = perf_file(tmp, "alice", 100)
    perf_file(tmp, "bob", 200)                 # killed with SIGKILL: no process 200
    perf_file(tmp, "carol", 300)
    fake_process(proc, 300, nspids=[300, 1])   # 300 in a child namespace is not the file's 300
    os.makedirs(os.path.join(tmp, "hsperfdata_dave", "junk"))
    found = discover_jvms(proc, tmp)
    assert found == [JvmTarget(100, 100, path, "alice", os.path.join(proc, "100"), 4321)]
    assert found[0].readable


def test_discovery_skips_a_file_its_process_does_not_map(roots):
    proc, tmp = roots
    d = fake_process(proc, 100)
    path = perf_file(tmp, "alice", 100)
    inode = os.stat(path).st_ino
    line = "7f00-7f08 rw-s 00000000 fd:01 {} {}\n"
    with open(os.path.join(d, "maps"), "w") as f:
        f.write(line.format(inode, path))
    assert [t.pid for t in discover_jvms(proc, tmp)] == [100]
    with open(os.path.join(d, "maps"), "w") as f:  # pid 100 reused by a process without it
        f.write(line.format(inode + 1, "/usr/lib/libc.so.6"))
    assert discover_jvms(proc, tmp) == []


def test_discovery_through_a_containers_root_by_its_namespace_pid(roots):
    proc, tmp = roots
    d = fake_process(proc, 4242, nspids=[4242, 7], start=99)
    path = perf_file(os.path.join(d, "root", "tmp"), "app", 7)
    perf_file(os.path.join(d, "root", "tmp"), "app", 8)  # another process of that container
    expected = [JvmTarget(4242, 7, path, "app", d, 99)]
    assert discover_jvms(proc, tmp) == expected
    assert discover_jvms(proc, tmp, pid=4242) == expected


def test_discovery_looks_into_new_processes_each_time_and_into_all_now_and_then(roots):
    proc, tmp = roots
    clock = [0.0]
    discover = JvmDiscovery(proc_root=proc, tmp_root=tmp, full_every_s=60, clock=lambda: clock[0])
    old = fake_process(proc, 4242, nspids=[4242, 7])
    assert discover() == [] and discover.full_scans == 1
    # a new container's JVM: found at the next scan, which looks at new processes only
    new = fake_process(proc, 5000, nspids=[5000, 1])
    perf_file(os.path.join(new, "root", "tmp"), "app", 1)
    clock[0] = 10
    assert [r.pid for r in discover()] == [5000] and discover.partial_scans == 1
    # a process looked at before that became a JVM (exec): not looked into again until a full
    # scan (nor is 5000: the poller tracks it already)
    perf_file(os.path.join(old, "root", "tmp"), "app", 7)
    clock[0] = 20
    assert discover() == []
    clock[0] = 61
    assert [r.pid for r in discover()] == [4242, 5000] and discover.full_scans == 2
    # a JVM sharing our /tmp is found by every scan, new process or not
    fake_process(proc, 100)
    clock[0] = 65
    assert discover() == []
    perf_file(tmp, "alice", 100)
    clock[0] = 70
    assert [r.pid for r in discover()] == [100]


def test_discovery_by_pid_says_why_nothing_is_there(roots):
    proc, tmp = roots
    fake_process(proc, 100)
    perf_file(tmp, "alice", 100)
    fake_process(proc, 555)
    assert [t.pid for t in discover_jvms(proc, tmp, pid=100)] == [100]
    (missing,) = discover_jvms(proc, tmp, pid=555)
    assert not missing.readable and "no hsperfdata file for process 555" in missing.reason
    (gone,) = discover_jvms(proc, tmp, pid=556)
    assert gone.reason == "no process 556"
    with pytest.raises(SourceUnavailable, match="no process 556"):
        JvmReader(gone)
    with pytest.raises(ValueError):
        discover_jvms(proc, tmp, pid=0)


def open_fake(roots, data: bytes = PARALLEL) -> Tuple[JvmReader, str, str]:
    proc, tmp = roots
    d = fake_process(proc, 100, start=4321)
    path = perf_file(tmp, "alice", 100, data)
    (target,) = discover_jvms(proc, tmp)
    return JvmReader(target), d, path


def test_reader_reads_counters_and_tracks_allocation(roots):
    reader, _, path = open_fake(roots)
    with reader:
        first = reader.read()
        assert first is not None and first.gc_collections_total == 17 and first.alloc_bytes_total == 0
        with open(path, "r+b") as f:  # eden grows by 1 MiB in place, as the JVM writes it
            data = f.read()
            at = data.index(b"sun.gc.generation.0.space.0.used\0")
            start = data.rfind(struct.pack("<i", 20), 0, at) - 4  # the entry's first word
            (data_at,) = struct.unpack_from("<i", data, start + 16)
            f.seek(start + data_at)
            f.write(struct.pack("<q", 7011728 + MIB))
        second = reader.read()
        assert second is not None and second.alloc_bytes_total == MIB
        assert "reading" in reader.reason


def test_reader_not_ready_then_ready(roots):
    reader, _, path = open_fake(roots, poke(PARALLEL, 7, "B", 0))
    with reader:
        assert reader.read() is None and "not ready" in reader.reason
        with open(path, "r+b") as f:
            f.seek(7)
            f.write(b"\1")
        assert reader.read() is not None


def fixture_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("name", ["parallel-gc.hsperf", "g1.hsperf"])
def test_a_layout_reads_in_place_what_a_whole_parse_reads(name):
    data = fixture(name)
    layout = PerfLayout(data, USED)
    whole = parse_perfdata(data)
    fast = layout.read(data)
    assert fast is not None
    assert dict(fast.values) == {n: v for n, v in whole.values.items() if USED.match(n)}
    assert len(fast.values) >= 10 and len(fast.values) < len(whole.values) / 4
    assert jvm_counters(fast) == jvm_counters(whole)


def test_a_layout_refuses_a_buffer_whose_entries_changed():
    layout = PerfLayout(PARALLEL, USED)
    assert layout.read(poke(PARALLEL, 16, "<q", 99)) is None      # mod_time_stamp: an entry added
    assert layout.read(poke(PARALLEL, 28, "<i", 1)) is None       # num_entries


def test_a_reason_naming_an_entry_is_one_line():
    # found by fuzz/fuzz_jvm.py in CI: an entry's name holding a newline made a two-line reason
    data = poke(build([("sun.gc.x\ny", 1)]), FIRST + 16, "<i", 36)     # the long past its 40 bytes
    with pytest.raises(PerfDataError, match="long runs past") as err:
        parse_perfdata(data)
    assert "\n" not in str(err.value) and "'sun.gc.x\\ny'" in str(err.value)


@pytest.mark.parametrize("cut", [32, 4096, len(PARALLEL) - 1])
def test_a_layout_refuses_a_buffer_cut_short(cut):
    # found by fuzz/fuzz_jvm.py: the prologue intact, the places past the end: struct.error
    # escaped read() instead of None (parse again, which names what is wrong)
    layout = PerfLayout(PARALLEL, USED)
    assert layout.read(PARALLEL[:cut]) is None
    with pytest.raises(PerfDataError, match="used size"):
        parse_perfdata(PARALLEL[:cut])


def test_a_reader_parses_whole_again_when_the_jvm_adds_entries(roots):
    reader, _, path = open_fake(roots)
    with reader:
        assert reader.read() is not None
        with open(path, "r+b") as f:       # the JVM appends entries: its prologue's stamp moves
            f.seek(16)
            f.write(struct.pack("<q", 123456))
        again = reader.read()
        assert again is not None and again.gc_collections_total == 17
        perf = reader.read_perfdata()
        assert perf is not None and perf.mod_time_stamp == 123456


def lost_reason(reader: JvmReader) -> str:
    with pytest.raises(SourceUnavailable) as err:
        reader.read()
    assert reader.lost
    with pytest.raises(SourceUnavailable, match=re.escape(str(err.value))):
        reader.read()  # stays lost, with the same reason
    return str(err.value)


def test_a_reused_pid_is_not_mistaken_for_the_old_jvm(roots):
    reader, d, _ = open_fake(roots)
    assert reader.read() is not None
    with open(os.path.join(d, "stat"), "w") as f:  # the JVM exited; a new process got pid 100
        f.write(stat_line(100, 9999))
    assert "another process" in lost_reason(reader)


def test_a_jvm_whose_file_is_deleted_is_lost(roots):
    reader, _, path = open_fake(roots)
    os.unlink(path)
    assert "deleted" in lost_reason(reader)


def test_a_jvm_whose_process_is_gone_is_lost(roots):
    reader, d, _ = open_fake(roots)
    # a real /proc/<pid>/stat, held open, fails with ESRCH once the process is reaped (the real
    # JVM below); a plain file cannot, so the fake one goes empty
    os.truncate(os.path.join(d, "stat"), 0)
    assert "exited" in lost_reason(reader)


def test_a_truncated_file_is_lost(roots):
    reader, _, path = open_fake(roots)
    os.truncate(path, 100)
    assert "truncated" in lost_reason(reader)


def test_a_garbled_file_is_lost_with_the_parsers_reason(roots):
    reader, _, path = open_fake(roots)
    with open(path, "r+b") as f:
        f.write(b"\0\0\0\0")
    assert "bad magic" in lost_reason(reader)


def test_a_reader_found_before_the_pid_was_reused_refuses_to_open(roots):
    proc, tmp = roots
    d = fake_process(proc, 100, start=4321)
    perf_file(tmp, "alice", 100)
    (target,) = discover_jvms(proc, tmp)
    with open(os.path.join(d, "stat"), "w") as f:
        f.write(stat_line(100, 1))
    with pytest.raises(SourceUnavailable, match="another process"):
        JvmReader(target)


# --------------------------------------------------------------------- a real JVM
class Churn:
    """tests/fixtures/jvm/Churn.java running in a real JVM, asked for its allocation count."""

    def __init__(self, classes: str, rate_mb_s: int) -> None:
        self.proc = subprocess.Popen(
            ["java", "-Xmx64m", "-XX:+UseParallelGC", "-cp", classes, "Churn", str(rate_mb_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.readline() == "ready"

    def readline(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().strip()

    def allocated(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return int(self.readline())

    def stop(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


@pytest.fixture
def churn(tmp_path) -> Iterator[Churn]:
    classes = str(tmp_path / "classes")
    subprocess.run(["javac", "-d", classes, os.path.join(HERE, "Churn.java")], check=True)
    jvm = Churn(classes, rate_mb_s=100)
    try:
        yield jvm
    finally:
        if jvm.proc.poll() is None:
            jvm.proc.kill()
            jvm.proc.wait()


def read_ok(reader: JvmReader) -> JvmCounters:
    for _ in range(200):  # the JVM marks its buffer accessible early in startup
        counters = reader.read()
        if counters is not None:
            return counters
    raise AssertionError(reader.reason)


def poll_until(reader: JvmReader, jvm: Churn, allocated: int) -> JvmCounters:
    """Read every ~20 ms (the JVM's own pace sets the time) until it has allocated that much."""
    while True:
        read_ok(reader)
        if jvm.allocated() >= allocated:
            return read_ok(reader)
        time.sleep(0.02)


def test_a_real_jvm_is_found_read_and_lost_when_it_exits(churn):
    pid = churn.proc.pid
    (target,) = discover_jvms(pid=pid)
    assert target.readable and target.path.endswith(f"/hsperfdata_{target.user}/{pid}")
    assert pid in [t.pid for t in discover_jvms()]
    with JvmReader(target) as reader:
        before = read_ok(reader)
        allocated_before = churn.allocated()
        after = poll_until(reader, churn, allocated_before + 150 * MIB)
        allocated = churn.allocated() - allocated_before
        # Churn allocates 150 MiB at 100 MB/s into an eden of ~16-20 MiB: several collections
        assert after.gc_collections_total >= before.gc_collections_total + 3
        assert after.gc_time_s_total > before.gc_time_s_total
        assert after.uptime_s > before.uptime_s and after.ticks_per_s == before.ticks_per_s
        estimated = after.alloc_bytes_total - before.alloc_bytes_total
        # generous: eden is assumed full at each collection, Churn's own count lags by 1 MiB
        assert allocated * 0.75 < estimated < allocated * 1.5, (estimated, allocated)

        # a poll reads the entries it uses in place; the file parsed whole says the same
        whole_before = parse_perfdata(fixture_file(target.path))
        perf_before = reader.read_perfdata()
        text = subprocess.run(["jcmd", str(pid), "PerfCounter.print"], check=True,
                              capture_output=True, text=True).stdout
        perf_after = reader.read_perfdata()
        whole_after = parse_perfdata(fixture_file(target.path))
        assert perf_before is not None and perf_after is not None
        assert set(perf_after.values) == {n for n in whole_after.values if USED.match(n)}
        jcmd = jcmd_text(text)
        for name in ("sun.os.hrt.frequency", "sun.gc.generation.0.space.0.maxCapacity",
                     "sun.gc.collector.0.name", "java.property.java.vm.name"):
            assert whole_before.values[name] == jcmd[name] == whole_after.values[name]
        for name in ("sun.os.hrt.ticks", "sun.gc.collector.0.invocations", "sun.gc.collector.0.time"):
            low, seen, high = perf_before.long(name), jcmd[name], perf_after.long(name)
            first, last = whole_before.long(name), whole_after.long(name)
            assert low is not None and high is not None and isinstance(seen, int)
            assert first is not None and last is not None
            assert first <= low <= seen <= high <= last, name

        churn.stop()
        reason = lost_reason(reader)
        assert str(pid) in reason and ("exited" in reason or "deleted" in reason)
