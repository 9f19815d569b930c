"""Fever on a real JVM, found with no configuration (its hsperfdata file): a JVM in a GC death
spiral is CRITICAL within 10 s of its start and not before, on its own GC share (the kernel sees
none of it: its heap is touched once, then reused); a healthy JVM allocating 1 GB/s shows no
more than it may. Each with ParallelGC, G1 (JDK 17's default) and ZGC. Each case runs alone,
after the amplification cases."""
import pytest

import host
import runtimes

pytestmark = pytest.mark.e2e


# ParallelGC and G1 pause the application for their collections; ZGC collects concurrently and
# the spiral shows as allocation stalls (sun.gc.cause), which fever counts as GC time.
@pytest.mark.parametrize("collector", runtimes.JVM_COLLECTORS)
def test_jvm_in_a_gc_death_spiral(build, collector):
    r = runtimes.jvm_spiral(build, collector)
    print(host.summary(r), r.notes, r.evidence)
    # CRITICAL within 10 s of the JVM's start and not before, on the GC share (over 25 %) of the
    # JVM the test started ("jvm <pid>"); seizure and amplification OK throughout
    assert runtimes.runtime_fault_violations(r) == [], r


@pytest.mark.parametrize("collector", runtimes.JVM_COLLECTORS)
def test_healthy_jvm_at_1_gb_per_s_shows_no_more_than_it_may(build, collector):
    r = runtimes.jvm_healthy(build, collector)
    print(host.summary(r), r.notes)
    assert host.control_violations(r) == [], r
    # it was read, and judged healthy on its own counters: ~1 GB/s allocated (ZGC has no eden to
    # tell it from), GC well under 25 %
    if collector != "ZGC":
        assert r.notes["runtime_alloc_mb_s_median"] > 500, r
    assert r.notes["gc_time_pct_median"] < runtimes.GC_LIMIT_PCT, r
