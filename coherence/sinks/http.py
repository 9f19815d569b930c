"""The exporter's HTTP endpoint: a thread per connection up to a cap (threads kept a while for
the next connections, so that a scrape does not pay for one), HTTP/1.1 connections kept alive
between requests (the idle one closed first when the cap is reached), a deadline on the whole
request head (TLS handshake included) and on the whole response, a size limit on the head, TLS
and basic auth from an exporter-toolkit web config. A slow or broken client holds one thread
for at most HEAD_TIMEOUT_S; every bad request is counted by reason and none raises or logs.

    server = HttpServer("127.0.0.1", 0, app)      # bound now: a port in use fails here
    with server:                                 # accepting, on a thread of its own
        ...                                      # app(Request) -> Response, on each connection's
"""
from __future__ import annotations

import http.client
import io
import logging
import collections
import os
import re
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from email.message import Message
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple
from urllib.parse import urlsplit

from coherence.webconfig import BasicAuth, WebConfig, WebConfigError, WebConfigFile

__all__ = ["ExporterError", "HttpServer", "Request", "Response", "call_wsgi"]

log = logging.getLogger(__name__)

# node_exporter serves at most 40 scrapes at once (--web.max-requests); a connection here costs
# a thread while it is open (kept alive between requests too), so the cap is on connections, a
# little higher.
MAX_CONNECTIONS = 64
# Prometheus sends its request at once; a client whose head (with the TLS handshake) takes
# longer than this is slow or hostile, and its connection is closed.
HEAD_TIMEOUT_S = 10.0
# ... and one that takes longer than this to read the whole answer (~20 KB) is dropped.
WRITE_TIMEOUT_S = 10.0
# Prometheus' scrape request is ~300 bytes; with basic auth and a long Accept, under 1 KB.
MAX_HEAD_BYTES = 16 * 1024
# On stop, requests in flight get this long to finish; they are bounded by the two deadlines.
DRAIN_TIMEOUT_S = 5.0
# A connection's thread, once done, waits this long for the next connection before it exits
# (longer than the usual scrape intervals, 15 s to 1 min: a scraped exporter keeps one), and at
# most this many wait at once. A waiting thread takes no CPU.
IDLE_THREAD_S = 300.0
MAX_IDLE_THREADS = 4
# After answering, what the client still sends (a body we did not read) is read and dropped for
# up to this long before the socket closes: closing with unread data sends a TCP reset, which
# can destroy the answer before the client reads it (Apache's "lingering close").
LINGER_S = 1.0
LINGER_BYTES = 64 * 1024
# A kept connection waits this long for its next request, then closes. Prometheus keeps its
# scrape connection between scrapes (since 2.0) and scrapes every 15 s to 1 min: 120 s outlasts
# two missed scrapes at 1 min, so a slow or failed scrape does not cost a new connection, while
# a scraper that went away without closing (restarted, its flow dropped by a NAT) holds a thread
# for at most this long. A waiting connection takes no CPU, and when the cap is reached the one
# idle for longest is closed to make room.
KEEPALIVE_IDLE_S = 120.0
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
            405: "Method Not Allowed", 408: "Request Timeout", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable",
            505: "HTTP Version Not Supported"}
_TOO_MANY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 21"
             b"\r\nConnection: close\r\n\r\ntoo many connections\n")
# Bad requests, by the reason counted (coherence_http_bad_requests_total{reason}); "idle_evicted"
# is a kept connection closed while it waited, to make room for a new one at the cap.
BAD_REASONS = ("timeout", "too_large", "malformed", "incomplete", "tls", "client_cert",
               "too_many_connections", "idle_evicted", "write_failed", "web_config", "internal")
PATHS = ("/metrics", "/healthz", "/")


class ExporterError(Exception):
    """The exporter cannot serve as asked (address in use, no such address); one line."""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: Message
    scheme: str = "http"


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: Tuple[Tuple[str, str], ...] = (("Content-Type", "text/plain; charset=utf-8"),)

    @classmethod
    def text(cls, status: int, text: str,
             headers: Tuple[Tuple[str, str], ...] = ()) -> "Response":
        return cls(status, text.encode(), (("Content-Type", "text/plain; charset=utf-8"), *headers))


App = Callable[[Request], Response]


class _Dropped(Exception):
    """The connection ends here, counted under ``reason``; ``status`` is answered first if set."""

    def __init__(self, reason: str, status: Optional[int] = None, text: str = "") -> None:
        super().__init__(reason)
        self.reason, self.status, self.text = reason, status, text


def call_wsgi(app: Callable[..., Iterable[bytes]], request: Request) -> Response:
    """A WSGI application (prometheus_client's make_wsgi_app) called for one request."""
    environ: Dict[str, Any] = {
        "REQUEST_METHOD": request.method, "PATH_INFO": request.path,
        "QUERY_STRING": request.query, "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": request.scheme, "wsgi.input": io.BytesIO(), "wsgi.errors": io.StringIO(),
    }
    for name, value in request.headers.items():
        key = "HTTP_" + name.upper().replace("-", "_")
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    started: List[Any] = []

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> None:
        started[:] = [status, headers]

    body = b"".join(app(environ, start_response))
    return Response(int(started[0].split()[0]), body, tuple(started[1]))


def _linger(sock: socket.socket) -> None:
    """Half-close, then read and drop what the client still sends, bounded in time and size."""
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline, dropped = time.monotonic() + LINGER_S, 0
        while dropped < LINGER_BYTES:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            sock.settimeout(left)
            chunk = sock.recv(16384)
            if not chunk:
                return
            dropped += len(chunk)
    except (OSError, ValueError):
        return


def _wake(c: "_Connection") -> None:
    """Ends a kept connection's wait for its next request: its thread's recv sees the end of
    the stream and closes it. The plain socket's shutdown, even under TLS: SSLSocket's own
    would drop the TLS state the waiting thread is using."""
    try:
        socket.socket.shutdown(c.sock, socket.SHUT_RDWR)
    except OSError:
        pass


def _describe(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# A header line as http.client.parse_headers (the email package's compat32 parser) takes it
# whole: a field name of printable ASCII without a colon, then the colon.
_FIELD = re.compile(rb"[\041-\071\073-\176]+:")


def _simple_headers(rest: bytes) -> Optional[http.client.HTTPMessage]:
    """The headers of a request head whose every line is `Name: value`, as
    http.client.parse_headers reads them (the same message, a tenth of the time: the email
    package's parser is most of a request's cost); None for any other head (folded lines,
    lines it would take for a body, more than it allows), which parse_headers then reads."""
    lines = rest.split(b"\n")
    if len(lines) > 90:                        # parse_headers refuses more than 100 lines
        return None
    message = http.client.HTTPMessage()
    for line in lines:
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:                           # the blank line: the end of the head
            break
        if b"\r" in line or len(line) > 65536 or _FIELD.match(line) is None:
            return None
        name, _, value = line.decode("iso-8859-1").partition(":")
        message[name] = value.lstrip(" \t")
    return message


_ZERO = re.compile(r"0+")


def _persists(version: str, headers: Message) -> bool:
    """Whether the connection may carry another request after this one's answer: HTTP/1.1
    without `Connection: close` and without a body. HTTP/1.0's opt-in keep-alive is not
    offered: no scraper needs it, and closing is the simplest correct answer to a 1.0 client."""
    if version != "HTTP/1.1":
        return False
    tokens = {t.strip().lower() for v in headers.get_all("Connection", []) for t in v.split(",")}
    if "close" in tokens:
        return False
    # a body is never read: what would follow it on the connection is not a request head
    if headers.get_all("Transfer-Encoding"):
        return False
    return all(_ZERO.fullmatch(v.strip()) for v in headers.get_all("Content-Length", []))


def _parse_head(head: bytes, scheme: str) -> Tuple[Request, bool]:
    """The request, and whether its connection may be kept for the next one."""
    line, _, rest = head.partition(b"\n")
    try:
        method, target, version = line.decode("ascii").strip().split(" ")
    except (UnicodeDecodeError, ValueError):
        raise _Dropped("malformed", 400, "bad request line") from None
    if not method.isalpha() or not method.isupper():
        raise _Dropped("malformed", 400, "bad method")
    if version not in ("HTTP/1.0", "HTTP/1.1"):
        if version.startswith("HTTP/"):
            raise _Dropped("malformed", 505, "HTTP/1.0 and HTTP/1.1 only")
        raise _Dropped("malformed", 400, "bad request line")
    if not (target.startswith("/") or target.startswith(("http://", "https://"))):
        raise _Dropped("malformed", 400, "bad request target")
    headers = _simple_headers(rest)
    if headers is None:
        try:
            headers = http.client.parse_headers(io.BytesIO(rest))
        except (http.client.HTTPException, UnicodeDecodeError):
            raise _Dropped("malformed", 400, "bad headers") from None
    url = urlsplit(target)
    return Request(method, url.path or "/", url.query, headers, scheme), _persists(version, headers)


class _Connection:
    """One accepted connection, across the requests it carries: the socket it is read from (the
    TLS one once wrapped), what was read past the last head (a pipelined request), and its
    thread's CPU time already counted."""

    __slots__ = ("sock", "buf", "cpu_mark", "evicted")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.cpu_mark = time.thread_time()
        self.evicted = False


class HttpServer:
    """Serves ``app`` on (host, port), bound at construction (ExporterError if it cannot be).
    ``web_config``: TLS and basic auth, read again when its files change. ``figures()``: what
    it served and refused, and the CPU time its connections' threads took."""

    def __init__(self, host: str, port: int, app: App, web_config: Optional[WebConfigFile] = None,
                 *, max_connections: int = MAX_CONNECTIONS, head_timeout_s: float = HEAD_TIMEOUT_S,
                 write_timeout_s: float = WRITE_TIMEOUT_S, max_head_bytes: int = MAX_HEAD_BYTES,
                 keepalive_idle_s: float = KEEPALIVE_IDLE_S) -> None:
        self.app, self.web_config = app, web_config
        self.max_connections, self.head_timeout_s = max_connections, head_timeout_s
        self.write_timeout_s, self.max_head_bytes = write_timeout_s, max_head_bytes
        self.keepalive_idle_s = keepalive_idle_s
        self._auth = BasicAuth()
        self._sock = self._bind(host, port)
        bound = self._sock.getsockname()
        self.address: Tuple[str, int] = (bound[0], bound[1])
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)     # connections done (stop() drains)
        self._work = threading.Condition(self._lock)     # connections for the idle threads
        self._active = 0
        self._pending: collections.deque = collections.deque()   # admitted, for an idle thread
        self._idle = 0                                   # threads waiting for a connection
        # kept connections waiting for their next request, the one idle for longest first
        self._kept: Dict[_Connection, None] = {}
        self.requests: Dict[Tuple[str, int], int] = {}
        self.bad: Dict[str, int] = {reason: 0 for reason in BAD_REASONS}
        self.cpu_s = 0.0
        self._wake_r, self._wake_w = os.pipe()
        self._stopping = False
        self._thread: Optional[threading.Thread] = None
        self._reported: set = set()

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        where = _describe(host, port)
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as err:
            raise ExporterError(f"cannot listen on {where}: {err.strerror}") from None
        sock = socket.socket(family, kind, proto)
        try:
            # restart while old connections linger in TIME_WAIT; on Linux this never lets two
            # listeners share a port, so a port in use is still refused
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(sockaddr)
            sock.listen(128)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            reason = (err.strerror or str(err)).lower()
            raise ExporterError(f"cannot listen on {where}: {reason}") from None
        return sock

    @property
    def scheme(self) -> str:
        if self.web_config is None:
            return "http"
        try:
            return self.web_config.current()[0].scheme
        except WebConfigError:
            return "https"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{_describe(*self.address)}"

    # ------------------------------------------------------------------ running
    def start(self) -> "HttpServer":
        if self._thread is not None:
            raise RuntimeError("an HttpServer starts once")
        self._thread = threading.Thread(target=self._accept_loop, daemon=True,
                                        name=f"coherence-http-{self.address[1]}")
        self._thread.start()
        return self

    def stop(self, drain_timeout_s: float = DRAIN_TIMEOUT_S) -> None:
        """Stop accepting, close the socket, then give the requests in flight up to
        ``drain_timeout_s`` to finish. Idempotent."""
        if self._stopping:
            return
        with self._cond:
            self._stopping = True
            # kept connections waiting for a next request end now, not KEEPALIVE_IDLE_S later
            for c in self._kept:
                _wake(c)
            self._kept.clear()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join()
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        with self._work:
            self._work.notify_all()                      # the idle threads exit
        with self._cond:
            self._cond.wait_for(lambda: self._active == 0, timeout=drain_timeout_s)

    def __enter__(self) -> "HttpServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def figures(self) -> Dict[str, Any]:
        """Requests served by (path, status), bad requests by reason, connections open (those
        kept alive included) and of those how many wait for a next request, and the CPU seconds
        the connections' threads took (TLS, auth and rendering included)."""
        with self._cond:
            return {"requests": dict(self.requests), "bad": dict(self.bad),
                    "connections": self._active, "kept_idle": len(self._kept),
                    "cpu_s": self.cpu_s}

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                selector.select()
                if self._stopping:
                    break
                try:                            # one at a time: select() again says if more wait
                    conn, _peer = self._sock.accept()
                except OSError:                 # the peer gave up before it was taken
                    continue
                self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        with self._cond:
            if self._active >= self.max_connections and self._kept:
                self._evict_oldest()
            full = self._active >= self.max_connections
            if not full:
                self._active += 1
                # an idle thread is free for it when there are more of them than connections
                # already handed over and not yet taken
                handed = self._idle > len(self._pending)
                if handed:
                    self._pending.append(conn)
                    self._work.notify()
        if full:
            self._count_bad("too_many_connections")
            # answered without a thread: the request is not read, so a client whose request
            # arrived first may see the connection reset instead of this answer
            try:
                conn.recv(MAX_HEAD_BYTES, socket.MSG_DONTWAIT)
            except OSError:
                pass
            try:
                conn.send(_TOO_MANY, socket.MSG_DONTWAIT)
                conn.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            conn.close()
            return
        if handed:
            return
        try:
            threading.Thread(target=self._connections, args=(conn,), daemon=True,
                             name="coherence-http-conn").start()
        except RuntimeError:                    # no thread to be had: refuse, as when full
            conn.close()
            with self._cond:
                self._active -= 1
                self._cond.notify_all()
            self._count_bad("too_many_connections")

    def _evict_oldest(self) -> None:
        """Closes the kept connection idle for longest (the lock held), so that a client holding
        every slot with idle connections cannot keep a scraper out. Its slot is given to the
        connection that evicted it: its thread, closing, does not give it back."""
        c = next(iter(self._kept))
        del self._kept[c]
        c.evicted = True
        self._active -= 1
        self.bad["idle_evicted"] += 1
        _wake(c)

    def _connections(self, conn: Optional[socket.socket]) -> None:
        """A connection's thread: serves it, then the next ones handed to it while it waits."""
        while conn is not None:
            self._serve(conn)
            conn = self._next()

    def _next(self) -> Optional[socket.socket]:
        """The next connection handed over, or None once none came for IDLE_THREAD_S (or
        MAX_IDLE_THREADS already wait, or the server stops)."""
        with self._work:
            if self._idle >= MAX_IDLE_THREADS and not self._pending:
                return None
            self._idle += 1
            try:
                deadline = time.monotonic() + IDLE_THREAD_S
                while not self._pending and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return None
                    self._work.wait(left)
                return self._pending.popleft() if self._pending else None
            finally:
                self._idle -= 1

    # ------------------------------------------------------------------ one connection
    def _serve(self, conn: socket.socket) -> None:
        c = _Connection(conn)
        try:
            self._handle(c)
        except _Dropped as d:
            self._count_bad(d.reason)
        except Exception as err:        # a bug, not a request: counted, and said once
            self._count_bad("internal")
            self._report_once(err)
        finally:
            _linger(c.sock)                     # conn, or the TLS socket around it
            for s in (c.sock, conn):
                try:
                    s.close()
                except OSError:
                    pass
            with self._cond:
                self.cpu_s += time.thread_time() - c.cpu_mark
                if not c.evicted:
                    self._active -= 1
                self._cond.notify_all()

    def _current_web(self) -> Tuple[WebConfig, Optional[ssl.SSLContext]]:
        if self.web_config is None:
            return WebConfig(), None
        try:
            return self.web_config.current()
        except WebConfigError:
            raise _Dropped("web_config") from None     # fail closed; logged once by the file

    def _handle(self, c: _Connection) -> None:
        """The connection's requests, one after the other, until one ends it."""
        deadline = time.monotonic() + self.head_timeout_s
        web, context = self._current_web()
        if context is not None:
            c.sock = self._handshake(c.sock, context, deadline, web)
        while self._request(c, web, deadline):
            if not c.buf and not self._await_request(c):
                return
            # the next head has begun (or was read with the last one): it has the usual time
            deadline = time.monotonic() + self.head_timeout_s
            if self.web_config is not None:
                web, now = self._current_web()                 # basic auth: checked every time
                if now is not context:
                    # TLS settings changed (a renewed certificate, other client rules): the
                    # connection was accepted under the old ones, so it ends unanswered and the
                    # client asks again on a new one (Go's client retries such a GET itself)
                    return

    def _request(self, c: _Connection, web: WebConfig, deadline: float) -> bool:
        """Reads and answers one request; True if the connection stays open for the next."""
        sock = c.sock
        try:
            request, keep = _parse_head(self._read_head(c, deadline), web.scheme)
            if web.users and not self._auth.check(web.users, request.headers.get("Authorization")):
                response = Response.text(401, "Unauthorized\n",
                                         (("WWW-Authenticate", 'Basic realm="coherence"'),))
            elif request.method not in ("GET", "HEAD", "OPTIONS"):
                response = Response.text(405, f"{request.method} is not served: use GET\n",
                                         (("Allow", "GET, HEAD, OPTIONS"),))
            else:
                response = self._call_app(request)
        except _Dropped as d:
            if d.status is not None:
                self._send(sock, Response.text(d.status, d.text + "\n"), web.headers, False, False)
            raise
        keep = keep and not self._stopping
        path = request.path if request.path in PATHS else "other"
        with self._cond:
            key = (path, response.status)
            self.requests[key] = self.requests.get(key, 0) + 1
            # counted at each request, not only when the connection ends: a kept connection may
            # carry requests for hours (the send below is counted with the next request, or
            # when the connection ends)
            now = time.thread_time()
            self.cpu_s += now - c.cpu_mark
            c.cpu_mark = now
        self._send(sock, response, web.headers, request.method == "HEAD", keep)
        return keep

    def _await_request(self, c: _Connection) -> bool:
        """Waits, idle, for the first bytes of the connection's next request: True once they are
        in c.buf; False if the client closed the connection (as clients do: not a bad request),
        it stayed idle keepalive_idle_s, or it was woken to close (server stopping, or evicted
        at the cap: counted when evicted)."""
        with self._cond:
            if self._stopping:
                return False
            self._kept[c] = None
        chunk = b""
        try:
            c.sock.settimeout(self.keepalive_idle_s)
            chunk = c.sock.recv(4096)
        except (OSError, ValueError):        # idle too long, reset, TLS alert: all end it quietly
            pass
        finally:
            with self._cond:                 # before the socket can close: _wake uses it
                self._kept.pop(c, None)
                evicted = c.evicted
        if evicted or not chunk:
            return False
        c.buf += chunk
        return True

    def _handshake(self, conn: socket.socket, context: ssl.SSLContext, deadline: float,
                   web: WebConfig) -> socket.socket:
        tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(max(0.001, deadline - time.monotonic()))
            tls.do_handshake()
        except (OSError, ValueError):          # ssl.SSLError and timeouts are OSErrors
            tls.close()
            raise _Dropped("tls") from None
        if web.tls is not None and not web.tls.allows(tls.getpeercert()):
            tls.close()
            raise _Dropped("client_cert")
        return tls

    def _read_head(self, c: _Connection, deadline: float) -> bytes:
        """The next request head; what was read past it stays in c.buf for the next one."""
        sock, buf = c.sock, c.buf
        while True:
            ends = [(i, n) for i, n in ((buf.find(b"\r\n\r\n"), 4), (buf.find(b"\n\n"), 2)) if i >= 0]
            if ends:
                end, n = min(ends)
                if end > self.max_head_bytes:
                    break
                head = bytes(buf[:end]) + b"\r\n\r\n"
                del buf[:end + n]
                return head
            if len(buf) > self.max_head_bytes:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Dropped("timeout", 408, "request not received in time")
            try:
                sock.settimeout(left)
                chunk = sock.recv(4096)
            except socket.timeout:
                raise _Dropped("timeout", 408, "request not received in time") from None
            except OSError:
                raise _Dropped("incomplete") from None
            if not chunk:
                raise _Dropped("incomplete")
            buf += chunk
        raise _Dropped("too_large", 431, f"request head over {self.max_head_bytes} bytes")

    def _call_app(self, request: Request) -> Response:
        app_request = request
        if request.method == "HEAD":             # answered as GET, without the body
            app_request = Request("GET", request.path, request.query, request.headers,
                                  request.scheme)
        try:
            return self.app(app_request)
        except Exception as err:     # a bug: one line in the log, a 500 for the client
            self._count_bad("internal")
            self._report_once(err)
            return Response.text(500, "internal error: see coherence's log\n")

    def _send(self, sock: socket.socket, response: Response,
              extra: Tuple[Tuple[str, str], ...], head_only: bool, keep: bool) -> None:
        status = response.status
        lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
                 *(f"{k}: {v}" for k, v in response.headers
                   if k.lower() not in ("content-length", "connection")),
                 *(f"{k}: {v}" for k, v in extra),
                 f"Content-Length: {len(response.body)}",
                 *(() if keep else ("Connection: close",)), "", ""]
        data = "\r\n".join(lines).encode("latin-1") + (b"" if head_only else response.body)
        try:
            sock.settimeout(self.write_timeout_s)      # the whole sendall, since Python 3.5
            sock.sendall(data)
        except (OSError, ValueError):
            raise _Dropped("write_failed") from None

    def _count_bad(self, reason: str) -> None:
        with self._cond:
            self.bad[reason] = self.bad.get(reason, 0) + 1

    def _report_once(self, err: BaseException) -> None:
        key = type(err).__name__
        if key not in self._reported:
            self._reported.add(key)
            log.error("the exporter failed to answer a request: %s: %s (reported once)", key, err)
