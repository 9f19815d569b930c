"""Runtimes as users meet them: `coherence live --scrape URL` judges the service's own counters
(the Sentinel reads them off the tick path), and `coherence sources` says what each JVM and
scrape target gives, or why not. The targets are real prometheus_client endpoints on 127.0.0.1."""
import threading
import time

from click.testing import CliRunner
from prometheus_client import CollectorRegistry, Summary
from test_sources_scrape import registry_server

from coherence import AtomicCounter
from coherence.cli import main
from coherence.config import Config
from coherence.sentinel import Sentinel


def service_registry():
    """A service in Micrometer's names: requests served and calls made downstream."""
    registry = CollectorRegistry()
    served = Summary("http_server_requests_seconds", "Served.", ["uri"], registry=registry)
    called = Summary("http_client_requests_seconds", "Calls out.", ["uri"], registry=registry)
    return registry, served, called


def test_the_sentinel_judges_a_scraped_service_off_the_tick():
    registry, served, called = service_registry()
    stop = threading.Event()

    def traffic():                     # 100 requests/s in, 250 out: a retry storm's shape
        while not stop.is_set():
            for _ in range(10):
                served.labels("/a").observe(0.01)
            for _ in range(25):
                called.labels("/b").observe(0.01)
            time.sleep(0.1)

    with registry_server(registry) as url:
        config = Config().with_overrides({"runtime.scrape": (url,), "sampler.hz": 100.0})
        worker = threading.Thread(target=traffic, daemon=True)
        worker.start()
        try:
            # counters of its own: other tests of this process pushed to the process-wide ones
            fresh = (AtomicCounter(), AtomicCounter())
            with Sentinel.from_config(config, counters=fresh) as sentinel:
                deadline = time.monotonic() + 10.0
                snap = sentinel.sampler.snapshot()
                while time.monotonic() < deadline:
                    snap = sentinel.sampler.snapshot()
                    if snap.requests.source == "scraped" and snap.requests.ingress_in_window >= 100:
                        break
                    time.sleep(0.1)
        finally:
            stop.set()
            worker.join()
    (process,) = [p for p in snap.runtime if p.name == f"scrape {url}"]
    assert process.available and "requests_in_total" in process.recognised
    assert snap.requests.source == "scraped" and snap.requests.origin == f"scrape {url}"
    assert 2.2 <= snap.requests.ratio <= 2.8
    assert process.requests_in_per_s > 0


def test_sources_reads_each_scrape_target_once_and_says_what_it_gives():
    registry, served, called = service_registry()
    served.labels("/a").observe(0.1)
    called.labels("/b").observe(0.1)
    with registry_server(registry) as url:
        out = CliRunner().invoke(main, ["sources", "--scrape", url, "--scrape", "http://127.0.0.1:1/m"])
    assert out.exit_code == 0, out.output
    rows = [line for line in out.output.splitlines() if line.startswith("runtime")]
    given = next(line for line in rows if url in line)
    assert "in use" in given and "http_server_requests_seconds_count" in given
    refused = next(line for line in rows if "127.0.0.1:1/m" in line)
    assert "unavailable" in refused and "refused" in refused


def test_a_bad_scrape_url_is_one_line_and_exit_2():
    from coherence.cli import run
    assert run(["live", "--scrape", "ftp://x", "--duration", "1"]) == 2
    assert run(["check", "--scrape", "ftp://x", "--duration", "1"]) == 3
