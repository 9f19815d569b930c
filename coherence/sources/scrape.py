"""A service's own counters, read from its Prometheus / OpenMetrics endpoint.

Behind keep-alive pools a retry storm opens no TCP connection, and a managed runtime's GC is
invisible to the kernel: the service's counters are the evidence. This module fetches one
endpoint (bounded in time and size), parses it with prometheus_client, and recognises the
names the common clients expose, summed over their labels, as a few canonical signals.

>>> target = ScrapeTarget("http://127.0.0.1:9100/metrics")      # doctest: +SKIP
>>> target.read().values                                         # doctest: +SKIP
{'gc_seconds_total': 0.0102, 'gc_collections_total': 58.0, 'alloc_bytes_total': 4449464.0}
"""
from __future__ import annotations

import http.client
import math
import re
import socket
import ssl
import threading
import time
import urllib.parse
import zlib
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Pattern, Tuple, Union

from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.parser import text_string_to_metric_families as _openmetrics_families
from prometheus_client.parser import text_string_to_metric_families as _text_families
from prometheus_client.samples import Sample

from coherence.sources._base import RUNTIME_COUNTERS, SourceUnavailable

# A few Hz: GC time and request counters move on the scale of a report interval (1 s); faster
# than this only parses the same numbers again in pure Python.
DEFAULT_RATE_HZ = 2.0
# One period at DEFAULT_RATE_HZ, minus nothing: a target slower than that is late anyway, and the
# scrape thread must never fall a whole period behind. Covers connect, headers and body.
DEFAULT_TIMEOUT_S = 0.5
# A Spring Boot or Go service exposes 10-200 KiB; 4 MiB is an Envoy with a few hundred clusters.
# Bigger bodies cost more CPU to parse (pure Python) than a sentinel should spend a few times a second.
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# The classic text format first: prometheus_client's text parser is lax, the OpenMetrics one strict
# (a client's small deviation would make the whole target unavailable). Both are understood.
ACCEPT_TEXT = "text/plain;version=0.0.4;q=1.0,*/*;q=0.1"
ACCEPT_OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
USER_AGENT = "coherence-sentinel"
# Reasons are shown on one line of `coherence sources`; a server's text is cut to this.
MAX_REASON = 160
_READ_CHUNK = 65536
_OPENMETRICS = "application/openmetrics-text"
# Media types that are answers, but not expositions: a login page, an API, protobuf exposition.
_NOT_EXPOSITION = ("text/html", "application/json", "application/xml", "text/xml",
                   "application/vnd.google.protobuf")


class ScrapeError(Exception):
    """A target could not be read or understood; ``str(err)`` is the one-line reason."""


def _one_line(text: str, limit: int = MAX_REASON) -> str:
    """A server's or parser's text made safe for one line of a table: no control characters."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return flat if len(flat) <= limit else flat[:limit - 1] + "…"


# --- selectors -------------------------------------------------------------------------------

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_OPERATOR = re.compile(r"=~|!~|!=|=")
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "t": "\t"}
OPERATORS = ("=", "!=", "=~", "!~")


@dataclass(frozen=True)
class Matcher:
    """One label matcher of a selector; an absent label reads as "" (as in PromQL)."""

    label: str
    op: str
    value: str
    regex: Optional[Pattern[str]] = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.op not in OPERATORS:
            raise ValueError(f"matcher on {self.label!r}: operator must be one of {', '.join(OPERATORS)}")
        if not _LABEL_NAME.fullmatch(self.label):
            raise ValueError(f"matcher: {self.label!r} is not a label name")
        if self.op in ("=~", "!~"):
            try:
                # anchored at both ends, as PromQL does
                object.__setattr__(self, "regex", re.compile(f"(?:{self.value})\\Z", re.DOTALL))
            except re.error as err:
                raise ValueError(f"matcher on {self.label!r}: bad regex {self.value!r}: {err}") from None

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.label, "")
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        assert self.regex is not None
        found = self.regex.match(value) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'{self.label}{self.op}"{escaped}"'


@dataclass(frozen=True)
class Selector:
    """A metric name with label matchers, as in PromQL: ``http_requests_total{direction="in"}``.

    >>> s = Selector.parse('http_requests_total{direction="in",code!~"5.."}')
    >>> s.matches("http_requests_total", {"direction": "in", "code": "200"})
    True
    >>> str(s)
    'http_requests_total{direction="in",code!~"5.."}'
    """

    name: str
    matchers: Tuple[Matcher, ...] = ()

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise ValueError(f"selector: {self.name!r} is not a metric name")

    @classmethod
    def parse(cls, text: str) -> "Selector":
        """``name`` or ``name{label<op>"value", ...}`` with =, !=, =~, !~; ValueError naming the problem."""
        if not isinstance(text, str):
            raise ValueError(f"selector must be a string, got {type(text).__name__}")
        where = f"selector {_one_line(text, 80)!r}"
        name = _METRIC_NAME.match(text.strip())
        if not name:
            raise ValueError(f"{where}: must start with a metric name")
        rest = text.strip()[name.end():].strip()
        if not rest:
            return cls(name.group())
        if rest[0] != "{" or rest[-1] != "}":
            raise ValueError(f"{where}: label matchers go in one {{...}} after the name")
        return cls(name.group(), _parse_matchers(rest[1:-1], where))

    def matches_labels(self, labels: Mapping[str, str]) -> bool:
        return all(m.matches(labels) for m in self.matchers)

    def matches(self, name: str, labels: Mapping[str, str]) -> bool:
        return name == self.name and self.matches_labels(labels)

    def __str__(self) -> str:
        if not self.matchers:
            return self.name
        return f"{self.name}{{{','.join(str(m) for m in self.matchers)}}}"


def _parse_matchers(body: str, where: str) -> Tuple[Matcher, ...]:
    matchers: List[Matcher] = []
    i = 0
    while True:
        while i < len(body) and body[i].isspace():
            i += 1
        if i == len(body):
            return tuple(matchers)
        label = _LABEL_NAME.match(body, i)
        if not label:
            raise ValueError(f"{where}: expected a label name at {body[i:i + 20]!r}")
        i = label.end()
        while i < len(body) and body[i].isspace():
            i += 1
        op = _OPERATOR.match(body, i)
        if not op:
            raise ValueError(f"{where}: expected =, !=, =~ or !~ after {label.group()!r}")
        i = op.end()
        while i < len(body) and body[i].isspace():
            i += 1
        value, i = _parse_string(body, i, where)
        try:
            matchers.append(Matcher(label.group(), op.group(), value))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        while i < len(body) and body[i].isspace():
            i += 1
        if i < len(body):
            if body[i] != ",":
                raise ValueError(f"{where}: expected ',' between matchers at {body[i:i + 20]!r}")
            i += 1


def _parse_string(body: str, i: int, where: str) -> Tuple[str, int]:
    if i >= len(body) or body[i] not in "\"'":
        raise ValueError(f"{where}: a label value must be quoted")
    quote, i = body[i], i + 1
    out: List[str] = []
    while i < len(body):
        c = body[i]
        if c == quote:
            return "".join(out), i + 1
        if c == "\\":
            if i + 1 >= len(body) or body[i + 1] not in _ESCAPES:
                raise ValueError(f"{where}: bad escape in a label value")
            out.append(_ESCAPES[body[i + 1]])
            i += 2
            continue
        out.append(c)
        i += 1
    raise ValueError(f"{where}: unterminated label value")


# --- fetching --------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL with a host; ValueError saying why not otherwise."""
    if not isinstance(url, str):
        raise ValueError(f"scrape URL must be a string, got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url)
    shown = _one_line(url, 80)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"scrape URL {shown!r}: scheme must be http or https, not {parts.scheme or 'none'!r}")
    if not parts.hostname:
        raise ValueError(f"scrape URL {shown!r}: no host")
    if parts.username is not None or parts.password is not None:
        # credentials would be printed with the URL in every reason and log line
        raise ValueError(f"scrape URL for {parts.hostname}: user:password in the URL is not supported")
    try:
        _ = parts.port  # parsed lazily: "host:http" only fails here
    except ValueError:
        raise ValueError(f"scrape URL {shown!r}: bad port") from None
    return url


class _Deadline:
    """Every receive of a socket bounded by what remains of one overall deadline, so that a server
    trickling a byte at a time cannot stretch a scrape past it (per-call timeouts alone would)."""

    deadline: Optional[float] = None

    def _arm(self) -> None:
        if self.deadline is None:
            return
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        self.settimeout(left)  # type: ignore[attr-defined]

    # first in the MRO of both socket classes below: their receives go through here
    def recv(self, *args: Any) -> bytes:
        self._arm()
        return super().recv(*args)  # type: ignore[misc]

    def recv_into(self, *args: Any, **kwargs: Any) -> int:
        self._arm()
        return super().recv_into(*args, **kwargs)  # type: ignore[misc]


class _DeadlineSocket(_Deadline, socket.socket):
    pass


class _DeadlineSSLSocket(_Deadline, ssl.SSLSocket):
    pass


_tls_lock = threading.Lock()
_tls: Optional[ssl.SSLContext] = None


def _tls_context() -> ssl.SSLContext:
    # built once: loading the system's CA store costs milliseconds, a few times a second
    global _tls
    with _tls_lock:
        if _tls is None:
            context = ssl.create_default_context()
            context.sslsocket_class = _DeadlineSSLSocket
            _tls = context
        return _tls


class _Connection(http.client.HTTPConnection):
    """One request on a socket whose receives all end by ``deadline`` (TLS when ``tls``)."""

    def __init__(self, host: str, port: int, deadline: float, tls: bool) -> None:
        super().__init__(host, port, timeout=max(deadline - time.monotonic(), 0.001))
        self._deadline = deadline
        self._tls = tls

    def connect(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        raw = socket.create_connection((self.host, self.port), left)
        sock = _DeadlineSocket(raw.family, raw.type, raw.proto, fileno=raw.detach())
        sock.settimeout(left)
        sock.deadline = self._deadline
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls:
            wrapped = _tls_context().wrap_socket(sock, server_hostname=self.host)
            assert isinstance(wrapped, _DeadlineSSLSocket)
            wrapped.deadline = self._deadline
            self.sock = wrapped
        else:
            self.sock = sock


@dataclass(frozen=True)
class Fetched:
    """A 2xx answer: its body (decompressed, within the size limit), media type and status."""

    body: bytes
    content_type: str
    status: int


def fetch(url: str, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES,
          accept: str = ACCEPT_TEXT) -> Fetched:
    """GET ``url`` within ``timeout_s`` overall and ``max_bytes`` of body; ScrapeError otherwise.

    http and https only, no redirect followed, gzip decoded under the same size limit. Name
    resolution is the system resolver's and is not bounded by ``timeout_s``.
    """
    try:
        check_url(url)
    except ValueError as err:
        raise ScrapeError(str(err)) from None
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = _Connection(host, port, time.monotonic() + timeout_s, tls)
    try:
        conn.request("GET", path, headers={"Accept": accept, "Accept-Encoding": "gzip",
                                           "User-Agent": USER_AGENT, "Connection": "close"})
        response = conn.getresponse()
        _check_status(response)
        body = _read_body(response, max_bytes)
        return Fetched(body, response.getheader("Content-Type", "") or "", response.status)
    except (OSError, http.client.HTTPException, ValueError) as err:
        raise ScrapeError(_network_reason(err, host, port, timeout_s)) from err
    finally:
        conn.close()


def _check_status(response: http.client.HTTPResponse) -> None:
    status = response.status
    if 300 <= status < 400:
        location = response.getheader("Location")
        where = _one_line(location, 100) if location else "no Location"
        raise ScrapeError(f"HTTP {status}: redirected to {where}: not followed")
    if not 200 <= status < 300:
        raise ScrapeError(f"HTTP {status} {_one_line(response.reason or '', 60)}".rstrip())


def _read_body(response: http.client.HTTPResponse, max_bytes: int) -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise ScrapeError(f"body of {int(length)} bytes (Content-Length) is over the limit of {max_bytes} bytes")
    encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
    if encoding in ("gzip", "x-gzip"):
        inflater: Optional["zlib._Decompress"] = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif encoding == "identity":
        inflater = None
    else:
        raise ScrapeError(f"unsupported Content-Encoding {_one_line(encoding, 40)!r} (only gzip was asked for)")
    out = bytearray()
    received = 0
    while True:
        # never more than one byte past the limit: enough to know it is over
        chunk = response.read(min(_READ_CHUNK, max_bytes + 1 - received))
        if not chunk:
            break
        received += len(chunk)
        if received > max_bytes:
            raise ScrapeError(f"body over the limit of {max_bytes} bytes")
        if inflater is None:
            out += chunk
        else:
            _inflate(inflater, chunk, out, max_bytes)
    if response.length:  # read(amt) returns short at EOF instead of raising IncompleteRead
        raise http.client.IncompleteRead(bytes(out), response.length)
    if inflater is not None:
        out += inflater.flush()
        if len(out) > max_bytes:
            raise ScrapeError(f"gzip body expands past the limit of {max_bytes} bytes")
        if not inflater.eof:
            raise ScrapeError("gzip body is truncated")
    return bytes(out)


def _inflate(inflater: "zlib._Decompress", data: bytes, out: bytearray, max_bytes: int) -> None:
    try:
        while data:
            # max_length bounds what one call may produce: a gzip bomb stops at the limit
            out += inflater.decompress(data, max_bytes + 1 - len(out))
            if len(out) > max_bytes:
                raise ScrapeError(f"gzip body expands past the limit of {max_bytes} bytes")
            data = inflater.unconsumed_tail
    except zlib.error as err:
        raise ScrapeError(f"body is not valid gzip: {_one_line(str(err), 80)}") from err


def _network_reason(err: BaseException, host: str, port: int, timeout_s: float) -> str:
    """The one place a network or HTTP failure becomes a reason a user can act on."""
    if isinstance(err, ScrapeError):
        return str(err)
    if isinstance(err, socket.timeout):
        return f"no complete answer within {timeout_s:g} s"
    if isinstance(err, http.client.RemoteDisconnected):
        return "connection closed by the server before an answer"
    if isinstance(err, http.client.IncompleteRead):
        return "connection closed by the server in the middle of the body"
    if isinstance(err, ConnectionRefusedError):
        return f"connection refused by {host}:{port}"
    if isinstance(err, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(err, socket.gaierror):
        return f"cannot resolve {host}: {err.strerror or err}"
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {_one_line(err.verify_message or str(err), 100)}"
    if isinstance(err, ssl.SSLError):
        return f"TLS failed: {_one_line(err.reason or str(err), 100)}"
    if isinstance(err, OSError):
        return f"{host}:{port}: {_one_line(err.strerror or str(err) or type(err).__name__, 100)}"
    if isinstance(err, http.client.HTTPException):
        return f"not a valid HTTP answer: {type(err).__name__} {_one_line(str(err), 80)}".rstrip()
    return f"not a valid HTTP answer: {_one_line(str(err) or type(err).__name__, 100)}"


# --- parsing ---------------------------------------------------------------------------------


def parse(body: bytes, content_type: str = "", only: Optional[Pattern[str]] = None) -> List[Metric]:
    """The metric families of an exposition, by prometheus_client's own parsers: OpenMetrics when
    ``content_type`` says so, the Prometheus text format otherwise. ScrapeError on anything else.

    With ``only`` (see ``wanted_lines``), the lines of other families are dropped before the
    parser sees them: a Go or Spring service exposes a few hundred samples and the detectors use
    a dozen, and prometheus_client's parsers are pure Python."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _NOT_EXPOSITION:
        raise ScrapeError(f"answered {media}, not a Prometheus exposition")
    if not body.strip():
        raise ScrapeError("empty body")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ScrapeError(f"body is not UTF-8 text (byte {err.start} of {len(body)})") from None
    openmetrics = media == _OPENMETRICS
    parser = _openmetrics_families if openmetrics else _text_families
    if only is not None:
        text = "".join(m.group(0) for m in only.finditer(text))
        if openmetrics:
            text += "# EOF\n"
    try:
        return list(parser(text))
    except Exception as err:  # noqa: BLE001 - a third-party parser: every failure of it is "garbage"
        what = "OpenMetrics" if openmetrics else "Prometheus text"
        raise ScrapeError(f"not {what} exposition: {_one_line(str(err) or type(err).__name__, 120)}") from None


# --- recognition -----------------------------------------------------------------------------

# The canonical signals, with their units; each is a counter summed over all labels.
SIGNALS: Mapping[str, str] = {
    "requests_in_total": "requests served (count)",
    "requests_out_total": "requests sent, retries included (count)",
    "retries_total": "upstream requests retried (count)",
    # pauses (JVM clients, Node), or for Go the GC's CPU over GOMAXPROCS: either way, seconds of
    # the service's time the collector took, so that its rate is a share of wall time
    "gc_seconds_total": "time the collector took: pauses, or GC CPU over GOMAXPROCS for Go (seconds)",
    "gc_collections_total": "GC cycles (count)",
    "alloc_bytes_total": "heap bytes allocated (bytes)",
}

# What a user's selector overrides: --ingress-metric, --egress-metric, --alloc-metric.
OVERRIDES: Mapping[str, str] = {
    "ingress": "requests_in_total",
    "egress": "requests_out_total",
    "alloc": "alloc_bytes_total",
}


Derivation = Callable[["_Index"], Tuple[Optional[float], str]]


@dataclass(frozen=True)
class Known:
    """A name a client exposes, the signal it feeds, and the factor to that signal's unit; or,
    with ``derive``, a signal computed from several of a client's series (``uses``: their names),
    ``selector`` naming the first of them."""

    signal: str
    selector: Selector
    client: str
    scale: float = 1.0
    derive: Optional[Derivation] = None
    uses: Tuple[str, ...] = ()
    formula: str = ""

    @property
    def names(self) -> Tuple[str, ...]:
        """Every series name it reads."""
        return self.uses or (self.selector.name,)

    def __str__(self) -> str:
        return self.formula or str(self.selector)


def _known(signal: str, selector: str, client: str, scale: float = 1.0) -> Known:
    return Known(signal, Selector.parse(selector), client, scale)


def _derived(signal: str, client: str, formula: str, uses: Tuple[str, ...], derive: Derivation) -> Known:
    return Known(signal, Selector.parse(uses[0]), client, derive=derive, uses=uses, formula=formula)


def _go_gc_cpu_runtime_metrics(index: "_Index") -> Tuple[Optional[float], str]:
    """Go 1.20+ runtime/metrics through client_golang: GC CPU seconds over GOMAXPROCS."""
    gc_cpu, why = _sum(index, _GO_GC_CPU)
    if gc_cpu is None:
        return None, why
    procs = index.gauge("go_sched_gomaxprocs_threads")
    if procs is None or not procs >= 1:
        return None, f"{_GO_GC_CPU} without go_sched_gomaxprocs_threads: no GOMAXPROCS to share it by"
    return gc_cpu / procs, ""


def _go_gc_cpu_fraction(index: "_Index") -> Tuple[Optional[float], str]:
    """The Go client's default series: MemStats.GCCPUFraction is the GC's share of the CPU
    available to the program (GOMAXPROCS x wall time) from its start to the end of the last
    cycle (it is updated then), so that share times the time from start to that end is the GC's
    CPU over GOMAXPROCS, as a counter that moves at each cycle's end."""
    fraction = index.gauge("go_memstats_gc_cpu_fraction")
    if fraction is None:
        return None, ""
    start, last = index.gauge("process_start_time_seconds"), index.gauge("go_memstats_last_gc_time_seconds")
    if start is None or last is None:
        return None, ("go_memstats_gc_cpu_fraction without process_start_time_seconds and "
                      "go_memstats_last_gc_time_seconds: no time to weigh it by")
    if not 0 <= fraction <= 1:
        return None, f"go_memstats_gc_cpu_fraction: {fraction!r} is not a fraction"
    if last == 0:                   # no cycle yet
        return 0.0, ""
    return fraction * max(last - start, 0.0), ""


# JVM pools whose "allocated" bytes are new objects (Micrometer's JvmMemory.isAllocationPool);
# summing every pool would add promotions, Metaspace and the code cache to the churn.
_JVM_ALLOCATION_POOLS = ("|".join((".*Eden Space", "Shenandoah", "ZHeap", "ZGC Young Generation", ".*New Gen",
                                    ".*nursery-allocate", ".*-eden", "JavaHeap")))

# The one table. Per signal, in preference order: the first name a target exposes is the one
# used, so a service exposing two conventions at once (Micrometer beside the OpenTelemetry
# agent, or OTel's new and old HTTP names in "http/dup" migration mode) is not counted twice.
# Order: the application's own instrumentation (Micrometer, simpleclient) before an agent's
# (OpenTelemetry, newest convention first), then RPC- and proxy-level counters.
KNOWN: Tuple[Known, ...] = (
    _known("requests_in_total", "http_server_requests_seconds_count", "Micrometer"),
    _known("requests_in_total", "http_server_request_duration_seconds_count", "OpenTelemetry"),
    _known("requests_in_total", "http_server_duration_milliseconds_count", "OpenTelemetry (old)"),
    _known("requests_in_total", "grpc_server_handled_total", "gRPC"),
    # the admin listener's own traffic is our scrape of it
    _known("requests_in_total", 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix!="admin"}', "Envoy"),
    _known("requests_out_total", "http_client_requests_seconds_count", "Micrometer"),
    _known("requests_out_total", "http_client_request_duration_seconds_count", "OpenTelemetry"),
    _known("requests_out_total", "http_client_duration_milliseconds_count", "OpenTelemetry (old)"),
    _known("requests_out_total", "grpc_client_started_total", "gRPC"),
    _known("requests_out_total", "envoy_cluster_upstream_rq_total", "Envoy"),
    _known("retries_total", "envoy_cluster_upstream_rq_retry", "Envoy"),
    _known("gc_seconds_total", "jvm_gc_pause_seconds_sum", "Micrometer"),
    _known("gc_seconds_total", "jvm_gc_collection_seconds_sum", "Java simpleclient"),
    _known("gc_seconds_total", "jvm_gc_duration_seconds_sum", "OpenTelemetry"),
    # Go's collector is concurrent: its pauses are a fraction of its cost (0.1 % of wall time in
    # a spiral whose GC takes 40 % of the CPU), so its CPU is read first, the pauses last
    _derived("gc_seconds_total", "Go client (runtime/metrics)",
             "go_cpu_classes_gc_total_cpu_seconds_total / go_sched_gomaxprocs_threads",
             ("go_cpu_classes_gc_total_cpu_seconds_total", "go_sched_gomaxprocs_threads"),
             _go_gc_cpu_runtime_metrics),
    _derived("gc_seconds_total", "Go client",
             "go_memstats_gc_cpu_fraction * (go_memstats_last_gc_time_seconds - process_start_time_seconds)",
             ("go_memstats_gc_cpu_fraction", "go_memstats_last_gc_time_seconds", "process_start_time_seconds"),
             _go_gc_cpu_fraction),
    _known("gc_seconds_total", "go_gc_duration_seconds_sum", "Go client (pauses only)"),
    _known("gc_seconds_total", "nodejs_gc_duration_seconds_sum", "Node prom-client"),
    _known("gc_collections_total", "jvm_gc_pause_seconds_count", "Micrometer"),
    _known("gc_collections_total", "jvm_gc_collection_seconds_count", "Java simpleclient"),
    _known("gc_collections_total", "jvm_gc_duration_seconds_count", "OpenTelemetry"),
    _known("gc_collections_total", "go_gc_duration_seconds_count", "Go client"),
    _known("gc_collections_total", "nodejs_gc_duration_seconds_count", "Node prom-client"),
    _known("gc_collections_total", "python_gc_collections_total", "Python client"),
    _known("alloc_bytes_total", "jvm_gc_memory_allocated_bytes_total", "Micrometer"),
    _known("alloc_bytes_total", f'jvm_memory_pool_allocated_bytes_total{{pool=~"{_JVM_ALLOCATION_POOLS}"}}',
           "Java simpleclient"),
    _known("alloc_bytes_total", "go_memstats_alloc_bytes_total", "Go client"),
    _known("alloc_bytes_total", "go_gc_heap_allocs_bytes_total", "Go client (runtime/metrics)"),
)
assert {k.signal for k in KNOWN} == set(SIGNALS), "every signal has a known name, every name a signal"
_GO_GC_CPU = Selector.parse("go_cpu_classes_gc_total_cpu_seconds_total")
_DERIVED = frozenset(str(k) for k in KNOWN if k.derive is not None)
# What a family's samples may add to its name; "_created" is left out with the HELP lines: neither
# is read, and prometheus_client's parsers cost ~10 us a line.
_SUFFIXES = ("_total", "_count", "_sum", "_bucket")


def wanted_lines(selectors: Iterable[Selector] = ()) -> Pattern[str]:
    """A pattern matching the exposition lines (samples, TYPE, UNIT) of the families that KNOWN
    and ``selectors`` read, and no others: what ``parse(only=...)`` keeps. A family's samples are
    kept whole (every suffix, both spellings of a counter) but for the optional ones nothing reads
    (HELP, "_created"), so what the parser sees is still valid."""
    bases = set()
    for name in [n for k in KNOWN for n in k.names] + [s.name for s in selectors]:
        bases.add(name)
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                bases.add(name[:-len(suffix)])
    names = "|".join(re.escape(b) for b in sorted(bases, key=len, reverse=True))
    name = rf"(?:{names})(?:{'|'.join(_SUFFIXES)})?"
    # As the text parser reads a line: stripped, its comment's tokens split on any whitespace, a
    # name quoted or not; a TYPE line it honours but this dropped would make a gauge a counter.
    space = r"[^\S\n]"
    return re.compile(rf'^{space}*(?:#{space}+(?:TYPE|UNIT){space}+(?:{name}|"{name}")(?={space})'
                      rf'|{name}(?={space}|\{{)|\{{{space}*"{name}"(?={space}*[,}}])).*\n?', re.MULTILINE)

# Families whose samples count something; a gauge's are levels, never summed into a counter.
_COUNTING = ("counter", "summary", "histogram", "untyped", "unknown")
# Families whose samples are counters whose "_total" a parser may have added or removed.
_TOTAL_SPELLINGS = ("counter", "untyped", "unknown")


class _Index:
    """Samples by name. prometheus_client's text parser names a counter typed without "_total"
    (Envoy's ``envoy_cluster_upstream_rq_retry``) with it, and the OpenMetrics one requires it, so
    a counter is also found under its other spelling when nothing has that exact name."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self.exact: Dict[str, List[Sample]] = {}
        self.spelled: Dict[str, List[Sample]] = {}
        self.gauges: Dict[str, List[Sample]] = {}
        self.families = 0
        for family in families:
            self.families += 1
            if family.type == "gauge":
                for sample in family.samples:
                    self.gauges.setdefault(sample.name, []).append(sample)
            if family.type not in _COUNTING:
                continue
            for sample in family.samples:
                if sample.name.endswith("_created") and family.type != "untyped":
                    continue  # OpenMetrics creation timestamps, not counts
                self.exact.setdefault(sample.name, []).append(sample)
                if family.type in _TOTAL_SPELLINGS:
                    name = sample.name
                    other = name[:-len("_total")] if name.endswith("_total") else name + "_total"
                    self.spelled.setdefault(other, []).append(sample)

    def lookup(self, name: str) -> List[Sample]:
        return self.exact.get(name) or self.spelled.get(name, [])

    def gauge(self, name: str) -> Optional[float]:
        """The value of a gauge with one sample (a process's own figure), None otherwise."""
        samples = self.gauges.get(name) or self.exact.get(name, [])
        if len(samples) != 1:
            return None
        value = samples[0].value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return None
        return float(value)


def _sum(index: _Index, selector: Selector) -> Tuple[Optional[float], str]:
    """The sum over every sample ``selector`` matches, or None and why not ("" if it is absent)."""
    samples = [s for s in index.lookup(selector.name) if selector.matches_labels(s.labels)]
    if not samples:
        return None, ""
    total = 0.0
    for sample in samples:
        value = sample.value
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value) or value < 0:
            return None, f"{selector}: a value of {value!r} is not a counter"
        total += value
    return total, ""


@dataclass(frozen=True)
class Recognised:
    """What one exposition says: {signal: value} in the signal's unit, the name each came from,
    and, for each signal not found, why not."""

    values: Mapping[str, float]
    sources: Mapping[str, str]
    missing: Mapping[str, str]
    families: int = 0
    clients: Mapping[str, str] = field(default_factory=dict)   # signal: the client its name is of

    def describe(self) -> str:
        """One line for `coherence sources`."""
        found = ", ".join(f"{s} from {self.sources[s]}" for s in SIGNALS if s in self.values)
        absent = ", ".join(s for s in SIGNALS if s in self.missing)
        if not found:
            return f"{self.families} metric families, nothing recognised"
        return f"{found}; not exposed: {absent}" if absent else found


def check_selectors(selectors: Optional[Mapping[str, Union[Selector, str]]]) -> Dict[str, Selector]:
    """{"ingress"|"egress"|"alloc": Selector}, parsing strings; ValueError on an unknown key."""
    out: Dict[str, Selector] = {}
    for key, selector in (selectors or {}).items():
        if key not in OVERRIDES:
            raise ValueError(f"selector for {key!r}: must be one of {', '.join(OVERRIDES)}")
        out[key] = selector if isinstance(selector, Selector) else Selector.parse(selector)
    return out


def recognise(families: Iterable[Metric],
              selectors: Optional[Mapping[str, Union[Selector, str]]] = None) -> Recognised:
    """The canonical signals in ``families``: a user's selector for its signal, else the first
    name of KNOWN the exposition has, summed over all its labels."""
    chosen = {OVERRIDES[key]: (key, sel) for key, sel in check_selectors(selectors).items()}
    index = _Index(families)
    values: Dict[str, float] = {}
    sources: Dict[str, str] = {}
    missing: Dict[str, str] = {}
    client_of: Dict[str, str] = {}
    for signal in SIGNALS:
        if signal in chosen:
            key, selector = chosen[signal]
            value, why = _sum(index, selector)
            if value is None:
                missing[signal] = why or f"--{key}-metric {selector} matches no sample"
            else:
                values[signal], sources[signal] = value, str(selector)
            continue
        candidates = [k for k in KNOWN if k.signal == signal]
        problems = []
        for known in candidates:
            value, why = known.derive(index) if known.derive else _sum(index, known.selector)
            if value is not None:
                values[signal], sources[signal] = value * known.scale, str(known)
                client_of[signal] = known.client
                break
            if why:
                problems.append(why)
        else:
            clients = ", ".join(dict.fromkeys(k.client for k in candidates))
            missing[signal] = problems[0] if problems else f"no known name ({clients})"
    return Recognised(values, sources, missing, index.families, client_of)


# --- the target ------------------------------------------------------------------------------


class ScrapeTarget:
    """One endpoint, read off the tick path: ``read()`` fetches, parses and recognises it.

    Like a Source, it keeps ``available`` and a one-line ``reason``; unlike one, it raises
    SourceUnavailable from ``read()``, because its caller (a scrape thread) decides how to wait.
    """

    def __init__(self, url: str, timeout_s: float = DEFAULT_TIMEOUT_S, max_bytes: int = DEFAULT_MAX_BYTES,
                 selectors: Optional[Mapping[str, Union[Selector, str]]] = None,
                 accept: str = ACCEPT_TEXT) -> None:
        self.url = check_url(url)
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) \
                or not math.isfinite(timeout_s) or timeout_s <= 0:
            raise ValueError(f"scrape timeout must be a positive number of seconds, got {timeout_s!r}")
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
            raise ValueError(f"scrape size limit must be a positive number of bytes, got {max_bytes!r}")
        self.timeout_s = float(timeout_s)
        self.max_bytes = max_bytes
        self.selectors = check_selectors(selectors)
        self.accept = accept
        self.available = False
        self.reason = "not read yet"
        self.last: Optional[Recognised] = None
        self._only = wanted_lines(self.selectors.values())
        self._families = 0
        self._derived: Dict[str, float] = {}

    def read(self) -> Recognised:
        """The target's signals now; SourceUnavailable with the reason on any failure.

        A target not read yet (or unavailable at the last read) is parsed whole, so that garbage
        anywhere in it is reported; once it reads well, only the families KNOWN and the selectors
        use are parsed (a tenth of the cost on a Go or Spring service), until it fails again."""
        whole = not self.available
        try:
            fetched = fetch(self.url, self.timeout_s, self.max_bytes, self.accept)
            families = parse(fetched.body, fetched.content_type, None if whole else self._only)
            recognised = recognise(families, self.selectors)
        except ScrapeError as err:
            self.available, self.reason = False, str(err)
            raise SourceUnavailable(self.reason) from err
        if whole:
            self._families = recognised.families
        recognised = replace(recognised, values=self._monotone(recognised), families=self._families)
        self.last = recognised
        if not recognised.values:
            self.available, self.reason = False, recognised.describe()
            raise SourceUnavailable(self.reason)
        self.available, self.reason = True, recognised.describe()
        return recognised

    def _monotone(self, recognised: Recognised) -> Dict[str, float]:
        """Derived counters (Go's GC CPU) held from going back by rounding: the inputs of a
        derivation are printed and read at slightly different times, and a counter that goes back
        reads as a reset. A drop of more than 1 % is one (the service restarted) and passes."""
        values = dict(recognised.values)
        for signal, value in recognised.values.items():
            if recognised.sources.get(signal) not in _DERIVED:
                self._derived.pop(signal, None)
                continue
            last = self._derived.get(signal)
            if last is not None and last * 0.99 <= value < last:
                values[signal] = value = last
            self._derived[signal] = value
        return values

    def describe(self) -> str:
        """One line for `coherence sources`: the URL, then what was recognised or why not."""
        return f"{self.url}: {self.reason}"

    def __repr__(self) -> str:
        state = "available" if self.available else "unavailable"
        return f"<ScrapeTarget {self.url} {state}: {self.reason}>"


__all__ = [
    "ACCEPT_OPENMETRICS", "ACCEPT_TEXT", "DEFAULT_MAX_BYTES", "DEFAULT_RATE_HZ", "DEFAULT_TIMEOUT_S",
    "KNOWN", "OVERRIDES", "SIGNALS", "Fetched", "Known", "Matcher", "Recognised", "ScrapeError",
    "ScrapeTarget", "Selector", "check_selectors", "check_url", "fetch", "parse", "recognise", "runtime_of",
    "wanted_lines",
]



# --- as a runtime source (coherence.runtime) ---------------------------------------------------
class ScrapeRuntime:
    """A scrape target read as a runtime source: the counters of RUNTIME_COUNTERS it has."""

    pid: Optional[int] = None
    retries = True          # a target down for a moment is read again, never dropped

    def __init__(self, target: ScrapeTarget) -> None:
        self.target = target
        self.name = f"scrape {target.url}"
        self.runtime = "service"     # "go", "jvm", ... once its GC names say which

    def read(self) -> Dict[str, float]:
        recognised = self.target.read()
        self.runtime = runtime_of(recognised)
        return {name: v for name, v in recognised.values.items() if name in RUNTIME_COUNTERS}

    def close(self) -> None:
        pass

    def describe(self) -> str:
        """One read, in one line for `coherence sources`; SourceUnavailable if it cannot."""
        return self.target.read().describe()


_RUNTIMES = (("Go client", "go"), ("Micrometer", "jvm"), ("Java simpleclient", "jvm"), ("Node", "node"),
             ("Python", "python"))


def runtime_of(recognised: Recognised) -> str:
    """"go", "jvm", "node" or "python" when the GC or allocation names are a runtime's client's,
    "service" otherwise (a proxy, or request counters only)."""
    for signal in ("gc_seconds_total", "alloc_bytes_total", "gc_collections_total"):
        client = recognised.clients.get(signal, "")
        for prefix, runtime in _RUNTIMES:
            if client.startswith(prefix):
                return runtime
    return "service"


def scrape_runtimes(config: Any) -> List[ScrapeRuntime]:
    """A runtime source per `runtime.scrape` URL of ``config`` (a coherence.config.Config)."""
    r = config.runtime
    selectors = {key: text for key, text in (("ingress", r.ingress_metric), ("egress", r.egress_metric),
                                             ("alloc", r.alloc_metric)) if text}
    return [ScrapeRuntime(ScrapeTarget(url, timeout_s=r.scrape_timeout_s,
                                       max_bytes=int(r.scrape_max_mb * (1 << 20)), selectors=selectors))
            for url in r.scrape]
