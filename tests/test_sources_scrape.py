"""coherence.sources.scrape against real HTTP servers on 127.0.0.1: fixtures modelled on the real
clients, a real prometheus_client registry, and servers that misbehave in every way we know."""
from __future__ import annotations

import gzip
import os
import socket
import struct
import threading
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, Iterator, Optional
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, Summary, make_wsgi_app

from coherence.sources import SourceUnavailable
from coherence.sources.scrape import (
    ACCEPT_OPENMETRICS,
    ACCEPT_TEXT,
    DEFAULT_MAX_BYTES,
    DEFAULT_TIMEOUT_S,
    KNOWN,
    SIGNALS,
    Matcher,
    Recognised,
    ScrapeError,
    ScrapeTarget,
    Selector,
    check_selectors,
    check_url,
    fetch,
    parse,
    recognise,
    runtime_of,
    wanted_lines,
)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "scrape")
TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
# Sub-second, so the fault tests stay fast; generous enough for a loaded 2-core machine.
QUICK_S = 0.3


def fixture(name: str) -> bytes:
    """A fixture's bytes without its "## " citation header (OpenMetrics allows no free comments)."""
    with open(os.path.join(FIXTURES, name), "rb") as f:
        return b"".join(line for line in f.read().splitlines(True) if not line.startswith(b"## "))


# --- servers ---------------------------------------------------------------------------------


@contextmanager
def http_server(answer: Callable[[BaseHTTPRequestHandler], None]) -> Iterator[str]:
    """A real threaded HTTP server on an ephemeral port; ``answer`` writes each response."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            answer(self)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()
        server.server_close()


def reply(body: bytes, content_type: str = TEXT, status: int = 200,
          headers: Optional[Dict[str, str]] = None) -> Callable[[BaseHTTPRequestHandler], None]:
    def answer(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        if "Content-Length" not in (headers or {}):
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    return answer


@contextmanager
def raw_server(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[str]:
    """A TCP server whose ``handle(conn, stop)`` speaks (or fails to speak) HTTP by hand."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.05)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            read_request(conn)
            handle(conn, stop)
        except OSError:
            pass
        finally:
            conn.close()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/metrics"
    finally:
        stop.set()
        thread.join(2)
        listener.close()


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


HEADERS_200 = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nConnection: close\r\n\r\n"


# --- fixtures served over HTTP: what each client's names are recognised as ------------------

EXPECTED: Dict[str, Dict[str, float]] = {
    "go_client.prom": {"gc_seconds_total": 0.00574846, "gc_collections_total": 6, "alloc_bytes_total": 1047397704},
    "go_client_v1_11.prom": {"gc_seconds_total": 45.0, "gc_collections_total": 1200, "alloc_bytes_total": 9.6e10},
    "go_client_runtime_metrics.prom": {"gc_seconds_total": 3.125, "gc_collections_total": 58,
                                       "alloc_bytes_total": 4449464},
    "micrometer.prom": {"requests_in_total": 1397, "requests_out_total": 230, "gc_seconds_total": 0.976 + 1.047 + 0.004,
                        "gc_collections_total": 21, "alloc_bytes_total": 1402994688},
    "simpleclient_hotspot.prom": {"gc_seconds_total": 1.25, "gc_collections_total": 45,
                                  "alloc_bytes_total": 295168309768},  # Eden only
    "otel_java_dup.om": {"requests_in_total": 825, "requests_out_total": 1600, "gc_seconds_total": 0.7,
                         "gc_collections_total": 52},
    "otel_bridged_micrometer.prom": {"requests_in_total": 300, "requests_out_total": 90, "gc_seconds_total": 0.05,
                                     "gc_collections_total": 7, "alloc_bytes_total": 83886080},
    "envoy.prom": {"requests_in_total": 1000, "requests_out_total": 1520, "retries_total": 57},
    "grpc_go.prom": {"requests_in_total": 1040, "requests_out_total": 2300, "gc_seconds_total": 0.0421,
                     "gc_collections_total": 31, "alloc_bytes_total": 5.1e8},
    "nodejs_prom_client.prom": {"gc_seconds_total": 0.95, "gc_collections_total": 418},
    "python_client.prom": {"gc_collections_total": 1417},
}
SOURCES: Dict[str, Dict[str, str]] = {
    "micrometer.prom": {"requests_in_total": "http_server_requests_seconds_count",
                        "alloc_bytes_total": "jvm_gc_memory_allocated_bytes_total"},
    "otel_java_dup.om": {"requests_in_total": "http_server_request_duration_seconds_count",
                         "requests_out_total": "http_client_request_duration_seconds_count"},
    "otel_bridged_micrometer.prom": {"requests_in_total": "http_server_requests_seconds_count",
                                     "gc_seconds_total": "jvm_gc_pause_seconds_sum"},
    "envoy.prom": {"requests_in_total": 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix!="admin"}',
                   "retries_total": "envoy_cluster_upstream_rq_retry"},
    "go_client.prom": {"alloc_bytes_total": "go_memstats_alloc_bytes_total",
                       "gc_seconds_total": "go_gc_duration_seconds_sum"},   # pauses: all this client has
    "go_client_v1_11.prom": {"gc_seconds_total": "go_memstats_gc_cpu_fraction * (go_memstats_last_gc_time_seconds"
                                                 " - process_start_time_seconds)"},
    "go_client_runtime_metrics.prom": {
        "gc_seconds_total": "go_cpu_classes_gc_total_cpu_seconds_total / go_sched_gomaxprocs_threads"},
}


def test_every_fixture_has_expectations() -> None:
    assert sorted(os.listdir(FIXTURES)) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_served_over_http_is_recognised_exactly(name: str) -> None:
    content_type = OPENMETRICS if name.endswith(".om") else TEXT
    with http_server(reply(fixture(name), content_type)) as url:
        target = ScrapeTarget(url, timeout_s=2.0)
        got = target.read()
    expected = EXPECTED[name]
    assert set(got.values) == set(expected)
    for signal, value in expected.items():
        assert got.values[signal] == pytest.approx(value, rel=1e-12, abs=0), signal
    assert set(got.missing) == set(SIGNALS) - set(expected)
    for signal, source in SOURCES.get(name, {}).items():
        assert got.sources[signal] == source
    assert target.available
    line = target.describe()
    assert line.startswith(url + ": ") and "\n" not in line
    for signal in expected:
        assert f"{signal} from {got.sources[signal]}" in line


def test_fixture_headers_cite_the_real_output_they_follow() -> None:
    for name in EXPECTED:
        with open(os.path.join(FIXTURES, name), "rb") as f:
            head = f.read(1200).decode()
        assert "Fixture:" in head and "Follows" in head and "Expected" in head, name
        assert os.path.getsize(os.path.join(FIXTURES, name)) < 16 * 1024, name


def test_envoy_admin_listener_is_not_ingress() -> None:
    """Our own scrapes of Envoy's admin port are envoy_http_conn_manager_prefix="admin" requests."""
    got = recognise(parse(fixture("envoy.prom"), TEXT))
    assert got.values["requests_in_total"] == 1000  # not 1000 + 4080


def test_go_gauge_of_the_same_stem_is_never_read_as_the_counter() -> None:
    body = b"# TYPE go_memstats_alloc_bytes gauge\ngo_memstats_alloc_bytes 3.2e6\n"
    got = recognise(parse(body, TEXT))
    assert "alloc_bytes_total" not in got.values


def test_counter_without_total_found_under_either_spelling() -> None:
    """Envoy types envoy_cluster_upstream_rq_retry as a counter without "_total": the text parser
    renames its samples, an untyped exposition keeps them; both are the same counter."""
    typed = b"# TYPE envoy_cluster_upstream_rq_retry counter\nenvoy_cluster_upstream_rq_retry{c=\"a\"} 4\n"
    untyped = b"envoy_cluster_upstream_rq_retry{c=\"a\"} 4\nenvoy_cluster_upstream_rq_retry{c=\"b\"} 1\n"
    assert recognise(parse(typed, TEXT)).values["retries_total"] == 4
    assert recognise(parse(untyped, TEXT)).values["retries_total"] == 5


def test_openmetrics_created_samples_are_not_counted() -> None:
    body = (b"# TYPE python_gc_collections counter\npython_gc_collections_total{generation=\"0\"} 10\n"
            b"python_gc_collections_created{generation=\"0\"} 1.7e9\n# EOF\n")
    assert recognise(parse(body, OPENMETRICS)).values == {"gc_collections_total": 10}


def test_a_negative_or_nan_counter_is_not_used() -> None:
    body = b"# TYPE go_memstats_alloc_bytes_total counter\ngo_memstats_alloc_bytes_total NaN\n"
    got = recognise(parse(body, TEXT))
    assert "alloc_bytes_total" not in got.values
    assert "not a counter" in got.missing["alloc_bytes_total"]


def test_preference_order_is_stated_once_per_signal() -> None:
    for signal in SIGNALS:
        names = [str(k.selector) for k in KNOWN if k.signal == signal]
        assert names and len(names) == len(set(names)), signal


# --- a real prometheus_client registry, over HTTP, in both formats ---------------------------


@contextmanager
def registry_server(registry: CollectorRegistry) -> Iterator[str]:
    class Quiet(WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    class Threaded(WSGIServer):
        daemon_threads = True

    httpd = make_server("127.0.0.1", 0, make_wsgi_app(registry), server_class=Threaded, handler_class=Quiet)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}/metrics"
    finally:
        httpd.shutdown()
        httpd.server_close()


def real_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    requests = Counter("http_requests", "Requests by direction.", ["direction"], registry=registry)
    requests.labels("in").inc(40)
    requests.labels("out").inc(52)
    pauses = Summary("jvm_gc_pause_seconds", "GC pauses.", ["gc"], registry=registry)
    for seconds in (0.25, 0.5):
        pauses.labels("G1 Young Generation").observe(seconds)
    pauses.labels("G1 Old Generation").observe(1.0)
    served = Histogram("http_server_request_duration_seconds", "Served.", ["http_route"], registry=registry)
    for _ in range(7):
        served.labels("/a").observe(0.01)
    served.labels("/b").observe(3.0)
    # a counter named without "_total" is exposed with it (and a _created beside it)
    Counter("go_memstats_alloc_bytes", "Allocated.", registry=registry).inc(2**33)
    Counter("envoy_cluster_upstream_rq_retry", "Retries.", ["envoy_cluster_name"],
            registry=registry).labels("backend").inc(9)
    return registry


@pytest.mark.parametrize("accept", [None, ACCEPT_OPENMETRICS], ids=["text", "openmetrics"])
def test_real_prometheus_client_registry(accept: Optional[str]) -> None:
    selectors = {"egress": 'http_requests_total{direction="out"}'}
    with registry_server(real_registry()) as url:
        accept = accept or ACCEPT_TEXT
        got = ScrapeTarget(url, timeout_s=2.0, selectors=selectors, accept=accept).read()
        fetched = fetch(url, 2.0, DEFAULT_MAX_BYTES, accept)
    assert fetched.content_type.startswith("text/plain" if accept == ACCEPT_TEXT else "application/openmetrics-text")
    assert got.values == {
        "requests_in_total": 8,  # the histogram's _count over both routes
        "requests_out_total": 52,
        "retries_total": 9,
        "gc_seconds_total": 1.75,
        "gc_collections_total": 3,
        "alloc_bytes_total": 2**33,
    }
    assert got.sources["requests_out_total"] == 'http_requests_total{direction="out"}'


def test_real_registry_gzip_answer_is_decoded() -> None:
    """make_wsgi_app gzips when asked (we always ask): the body must come back decoded."""
    registry = real_registry()
    with registry_server(registry) as url:
        fetched = fetch(url, 2.0, DEFAULT_MAX_BYTES)
    assert b"# TYPE http_requests_total counter" in fetched.body


# --- faults: each one a ScrapeError / SourceUnavailable with a one-line reason ----------------


def scrape_error(url: str, timeout_s: float = QUICK_S, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
    with pytest.raises(ScrapeError) as err:
        fetch(url, timeout_s, max_bytes)
    reason = str(err.value)
    assert reason and "\n" not in reason
    return reason


def unavailable(url: str, **kwargs: object) -> str:
    target = ScrapeTarget(url, **kwargs)  # type: ignore[arg-type]
    with pytest.raises(SourceUnavailable) as err:
        target.read()
    reason = str(err.value)
    assert reason and "\n" not in reason
    assert not target.available and target.reason == reason
    assert target.describe() == f"{url}: {reason}"
    return reason


def test_server_that_never_answers_times_out() -> None:
    def hang(conn: socket.socket, stop: threading.Event) -> None:
        stop.wait(5)

    with raw_server(hang) as url:
        assert scrape_error(url) == f"no complete answer within {QUICK_S:g} s"
        assert "no complete answer" in unavailable(url, timeout_s=QUICK_S)


def test_server_trickling_the_body_hits_the_overall_deadline() -> None:
    """One byte every 50 ms never trips a per-read timeout of 300 ms: only a deadline ends it."""
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(HEADERS_200)
        while not stop.wait(0.05):
            conn.sendall(b"#")

    with raw_server(trickle) as url:
        assert scrape_error(url) == f"no complete answer within {QUICK_S:g} s"


def test_server_trickling_its_headers_hits_the_overall_deadline() -> None:
    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        for byte in (HEADERS_200[:-2] + b"X-Padding: " + b"a" * 10_000):
            if stop.wait(0.05):
                return
            conn.sendall(bytes([byte]))

    with raw_server(trickle) as url:
        assert scrape_error(url) == f"no complete answer within {QUICK_S:g} s"


def test_connection_reset_by_the_server() -> None:
    def reset(conn: socket.socket, stop: threading.Event) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    with raw_server(reset) as url:
        reason = scrape_error(url, timeout_s=2.0)
    assert reason in ("connection reset by the server", "connection closed by the server before an answer")


def test_connection_closed_in_the_middle_of_the_body() -> None:
    def short(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(HEADERS_200.replace(b"Connection", b"Content-Length: 1000\r\nConnection") + b"go_goroutines 1\n")

    with raw_server(short) as url:
        assert scrape_error(url, timeout_s=2.0) == "connection closed by the server in the middle of the body"


def test_connection_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    assert scrape_error(f"http://127.0.0.1:{port}/metrics") == f"connection refused by 127.0.0.1:{port}"


def test_redirect_is_not_followed() -> None:
    with http_server(reply(b"", status=302, headers={"Location": "http://elsewhere.example/metrics"})) as url:
        assert scrape_error(url) == "HTTP 302: redirected to http://elsewhere.example/metrics: not followed"


def test_non_2xx_answer() -> None:
    with http_server(reply(b"oops", status=500)) as url:
        assert scrape_error(url) == "HTTP 500 Internal Server Error"
        assert unavailable(url) == "HTTP 500 Internal Server Error"


def test_body_over_the_limit_by_content_length_is_refused_unread() -> None:
    with http_server(reply(b"x" * 5000)) as url:
        assert scrape_error(url, max_bytes=1000) == \
            "body of 5000 bytes (Content-Length) is over the limit of 1000 bytes"


def test_endless_body_without_content_length_stops_at_the_limit() -> None:
    """A body that never ends: reading must stop one byte past the limit, well before the timeout."""
    def endless(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(HEADERS_200)
        while not stop.is_set():
            conn.sendall(b"# padding\n" * 6554)

    with raw_server(endless) as url:
        assert scrape_error(url, timeout_s=10.0, max_bytes=200_000) == "body over the limit of 200000 bytes"


def test_chunked_body_over_the_limit() -> None:
    def chunked(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(HEADERS_200.replace(b"Connection", b"Transfer-Encoding: chunked\r\nConnection"))
        for _ in range(50):
            conn.sendall(b"400\r\n" + b"a" * 0x400 + b"\r\n")
        conn.sendall(b"0\r\n\r\n")

    with raw_server(chunked) as url:
        assert scrape_error(url, timeout_s=2.0, max_bytes=10_000) == "body over the limit of 10000 bytes"


def test_gzip_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (32 * 1024 * 1024), compresslevel=9)  # 32 MiB in ~32 KiB
    assert len(bomb) < 100_000
    with http_server(reply(bomb, headers={"Content-Encoding": "gzip"})) as url:
        assert scrape_error(url, timeout_s=2.0, max_bytes=1024 * 1024) == \
            "gzip body expands past the limit of 1048576 bytes"


def test_gzip_that_is_not_gzip() -> None:
    with http_server(reply(b"go_goroutines 1\n", headers={"Content-Encoding": "gzip"})) as url:
        assert scrape_error(url).startswith("body is not valid gzip: ")


def test_gzip_body_within_the_limit_is_decoded() -> None:
    with http_server(reply(gzip.compress(fixture("go_client.prom")), headers={"Content-Encoding": "gzip"})) as url:
        assert ScrapeTarget(url, timeout_s=2.0).read().values["gc_collections_total"] == 6


def test_unasked_content_encoding_is_refused() -> None:
    with http_server(reply(b"x", headers={"Content-Encoding": "br"})) as url:
        assert scrape_error(url) == "unsupported Content-Encoding 'br' (only gzip was asked for)"


def test_binary_garbage() -> None:
    with http_server(reply(bytes(range(256)) * 4)) as url:
        assert unavailable(url) == "body is not UTF-8 text (byte 128 of 1024)"


def test_text_garbage_gives_the_parser_reason() -> None:
    with http_server(reply(b"hello world\n")) as url:
        assert unavailable(url).startswith("not Prometheus text exposition: ")
    with http_server(reply(b"go_goroutines 1\n", OPENMETRICS)) as url:
        assert unavailable(url) == "not OpenMetrics exposition: Missing # EOF at end"


def test_empty_body() -> None:
    with http_server(reply(b"")) as url:
        assert unavailable(url) == "empty body"


def test_html_page_is_not_an_exposition() -> None:
    with http_server(reply(b"<html>login</html>", "text/html; charset=utf-8")) as url:
        assert unavailable(url) == "answered text/html, not a Prometheus exposition"


def test_exposition_with_nothing_known() -> None:
    with http_server(reply(b"# TYPE my_things_total counter\nmy_things_total 3\n")) as url:
        assert unavailable(url) == "1 metric families, nothing recognised"


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/metrics", "file:///etc/passwd", "127.0.0.1:9100/metrics",
                                 "http:///metrics", "http://user:secret@127.0.0.1/metrics",
                                 "http://127.0.0.1:http/metrics"])
def test_bad_url_is_refused(url: str) -> None:
    reason = scrape_error(url)
    assert "secret" not in reason
    with pytest.raises(ValueError) as err:
        ScrapeTarget(url)
    assert str(err.value) == reason
    with pytest.raises(ValueError):
        check_url(url)


def test_https_to_a_plain_http_server_fails_with_a_tls_reason() -> None:
    with http_server(reply(b"go_goroutines 1\n")) as url:
        reason = scrape_error(url.replace("http://", "https://"), timeout_s=2.0)
    assert reason.startswith("TLS failed: ") or reason.startswith("connection")


def test_target_recovers_after_a_failure() -> None:
    state = {"fail": True}

    def answer(handler: BaseHTTPRequestHandler) -> None:
        if state["fail"]:
            reply(b"", status=503)(handler)
        else:
            reply(fixture("python_client.prom"))(handler)

    with http_server(answer) as url:
        target = ScrapeTarget(url, timeout_s=2.0)
        assert target.reason == "not read yet"
        with pytest.raises(SourceUnavailable):
            target.read()
        assert target.reason == "HTTP 503 Service Unavailable"
        state["fail"] = False
        assert target.read().values == {"gc_collections_total": 1417}
        assert target.available and target.reason == "gc_collections_total from python_gc_collections_total; " \
            "not exposed: requests_in_total, requests_out_total, retries_total, gc_seconds_total, alloc_bytes_total"


@pytest.mark.parametrize("kwargs", [{"timeout_s": 0}, {"timeout_s": float("nan")}, {"timeout_s": True},
                                    {"max_bytes": 0}, {"max_bytes": 1.5},
                                    {"selectors": {"gc": "foo"}}, {"selectors": {"ingress": "foo{"}}])
def test_bad_target_settings_are_refused(kwargs: Dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ScrapeTarget("http://127.0.0.1/metrics", **kwargs)  # type: ignore[arg-type]


def test_defaults() -> None:
    assert 0 < DEFAULT_TIMEOUT_S < 1
    assert DEFAULT_MAX_BYTES == 4 * 1024 * 1024


# --- selectors --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,name,matchers", [
    ("http_requests_total", "http_requests_total", ()),
    ("http_requests_total{}", "http_requests_total", ()),
    ('http_requests_total{direction="in"}', "http_requests_total", (("direction", "=", "in"),)),
    (' rq:sum { a = "1" , b!="2", c=~"x.*" ,d!~\'y|z\', } ', "rq:sum",
     (("a", "=", "1"), ("b", "!=", "2"), ("c", "=~", "x.*"), ("d", "!~", "y|z"))),
    (r'm{path="a\"b\\c\nd"}', "m", (("path", "=", 'a"b\\c\nd'),)),
])
def test_selector_parses(text: str, name: str, matchers: tuple) -> None:
    selector = Selector.parse(text)
    assert selector.name == name
    assert tuple((m.label, m.op, m.value) for m in selector.matchers) == matchers
    assert Selector.parse(str(selector)) == selector


@pytest.mark.parametrize("text,problem", [
    ("", "must start with a metric name"),
    ('{a="b"}', "must start with a metric name"),
    ("9lives", "must start with a metric name"),
    ("foo bar", "label matchers go in one {...} after the name"),
    ('foo{a="b"}x', "label matchers go in one {...} after the name"),
    ("foo{a=b}", "a label value must be quoted"),
    ('foo{a~"b"}', "expected =, !=, =~ or !~ after 'a'"),
    ('foo{1a="b"}', "expected a label name"),
    ('foo{a="b" c="d"}', "expected ',' between matchers"),
    ('foo{a="b}', "unterminated label value"),
    (r'foo{a="\q"}', "bad escape in a label value"),
    ('foo{a=~"("}', "bad regex '('"),
])
def test_bad_selector_names_the_problem(text: str, problem: str) -> None:
    with pytest.raises(ValueError) as err:
        Selector.parse(text)
    message = str(err.value)
    assert problem in message and "\n" not in message


@pytest.mark.parametrize("op,value,label,expected", [
    ("=", "5xx", "5xx", True), ("=", "5xx", "4xx", False), ("=", "", None, True),
    ("!=", "admin", "ingress", True), ("!=", "admin", "admin", False), ("!=", "admin", None, True),
    ("=~", "5..", "503", True), ("=~", "5..", "5030", False), ("=~", "5..", "x503", False),
    ("=~", ".*", None, True), ("!~", "5..", "200", True), ("!~", "5..", "500", False),
    ("!~", "a|b", "ab", True),
])
def test_matcher_operators_are_promql_anchored(op: str, value: str, label: Optional[str], expected: bool) -> None:
    labels = {} if label is None else {"code": label}
    assert Matcher("code", op, value).matches(labels) is expected


def test_selector_matches_name_and_labels() -> None:
    selector = Selector.parse('http_requests_total{direction="in",code!~"5.."}')
    assert selector.matches("http_requests_total", {"direction": "in", "code": "200"})
    assert not selector.matches("http_requests_total", {"direction": "in", "code": "500"})
    assert not selector.matches("http_requests", {"direction": "in", "code": "200"})


def test_user_selectors_override_the_table() -> None:
    families = parse(fixture("micrometer.prom"), TEXT)
    got = recognise(families, {
        "ingress": Selector.parse('http_server_requests_seconds_count{uri!="/actuator/prometheus"}'),
        "egress": 'http_client_requests_seconds_count{status=~"5.."}',
        "alloc": "jvm_gc_memory_promoted_bytes_total",
    })
    assert got.values["requests_in_total"] == 1357
    assert got.values["requests_out_total"] == 20
    assert got.values["alloc_bytes_total"] == 71289304
    assert got.sources["alloc_bytes_total"] == "jvm_gc_memory_promoted_bytes_total"
    assert got.values["gc_collections_total"] == 21  # not overridden: the table still applies


def test_a_selector_matching_nothing_does_not_fall_back_to_the_table() -> None:
    got = recognise(parse(fixture("micrometer.prom"), TEXT), {"ingress": 'http_requests_total{direction="in"}'})
    assert "requests_in_total" not in got.values
    assert got.missing["requests_in_total"] == '--ingress-metric http_requests_total{direction="in"} matches no sample'


# --- anything at all in a body: a result or a ScrapeError, never another exception -------------

EXPOSITION_ALPHABET = 'abcgo_tlsum{}=",#\n .0123456789-+eEIinfNaTYPEHELPUNITOFcountergaugesummaryhistogram\\:'
CONTENT_TYPES = st.sampled_from(["", TEXT, OPENMETRICS, "text/html", "application/octet-stream"])


def parse_and_recognise(body: bytes, content_type: str) -> None:
    try:
        got = recognise(parse(body, content_type), {"ingress": 'a{b=~"c.*"}'})
    except ScrapeError as err:
        assert str(err) and "\n" not in str(err)
        return
    assert isinstance(got, Recognised)
    assert set(got.values) | set(got.missing) == set(SIGNALS)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=512), content_type=CONTENT_TYPES)
def test_any_bytes_give_a_result_or_a_scrape_error(body: bytes, content_type: str) -> None:
    parse_and_recognise(body, content_type)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(alphabet=EXPOSITION_ALPHABET, max_size=400), content_type=CONTENT_TYPES)
def test_exposition_like_text_gives_a_result_or_a_scrape_error(text: str, content_type: str) -> None:
    parse_and_recognise(text.encode(), content_type)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=st.lists(st.sampled_from([
    "# TYPE go_gc_duration_seconds summary", "# TYPE envoy_cluster_upstream_rq_retry counter",
    "# TYPE go_memstats_alloc_bytes_total counter", "# HELP x y", "# EOF", "",
    "go_gc_duration_seconds_sum 1", "go_gc_duration_seconds_count NaN", "go_gc_duration_seconds{quantile=\"0\"} 0",
    "envoy_cluster_upstream_rq_retry{c=\"a\"} -1", "envoy_cluster_upstream_rq_retry_total 3",
    "go_memstats_alloc_bytes_total +Inf", "go_memstats_alloc_bytes_total 1e400", "a{b=\"c\"} 1 123",
]), max_size=12), content_type=CONTENT_TYPES)
def test_shuffled_real_lines_give_a_result_or_a_scrape_error(lines: list, content_type: str) -> None:
    parse_and_recognise("\n".join(lines).encode(), content_type)



# --- the families the detectors use, parsed alone ------------------------------------------------

def recognised_both_ways(body: bytes, content_type: str,
                         selectors: Optional[Dict[str, str]] = None) -> tuple:
    sel = check_selectors(selectors)
    whole = recognise(parse(body, content_type), sel)
    only = recognise(parse(body, content_type, wanted_lines(sel.values())), sel)
    return whole, only


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parsing_only_the_used_families_recognises_the_same(name: str) -> None:
    whole, only = recognised_both_ways(fixture(name), OPENMETRICS if name.endswith(".om") else TEXT)
    assert only.values == whole.values and only.sources == whole.sources and only.missing == whole.missing
    assert only.families < whole.families        # and it did drop the others


def test_parsing_only_the_used_families_keeps_a_users_selector() -> None:
    body = b'# TYPE http_requests_total counter\nhttp_requests_total{direction="in"} 7\nother_total 1\n'
    whole, only = recognised_both_ways(body, TEXT, {"ingress": 'http_requests_total{direction="in"}'})
    assert only.values == whole.values == {"requests_in_total": 7}


@pytest.mark.parametrize("body", [
    b"#\tTYPE jvm_gc_pause_seconds_sum gauge\njvm_gc_pause_seconds_sum 5\n",
    b" # TYPE jvm_gc_pause_seconds_sum gauge\njvm_gc_pause_seconds_sum 5\n",
    b"# TYPE jvm_gc_pause_seconds_sum\x0bgauge\njvm_gc_pause_seconds_sum 5\n",
    b'# TYPE "jvm_gc_pause_seconds_sum" gauge\njvm_gc_pause_seconds_sum 5\n',
    b'# TYPE jvm_gc_pause_seconds_sum gauge\n{"jvm_gc_pause_seconds_sum"} 5\n',
    b"# TYPE jvm_gc_pause_seconds_sum gauge\n\t jvm_gc_pause_seconds_sum 5\n",
])
def test_every_spelling_of_a_type_line_the_text_parser_honours_is_kept(body: bytes) -> None:
    # Found by writing fuzz/fuzz_scrape.py: the filter kept "# TYPE" lines as written by clients
    # only, so a gauge typed with a tab, a leading space or a quoted name read as a counter once
    # the target read well.
    whole, only = recognised_both_ways(body, TEXT)
    assert only.values == whole.values == {}
    counted = body.replace(b"gauge", b"untyped")
    whole, only = recognised_both_ways(counted, TEXT)
    assert only.values == whole.values == {"gc_seconds_total": 5}


# Families as clients write them (TYPE, then its samples), in any order and any number: the lines of
# one family together, as both formats require.
FAMILIES = [
    "# TYPE go_gc_duration_seconds summary\ngo_gc_duration_seconds{quantile=\"0\"} 0\n"
    "go_gc_duration_seconds_sum 1\ngo_gc_duration_seconds_count 4",
    "# TYPE envoy_cluster_upstream_rq_retry counter\nenvoy_cluster_upstream_rq_retry_total{c=\"a\"} 2",
    "# HELP go_memstats_alloc_bytes_total x\n# TYPE go_memstats_alloc_bytes_total counter\n"
    "go_memstats_alloc_bytes_total 17",
    "# TYPE go_memstats_alloc_bytes gauge\ngo_memstats_alloc_bytes 5",
    "# TYPE go_memstats_gc_cpu_fraction gauge\ngo_memstats_gc_cpu_fraction 0.5",
    "# TYPE process_start_time_seconds gauge\nprocess_start_time_seconds 10",
    "# TYPE go_memstats_last_gc_time_seconds gauge\ngo_memstats_last_gc_time_seconds 30",
    "# TYPE other summary\nother_sum 3\nother_count 1",
    "# TYPE go_gc_duration_seconds_count_x gauge\ngo_gc_duration_seconds_count_x 1",
    "# TYPE http_server_requests_seconds summary\nhttp_server_requests_seconds_count{uri=\"/a\"} 5\n"
    "http_server_requests_seconds_sum{uri=\"/a\"} 0.5",
    "# TYPE http_server_requests_seconds_max gauge\nhttp_server_requests_seconds_max{uri=\"/a\"} 0.1",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(families=st.lists(st.sampled_from(FAMILIES), unique=True, max_size=len(FAMILIES)),
       content_type=st.sampled_from([TEXT, OPENMETRICS]))
def test_a_valid_exposition_recognises_the_same_either_way(families: list, content_type: str) -> None:
    body = "\n".join(families + (["# EOF"] if content_type == OPENMETRICS else [])).encode() + b"\n"
    try:
        whole = recognise(parse(body, content_type))
    except ScrapeError:
        return     # invalid as a whole: the target is unavailable at its first read, never filtered
    only = recognise(parse(body, content_type, wanted_lines()))
    assert only.values == whole.values and only.sources == whole.sources


def test_a_target_is_parsed_whole_until_it_reads_well_then_only_what_it_uses() -> None:
    bodies = [b"go_memstats_alloc_bytes_total 10\nunrelated{ 1\n",               # garbage: whole, refused
              b"go_memstats_alloc_bytes_total 10\n",                             # well: whole
              b"go_memstats_alloc_bytes_total 20\nunrelated{ 1\n",               # garbage elsewhere: unseen
              b"go_memstats_alloc_bytes_total{ 30\n",                            # garbage in what it uses
              b"go_memstats_alloc_bytes_total 40\nunrelated{ 1\n"]               # whole again: refused
    served = iter(bodies)

    def answer(handler: BaseHTTPRequestHandler) -> None:
        reply(next(served))(handler)

    with http_server(answer) as url:
        target = ScrapeTarget(url, timeout_s=2.0)
        with pytest.raises(SourceUnavailable, match="not Prometheus text"):
            target.read()
        assert target.read().values == {"alloc_bytes_total": 10}
        assert target.read().values == {"alloc_bytes_total": 20}
        with pytest.raises(SourceUnavailable, match="not Prometheus text"):
            target.read()
        with pytest.raises(SourceUnavailable, match="not Prometheus text"):
            target.read()


# --- Go: the collector's CPU, not its pauses ------------------------------------------------------

GO_PAUSES = b"# TYPE go_gc_duration_seconds summary\ngo_gc_duration_seconds_sum 0.5\ngo_gc_duration_seconds_count 9\n"


def go_body(fraction: str = "0.25", start: Optional[str] = "100", last: Optional[str] = "140",
            pauses: bool = True) -> bytes:
    lines = ["# TYPE go_memstats_gc_cpu_fraction gauge", f"go_memstats_gc_cpu_fraction {fraction}"]
    if start is not None:
        lines += ["# TYPE process_start_time_seconds gauge", f"process_start_time_seconds {start}"]
    if last is not None:
        lines += ["# TYPE go_memstats_last_gc_time_seconds gauge", f"go_memstats_last_gc_time_seconds {last}"]
    return "\n".join(lines).encode() + b"\n" + (GO_PAUSES if pauses else b"")


def test_go_gc_cpu_fraction_is_weighed_by_the_time_to_the_last_cycle() -> None:
    got = recognise(parse(go_body(), TEXT))
    assert got.values["gc_seconds_total"] == 0.25 * 40
    assert got.clients["gc_seconds_total"] == "Go client"
    assert runtime_of(got) == "go"


def test_go_before_its_first_cycle_has_spent_nothing() -> None:
    assert recognise(parse(go_body(fraction="0", last="0"), TEXT)).values["gc_seconds_total"] == 0.0


@pytest.mark.parametrize("kwargs,problem", [
    ({"start": None}, "no time to weigh it by"),
    ({"last": None}, "no time to weigh it by"),
    ({"fraction": "1.5"}, "is not a fraction"),
    ({"fraction": "NaN"}, ""),
])
def test_go_gc_cpu_fraction_unusable_falls_back_to_pauses_or_says_why(kwargs: dict, problem: str) -> None:
    got = recognise(parse(go_body(**kwargs), TEXT))
    assert got.sources["gc_seconds_total"] == "go_gc_duration_seconds_sum"
    assert got.clients["gc_seconds_total"] == "Go client (pauses only)"
    alone = recognise(parse(go_body(pauses=False, **kwargs), TEXT))
    assert "gc_seconds_total" not in alone.values
    assert problem in alone.missing["gc_seconds_total"]


def test_go_runtime_metrics_gc_cpu_needs_gomaxprocs() -> None:
    body = (b"# TYPE go_cpu_classes_gc_total_cpu_seconds_total counter\n"
            b"go_cpu_classes_gc_total_cpu_seconds_total 8\n")
    assert "no GOMAXPROCS" in recognise(parse(body, TEXT)).missing["gc_seconds_total"]
    both = body + b"# TYPE go_sched_gomaxprocs_threads gauge\ngo_sched_gomaxprocs_threads 2\n"
    assert recognise(parse(both, TEXT)).values["gc_seconds_total"] == 4.0


def test_a_derived_counter_never_goes_back_by_rounding_but_a_restart_passes() -> None:
    # 0.25 x 40 = 10, then 0.2497 x 40.02 = 9.99 (printed and read at different times), then a
    # restarted service: 0.1 x 2 = 0.2
    served = iter([go_body("0.25", "100", "140"), go_body("0.2497", "100", "140.02"),
                   go_body("0.251", "100", "140.5"), go_body("0.1", "200", "202")])

    def answer(handler: BaseHTTPRequestHandler) -> None:
        reply(next(served))(handler)

    with http_server(answer) as url:
        target = ScrapeTarget(url, timeout_s=2.0)
        seen = [target.read().values["gc_seconds_total"] for _ in range(4)]
    assert seen[:2] == [10.0, 10.0]
    assert seen[2] == pytest.approx(0.251 * 40.5)
    assert seen[3] == pytest.approx(0.2)


@pytest.mark.parametrize("name,runtime", [("go_client.prom", "go"), ("micrometer.prom", "jvm"),
                                          ("simpleclient_hotspot.prom", "jvm"), ("envoy.prom", "service"),
                                          ("nodejs_prom_client.prom", "node"), ("python_client.prom", "python")])
def test_the_runtime_is_named_by_its_clients_gc_names(name: str, runtime: str) -> None:
    assert runtime_of(recognise(parse(fixture(name), TEXT))) == runtime
