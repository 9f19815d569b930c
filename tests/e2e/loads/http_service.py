"""A real HTTP service on 127.0.0.1 for the amplification cases: a client that retries, a frontend
that retries against a backend, and a backend that (in a storm) persistently fails a poisoned
half of the keys. Bounded in time (--seconds) and in requests (--rate x --seconds).

    python http_service.py --mode storm --healthy-seconds 4 --seconds 16 \
        --count statsd:127.0.0.1:8125
    python http_service.py --mode storm --count inprocess   # sentinel embedded, JSON on stdout
    python http_service.py --mode storm --count prometheus --phase-signal   # scraped, see below

Per request received the frontend counts one ingress; per backend attempt one egress. In a storm
a poisoned key costs the frontend 3 requests (the client's attempts) x 3 backend attempts:
ingress 2, egress 5 per 2 keys, a ratio of 2.5. (Independent 50 % failures could not pass 2: the
expected number of attempts to a first success is exactly 2.)

stderr, one line each, for the test: `PHASE <mode> <time.monotonic()>` when a phase starts,
`FAULT <time.monotonic()>` when the storm starts, `METRICS <url>` (--count prometheus) once its
/metrics is served, and once a second
`{"t":..., "phase":..., "requests":..., "errors":..., "logical":..., "logical_errors":...}`:
the frontend's requests and 500s (a classic "error rate > 5 %" alert watches these) and the
client's requests and final failures in that second. stdout is the sentinel's JSON lines
(--count inprocess) or nothing.

--count prometheus exposes the frontend's own counters on 127.0.0.1 the way a Spring Boot service
instrumented with Micrometer does: Summaries `http_server_requests_seconds` (requests it served)
and `http_client_requests_seconds` (its calls out, every retry), labelled method, uri, status,
outcome. The backend is another service: its requests are not the frontend's. Every connection
is a keep-alive one, so a retry opens no TCP connection. --phase-signal: the second phase starts
on SIGUSR1 (at the latest after --healthy-seconds), when the test has seen the healthy service
judged.
"""
from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, List, Optional, Tuple

HOST = "127.0.0.1"            # loopback only, never another address
ATTEMPTS = 3                  # the client's and the frontend's retry budget (first try included)
FANOUT = 3                    # backend calls per request in --mode fanout3
HTTP_TIMEOUT_S = 2.0          # any one call; also bounds the wait for in-flight calls on exit
IDLE_TIMEOUT_S = 3.0          # a keep-alive connection idle this long is closed by the server
STATSD_FLUSH_S = 0.05         # counters batched per UDP packet this often
STATSD_MAX_PACKET = 1400      # bytes: under a typical MTU, as StatsD clients do
MAX_IN_FLIGHT = 32            # client requests at once; beyond it a tick is skipped (and counted)


def poisoned(key: str) -> bool:
    """A bad dependency fails the same keys every time: crc32 parity, stable across processes
    (Python's own hash() is salted per process)."""
    return zlib.crc32(key.encode()) & 1 == 1


class Stats:
    """Per-second counts, swapped out under a lock by the reporter."""

    FIELDS = ("requests", "errors", "logical", "logical_errors", "skipped")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(self.FIELDS, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def take(self) -> dict:
        with self._lock:
            counts, self._counts = self._counts, dict.fromkeys(self.FIELDS, 0)
        return counts


class State:
    def __init__(self) -> None:
        self.mode = "ok"                    # ok | fanout3 | storm: what the service does now
        self.stop = threading.Event()
        self.stats = Stats()


# ------------------------------------------------------------------------------------ counting
class StatsdCounter:
    """`coherence.ingress:1|c` / `coherence.egress:1|c` lines, batched and sent every 50 ms."""

    def __init__(self, host: str, port: int, prefix: str = "coherence") -> None:
        if host not in ("127.0.0.1", "localhost"):
            raise SystemExit(f"http_service: the StatsD target must be on 127.0.0.1, got {host!r}")
        self.target = (HOST, port)
        self.lines = (f"{prefix}.ingress:1|c".encode(), f"{prefix}.egress:1|c".encode())
        self._lock = threading.Lock()
        self._pending: List[bytes] = []
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="statsd-flush", daemon=True)
        self._thread.start()

    def ingress(self) -> None:
        with self._lock:
            self._pending.append(self.lines[0])

    def egress(self) -> None:
        with self._lock:
            self._pending.append(self.lines[1])

    def timed(self, kind: str, status: int, seconds: float) -> None:
        pass  # counted by ingress() / egress()

    def _flush(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        packet: List[bytes] = []
        size = 0
        for line in pending:
            if packet and size + len(line) + 1 > STATSD_MAX_PACKET:
                self._send(b"\n".join(packet))
                packet, size = [], 0
            packet.append(line)
            size += len(line) + 1
        if packet:
            self._send(b"\n".join(packet))

    def _send(self, data: bytes) -> None:
        try:
            self._sock.sendto(data, self.target)
        except OSError:
            pass  # StatsD is fire-and-forget: no listener (yet) is not the service's problem

    def _run(self) -> None:
        while not self._stop.wait(STATSD_FLUSH_S):
            self._flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._flush()
        self._sock.close()


class PrometheusCounter:
    """Micrometer's HTTP timers, exported with prometheus_client on a /metrics of their own."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Summary, start_http_server
        self.registry = CollectorRegistry()
        labels = ("method", "uri", "status", "outcome")
        self.server_timer = Summary("http_server_requests_seconds", "Duration of HTTP server "
                                    "request handling", labels, registry=self.registry)
        self.client_timer = Summary("http_client_requests_seconds", "Timer of HTTP client "
                                    "exchanges", labels, registry=self.registry)
        self.server, self.thread = start_http_server(0, HOST, registry=self.registry)
        self.url = f"http://{HOST}:{self.server.server_port}/metrics"

    def ingress(self) -> None:
        pass  # a timer counts when it stops: timed()

    def egress(self) -> None:
        pass

    def timed(self, kind: str, status: int, seconds: float) -> None:
        timer = self.server_timer if kind == "server" else self.client_timer
        outcome = "SUCCESS" if status < 400 else "SERVER_ERROR" if status < 599 else "UNKNOWN"
        timer.labels("GET", "/item/{id}", str(status), outcome).observe(seconds)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class HooksCounter:
    """The in-process API: one C call per count."""

    def __init__(self) -> None:
        from coherence import hooks
        self.ingress: Callable[[], None] = hooks.ingress
        self.egress: Callable[[], None] = hooks.egress

    def timed(self, kind: str, status: int, seconds: float) -> None:
        pass  # counted by ingress() / egress()

    def close(self) -> None:
        pass


class EmbeddedSentinel:
    """coherence's Sentinel in this process, its reports as JSON lines on stdout."""

    class _Stopped(Exception):
        pass

    def __init__(self, stop: threading.Event) -> None:
        from coherence.config import load
        from coherence.sentinel import Sentinel
        from coherence.sinks.jsonl import JsonLinesSink
        config = load(None)
        self.sentinel = Sentinel.from_config(config)
        self.sink = JsonLinesSink(sys.stdout, interval_s=config.output.report_interval_s)
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="sentinel", daemon=True)

    def _emit(self, report: Any) -> None:
        if self.stop.is_set():
            raise self._Stopped()
        self.sink.emit(report)

    def _run(self) -> None:
        from coherence.sinks.jsonl import SinkClosed
        try:
            with self.sentinel:
                self.sentinel.run(None, self._emit)
        except (self._Stopped, SinkClosed):
            pass

    def start(self) -> None:
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5.0)


# ------------------------------------------------------------------------------------- servers
class Quiet(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"       # keep-alive: a few connections, not thousands in TIME_WAIT
    timeout = IDLE_TIMEOUT_S
    state: State

    def log_message(self, format: str, *args: Any) -> None:
        pass  # stderr carries the stats lines

    def reply(self, code: int, body: bytes = b"") -> None:
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Backend(Quiet):
    def do_GET(self) -> None:
        if self.state.mode == "storm" and poisoned(self.path):
            self.reply(500, b"dependency failed")
        else:
            self.reply(200, b"ok")


class Connection:
    """One keep-alive HTTP connection, reopened after an error."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: Optional[http.client.HTTPConnection] = None

    def get(self, path: str) -> int:
        """The status, or 599 when the call itself failed (refused, reset, timed out)."""
        for _ in range(2):      # a keep-alive connection the server closed: reopen once
            if self.conn is None:
                self.conn = http.client.HTTPConnection(HOST, self.port, timeout=HTTP_TIMEOUT_S)
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                self.close()
        return 599

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class Frontend(Quiet):
    counter: Any
    backend_port: int

    def setup(self) -> None:
        super().setup()
        self.backend = Connection(self.backend_port)   # one per client connection (thread)

    def finish(self) -> None:
        self.backend.close()
        super().finish()

    def call_backend(self, path: str) -> bool:
        for _ in range(ATTEMPTS):
            self.counter.egress()            # every attempt counts: that is amplification
            started = time.perf_counter()
            status = self.backend.get(path)
            self.counter.timed("client", status, time.perf_counter() - started)
            if status == 200:
                return True
        return False

    def do_GET(self) -> None:
        self.counter.ingress()
        started = time.perf_counter()
        mode = self.state.mode
        calls = FANOUT if mode == "fanout3" else 1
        ok = all([self.call_backend(f"{self.path}/{i}" if calls > 1 else self.path)
                  for i in range(calls)])
        self.state.stats.add("requests")
        if not ok:
            self.state.stats.add("errors")
        self.reply(200 if ok else 500, b"ok" if ok else b"backend failed")
        self.counter.timed("server", 200 if ok else 500, time.perf_counter() - started)


def serve(handler: type, **attrs: Any) -> Tuple[ThreadingHTTPServer, threading.Thread]:
    cls = type(handler.__name__, (handler,), attrs)
    server = ThreadingHTTPServer((HOST, 0), cls)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=handler.__name__, daemon=True)
    thread.start()
    return server, thread


# -------------------------------------------------------------------------------------- client
class Client:
    """Logical requests at `rate` per second, each retried up to 3 times on a failure."""

    def __init__(self, state: State, port: int, rate: float) -> None:
        self.state, self.port, self.rate = state, port, rate
        self.local = threading.local()
        self.connections: List[Connection] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.pool = ThreadPoolExecutor(max_workers=MAX_IN_FLIGHT, thread_name_prefix="client")

    def connection(self) -> Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = Connection(self.port)
            with self.lock:
                self.connections.append(conn)
        return conn

    def one(self, key: str) -> None:
        try:
            conn = self.connection()
            for _ in range(ATTEMPTS):
                if self.state.stop.is_set() or conn.get(key) == 200:
                    break
            else:
                self.state.stats.add("logical_errors")
            self.state.stats.add("logical")
        finally:
            with self.lock:
                self.in_flight -= 1

    def run(self, until: float) -> None:
        period = 1.0 / self.rate
        next_t = time.monotonic()
        n = 0
        while not self.state.stop.is_set() and next_t < until:
            with self.lock:
                busy = self.in_flight >= MAX_IN_FLIGHT
                if not busy:
                    self.in_flight += 1
            if busy:
                self.state.stats.add("skipped")
            else:
                self.pool.submit(self.one, f"/item/{n}")
            n += 1
            next_t += period
            self.state.stop.wait(max(0.0, next_t - time.monotonic()))

    def close(self) -> None:
        self.pool.shutdown(wait=True)       # in-flight calls end within HTTP_TIMEOUT_S each
        for conn in self.connections:
            conn.close()


# ---------------------------------------------------------------------------------------- main
def say(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def reporter(state: State) -> None:
    next_t = time.monotonic() + 1.0
    while not state.stop.wait(max(0.0, next_t - time.monotonic())):
        counts = state.stats.take()
        say(json.dumps({"t": round(time.monotonic(), 4), "phase": state.mode, **counts}))
        next_t += 1.0


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("ok", "fanout3", "storm"), default="storm",
                   help="what the service does after the healthy phase")
    p.add_argument("--healthy-mode", choices=("ok", "fanout3"), default=None,
                   help="the healthy phase (default: fanout3 for --mode fanout3, else ok)")
    p.add_argument("--healthy-seconds", type=float, default=4.0)
    p.add_argument("--seconds", type=float, default=20.0, help="stop by itself after this long")
    p.add_argument("--rate", type=float, default=60.0, help="client requests per second")
    p.add_argument("--count", default="inprocess",
                   metavar="statsd:HOST:PORT|inprocess|prometheus")
    p.add_argument("--phase-signal", action="store_true",
                   help="start the second phase on SIGUSR1 (at the latest after --healthy-seconds)")
    args = p.parse_args(argv)
    if not 0 < args.seconds <= 600 or not 0 < args.rate <= 1000 or args.healthy_seconds < 0:
        p.error("need 0 < --seconds <= 600, 0 < --rate <= 1000, --healthy-seconds >= 0")
    if args.healthy_mode is None:
        args.healthy_mode = "fanout3" if args.mode == "fanout3" else "ok"
    if args.count not in ("inprocess", "prometheus"):
        kind, _, hostport = args.count.partition(":")
        host, _, port = hostport.rpartition(":")
        if kind != "statsd" or not port.isdigit():
            p.error("--count is statsd:HOST:PORT, inprocess or prometheus")
        args.statsd = (host, int(port))
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    state = State()
    signal.signal(signal.SIGTERM, lambda *_: state.stop.set())
    signal.signal(signal.SIGINT, lambda *_: state.stop.set())

    sentinel = None
    if args.count == "inprocess":
        counter: Any = HooksCounter()
        sentinel = EmbeddedSentinel(state.stop)
        sentinel.start()
    elif args.count == "prometheus":
        counter = PrometheusCounter()
        say(f"METRICS {counter.url}")
    else:
        counter = StatsdCounter(*args.statsd)
    backend, backend_thread = serve(Backend, state=state)
    frontend, frontend_thread = serve(Frontend, state=state, counter=counter,
                                      backend_port=backend.server_address[1])
    client = Client(state, frontend.server_address[1], args.rate)
    threads = [threading.Thread(target=reporter, args=(state,), name="reporter", daemon=True)]
    threads[0].start()

    state.mode = args.healthy_mode
    start = time.monotonic()            # the phases count from here, the servers being up
    end = start + args.seconds
    say(f"PHASE {state.mode} {start:.6f}")

    switch = threading.Event()       # --phase-signal: SIGUSR1 starts the second phase
    if args.phase_signal:
        signal.signal(signal.SIGUSR1, lambda *_: switch.set())

    def phases() -> None:
        while not switch.wait(min(0.1, max(0.0, start + args.healthy_seconds - time.monotonic()))):
            if state.stop.is_set():
                return
            if time.monotonic() >= start + args.healthy_seconds:
                break
        state.mode = args.mode
        t = time.monotonic()
        say(f"PHASE {state.mode} {t:.6f}")
        if args.mode == "storm":
            say(f"FAULT {t:.6f}")

    threads.append(threading.Thread(target=phases, name="phases", daemon=True))
    threads[1].start()
    try:
        client.run(end)
    finally:
        state.stop.set()
        client.close()
        for server in (frontend, backend):
            server.shutdown()
            server.server_close()
        for thread in (frontend_thread, backend_thread, *threads):
            thread.join(HTTP_TIMEOUT_S)
        counter.close()
        if sentinel is not None:
            sentinel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
