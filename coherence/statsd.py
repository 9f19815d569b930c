"""Request counters pushed over StatsD: a UDP listener that feeds the ingress and egress totals.

Applications (or a sidecar) send ``coherence.ingress:N|c`` and ``coherence.egress:N|c``; anything
else on the port is counted and dropped, never raised or logged per packet.

>>> with StatsdListener(port=0) as listener:          # doctest: +SKIP
...     print(listener.address, listener.accepted, listener.malformed)
('127.0.0.1', 40213) 0 0
"""
from __future__ import annotations

import functools
import logging
import math
import os
import re
import selectors
import socket
import threading
from typing import Optional, Tuple

from coherence import hooks
from coherence._core import AtomicCounter

__all__ = ["StatsdError", "StatsdListener", "parse_packet"]

log = logging.getLogger(__name__)

# The largest UDP payload is 65507 bytes (IPv4) / 65527 (IPv6 without jumbograms): a 64 KiB
# buffer receives any datagram whole, so none is ever truncated.
RECV_BUFFER_BYTES = 65536
# Kernel queue asked for to ride out a burst while the thread waits for the GIL; the kernel
# caps it at net.core.rmem_max, so a flood is bounded there and dropped by the kernel.
SOCKET_RCVBUF_BYTES = 1 << 20
# A counter line is well under 100 bytes; DogStatsD tags can make it a few hundred. A line
# longer than this is not one a client meant to send us.
MAX_LINE_BYTES = 4096
# One line may not add more than this: a single junk "1e300" would otherwise swallow every
# later +1 (1e300 + 1 == 1e300) and blind the amplification detector until restart. 1e9 is
# beyond any real flush interval (1e8 requests/s for 10 s) and keeps +1 exact for 9e6 such lines.
MAX_INCREMENT = 1e9

# StatsD values: a plain decimal, optionally with a fraction and an exponent. No sign (a
# request counter does not go down), no "nan"/"inf", no "1_000" or spaces that float() accepts.
_NUMBER = re.compile(rb"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

ParseResult = Tuple[float, float, int, int, int]


class StatsdError(Exception):
    """The listener cannot listen (address in use, no such address, ...): one line, for the user."""


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    if (not prefix or not prefix.isprintable() or ":" in prefix or "|" in prefix
            or any(ch.isspace() for ch in prefix)):
        raise ValueError("prefix must be a non-empty metric name without ':', '|', whitespace "
                         f"or control characters, got {prefix!r}")
    return prefix


@functools.lru_cache(maxsize=8)
def _metric_names(prefix: str) -> Tuple[bytes, bytes]:
    _check_prefix(prefix)
    return f"{prefix}.ingress".encode(), f"{prefix}.egress".encode()


def _number(text: bytes) -> Optional[float]:
    if _NUMBER.fullmatch(text) is None:
        return None
    value = float(text)
    return value if math.isfinite(value) else None  # "1e999" and 400-digit values overflow


def _counter_increment(rest: bytes) -> Optional[float]:
    """The amount a line of ours adds, from what follows ``name:``; None when it is malformed.

    ``values|c[|@rate][|#tags][|other DogStatsD field]...``; values may be packed as ``1:2:3``
    (DogStatsD v1.1) and then add up.
    """
    fields = rest.split(b"|")
    if len(fields) < 2 or fields[1] != b"c":
        return None  # no type, or a gauge/timer/set under our name: a sender mistake
    rate = None
    for field in fields[2:]:
        if field[:1] == b"@":
            if rate is not None:
                return None
            rate = _number(field[1:])
            if rate is None or not 0.0 < rate <= 1.0:
                return None
        elif not field:
            return None
        # "#tags", "c:container-id", "T<timestamp>" and later extensions: not ours to judge.
    total = 0.0
    for text in fields[0].split(b":"):
        value = _number(text)
        if value is None:
            return None
        total += value
    total /= rate or 1.0
    return total if total <= MAX_INCREMENT else None


def _well_formed_other(line: bytes, name: bytes, colon: bytes, rest: bytes) -> bool:
    """Whether a line that is not ours has StatsD's shape (another app shares the port).

    Only the shape ``name:value|type...``: other apps' values are theirs to judge (a set's
    value is not even a number).
    """
    if line.startswith((b"_e{", b"_sc|")):
        return True  # DogStatsD events and service checks
    value, _, after = rest.partition(b"|")
    return (bool(colon) and bool(name) and b"|" not in name and bool(value)
            and bool(after.partition(b"|")[0]))


def parse_packet(data: bytes, prefix: str) -> ParseResult:
    """Parse one StatsD datagram: ``(ingress, egress, accepted, ignored, malformed)``.

    Lines are separated by ``\\n`` (``\\r\\n`` and surrounding blanks tolerated; empty lines are
    not counted). Each line is, on its own:

    - accepted: ``<prefix>.ingress`` or ``<prefix>.egress`` as a counter (``|c``) with a
      finite, non-negative value, an optional sample rate in (0, 1] (the value is divided by
      it) and any DogStatsD tags or extension fields;
    - ignored: another metric name in valid StatsD syntax, a DogStatsD event or service check;
    - malformed: anything else, including our names with another type (``|g``, ``|ms``: a
      sender mistake we want visible, not lost among other apps' traffic), a bad, negative or
      non-finite number, a rate outside (0, 1], a missing type, non-UTF-8, a line longer than
      MAX_LINE_BYTES, or an increment above MAX_INCREMENT.

    Never raises on any bytes; ValueError only for a bad prefix.

    >>> parse_packet(b"coherence.ingress:3|c\\ncoherence.egress:1|c|@0.1|#env:prod\\nweb.hits:1|c", "coherence")
    (3.0, 10.0, 2, 1, 0)
    """
    ingress_name, egress_name = _metric_names(prefix)
    ingress = egress = 0.0
    accepted = ignored = malformed = 0
    for line in data.split(b"\n"):  # 0x0A never occurs inside a multi-byte UTF-8 sequence
        line = line.strip()
        if not line:
            continue
        if len(line) > MAX_LINE_BYTES:
            malformed += 1
            continue
        if not line.isascii():
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                malformed += 1
                continue
        name, colon, rest = line.partition(b":")
        if name == ingress_name or name == egress_name:
            increment = _counter_increment(rest)
            if increment is None:
                malformed += 1
            elif name == ingress_name:
                ingress += increment
                accepted += 1
            else:
                egress += increment
                accepted += 1
        elif _well_formed_other(line, name, colon, rest):
            ignored += 1
        else:
            malformed += 1
    return ingress, egress, accepted, ignored, malformed


def _describe(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reason(err: OSError) -> str:
    text = err.strerror or str(err)
    return text[:1].lower() + text[1:]


class StatsdListener:
    """Listens for StatsD counters on UDP and adds them to the ingress and egress totals.

    The socket is bound at construction, so a port in use fails early with StatsdError;
    ``start()`` runs the receive loop in a daemon thread, ``stop()`` ends it within
    milliseconds (a wake-up pipe, no polling). Counts of what arrived (``packets``, ``lines``,
    ``accepted``, ``ignored``, ``malformed``) are plain ints written by that thread only.

    >>> with StatsdListener(port=0, prefix="shop") as listener:   # doctest: +SKIP
    ...     host, port = listener.address                         # ('127.0.0.1', <ephemeral>)
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8125, prefix: str = "coherence",
                 ingress: AtomicCounter = hooks.INGRESS,
                 egress: AtomicCounter = hooks.EGRESS) -> None:
        if not isinstance(host, str) or not host:
            raise ValueError(f"host must be an address or name to listen on (e.g. '127.0.0.1', "
                             f"'0.0.0.0', '::1'), got {host!r}")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an int from 0 (any free port) to 65535, got {port!r}")
        self.prefix = _check_prefix(prefix)
        self._ingress = ingress
        self._egress = egress
        self.packets = self.lines = self.accepted = self.ignored = self.malformed = 0
        self._sock = self._bind(host, port)
        bound_host, bound_port = self._sock.getsockname()[:2]   # IPv6 adds flowinfo, scope
        self.address: Tuple[str, int] = (bound_host, bound_port)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stopping = False
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._reported_error = False

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        where = _describe(host, port)
        try:
            family, kind, proto, _, sockaddr = socket.getaddrinfo(
                host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE)[0]
        except socket.gaierror as err:
            raise StatsdError(f"cannot listen for StatsD on {where}: {_reason(err)}") from err
        sock = socket.socket(family, kind, proto)
        try:
            # No SO_REUSEADDR: with it, two UDP sockets may share the port and a StatsD
            # daemon already on 8125 would silently split the traffic with us.
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_RCVBUF_BYTES)
            except OSError:
                pass  # the default queue only drops sooner under a burst
            sock.bind(sockaddr)
            sock.setblocking(False)
        except OSError as err:
            sock.close()
            raise StatsdError(f"cannot listen for StatsD on {where}: {_reason(err)}") from err
        return sock

    def dropped(self, proc_root: str = "/proc") -> Optional[int]:
        """Datagrams the kernel dropped for this socket (its receive queue was full: a flood, or
        the thread kept from the GIL), from the `drops` column of /proc/net/udp{,6}; None where
        the socket is not found there (closed, or no procfs)."""
        try:
            inode = str(os.fstat(self._sock.fileno()).st_ino).encode()
        except (OSError, ValueError):
            return None
        for name in ("udp", "udp6"):
            try:
                with open(os.path.join(proc_root, "net", name), "rb") as f:
                    lines = f.read().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                # sl local rem st queues tr:tm retrnsmt uid timeout inode ref pointer drops
                if len(fields) >= 13 and fields[9] == inode:
                    try:
                        return int(fields[12])
                    except ValueError:
                        return None
        return None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> "StatsdListener":
        if self._closed:
            raise RuntimeError("StatsdListener.start: this listener was stopped; create a new one")
        if self._thread is not None:
            raise RuntimeError("StatsdListener.start: already started")
        self._thread = threading.Thread(target=self._run, name=f"coherence-statsd-{self.address[1]}",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """End the thread and close the socket; idempotent, and fine on a never-started listener."""
        if self._closed:
            return
        self._stopping = True
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass  # the pipe is already full of wake-ups
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._closed = True
        self._sock.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def __enter__(self) -> "StatsdListener":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return (f"StatsdListener(address={self.address!r}, prefix={self.prefix!r}, "
                f"packets={self.packets}, accepted={self.accepted}, ignored={self.ignored}, "
                f"malformed={self.malformed})")

    def _run(self) -> None:
        buffer = bytearray(RECV_BUFFER_BYTES)
        view = memoryview(buffer)
        recv_into = self._sock.recv_into
        with selectors.DefaultSelector() as selector:
            selector.register(self._sock, selectors.EVENT_READ)
            selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._stopping:
                selector.select()
                while not self._stopping:  # drain what is queued, then sleep in select again
                    try:
                        size = recv_into(buffer)
                    except OSError:  # BlockingIOError: queue empty; anything else: select again
                        break
                    self._handle(bytes(view[:size]))

    def _handle(self, data: bytes) -> None:
        try:
            ingress, egress, accepted, ignored, malformed = parse_packet(data, self.prefix)
            if ingress:
                self._ingress.add(ingress)
            if egress:
                self._egress.add(egress)
        except Exception:  # a bug, not a packet: the thread must outlive it, and say so once
            if not self._reported_error:
                self._reported_error = True
                log.exception("StatsD listener on %s: unexpected error (reported once)",
                              _describe(*self.address))
            accepted, ignored, malformed = 0, 0, 1
        self.packets += 1
        self.lines += accepted + ignored + malformed
        self.accepted += accepted
        self.ignored += ignored
        self.malformed += malformed
