"""Fuzz the parsing of /proc and cgroup files: the Python parser the sources probe and read with
(coherence.sources.parse_fields, and each source's own probe-time parsing) against the compiled
one the sampler's tick loop runs (coherence._sampler, find_field), which must give the same
answer for every field of every file. Run: tools/fuzz.sh procfs [libFuzzer options] (against a
build of the compiled parser instrumented for coverage, ASan and UBSan).

An input is one file of a fake /proc or /sys tree (copied from tests/fixtures): byte 0 chooses
the file, byte 1 an extra field to look for (any prefix, index, occurrence, after_last), the
rest is the file's contents. Every source that reads that file is probed on the tree; it must
not raise; each field it declares for the file must parse alike in Python and in C; a source
that probes as available must read, without raising, finite values.
"""
import atexit
import math
import os
import shutil
import sys
import tempfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple, cast

import atheris

with atheris.instrument_imports(include=["coherence"]):
    from coherence._sampler import parse_fields_c
    from coherence.sources import Field, Source, cpu_capacity, parse_fields
    from coherence.sources.cpu import Cgroup1Cpu, Cgroup2Cpu, PidCpu, PidStatCpu, ProcStatCpu
    from coherence.sources.memory import Cgroup1Memory, Cgroup2Memory, HostMemory, PidMemory
    from coherence.sources.netsnmp import TcpSnmp
    from coherence.sources.pressure import Psi

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "fixtures")
PID = 4242                    # single-threaded in the fixtures (4243 has 42 threads)
PREFIX_MAX = 40               # as the compiled parser's field_t.prefix
AFTERS = (b"", b")", b"=", b":")

Roots = Dict[str, str]
Probe = Callable[[Roots], Sequence[object]]


def host(*classes: Callable[..., Source]) -> Probe:
    return lambda roots: [cls(**roots) for cls in classes]


def of_pid(*classes: Callable[..., Source]) -> Probe:
    return lambda roots: [cls(PID, roots["proc_root"]) for cls in classes]


def capacity(pid: Optional[int]) -> Probe:
    # cpu_capacity parses cpu.max, cfs quotas, cpusets and /proc/<pid>/cgroup; it is no Source
    return lambda roots: [cpu_capacity(roots["proc_root"], roots["sys_root"], pid)]


CG1 = "sys/fs/cgroup/cpu,cpuacct/"
# (tree, file, what reads it)
FILES: Tuple[Tuple[str, str, Tuple[Probe, ...]], ...] = (
    ("cgroup2", "proc/stat", (host(ProcStatCpu),)),
    ("cgroup2", "proc/meminfo", (host(HostMemory, Cgroup2Memory), of_pid(PidMemory))),
    ("cgroup2", "proc/vmstat", (host(HostMemory),)),
    ("cgroup2", "proc/pressure/cpu", (host(Psi),)),
    ("cgroup2", "proc/pressure/memory", (host(Psi),)),
    ("cgroup2", "proc/pressure/io", (host(Psi),)),
    ("cgroup2", "proc/net/snmp", (host(TcpSnmp),)),
    ("cgroup2", f"proc/{PID}/stat", (of_pid(PidStatCpu, PidMemory),)),
    ("cgroup2", f"proc/{PID}/status", (of_pid(PidCpu, PidMemory),)),
    ("cgroup2", f"proc/{PID}/schedstat", (of_pid(PidCpu),)),
    ("cgroup2", f"proc/{PID}/cgroup", (capacity(PID),)),
    ("cgroup2", "sys/fs/cgroup/cpu.stat", (host(Cgroup2Cpu),)),
    ("cgroup2", "sys/fs/cgroup/cpu.max", (capacity(None),)),
    ("cgroup2", "sys/fs/cgroup/app/cpu.max", (capacity(PID),)),
    ("cgroup2", "sys/fs/cgroup/memory.current", (host(Cgroup2Memory),)),
    ("cgroup2", "sys/fs/cgroup/memory.stat", (host(Cgroup2Memory),)),
    ("cgroup2", "sys/fs/cgroup/memory.max", (host(Cgroup2Memory),)),
    ("cgroup1", CG1 + "cpuacct.usage", (host(Cgroup1Cpu),)),
    ("cgroup1", CG1 + "cpu.cfs_quota_us", (capacity(None),)),
    ("cgroup1", CG1 + "cpu.cfs_period_us", (capacity(None),)),
    ("cgroup1", "sys/fs/cgroup/cpuset/cpuset.cpus", (capacity(None),)),
    ("cgroup1", "sys/fs/cgroup/memory/memory.usage_in_bytes", (host(Cgroup1Memory),)),
    ("cgroup1", "sys/fs/cgroup/memory/memory.stat", (host(Cgroup1Memory),)),
)


def _make_trees() -> Tuple[str, Dict[str, Roots]]:
    # TMPDIR: tools/fuzz.sh points it at a directory it removes (libFuzzer's exit skips atexit)
    work = tempfile.mkdtemp(prefix="coherence-fuzz-procfs-")
    atexit.register(shutil.rmtree, work, True)
    roots = {}
    for tree in sorted({tree for tree, _, _ in FILES}):
        shutil.copytree(os.path.join(FIXTURES, tree), os.path.join(work, tree))
        roots[tree] = {"proc_root": os.path.join(work, tree, "proc"),
                       "sys_root": os.path.join(work, tree, "sys")}
    return work, roots


WORK, ROOTS = _make_trees()
ORIGINAL = {(tree, rel): open(os.path.join(WORK, tree, rel), "rb").read() for tree, rel, _ in FILES}


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def field_in_c(data: bytes, f: Field) -> Optional[float]:
    value = parse_fields_c(data, [(f.prefix, f.index, f.occurrence, f.after_last)])[0]
    return None if value is None else value * f.scale


def same_in_c_and_python(data: bytes, fields: Sequence[Field]) -> None:
    """Each field alike in both parsers, and parse_fields' sums by signal as its rules say."""
    expected: Dict[str, float] = {}
    missing = set()
    for f in fields:
        c = field_in_c(data, f)
        py = parse_fields(data, [Field("s", f.prefix, f.index, f.occurrence, f.after_last, f.scale)]).get("s")
        assert c == py, (f, c, py)
        if c is None:
            missing.add(f.signal)
        else:
            expected[f.signal] = expected.get(f.signal, 0.0) + c
    for signal in missing:
        expected.pop(signal, None)
    assert parse_fields(data, fields) == expected, (fields, expected)


def extra_field(spec: int, data: bytes) -> Field:
    """Any field, from one byte: the prefix is the start of the file's first line up to and
    with its first space (or none), index, occurrence and after_last from the other bits."""
    first = data.split(b"\n", 1)[0]
    cut = first.find(b" ")
    prefix = b"" if spec & 0x80 else (first if cut < 0 else first[:cut + 1])[:PREFIX_MAX]
    return Field("extra", prefix, spec & 7, occurrence=(spec >> 3) & 3, after_last=AFTERS[(spec >> 5) & 3])


def check_source(source: Source, path: str, data: bytes) -> None:
    for reader in source.readers:
        if reader.path == path:
            same_in_c_and_python(data, reader.fields)
    if source.available:
        values = source.read()
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values()), values
        if source.readers:
            assert set(source.required) <= set(values), (source.required, values)


def test_one_input(data: bytes) -> None:
    if len(data) < 2:
        return
    tree, rel, probes = FILES[data[0] % len(FILES)]
    content = data[2:]
    same_in_c_and_python(content, [extra_field(data[1], content)])
    path = os.path.join(WORK, tree, rel)
    _write(path, content)
    try:
        for probe in probes:
            for made in probe(ROOTS[tree]):
                if isinstance(made, Source):
                    try:
                        check_source(made, path, content)
                    finally:
                        made.close()
                else:
                    cpus, why = cast(Tuple[float, str], made)
                    assert math.isfinite(cpus) and cpus > 0 and why, made
    finally:
        _write(path, ORIGINAL[(tree, rel)])


def main(argv: List[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
