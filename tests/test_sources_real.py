"""Sources against the real files of this machine: fds, counters, and what minor faults measure."""
import mmap
import gc
import os
import subprocess

import pytest

from coherence import sources
from coherence.sources import cpu, memory


PAGE = mmap.PAGESIZE
MIB = 1 << 20


def _is_open(fd: str) -> bool:
    try:
        os.fstat(int(fd))
    except OSError:
        return False
    return True


def open_fds():
    """The descriptors open now: the listing's own descriptor (the lowest free number while it
    lists, closed once it has) is not one of them."""
    return {fd for fd in os.listdir("/proc/self/fd") if _is_open(fd)}


def fd_flags(fd):
    with open(f"/proc/self/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return int(line.split()[1], 8)  # octal, as the kernel prints it
    raise AssertionError(f"no flags in fdinfo of {fd}")


def test_every_fd_is_read_only_close_on_exec_and_closed_by_close():
    # what earlier tests left for the collector (a socket, a file) is closed now, not while
    # this test compares descriptors; one closed meanwhile may lend its number to a reader, so
    # the comparisons are of what is new, not of counts
    gc.collect()
    before = open_fds()
    chosen = sources.select()
    readers = [r for c in chosen.values() if c.source for r in c.source.readers]
    assert readers, "no file-backed source in use on this machine"
    mine = {str(r.fileno()) for r in readers}
    assert len(mine) == len(readers)
    for reader in readers:
        flags = fd_flags(reader.fileno())
        assert flags & os.O_ACCMODE == os.O_RDONLY, reader
        assert flags & os.O_CLOEXEC, reader
    # candidates not chosen were closed by select(), unavailable ones at their probe
    assert open_fds() - before <= mine <= open_fds()
    sources.close_all(chosen)
    assert not open_fds() - before
    assert all(r.fd == -1 for r in readers)


def test_real_machine_has_cpu_and_memory_sources_whose_counters_do_not_go_down():
    chosen = sources.select()
    try:
        assert chosen["cpu"].source is not None and chosen["memory"].source is not None
        sum(range(200_000))  # some CPU time between the reads
        first = {f: c.source.read() for f, c in chosen.items() if c.source}
        sum(range(200_000))
        second = {f: c.source.read() for f, c in chosen.items() if c.source}
        assert first["cpu"]["cpu_usage_ns_total"] > 0
        assert first["memory"]["mem_resident_bytes"] > 0
        for family, values in first.items():
            for signal, value in values.items():
                if signal.endswith("_total"):
                    assert second[family][signal] >= value, (family, signal)
        print({f: c.source.name for f, c in chosen.items() if c.source})
    finally:
        sources.close_all(chosen)


def test_describe_on_this_machine_closes_what_it_opened():
    before = open_fds()
    rows = sources.describe()
    assert open_fds() == before
    assert any(r.family == "cpu" and r.in_use for r in rows)
    for row in rows:
        print(row)


def test_a_process_that_exits_makes_its_sources_unavailable_without_raising():
    child = subprocess.Popen(["sleep", "30"])
    try:
        watched = [cpu.PidCpu(child.pid), cpu.PidStatCpu(child.pid), memory.PidMemory(child.pid)]
        assert all(s.available for s in watched), watched
        assert all(s.read() for s in watched)
    finally:
        child.kill()
        child.wait()
    for source in watched:
        assert source.read() == {} and not source.available and source.reason
        assert source.read() == {}  # once: no error on every tick
        source.close()
        with pytest.raises(ValueError):
            source.read()


def test_minor_faults_stay_flat_while_a_file_streams_through_the_page_cache(tmp_path):
    size = 200 * MIB
    buf = bytearray(MIB)  # one buffer reused: our own reads must not allocate fresh memory
    path = tmp_path / "stream.bin"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for _ in range(size // MIB):
            os.write(fd, buf)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # evict: the read must allocate
    finally:
        os.close(fd)
    with memory.HostMemory() as host, memory.PidMemory(os.getpid()) as me:
        host0, me0 = host.read(), me.read()
        with open(path, "rb", buffering=0) as f:
            for _ in range(2):
                f.seek(0)
                while f.readinto(buf):
                    pass
        host1, me1 = host.read(), me.read()
    pages = size // PAGE
    pgalloc = host1["pgalloc_total"] - host0["pgalloc_total"]
    host_minor = host1["minor_faults_total"] - host0["minor_faults_total"]
    my_minor = me1["minor_faults_total"] - me0["minor_faults_total"]
    print(f"\nfile pages {pages}, host pgalloc +{pgalloc:.0f}, host minor faults +{host_minor:.0f}, "
          f"this process's minor faults +{my_minor:.0f}")
    assert pgalloc >= pages / 2  # the page cache did allocate ...
    assert my_minor < pgalloc / 20  # ... and it is not churn: our own faults barely moved
    assert host_minor < pgalloc / 2  # host-wide, other processes add noise: generous bound


def test_minor_faults_count_anonymous_memory_touched():
    size, rounds = 100 * MIB, 3
    pages = size // PAGE
    with memory.HostMemory() as host, memory.PidMemory(os.getpid()) as me:
        host0, me0 = host.read(), me.read()
        for _ in range(rounds):
            m = mmap.mmap(-1, size)
            if hasattr(mmap, "MADV_NOHUGEPAGE"):
                # with transparent huge pages one fault maps 2 MiB: count 4 KiB pages here
                m.madvise(mmap.MADV_NOHUGEPAGE)
            for offset in range(0, size, PAGE):
                m[offset] = 1
            m.close()
        host1, me1 = host.read(), me.read()
    my_minor = me1["minor_faults_total"] - me0["minor_faults_total"]
    host_minor = host1["minor_faults_total"] - host0["minor_faults_total"]
    print(f"\ntouched {rounds} x {pages} pages: this process's minor faults +{my_minor:.0f}, "
          f"host +{host_minor:.0f}, host pgalloc +{host1['pgalloc_total'] - host0['pgalloc_total']:.0f}")
    assert my_minor >= rounds * pages
    assert host_minor >= rounds * pages


def test_cpu_capacity_on_this_machine():
    cpus, reason = sources.cpu_capacity()
    assert 0 < cpus <= (os.cpu_count() or 1) and ("cpuset" in reason or "online" in reason)
    cpus, reason = sources.cpu_capacity(pid=os.getpid())
    assert 0 < cpus <= len(os.sched_getaffinity(0)) and "affinity" in reason


def test_process_cpu_clock_counts_every_thread():
    # schedstat is the main thread's; the process clock must see CPU burnt by a second thread.
    import threading
    import time as _time

    from coherence.sources import cpu as cpu_sources

    src = cpu_sources.PidClockCpu(os.getpid())
    assert src.available, src.reason
    before = src.read()["cpu_usage_ns_total"]

    def burn():
        end = _time.thread_time() + 0.2
        while _time.thread_time() < end:
            pass

    t = threading.Thread(target=burn)
    t.start()
    t.join()
    assert src.read()["cpu_usage_ns_total"] - before >= 0.19e9
    src.close()


def test_host_cpu_capacity_is_not_the_sentinels_own_affinity():
    # a sentinel pinned to one CPU still normalizes host utilization by the host's CPUs
    from coherence.sources import cpu_capacity
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, {min(before)})
        cpus, why = cpu_capacity()
    finally:
        os.sched_setaffinity(0, before)
    assert cpus == cpu_capacity()[0] >= len(before) or "quota" in why, why


def test_cpu_lists():
    from coherence.sources.cpu import parse_cpu_list
    assert [parse_cpu_list(t) for t in ("0-3,8,10-11\n", "0", "", "x", "2-")] == [7, 1, 0, 0, 0]
