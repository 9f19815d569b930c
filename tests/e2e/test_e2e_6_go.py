"""Fever on a real Go program (standard library only) exposing its runtime counters in the Go
client's names and types (go_memstats_gc_cpu_fraction with go_memstats_last_gc_time_seconds and
process_start_time_seconds, go_gc_duration_seconds, go_memstats_alloc_bytes_total) on /metrics,
read with `coherence --scrape URL`: a death spiral (a live set at its memory limit, collections
back to back) is CRITICAL within 10 s on its GC CPU share; a healthy one allocating 1 GB/s shows
no more than it may. Go's collector is concurrent: its pauses are 0.1 % of wall time in the same
spiral, so the share is its CPU, not its pauses."""
import pytest

import host
import runtimes

pytestmark = pytest.mark.e2e


def test_go_program_in_a_gc_death_spiral(build):
    r = runtimes.go_spiral(build)
    print(host.summary(r), r.notes, r.evidence)
    # CRITICAL within 10 s of SIGUSR1 and not before, on the GC share (over 25 %) of the target the
    # test started ("scrape <url>"); seizure and amplification OK throughout
    assert runtimes.runtime_fault_violations(r) == [], r
    # and the share read is the runtime's own GC CPU, not its pauses
    assert r.notes["gc_time_pct_median"] > runtimes.GC_LIMIT_PCT, r


def test_healthy_go_program_at_1_gb_per_s_shows_no_more_than_it_may(build):
    r = runtimes.go_healthy(build)
    print(host.summary(r), r.notes)
    assert host.control_violations(r) == [], r
    # it was read, on its own counters: ~1 GB/s allocated, GC judged well under the limit
    assert r.notes["runtime_alloc_mb_s_median"] > 500, r
    assert r.notes["gc_time_pct_median"] < runtimes.GC_LIMIT_PCT, r
