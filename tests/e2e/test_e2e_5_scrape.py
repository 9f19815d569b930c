"""Amplification through a service's own /metrics (`coherence --scrape URL`): a real HTTP
service behind keep-alive pools, counting its requests in and calls out with Micrometer's names
(prometheus_client Summaries). A retry storm, which opens no TCP connection, is CRITICAL within
10 s of its start and not before, on the scraped counters; a steady fan-out x3 shows no more
than it may. Each case runs alone."""
import pytest

import host
import runtimes

pytestmark = pytest.mark.e2e


def _summary(r) -> str:
    return (f"{r.case}: time_to_critical={r.time_to_critical} max_ratio={r.max_ratio} "
            f"median_ratio={r.median_ratio} baseline={r.baseline} sources={r.sources} "
            f"states={sorted(set(r.states))} warning_s={r.warning_s:.1f} "
            f"others={ {d: sorted(set(s)) for d, s in r.others.items()} } notes={r.notes} "
            f"wall={r.wall_s:.1f}s reasons={r.reasons}")


def test_retry_storm_read_from_micrometer_names():
    r = runtimes.storm_scraped()
    print(_summary(r))
    # CRITICAL within 10 s and not before, the ratio above 2 on the scraped counters
    # (evidence.source "scraped"), seizure and fever OK throughout; and the storm invisible to
    # the TCP proxy: at least 10 calls out per TCP connection the host opened meanwhile
    assert runtimes.scraped_storm_violations(r) == [], f"{r}\n--- stderr ---\n{r.diagnostics}"


def test_steady_fanout_of_three_scraped_shows_no_more_than_it_may():
    r = runtimes.control_fanout3_scraped()
    print(_summary(r))
    why = f"{r}\n--- stderr ---\n{r.diagnostics}"
    assert r.sources == ["scraped"], why
    assert r.median_ratio == pytest.approx(3.0, rel=0.1), why    # the service did what it says
    assert r.baseline is not None, why
    assert host.control_violations(r) == [], why
