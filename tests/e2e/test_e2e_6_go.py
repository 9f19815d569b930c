"""Fever on a real Go program (standard library only) exposing its runtime counters in the Go
client's names and types (go_gc_duration_seconds, go_memstats_alloc_bytes_total) on /metrics,
read with `coherence --scrape URL`: a healthy one allocating 1 GB/s shows no more than it may.
(Its death spiral is not asserted: the Go client's GC time is stop-the-world pauses only, under
1 % of wall time even in a spiral whose GC takes 35-45 % of the CPU; see runtimes.go_spiral.)"""
import pytest

import host
import runtimes

pytestmark = pytest.mark.e2e


def test_healthy_go_program_at_1_gb_per_s_shows_no_more_than_it_may(build):
    r = runtimes.go_healthy(build)
    print(host.summary(r), r.notes)
    assert host.control_violations(r) == [], r
    # it was read, on its own counters: ~1 GB/s allocated, GC judged well under the limit
    assert r.notes["runtime_alloc_mb_s_median"] > 500, r
    assert r.notes["gc_time_pct_median"] < runtimes.GC_LIMIT_PCT, r
