"""The exporter's HTTP endpoint with real requests: content negotiation parsed back with
prometheus_client's own parsers, /healthz, TLS and basic auth from a web config, connections
kept alive (pipelining, closing when asked, idle limits, room made at the cap), and clients
that are slow, oversized, malformed or too many: each is counted, none blocks a scrape.

Sockets carry a timeout only so that a bug fails the test instead of hanging it; nothing here
asserts how long anything takes."""
import base64
import gzip
import http.client
import io
import os
import socket
import ssl
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

import coherence
from _tls import Authority
from coherence.sinks.http import _TOO_MANY, HttpServer, Request, Response
from coherence.sinks.prometheus import PrometheusSink
from coherence.webconfig import WebConfigFile
from test_sinks_jsonl import scripted_reports

SAFETY_S = 20.0          # a socket timeout that only a hung server would reach
OPENMETRICS = "application/openmetrics-text; version=1.0.0"
HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()


def get(url_host: Tuple[str, int], path: str = "/metrics", headers: Optional[Dict[str, str]] = None,
        method: str = "GET", context: Optional[ssl.SSLContext] = None) -> Tuple[int, Dict[str, str], bytes]:
    host, port = url_host
    if context is not None:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=SAFETY_S, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=SAFETY_S)
    try:
        conn.request(method, path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def raw(address: Tuple[str, int], data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(address, timeout=SAFETY_S) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def wait_until(predicate, timeout: float = SAFETY_S) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def sink() -> Iterator[PrometheusSink]:
    s = PrometheusSink(("127.0.0.1", 0))
    for report in scripted_reports(until=30.0):
        s.emit(report)
    with s:
        yield s


class FakeSampler:
    """What the sink reads of a Sampler, to be stalled at will."""

    hz = 1000.0

    def __init__(self) -> None:
        self.running = True
        self.last_tick_s = time.monotonic()
        self.ticks = 1000

    def stats(self) -> Any:
        from coherence.sampler import SamplerStats
        # the percentiles of the histogram below, as Sampler.stats() computes them
        return SamplerStats(achieved_hz=999.0, ticks=self.ticks, ticks_expected=1001, overruns=1,
                            tick_lateness_p50_us=21.0, tick_lateness_p99_us=91.0,
                            tick_lateness_max_us=2048.0, cpu_percent=3.0, elapsed_s=1.0,
                            cpu_s=0.03, tick_lateness_sum_s=0.025, last_tick_s=self.last_tick_s)

    class engine:
        @staticmethod
        def lateness_histogram():
            return [(5, 10), (21, 900), (91, 89), (2048, 1)]


# ---------------------------------------------------------------------- content negotiation
def test_text_format_by_default_parsed_back(sink):
    status, headers, body = get(sink.server.address)
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parse_text(body.decode())}
    state = families["coherence_detector_state"]
    on = {(s.labels["detector"], s.labels["state"]) for s in state.samples if s.value == 1}
    assert len(on) == 3 and {d for d, _ in on} == {"seizure", "fever", "amplification"}
    # an info is a gauge named *_info in the text format
    assert families["coherence_build_info"].samples[0].labels["version"] == coherence.__version__
    assert "process_cpu_seconds" in families                    # the process's own figures


def test_openmetrics_when_asked_parsed_back(sink):
    status, headers, body = get(sink.server.address, headers={"Accept": OPENMETRICS})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text")
    text = body.decode()
    assert text.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(text)}     # strict: units, types, order
    assert families["coherence_build"].type == "info"
    assert families["coherence_detector_state_start_time_seconds"].unit == "seconds"
    assert families["coherence_detector_state_changes"].type == "counter"


def test_gzip_when_accepted(sink):
    status, headers, body = get(sink.server.address, headers={"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"coherence_status" in gzip.decompress(body)


def test_head_options_and_other_paths(sink):
    status, headers, body = get(sink.server.address, method="HEAD")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
    assert get(sink.server.address, method="OPTIONS")[0] == 200
    assert get(sink.server.address, "/")[0] == 200
    status, _, body = get(sink.server.address, "/nope")
    assert status == 404 and b"/metrics" in body
    assert get(sink.server.address, method="POST")[0] == 405
    requests = sink.server.figures()["requests"]
    assert requests[("/metrics", 200)] == 2 and requests[("other", 404)] == 1


def test_binds_loopback_unless_told():
    from coherence.config import parse_listen
    assert parse_listen(":21950") == ("127.0.0.1", 21950)
    assert parse_listen("21950") == ("127.0.0.1", 21950)
    assert parse_listen("[::1]:9") == ("::1", 9)
    assert parse_listen("0.0.0.0:9") == ("0.0.0.0", 9)
    s = PrometheusSink(("127.0.0.1", 0))
    try:
        assert s.server.address[0] == "127.0.0.1"
        assert s.exposed_without_protection() is None
    finally:
        s.server.stop()
    wide = PrometheusSink(("0.0.0.0", 0))
    try:
        assert "neither TLS nor basic auth" in (wide.exposed_without_protection() or "")
    finally:
        wide.server.stop()


def test_a_port_in_use_is_one_line():
    from coherence.sinks.http import ExporterError
    s = PrometheusSink(("127.0.0.1", 0))
    try:
        with pytest.raises(ExporterError, match=r"cannot listen on 127\.0\.0\.1:\d+: address already in use"):
            PrometheusSink(s.server.address)
    finally:
        s.server.stop()


# ---------------------------------------------------------------------- /healthz
def test_healthz_is_503_before_the_first_report_then_200():
    s = PrometheusSink(("127.0.0.1", 0))
    with s:
        status, headers, body = get(s.server.address, "/healthz")
        assert status == 503 and body.startswith(b"no report yet")
        assert headers["cache-control"] == "no-store"
        s.emit(scripted_reports(until=1.0)[-1])
        status, _, body = get(s.server.address, "/healthz")
        assert status == 200 and body.startswith(b"ok")


def test_healthz_is_503_with_the_reason_when_reports_are_stale(sink):
    latest = sink.series.latest
    latest.received -= sink.stale_after_s + 1          # the main loop stopped reporting
    status, _, body = get(sink.server.address, "/healthz")
    assert status == 503 and b"no report for" in body and b"main loop" in body
    families = {f.name: f for f in parse_text(get(sink.server.address)[2].decode())}
    assert families["coherence_healthy"].samples[0].value == 0


def test_healthz_is_503_when_the_sampler_stalls_or_stops(sink):
    sampler = FakeSampler()
    sink.watch(sampler=sampler)
    sink.emit(scripted_reports(until=1.0)[-1])
    assert get(sink.server.address, "/healthz")[0] == 200
    sampler.last_tick_s -= sink.stale_after_s + 1
    status, _, body = get(sink.server.address, "/healthz")
    assert status == 503 and b"the sampler has not ticked for" in body
    sampler.last_tick_s, sampler.running = time.monotonic(), False
    status, _, body = get(sink.server.address, "/healthz")
    assert status == 503 and b"the sampler's thread has stopped" in body


def test_the_sampler_figures_are_served(sink):
    sink.watch(sampler=FakeSampler())
    families = {f.name: f for f in parse_text(get(sink.server.address)[2].decode())}
    hist = {s.name: s for s in families["coherence_sampler_tick_lateness_seconds"].samples
            if "le" not in s.labels}
    buckets = {s.labels["le"]: s.value for s in families["coherence_sampler_tick_lateness_seconds"].samples
               if "le" in s.labels}
    # bins (upper 5: 4 us), (21: 20 us), (91: 90 us), (2048: 2047 us), cumulated at the bounds
    assert buckets["1e-05"] == 10 and buckets["2.5e-05"] == 910 and buckets["0.0001"] == 999
    assert buckets["0.001"] == 999 and buckets["0.002048"] == 1000 and buckets["+Inf"] == 1000
    assert hist["coherence_sampler_tick_lateness_seconds_count"].value == 1000
    assert hist["coherence_sampler_tick_lateness_seconds_sum"].value == pytest.approx(0.025)
    assert families["coherence_sampler_ticks"].samples[0].value == 1000
    assert families["coherence_sampler_tick_lateness_p99_seconds"].samples[0].value == pytest.approx(91e-6)


# ---------------------------------------------------------------------- bad clients
def echo_app(request: Request) -> Response:
    return Response.text(200, f"{request.method} {request.path}\n")


@pytest.fixture
def small() -> Iterator[HttpServer]:
    server = HttpServer("127.0.0.1", 0, echo_app, max_connections=3, head_timeout_s=0.5,
                        max_head_bytes=1024)
    with server:
        yield server


def test_a_slow_client_is_cut_off_and_does_not_block_others(small):
    with socket.create_connection(small.address, timeout=SAFETY_S) as slow:
        slow.sendall(b"GET /metrics HTTP/1.1\r\n")          # ... and nothing more
        assert get(small.address, "/x")[0] == 200           # served meanwhile
        answer = b""
        while True:                                          # the server hangs up on it
            chunk = slow.recv(4096)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert wait_until(lambda: small.figures()["bad"]["timeout"] == 1)


def test_an_oversized_head_is_431(small):
    answer = raw(small.address, b"GET / HTTP/1.1\r\nX-Junk: " + b"a" * 5000 + b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    answer = raw(small.address, b"GET / HTTP/1.1\r\n" + b"a" * 5000)      # no end in sight
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert wait_until(lambda: small.figures()["bad"]["too_large"] == 2)


@pytest.mark.parametrize("data, status", [
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET /\r\n\r\n", b"400"),
    (b"GET / HTTP/2.0\r\n\r\n", b"505"),
    (b"get / HTTP/1.1\r\n\r\n", b"400"),
    (b"GET nowhere HTTP/1.1\r\n\r\n", b"400"),
    (b"\xff\xfe / HTTP/1.1\r\n\r\n", b"400"),
])
def test_a_malformed_request_is_400_and_counted(small, data, status):
    assert raw(small.address, data).startswith(b"HTTP/1.1 " + status)
    assert wait_until(lambda: small.figures()["bad"]["malformed"] == 1)


def test_a_client_that_hangs_up_early_is_counted(small):
    with socket.create_connection(small.address, timeout=SAFETY_S) as s:
        s.sendall(b"GET / HT")
    assert wait_until(lambda: small.figures()["bad"]["incomplete"] == 1)


def test_connections_beyond_the_cap_get_503(small):
    idle = [socket.create_connection(small.address, timeout=SAFETY_S) for _ in range(3)]
    try:
        assert wait_until(lambda: small.figures()["connections"] == 3)
        try:
            answer = raw(small.address, b"GET / HTTP/1.1\r\n\r\n")
        except ConnectionResetError:       # refused before its request was read: also fine
            answer = b""
        assert answer in (b"", _TOO_MANY) and b"200" not in answer
        assert small.figures()["bad"]["too_many_connections"] == 1
        assert small.figures()["requests"] == {}
    finally:
        for s in idle:
            s.close()
    assert wait_until(lambda: small.figures()["connections"] == 0)
    assert get(small.address, "/")[0] == 200


def test_an_app_that_fails_is_a_500_not_a_traceback(caplog):
    def broken(request: Request) -> Response:
        raise RuntimeError("bug")
    with HttpServer("127.0.0.1", 0, broken) as server:
        assert get(server.address, "/")[0] == 500
        assert get(server.address, "/")[0] == 500
        assert server.figures()["bad"]["internal"] == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "RuntimeError: bug" in errors[0].getMessage()
    assert errors[0].exc_info is None


def test_stop_lets_a_request_in_flight_finish():
    server = HttpServer("127.0.0.1", 0, echo_app).start()
    s = socket.create_connection(server.address, timeout=SAFETY_S)
    s.sendall(b"GET /inflight HTTP/1.1\r\n")
    assert wait_until(lambda: server.figures()["connections"] == 1)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    with pytest.raises(OSError):                          # no new connection once stopping
        assert wait_until(lambda: not stopper.is_alive() or _refused(server.address))
        socket.create_connection(server.address, timeout=SAFETY_S).close()
    s.sendall(b"\r\n")
    answer = s.recv(65536)
    s.close()
    stopper.join()
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"GET /inflight\n")


def test_a_connections_thread_serves_the_next_connections_then_ends_with_the_server():
    served: List[threading.Thread] = []

    def app(request: Request) -> Response:
        served.append(threading.current_thread())
        return echo_app(request)
    server = HttpServer("127.0.0.1", 0, app).start()
    try:
        for _ in range(3):
            assert get(server.address, "/")[0] == 200
            assert wait_until(lambda: server._idle == 1)     # done, waiting for the next
        assert len(set(served)) == 1 and served[0].name == "coherence-http-conn"
        # two at once: the waiting thread takes one, a new thread the other
        a = socket.create_connection(server.address, timeout=SAFETY_S)
        b = socket.create_connection(server.address, timeout=SAFETY_S)
        assert wait_until(lambda: server.figures()["connections"] == 2)
        for s in (a, b):
            s.sendall(b"GET /both HTTP/1.1\r\n\r\n")
            assert s.recv(65536).startswith(b"HTTP/1.1 200 ")
            s.close()
        assert len(set(served)) == 2
        assert wait_until(lambda: server._idle == 2)
    finally:
        server.stop()
    assert wait_until(lambda: not any(t.is_alive() for t in served))


def _refused(address: Tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=SAFETY_S).close()
        return False
    except OSError:
        return True


# ---------------------------------------------------------------------- keep-alive
def read_response(s: socket.socket, buf: bytearray) -> Tuple[str, Dict[str, str], bytes]:
    """One response from ``s`` (status line, headers, body by Content-Length); what was read
    past it stays in ``buf``."""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"closed before a whole response: {bytes(buf)!r}"
        buf += chunk
    end = buf.index(b"\r\n\r\n")
    lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    n = int(headers["content-length"])
    while len(buf) < end + 4 + n:
        chunk = s.recv(65536)
        assert chunk, "closed before a whole body"
        buf += chunk
    body = bytes(buf[end + 4:end + 4 + n])
    del buf[:end + 4 + n]
    return lines[0], headers, body


def closed_by_server(s: socket.socket) -> bool:
    """True once the server has closed ``s`` (what it still sent is read and dropped)."""
    try:
        while s.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


@pytest.fixture
def kept() -> Iterator[HttpServer]:
    server = HttpServer("127.0.0.1", 0, echo_app, max_connections=2, head_timeout_s=0.5)
    with server:
        yield server


def test_one_connection_carries_many_requests(kept):
    served: List[threading.Thread] = []

    def app(request: Request) -> Response:
        served.append(threading.current_thread())
        return echo_app(request)
    kept.app = app
    conn = http.client.HTTPConnection(kept.address[0], kept.address[1], timeout=SAFETY_S)
    try:
        sockets = []
        for i in range(4):
            conn.request("GET", f"/n{i}")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read() == f"GET /n{i}\n".encode()
            assert resp.getheader("Connection") is None          # kept: not "close"
            sockets.append(conn.sock)
        assert sockets[0] is not None and all(s is sockets[0] for s in sockets)  # never reopened
        assert len(set(served)) == 1
        assert kept.figures()["connections"] == 1
    finally:
        conn.close()
    assert wait_until(lambda: kept.figures()["connections"] == 0)
    assert kept.figures()["requests"] == {("other", 200): 4}


def test_pipelined_requests_are_answered_in_order(kept):
    with socket.create_connection(kept.address, timeout=SAFETY_S) as s:
        # three requests in one send, one of them ended by bare newlines, the last says close
        s.sendall(b"GET /a HTTP/1.1\r\nContent-Length: 0\r\n\r\nGET /b HTTP/1.1\nHost: x\n\n"
                  b"HEAD /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        buf = bytearray()
        first, second = read_response(s, buf), read_response(s, buf)
        assert first[0] == second[0] == "HTTP/1.1 200 OK"
        assert (first[2], second[2]) == (b"GET /a\n", b"GET /b\n")
        assert "connection" not in first[1] and "connection" not in second[1]
        while b"\r\n\r\n" not in buf:                               # HEAD: headers only
            chunk = s.recv(65536)
            assert chunk
            buf += chunk
        assert buf.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close\r\n" in buf
        assert buf.endswith(b"\r\n\r\n")
        assert closed_by_server(s)
    assert kept.figures()["bad"] == {r: 0 for r in kept.figures()["bad"]}


@pytest.mark.parametrize("request_bytes", [
    b"GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
    b"GET /x HTTP/1.1\r\nConnection: TE, Close\r\n\r\n",
    b"GET /x HTTP/1.0\r\n\r\n",                                     # 1.0: never kept
    b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",                # a body, not read
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n",                  # not a length: closed
])
def test_the_server_closes_when_it_must(kept, request_bytes):
    answer = raw(kept.address, request_bytes)      # returns only once the server has closed
    assert answer.startswith(b"HTTP/1.1 ") and b"\r\nConnection: close\r\n" in answer
    conn = http.client.HTTPConnection(kept.address[0], kept.address[1], timeout=SAFETY_S)
    try:
        conn.request("GET", "/y", headers={"Connection": "close"})
        resp = conn.getresponse()
        assert resp.getheader("Connection") == "close" and resp.read() == b"GET /y\n"
        assert resp.will_close
    finally:
        conn.close()
    assert kept.figures()["bad"]["internal"] == 0


def test_an_error_that_drops_the_request_closes_the_connection(kept):
    with socket.create_connection(kept.address, timeout=SAFETY_S) as s:
        s.sendall(b"GET /ok HTTP/1.1\r\n\r\nGARBAGE\r\n\r\nGET /never HTTP/1.1\r\n\r\n")
        buf = bytearray()
        assert read_response(s, buf)[2] == b"GET /ok\n"
        status, headers, _ = read_response(s, buf)
        assert status.startswith("HTTP/1.1 400 ") and headers["connection"] == "close"
        assert closed_by_server(s)
    assert wait_until(lambda: kept.figures()["bad"]["malformed"] == 1)
    assert kept.figures()["requests"] == {("other", 200): 1}


def test_a_client_closing_its_idle_connection_is_not_a_bad_request(kept):
    with socket.create_connection(kept.address, timeout=SAFETY_S) as s:
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        read_response(s, bytearray())
        assert wait_until(lambda: kept.figures()["kept_idle"] == 1)
    assert wait_until(lambda: kept.figures()["connections"] == 0)
    assert kept.figures()["bad"] == {r: 0 for r in kept.figures()["bad"]}
    # ... but one that hangs up in the middle of its next request is
    with socket.create_connection(kept.address, timeout=SAFETY_S) as s:
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        read_response(s, bytearray())
        s.sendall(b"GET /b HT")
    assert wait_until(lambda: kept.figures()["bad"]["incomplete"] == 1)


def test_the_next_head_has_the_head_deadline_once_begun(kept):
    with socket.create_connection(kept.address, timeout=SAFETY_S) as s:
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        buf = bytearray()
        read_response(s, buf)
        s.sendall(b"GET /b HTTP/1.1\r\n")                    # ... and nothing more
        status, headers, _ = read_response(s, buf)
        assert status.startswith("HTTP/1.1 408 ") and headers["connection"] == "close"
        assert closed_by_server(s)
    assert kept.figures()["bad"]["timeout"] == 1


def test_an_idle_connection_is_closed_after_keepalive_idle_s():
    with HttpServer("127.0.0.1", 0, echo_app, keepalive_idle_s=0.3) as server:
        with socket.create_connection(server.address, timeout=SAFETY_S) as s:
            s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
            assert read_response(s, bytearray())[2] == b"GET /a\n"
            assert closed_by_server(s)                     # the server ends the wait, not us
        assert wait_until(lambda: server.figures()["connections"] == 0)
        assert server.figures()["bad"] == {r: 0 for r in server.figures()["bad"]}


def test_at_the_cap_the_connection_idle_longest_makes_room(kept):
    oldest = socket.create_connection(kept.address, timeout=SAFETY_S)
    newer = socket.create_connection(kept.address, timeout=SAFETY_S)
    try:
        for s, n in ((oldest, 1), (newer, 2)):
            s.sendall(b"GET /idle HTTP/1.1\r\n\r\n")
            read_response(s, bytearray())
            assert wait_until(lambda n=n: kept.figures()["kept_idle"] == n)
        assert get(kept.address, "/new")[0] == 200       # at the cap (2), yet served
        assert closed_by_server(oldest)                    # ... in the place of the oldest
        assert kept.figures()["bad"]["idle_evicted"] == 1
        newer.sendall(b"GET /still HTTP/1.1\r\n\r\n")       # the newer one still serves
        assert read_response(newer, bytearray())[2] == b"GET /still\n"
    finally:
        oldest.close()
        newer.close()
    assert wait_until(lambda: kept.figures()["connections"] == 0)
    assert kept.figures()["bad"]["too_many_connections"] == 0


def test_at_the_cap_with_none_idle_the_new_connection_gets_503():
    # heads that take their time: the two begun below must still be in progress at the third
    kept = HttpServer("127.0.0.1", 0, echo_app, max_connections=2, head_timeout_s=SAFETY_S).start()
    busy = socket.create_connection(kept.address, timeout=SAFETY_S)
    idle = socket.create_connection(kept.address, timeout=SAFETY_S)
    try:
        idle.sendall(b"GET /idle HTTP/1.1\r\n\r\n")
        buf = bytearray()
        read_response(idle, buf)
        idle.sendall(b"GET /busy-now HTTP/1.1\r\n")           # idle no more: its head began
        busy.sendall(b"GET /busy HTTP/1.1\r\n")
        assert wait_until(lambda: kept.figures()["connections"] == 2)
        assert wait_until(lambda: kept.figures()["kept_idle"] == 0)      # its thread woke up
        try:
            answer = raw(kept.address, b"GET / HTTP/1.1\r\n\r\n")
        except ConnectionResetError:       # refused before its request was read: also fine
            answer = b""
        assert answer in (b"", _TOO_MANY)
        assert kept.figures()["bad"]["too_many_connections"] == 1
        assert kept.figures()["bad"]["idle_evicted"] == 0
    finally:
        busy.close()
        idle.close()
        kept.stop()


def test_stop_closes_idle_kept_connections_at_once():
    server = HttpServer("127.0.0.1", 0, echo_app).start()      # idle limit: KEEPALIVE_IDLE_S
    clients = [socket.create_connection(server.address, timeout=SAFETY_S) for _ in range(3)]
    for s in clients:
        s.sendall(b"GET /a HTTP/1.1\r\n\r\n")
        read_response(s, bytearray())
    assert wait_until(lambda: server.figures()["kept_idle"] == 3)
    server.stop(drain_timeout_s=SAFETY_S)
    # drained, not given up on: stop() returned because every connection had closed
    assert server.figures()["connections"] == 0
    for s in clients:
        assert closed_by_server(s)
        s.close()
    assert server.figures()["bad"] == {r: 0 for r in server.figures()["bad"]}


def test_cpu_is_counted_while_a_kept_connection_stays_open(sink):
    conn = http.client.HTTPConnection(sink.server.address[0], sink.server.address[1], timeout=SAFETY_S)
    try:
        seen = []
        for _ in range(3):
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read()
            seen.append(sink.server.figures()["cpu_s"])
        assert 0 < seen[0] < seen[1] < seen[2]
        assert sink.server.figures()["connections"] == 1
    finally:
        conn.close()


# ---------------------------------------------------------------------- TLS and basic auth
@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    ca = Authority(d)
    server = ca.issue("server", dns=["localhost"], ips=["127.0.0.1"])
    good = ca.issue("scraper", dns=["prometheus.example"], client=True)
    other = ca.issue("intruder", dns=["intruder.example"], client=True)
    return {"dir": d, "ca": ca, "server": server, "good": good, "other": other}


def serve_with(tmp_path, text: str) -> PrometheusSink:
    path = tmp_path / "web.yml"
    path.write_text(text)
    s = PrometheusSink(("127.0.0.1", 0), WebConfigFile(str(path)))
    s.emit(scripted_reports(until=1.0)[-1])
    return s


def client_context(pki, cert: Optional[Tuple[str, str]] = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki["ca"].cert_file)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


def test_tls_serves_https_and_refuses_plain_http(tmp_path, pki):
    crt, key = pki["server"]
    with serve_with(tmp_path, f"tls_server_config: {{cert_file: {crt}, key_file: {key}}}\n") as s:
        assert s.url.startswith("https://127.0.0.1:")
        status, _, body = get(s.server.address, context=client_context(pki))
        assert status == 200 and b"coherence_status" in body
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            get(s.server.address)                               # plain HTTP to a TLS port
        assert wait_until(lambda: s.server.figures()["bad"]["tls"] == 1)
        assert s.security() == "TLS on, basic auth off"


def test_client_certificates_and_allowed_sans(tmp_path, pki):
    crt, key = pki["server"]
    text = (f"tls_server_config:\n  cert_file: {crt}\n  key_file: {key}\n"
            f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {pki['ca'].cert_file}\n"
            f"  client_allowed_sans: [prometheus.example]\n")
    with serve_with(tmp_path, text) as s:
        assert get(s.server.address, context=client_context(pki, pki["good"]))[0] == 200
        with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException, OSError)):
            get(s.server.address, context=client_context(pki))               # no certificate
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            get(s.server.address, context=client_context(pki, pki["other"]))  # SAN not allowed
        assert wait_until(lambda: s.server.figures()["bad"]["client_cert"] == 1)
        assert s.server.figures()["bad"]["tls"] >= 1


def auth(user: str, password: str) -> Dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_good_and_bad_credentials(tmp_path):
    with serve_with(tmp_path, f"basic_auth_users:\n  prometheus: {HASH}\n"
                    "http_server_config:\n  headers: {X-Frame-Options: deny}\n") as s:
        status, headers, body = get(s.server.address, headers=auth("prometheus", "s3cret"))
        assert status == 200 and b"coherence_status" in body and headers["x-frame-options"] == "deny"
        for h in ({}, auth("prometheus", "wrong"), auth("nobody", "s3cret")):
            status, headers, body = get(s.server.address, headers=h)
            assert status == 401 and headers["www-authenticate"].startswith("Basic")
            assert b"coherence" not in body
        assert get(s.server.address, "/healthz")[0] == 401       # every path is protected
        assert s.server.figures()["requests"][("/metrics", 401)] == 3


def test_tls_connections_are_kept_and_auth_checked_on_each_request(tmp_path, pki):
    crt, key = pki["server"]
    with serve_with(tmp_path, f"tls_server_config: {{cert_file: {crt}, key_file: {key}}}\n"
                    f"basic_auth_users:\n  prometheus: {HASH}\n") as s:
        host, port = s.server.address
        conn = http.client.HTTPSConnection(host, port, timeout=SAFETY_S, context=client_context(pki))
        try:
            statuses, sockets = [], []
            for h in (auth("prometheus", "s3cret"), {}, auth("prometheus", "wrong"),
                      auth("prometheus", "s3cret")):
                conn.request("GET", "/metrics", headers=h)
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
                sockets.append(conn.sock)
            assert statuses == [200, 401, 401, 200]
            assert sockets[0] is not None                           # one handshake for all
            assert all(sock is sockets[0] for sock in sockets)
        finally:
            conn.close()
        assert wait_until(lambda: s.server.figures()["connections"] == 0)
        assert s.server.figures()["bad"]["tls"] == 0


def test_a_changed_tls_config_ends_kept_connections(tmp_path, pki):
    crt, key = pki["server"]
    with serve_with(tmp_path, f"tls_server_config: {{cert_file: {crt}, key_file: {key}}}\n") as s:
        host, port = s.server.address
        conn = http.client.HTTPSConnection(host, port, timeout=SAFETY_S, context=client_context(pki))
        try:
            conn.request("GET", "/healthz")
            assert conn.getresponse().read().startswith(b"ok")
            os.utime(tmp_path / "web.yml", (1, 1))              # "renewed": read again
            conn.request("GET", "/healthz")
            with pytest.raises((ConnectionError, http.client.HTTPException)):
                conn.getresponse()                      # closed unanswered, under the old TLS
        finally:
            conn.close()
        assert get(s.server.address, "/healthz", context=client_context(pki))[0] == 200
        assert s.server.figures()["bad"] == {r: 0 for r in s.server.figures()["bad"]}


def test_a_web_config_that_turns_invalid_refuses_every_request(tmp_path):
    with serve_with(tmp_path, f"basic_auth_users: {{prometheus: {HASH}}}\n") as s:
        assert get(s.server.address, headers=auth("prometheus", "s3cret"))[0] == 200
        path = tmp_path / "web.yml"
        path.write_text("basic_auth_users: {prometheus: plaintext}\n")
        os.utime(path, (1, 1))
        with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
            get(s.server.address, headers=auth("prometheus", "s3cret"))
        assert s.server.figures()["bad"]["web_config"] == 1
        path.write_text("basic_auth_users: {}\n")
        assert get(s.server.address)[0] == 200                     # fixed: read again


# ---------------------------------------------------------------------- reading headers
HEADS = [b"Host: 127.0.0.1:9\r\nUser-Agent: Prometheus/2.42.0\r\nAccept: application/openmetrics-text;"
         b"version=1.0.0,text/plain;version=0.0.4;q=0.5\r\nAccept-Encoding: gzip\r\n"
         b"X-Prometheus-Scrape-Timeout-Seconds: 10\r\n\r\n",
         b"Accept:   spaced  \r\nEmpty:\r\nTab:\tv\r\nDup: 1\r\nDup: 2\r\nLatin: \xe9\r\n\r\n",
         b"Bare: newlines\nOnly: here\n\n",
         b"Folded: a\r\n  b\r\n\r\n", b"Bad Header: x\r\nAccept: y\r\n\r\n", b":empty\r\n\r\n",
         b"From someone\r\n\r\n", b"Cr: a\rb\r\n\r\n", b"A: 1\n\r\nB: 2\r\n\r\n", b"\r\n\r\n"]


def test_headers_are_read_as_http_client_reads_them():
    from coherence.sinks.http import _simple_headers
    for rest in HEADS:
        simple = _simple_headers(rest)
        if simple is not None:
            assert simple.items() == http.client.parse_headers(io.BytesIO(rest)).items(), rest
    assert _simple_headers(HEADS[0]) is not None and _simple_headers(HEADS[1]) is not None
    assert _simple_headers(HEADS[3]) is None                   # folded: parse_headers reads it


@given(st.lists(st.text(alphabet="aZ-_: \t\r\n\x0b\x0c\x1c\x85\xe9:", max_size=10), max_size=6),
       st.sampled_from([b"\r\n", b"\n"]))
def test_any_head_is_read_as_http_client_reads_it(lines, eol):
    from coherence.sinks.http import _simple_headers
    rest = eol.join(line.encode("latin-1") for line in lines) + b"\r\n\r\n"
    simple = _simple_headers(rest)
    if simple is not None:
        assert simple.items() == http.client.parse_headers(io.BytesIO(rest)).items()
