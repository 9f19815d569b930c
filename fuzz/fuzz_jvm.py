"""Fuzz the reading of HotSpot performance-data files (coherence.sources.jvm): parse_perfdata,
the counters made of them and PerfLayout, the in-place reader a poll uses after the first parse.
Run: tools/fuzz.sh jvm [libFuzzer options]; replay a file: python fuzz/fuzz_jvm.py FILE.

What must hold for every buffer: parse_perfdata returns a PerfData or raises PerfDataError (its
reason one line), and PerfLayout refuses exactly what it refuses; the counters and the trackers
made of a PerfData never raise; a layout's read of the same buffer gives the counters a whole
parse gives, and so does its read of the buffer with every value it reads rewritten in place
(what a running JVM does between polls); a buffer cut short, or whose prologue changed, reads
as None (parse it again), never as an error.
"""
import struct
import sys
from typing import Dict

import atheris

with atheris.instrument_imports(include=["coherence"]):
    from coherence.sources.jvm import (
        PROLOGUE_SIZE,
        USED,
        AllocationTracker,
        JvmCounters,
        PerfData,
        PerfDataError,
        PerfLayout,
        StallTracker,
        jvm_counters,
    )
    from coherence.sources.jvm import parse_perfdata


def counters_of(perf: PerfData) -> str:
    # repr: NaN (a counter the JVM does not publish) compares unequal to itself
    return repr(jvm_counters(perf))


def follow(counters: JvmCounters) -> None:
    alloc, stalls = AllocationTracker(), StallTracker()
    for _ in range(2):
        alloc.update(counters)
        stalls.update(counters)


def rewritten(data: bytes, layout: PerfLayout, seed: int) -> bytes:
    """``data`` with every value the layout reads changed, as a JVM rewrites them in place."""
    buf = bytearray(data)
    order = "<" if layout.perf.byte_order == "little" else ">"
    for k, (_, at) in enumerate(layout.longs):
        struct.pack_into(order + "q", buf, at, (seed * 0x9E3779B97F4A7C15 + k) % (1 << 64) - (1 << 63))
    for _, at, length in layout.strings:
        buf[at:at + length] = bytes((seed + i) % 256 for i in range(length))
    return bytes(buf)


def test_one_input(data: bytes) -> None:
    try:
        perf = parse_perfdata(data)
    except PerfDataError as err:
        assert str(err) and "\n" not in str(err), repr(str(err))
        try:
            PerfLayout(data, USED)
        except PerfDataError:
            return
        raise AssertionError("PerfLayout accepted a buffer parse_perfdata refuses") from None
    follow(jvm_counters(perf))
    layout = PerfLayout(data, USED)
    assert layout.perf == perf
    wanted: Dict[str, object] = {name: v for name, v in perf.values.items() if USED.match(name)}
    polled = layout.read(data)
    assert polled is not None and dict(polled.values) == wanted, (dict(polled.values) if polled else None, wanted)
    assert counters_of(polled) == counters_of(perf)
    changed = rewritten(data, layout, len(data))
    polled = layout.read(changed)
    assert polled is not None
    assert counters_of(polled) == counters_of(parse_perfdata(changed))
    follow(jvm_counters(polled))
    for cut in (PROLOGUE_SIZE, len(data) // 2, len(data) - 1):
        if PROLOGUE_SIZE <= cut < perf.used_bytes:
            assert layout.read(data[:cut]) is None, cut
    assert layout.read(b"\0" * len(data)) is None


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
