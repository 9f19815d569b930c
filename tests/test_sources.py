"""Sources against fake /proc and /sys trees (tests/fixtures/) and the parse_fields contract."""
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coherence import sources
from coherence.sources import Field, SourceUnavailable, cpu, memory, netsnmp, parse_fields, pressure
from coherence.sources.cpu import PidClockCpu

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
TICK_NS = 1e9 / os.sysconf("SC_CLK_TCK")
KIB = 1024.0


def tree(name):
    base = os.path.join(FIXTURES, name)
    return {"proc_root": os.path.join(base, "proc"), "sys_root": os.path.join(base, "sys")}


def host_sources(name):
    t = tree(name)
    return [cpu.Cgroup2Cpu(**t), cpu.Cgroup1Cpu(**t), cpu.ProcStatCpu(**t),
            memory.Cgroup2Memory(**t), memory.Cgroup1Memory(**t), memory.HostMemory(**t),
            pressure.Psi(**t), netsnmp.TcpSnmp(**t)]


def pid_sources(name, pid):
    root = tree(name)["proc_root"]
    return [cpu.PidCpu(pid, root), cpu.PidStatCpu(pid, root), memory.PidMemory(pid, root)]


def in_use(choice) -> Optional[str]:
    return choice.source.name if choice.source else None


def read_and_close(source):
    try:
        return source.read()
    finally:
        source.close()


# --- parse_fields: the rules the C parser is tested against ------------------------------------

def test_prefix_matches_at_line_start_only():
    data = b"xpgfault 1\n pgfault 2\npgfault_extra 3\npgfault 4\n"
    assert parse_fields(data, [Field("f", b"pgfault ", 0)]) == {"f": 4.0}


def test_empty_prefix_is_the_first_line_and_occurrence_counts_lines():
    data = b"10 20\n30 40\n"
    assert parse_fields(data, [Field("a", b"", 1), Field("b", b"", 0, occurrence=1)]) == {"a": 20.0, "b": 30.0}


def test_occurrence_picks_the_values_line_after_the_header():
    data = b"Tcp: ActiveOpens PassiveOpens\nTcp: 5 6\nUdp: 1\n"
    fields = [Field("h", b"Tcp:", 0), Field("v", b"Tcp:", 0, occurrence=1), Field("x", b"Tcp:", 0, occurrence=2)]
    assert parse_fields(data, fields) == {"v": 5.0}


def test_after_last_survives_a_process_name_with_parentheses_and_spaces():
    with open(os.path.join(FIXTURES, "cgroup2", "proc", "4242", "stat"), "rb") as f:
        data = f.read()
    assert b") (" in data
    fields = [Field("minflt", b"", 7, after_last=b")"), Field("majflt", b"", 9, after_last=b")"),
              Field("ignored_prefix", b"nope", 1, after_last=b")", occurrence=3)]
    assert parse_fields(data, fields) == {"minflt": 1500.0, "majflt": 7.0, "ignored_prefix": 1.0}
    assert parse_fields(b"4242 (truncated", fields) == {}


def test_key_value_tokens_count_as_their_value():
    data = b"some avg10=0.50 avg60=0.10 avg300=0.00 total=1234\nfull avg10=0.00 total=\n"
    fields = [Field("t", b"some ", 3), Field("avg", b"some ", 0), Field("empty", b"full ", 1)]
    assert parse_fields(data, fields) == {"t": 1234.0}


def test_repeated_signal_is_summed_and_needs_every_part():
    data = b"cpu  1 2 3 4\n"
    assert parse_fields(data, [Field("busy", b"cpu ", i, scale=10.0) for i in (0, 1, 3)]) == {"busy": 70.0}
    assert parse_fields(data, [Field("busy", b"cpu ", i) for i in (0, 9)]) == {}


@pytest.mark.parametrize("token", [b"-1", b"1.5", b"max", b"0x10", b"+3", b"", b"\xff", b"1e9",
                                   b"18446744073709551616", b"000000000000000000001234"])
def test_non_counter_tokens_are_absent(token):
    assert parse_fields(b"v " + token + b"\n", [Field("v", b"v ", 0)]) == {}


def test_largest_u64_and_scale():
    assert parse_fields(b"18446744073709551615\n", [Field("v", b"", 0)]) == {"v": float(2**64 - 1)}
    assert parse_fields(b"usage_usec 7\n", [Field("ns", b"usage_usec ", 0, scale=1000.0)]) == {"ns": 7000.0}


def test_tabs_and_missing_trailing_newline():
    assert parse_fields(b"VmRSS:\t  12 kB", [Field("rss", b"VmRSS:", 0, scale=KIB)]) == {"rss": 12 * KIB}


@pytest.mark.parametrize("kwargs", [dict(signal=""), dict(index=-1), dict(occurrence=-1),
                                    dict(scale=0.0), dict(scale=float("nan")), dict(prefix="str")])
def test_field_misuse_raises_valueerror(kwargs):
    args: Dict[str, Any] = dict(signal="s", prefix=b"p", index=0)
    args.update(kwargs)
    with pytest.raises(ValueError):
        Field(**args)


FUZZ_FIELDS = [Field("a", b"", 0), Field("b", b"cpu ", 3), Field("c", b"Tcp:", 2, occurrence=1),
               Field("d", b"", 7, after_last=b")"), Field("e", b"some ", 3), Field("e", b"full ", 3)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.lists(st.sampled_from(
    [b"cpu ", b"Tcp:", b"some ", b"full ", b")", b" ", b"\n", b"\t", b"=", b"12", b"-3", b"x"])).map(b"".join))
def test_parse_fields_never_raises_on_junk(data):
    out = parse_fields(data, FUZZ_FIELDS)
    assert set(out) <= {"a", "b", "c", "d", "e"}
    assert all(v >= 0 for v in out.values())


# --- each source on each tree ------------------------------------------------------------------

def test_cgroup2_tree_values():
    t = tree("cgroup2")
    assert read_and_close(cpu.Cgroup2Cpu(**t)) == {"cpu_usage_ns_total": 5_000_000 * 1000.0}
    assert read_and_close(cpu.ProcStatCpu(**t)) == {"cpu_usage_ns_total": (100 + 20 + 30 + 6 + 7 + 8) * TICK_NS}
    m = read_and_close(memory.Cgroup2Memory(**t))
    assert m["mem_resident_bytes"] == 3_000_000_000 - 500_000_000  # usage less inactive_file
    assert m["mem_total_bytes"] == 8_000_000 * KIB  # memory.max is "max": the host's memory
    assert m["minor_faults_total"] == 70_000 - 12
    assert read_and_close(pressure.Psi(**t)) == {
        "psi_cpu_some_us_total": 123456.0, "psi_cpu_full_us_total": 0.0,
        "psi_memory_some_us_total": 2000.0, "psi_memory_full_us_total": 1500.0,
        "psi_io_some_us_total": 30000.0, "psi_io_full_us_total": 25000.0}
    assert read_and_close(netsnmp.TcpSnmp(**t)) == {"tcp_active_opens_total": 321.0, "tcp_passive_opens_total": 123.0}


def test_host_memory_values():
    m = read_and_close(memory.HostMemory(**tree("nopsi")))
    assert m["mem_resident_bytes"] == (8_000_000 - 6_000_000) * KIB
    assert m["minor_faults_total"] == 5000 - 40
    assert m["pgalloc_total"] == 10 + 200 + 3000 + 0
    assert (m["pgfree_total"], m["pgmajfault_total"]) == (3300.0, 40.0)


def test_cgroup1_tree_values():
    t = tree("cgroup1")
    assert read_and_close(cpu.Cgroup1Cpu(**t)) == {"cpu_usage_ns_total": 7e9}
    m = read_and_close(memory.Cgroup1Memory(**t))
    assert m["mem_resident_bytes"] == 4e9 - 1e9  # usage less total_inactive_file
    assert m["mem_total_bytes"] == 2147483648.0  # hierarchical_memory_limit < MemTotal
    assert m["minor_faults_total"] == 80_000 - 30  # hierarchical total_*, not this level's pgfault
    # the Tcp columns are in another order on this tree: found by name from the header
    assert read_and_close(netsnmp.TcpSnmp(**t)) == {"tcp_active_opens_total": 321.0, "tcp_passive_opens_total": 123.0}


def test_pid_sources_values():
    root = tree("cgroup2")["proc_root"]
    assert read_and_close(cpu.PidCpu(4242, root)) == {"cpu_usage_ns_total": 987654321.0}
    assert read_and_close(cpu.PidStatCpu(4242, root)) == {"cpu_usage_ns_total": (250 + 50) * TICK_NS}
    assert read_and_close(memory.PidMemory(4242, root)) == {
        "minor_faults_total": 1500.0, "pgmajfault_total": 7.0,
        "mem_resident_bytes": 12345 * KIB, "mem_total_bytes": 8_000_000 * KIB}


def test_schedstat_of_a_multithreaded_process_is_refused_for_whole_process_ticks():
    root = tree("cgroup2")["proc_root"]
    with cpu.PidCpu(4243, root) as s:
        assert not s.available and "main thread only" in s.reason and "42 threads" in s.reason
    with cpu.PidStatCpu(4243, root) as s:
        assert s.available and "10 ms ticks" in s.reason
        assert s.read() == {"cpu_usage_ns_total": (1000 + 500) * TICK_NS}


@pytest.mark.parametrize("name, unavailable", [
    ("cgroup2", {"cpu.cgroup1": "no cgroup v1 cpuacct", "memory.cgroup1": "no cgroup v1 memory"}),
    ("cgroup1", {"cpu.cgroup2": "no cgroup v2", "memory.cgroup2": "no cgroup v2", "pressure.psi": "without PSI"}),
    ("nopsi", {"cpu.cgroup2": "no cgroup v2", "cpu.cgroup1": "no cgroup v1", "memory.cgroup2": "no cgroup v2",
               "memory.cgroup1": "no cgroup v1", "pressure.psi": "without PSI"}),
])
def test_availability_and_reasons_per_tree(name, unavailable):
    for source in host_sources(name):
        with source:
            if source.name in unavailable:
                assert not source.available and unavailable[source.name] in source.reason, source
                assert source.read() == {}
            else:
                assert source.available, source
                assert source.read()


def test_procstat_says_its_resolution_and_rate():
    with cpu.ProcStatCpu(**tree("nopsi")) as s:
        assert s.max_hz == 100 and "10 ms ticks" in s.reason and "100 ms" in s.reason


def test_snmp_reason_says_it_is_a_proxy():
    with netsnmp.TcpSnmp(**tree("nopsi")) as s:
        assert s.family == "requests" and "proxy" in s.reason


def test_garbage_never_raises_and_leaves_every_file_source_unavailable():
    found = host_sources("garbage") + pid_sources("garbage", 4242)
    for source in found:
        with source:
            assert not source.available, source
            assert source.reason and "\n" not in source.reason
            assert source.readers == [] or all(r.fd == -1 for r in source.readers)
            assert source.read() == {}
    assert "no parsable cpu_usage_ns_total" in found[0].reason


def test_readers_expose_the_fields_that_read_uses():
    # The compiled sampler reads the same readers with the same Fields: it must agree with read().
    for name in ("cgroup2", "cgroup1", "nopsi"):
        for source in host_sources(name) + pid_sources(name, 4242):
            with source:
                if not source.available:
                    continue
                parsed = {}
                for reader in source.readers:
                    parsed.update(parse_fields(reader.read(), reader.fields))
                assert parsed.items() <= source.read().items(), source
                for field in (f for r in source.readers for f in r.fields):
                    assert field.counter == field.signal.endswith("_total"), field


def test_derived_minor_faults_never_step_back(tmp_path):
    shutil.copytree(os.path.join(FIXTURES, "nopsi"), tmp_path / "t")
    vmstat = tmp_path / "t" / "proc" / "vmstat"
    text = vmstat.read_text()
    with memory.HostMemory(proc_root=str(tmp_path / "t" / "proc")) as s:
        assert s.read()["minor_faults_total"] == 4960
        # pgmajfault counted before the matching pgfault is visible: a difference that steps back
        vmstat.write_text(text.replace("pgmajfault 40", "pgmajfault 45"))
        assert s.read()["minor_faults_total"] == 4960
        vmstat.write_text(text.replace("pgfault 5000", "pgfault 6000").replace("pgmajfault 40", "pgmajfault 45"))
        assert s.read()["minor_faults_total"] == 5955


def test_a_vmstat_line_too_long_to_be_a_zone_is_not_declared_as_one(tmp_path):
    # found by fuzz/fuzz_procfs.py: "pgalloc_" and 40 bytes of junk became a Field the compiled
    # sampler could not hold, and the sampler refused to start
    shutil.copytree(os.path.join(FIXTURES, "nopsi"), tmp_path / "t")
    vmstat = tmp_path / "t" / "proc" / "vmstat"
    vmstat.write_bytes(vmstat.read_bytes() + b"pgalloc_" + b"\xb6" * 40 + b"movable 7\n")
    from coherence.sampler import Sampler
    with memory.HostMemory(proc_root=str(tmp_path / "t" / "proc")) as s:
        assert s.available and s.read()["pgalloc_total"] == 3210   # the real zones' sum
    with Sampler(hz=100, proc_root=str(tmp_path / "t" / "proc"), sys_root=str(tmp_path / "t" / "sys")) as sampler:
        assert {r.family: r.name for r in sampler.sources() if r.in_use}["memory"] == "memory.host"


# --- discovery, fallbacks, pid ----------------------------------------------------------------

@pytest.mark.parametrize("name, expected", [
    ("cgroup2", {"cpu": "cpu.cgroup2", "memory": "memory.cgroup2", "pressure": "pressure.psi",
                 "requests": "requests.tcp_snmp"}),
    ("cgroup1", {"cpu": "cpu.cgroup1", "memory": "memory.cgroup1", "pressure": None,
                 "requests": "requests.tcp_snmp"}),
    ("nopsi", {"cpu": "cpu.procstat", "memory": "memory.host", "pressure": None,
               "requests": "requests.tcp_snmp"}),
    ("garbage", {"cpu": "cpu.psutil", "memory": None, "pressure": None, "requests": None}),
])
def test_fallback_order(name, expected):
    # psutil is a dependency: on the garbage tree it is the CPU source of last resort
    chosen = sources.select(**tree(name))
    try:
        assert {f: in_use(c) for f, c in chosen.items()} == expected
        assert [s.name for s in chosen["cpu"].tried] == ["cpu.cgroup2", "cpu.cgroup1", "cpu.procstat", "cpu.psutil"]
    finally:
        sources.close_all(chosen)


def test_without_psutil_garbage_has_no_cpu_source(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # makes `import psutil` raise ImportError
    rows = sources.describe(**tree("garbage"))
    psutil_row = next(r for r in rows if r.name == "cpu.psutil")
    assert not psutil_row.available and psutil_row.reason == "psutil is not installed"
    assert not any(r.in_use for r in rows)


def test_pid_sources_come_first_and_a_missing_pid_falls_back():
    chosen = sources.select(pid=4242, **tree("cgroup2"))
    try:
        assert in_use(chosen["cpu"]) == "cpu.pid"
        assert in_use(chosen["memory"]) == "memory.pid"
        assert [s.name for s in chosen["cpu"].tried][:4] == [
            "cpu.pidclock", "cpu.pid", "cpu.pidstat", "cpu.psutil"]
        assert "need the real /proc" in chosen["cpu"].tried[0].reason
    finally:
        sources.close_all(chosen)
    missing = 4_194_305  # above the kernel's largest pid_max (2**22): no such process, here or real
    chosen = sources.select(pid=missing, **tree("cgroup2"))
    try:
        assert chosen["cpu"].tried[0].reason == f"no process {missing}"
        assert chosen["memory"].tried[0].reason == f"no process {missing}"
        assert in_use(chosen["cpu"]) == "cpu.cgroup2"
    finally:
        sources.close_all(chosen)


def test_the_pid_clock_refuses_a_read_once_its_process_exited():
    """A zombie's clock still reads (and a reused pid's reads another process): the pidfd says
    the process exited, and the source is unavailable from then on."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        source = PidClockCpu(child.pid)
        assert source.available and source.clock_alive is not None
        assert source.read()["cpu_usage_ns_total"] >= 0
        child.kill()
        deadline = time.monotonic() + 10
        while source.read():
            assert time.monotonic() < deadline, "still read after the process exited"
        assert source.reason == f"process {child.pid} exited" and source.clock_alive is None
        source.close()
    finally:
        child.kill()
        child.wait()


def test_a_pid_hidden_by_hidepid_is_told_from_a_missing_one(monkeypatch):
    """/proc mounted with hidepid hides other users' processes: signal 0 still finds them."""
    import coherence.sources._base as base

    def not_ours(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(base.os, "kill", not_ours)
    with pytest.raises(SourceUnavailable, match="process 4194305 is hidden from this user: "
                                                "/proc is mounted with hidepid"):
        base.pid_dir("/proc", 4_194_305)
    # a fake tree lends no real processes: there it is only missing
    with pytest.raises(SourceUnavailable, match="^no process 4194305$"):
        base.pid_dir(tree("cgroup2")["proc_root"], 4_194_305)


@pytest.mark.parametrize("pid", [0, -1, "42", 1.5, True])
def test_bad_pid_raises_valueerror(pid):
    with pytest.raises(ValueError, match="pid must be a positive integer"):
        sources.discover(pid=pid, **tree("nopsi"))


def test_describe_rows():
    rows = sources.describe(**tree("cgroup2"))
    assert {r.family for r in rows} == set(sources.FAMILIES)
    for family in sources.FAMILIES:
        in_use = [r for r in rows if r.family == family and r.in_use]
        assert len(in_use) == 1 and in_use[0].available and in_use[0].max_hz > 0
    assert all(isinstance(r.reason, str) and r.reason for r in rows)


# --- CPU capacity -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, pid, cpus, mentions", [
    ("cgroup2", None, 1.5, "cpu.max"),  # cpu.max "150000 100000" at the visible root
    ("cgroup2", 4242, 0.5, "app"),      # /app "50000 100000" below it
    ("cgroup1", None, 1.0, "cpu,cpuacct"),
    ("cgroup1", 4242, 0.5, "app"),
    ("nopsi", None, 3.0, "online CPUs"),  # the host: not this process's affinity
    ("garbage", 4242, 4.0, "affinity"),  # junk quotas are no quota
])
def test_cpu_capacity(monkeypatch, name, pid, cpus, mentions):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    got, reason = sources.cpu_capacity(pid=pid, **tree(name))
    assert got == cpus and mentions in reason


@pytest.mark.parametrize("name, rel", [
    ("cgroup1", "sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us"),
    ("cgroup2", "sys/fs/cgroup/cpu.max"),
])
def test_a_quota_of_zero_is_no_quota_not_zero_cpus(tmp_path, monkeypatch, name, rel):
    # found by fuzz/fuzz_procfs.py: a quota of 0 (which no kernel sets) gave 0 CPUs, and the
    # sampler refused to start ("ncpu must be > 0")
    shutil.copytree(os.path.join(FIXTURES, name), tmp_path / "t")
    (tmp_path / "t" / rel).write_text("0 100000\n" if name == "cgroup2" else "0\n")
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    cpus, reason = sources.cpu_capacity(str(tmp_path / "t" / "proc"), str(tmp_path / "t" / "sys"))
    assert cpus > 0 and "quota 0" not in reason, reason


@pytest.mark.parametrize("text, cpus", [
    ("0-3,8,10-11\n", 7), ("0", 1), ("0-65535", 65536),
    ("0-" + "9" * 400, 0),        # past float(): OverflowError
    ("0-" + "9" * 5000, 0),       # past int()'s 4300 digits: ValueError
    ("5-2", 0), ("0-3,3-1", 0), ("65536", 0), ("\u00b2", 0), ("1-\u00b2", 0), ("0,,1", 0), ("", 0),
])
def test_cpu_lists_that_are_junk_count_no_cpu(text, cpus):
    assert cpu.parse_cpu_list(text) == cpus


def test_cpu_capacity_of_a_missing_process():
    cpus, reason = sources.cpu_capacity(pid=4_194_305, **tree("nopsi"))
    assert cpus == os.cpu_count() and "no process 4194305" in reason
