"""The StatsD listener: what a line counts as, a real UDP round trip, errors a user reads, a flood."""
import gc
import math
import socket
import subprocess
import sys
import time
import tracemalloc

import pytest
from hypothesis import given, strategies as st

from coherence import AtomicCounter, hooks
from coherence.statsd import (MAX_INCREMENT, MAX_LINE_BYTES, StatsdError, StatsdListener,
                              parse_packet)

P = "coherence"
WAIT_SECONDS = 5.0   # a deadline, not a delay: polls return as soon as the condition holds


def wait_for(condition, what):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)


# (packet, (ingress, egress, accepted, ignored, malformed))
CASES = {
    # accepted
    "ingress": (b"coherence.ingress:1|c", (1, 0, 1, 0, 0)),
    "egress fraction": (b"coherence.egress:2.5|c", (0, 2.5, 1, 0, 0)),
    "zero": (b"coherence.ingress:0|c", (0, 0, 1, 0, 0)),
    "exponent": (b"coherence.ingress:1e3|c", (1000, 0, 1, 0, 0)),
    "leading and trailing dot": (b"coherence.ingress:.5|c\ncoherence.ingress:5.|c", (5.5, 0, 2, 0, 0)),
    "sample rate": (b"coherence.ingress:1|c|@0.1", (10, 0, 1, 0, 0)),
    "sample rate 1": (b"coherence.egress:3|c|@1", (0, 3, 1, 0, 0)),
    "tags": (b"coherence.ingress:2|c|#env:prod,az:b", (2, 0, 1, 0, 0)),
    "tags then rate": (b"coherence.egress:1|c|#env:prod|@0.25", (0, 4, 1, 0, 0)),
    "non-ascii tag": ("coherence.ingress:1|c|#city:zürich".encode(), (1, 0, 1, 0, 0)),
    "dogstatsd container and timestamp": (b"coherence.ingress:1|c|c:abc123|T1656581400", (1, 0, 1, 0, 0)),
    "packed values (dogstatsd 1.1)": (b"coherence.ingress:1:2:3|c|@0.5", (12, 0, 1, 0, 0)),
    "largest increment": (b"coherence.ingress:1e9|c", (MAX_INCREMENT, 0, 1, 0, 0)),
    # layout of lines
    "several lines": (b"coherence.ingress:3|c\ncoherence.egress:7|c\ncoherence.ingress:1|c", (4, 7, 3, 0, 0)),
    "trailing newline": (b"coherence.ingress:1|c\n", (1, 0, 1, 0, 0)),
    "crlf": (b"coherence.ingress:1|c\r\ncoherence.egress:1|c\r\n", (1, 1, 2, 0, 0)),
    "blank lines are not lines": (b"\n\n \n\r\ncoherence.ingress:1|c\n\n", (1, 0, 1, 0, 0)),
    "empty packet": (b"", (0, 0, 0, 0, 0)),
    # other apps on the port: ignored
    "other counter": (b"web.hits:1|c", (0, 0, 0, 1, 0)),
    "other gauge and set": (b"fuel.level:0.5|g\nusers.uniques:alice|s", (0, 0, 0, 2, 0)),
    "longer name of ours is not ours": (b"coherence.ingress.total:1|c", (0, 0, 0, 1, 0)),
    "names are case-sensitive": (b"Coherence.Ingress:1|c", (0, 0, 0, 1, 0)),
    "dogstatsd event and service check": (b"_e{5,4}:title|text|p:low\n_sc|db|2|#env:dev", (0, 0, 0, 2, 0)),
    # our names, unusable: malformed
    "gauge of ours": (b"coherence.ingress:5|g", (0, 0, 0, 0, 1)),
    "timer of ours": (b"coherence.egress:5|ms", (0, 0, 0, 0, 1)),
    "type is case-sensitive": (b"coherence.ingress:5|C", (0, 0, 0, 0, 1)),
    "missing type": (b"coherence.ingress:5", (0, 0, 0, 0, 1)),
    "empty type": (b"coherence.ingress:5|", (0, 0, 0, 0, 1)),
    "missing value": (b"coherence.ingress:|c", (0, 0, 0, 0, 1)),
    "no colon": (b"coherence.ingress", (0, 0, 0, 0, 1)),
    "negative": (b"coherence.ingress:-1|c", (0, 0, 0, 0, 1)),
    "explicit sign": (b"coherence.ingress:+1|c", (0, 0, 0, 0, 1)),
    "nan": (b"coherence.ingress:nan|c", (0, 0, 0, 0, 1)),
    "inf": (b"coherence.egress:inf|c", (0, 0, 0, 0, 1)),
    "overflows to inf": (b"coherence.ingress:1e999|c\ncoherence.ingress:" + b"9" * 400 + b"|c", (0, 0, 0, 0, 2)),
    "above the largest increment": (b"coherence.ingress:2e9|c", (0, 0, 0, 0, 1)),
    "sampled above the largest increment": (b"coherence.ingress:1|c|@1e-10", (0, 0, 0, 0, 1)),
    "underscores and spaces float() accepts": (b"coherence.ingress:1_000|c\ncoherence.ingress: 5|c", (0, 0, 0, 0, 2)),
    "hex": (b"coherence.ingress:0x10|c", (0, 0, 0, 0, 1)),
    "one bad packed value": (b"coherence.ingress:1:x|c", (0, 0, 0, 0, 1)),
    "rate 0": (b"coherence.ingress:1|c|@0", (0, 0, 0, 0, 1)),
    "rate above 1": (b"coherence.ingress:1|c|@1.5", (0, 0, 0, 0, 1)),
    "negative rate": (b"coherence.ingress:1|c|@-0.5", (0, 0, 0, 0, 1)),
    "empty rate": (b"coherence.ingress:1|c|@", (0, 0, 0, 0, 1)),
    "nan rate": (b"coherence.ingress:1|c|@nan", (0, 0, 0, 0, 1)),
    "two rates": (b"coherence.ingress:1|c|@0.5|@0.5", (0, 0, 0, 0, 1)),
    "empty field": (b"coherence.ingress:1|c||#a", (0, 0, 0, 0, 1)),
    # junk
    "not statsd": (b"hello", (0, 0, 0, 0, 1)),
    "other name without type": (b"web.hits:1", (0, 0, 0, 0, 1)),
    "empty name": (b":1|c", (0, 0, 0, 0, 1)),
    "binary": (b"\xff\xfe\x00\x81", (0, 0, 0, 0, 1)),
    "nul bytes": (b"\x00" * 16, (0, 0, 0, 0, 1)),
    "non-utf-8 tag of ours": (b"coherence.ingress:1|c|#city:z\xfcrich", (0, 0, 0, 0, 1)),
    "oversized line": (b"coherence.ingress:1|c|#" + b"a" * MAX_LINE_BYTES, (0, 0, 0, 0, 1)),
    # a bad line costs only itself
    "one bad line among good ones": (b"coherence.ingress:1|c\n\xff\xff\nweb.hits:1|c\ncoherence.egress:2|c|@0\n"
                                     b"coherence.egress:2|c", (1, 2, 2, 1, 2)),
}


@pytest.mark.parametrize("packet, expected", CASES.values(), ids=list(CASES))
def test_parse_packet(packet, expected):
    ingress, egress, *counts = parse_packet(packet, P)
    assert (ingress, egress) == pytest.approx(expected[:2], rel=1e-12)
    assert tuple(counts) == expected[2:]


def test_the_prefix_selects_the_names():
    packet = b"shop.ingress:1|c\nshop.egress:2|c\ncoherence.ingress:5|c"
    assert parse_packet(packet, "shop") == (1.0, 2.0, 2, 1, 0)


@pytest.mark.parametrize("prefix", ["", "a b", "a\tb", "tab\n", "a:b", "a|b", "a\x00b", 5])
def test_a_bad_prefix_is_a_value_error_naming_it(prefix):
    with pytest.raises(ValueError, match="prefix"):
        parse_packet(b"", prefix)
    with pytest.raises(ValueError, match="prefix"):
        StatsdListener(port=0, prefix=prefix)


@given(st.binary(max_size=512))
def test_any_bytes_parse_without_raising_and_every_line_is_counted_once(data):
    ingress, egress, accepted, ignored, malformed = parse_packet(data, P)
    lines = sum(1 for line in data.split(b"\n") if line.strip())
    assert accepted + ignored + malformed == lines
    assert math.isfinite(ingress) and math.isfinite(egress) and ingress >= 0 and egress >= 0


@given(st.lists(st.tuples(st.sampled_from(["ingress", "egress"]), st.integers(0, 10**6),
                          st.sampled_from([1, 0.5, 0.25, 0.125])), max_size=50))
def test_valid_lines_add_up(lines):
    packet = "\n".join(f"coherence.{name}:{n}|c|@{rate}|#k:v" for name, n, rate in lines).encode()
    ingress, egress, accepted, ignored, malformed = parse_packet(packet, P)
    assert ingress == sum(n / rate for name, n, rate in lines if name == "ingress")
    assert egress == sum(n / rate for name, n, rate in lines if name == "egress")
    assert (accepted, ignored, malformed) == (len(lines), 0, 0)


# --- the listener ---------------------------------------------------------------------------

@pytest.fixture
def counters():
    return AtomicCounter(), AtomicCounter()


@pytest.fixture
def sender():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        yield sock


def test_listens_on_127_0_0_1_by_default_on_the_port_asked_for_or_any_free_one(counters):
    with StatsdListener(port=0, ingress=counters[0], egress=counters[1]) as listener:
        host, port = listener.address
        assert host == "127.0.0.1" and 0 < port < 65536
    free_port = port
    with StatsdListener(port=free_port, ingress=counters[0], egress=counters[1]) as listener:
        assert listener.address == ("127.0.0.1", free_port)


def test_round_trip_over_udp(counters, sender):
    ingress, egress = counters
    with StatsdListener(port=0, ingress=ingress, egress=egress) as listener:
        packet = (b"coherence.ingress:3|c\ncoherence.egress:1|c|@0.5|#env:test\n"
                  b"other.app.hits:1|c\ncoherence.ingress:-1|c\n")
        for _ in range(20):
            sender.sendto(packet, listener.address)
        wait_for(lambda: listener.packets == 20, "20 packets")
        assert (ingress.value, egress.value) == (60.0, 40.0)
        assert (listener.lines, listener.accepted, listener.ignored, listener.malformed) == (80, 40, 20, 20)


def test_by_default_it_feeds_the_in_process_counters(sender):
    before = hooks.INGRESS.value, hooks.EGRESS.value
    with StatsdListener(port=0, prefix="test-default-counters") as listener:
        sender.sendto(b"test-default-counters.ingress:2|c\ntest-default-counters.egress:5|c",
                      listener.address)
        wait_for(lambda: listener.packets == 1, "one packet")
    assert (hooks.INGRESS.value - before[0], hooks.EGRESS.value - before[1]) == (2.0, 5.0)


def test_listens_on_ipv6_when_asked(counters):
    try:
        listener = StatsdListener(host="::1", port=0, ingress=counters[0], egress=counters[1])
    except StatsdError as err:
        # A host without an IPv6 loopback: one clear error is the behaviour we want there.
        assert str(err).startswith("cannot listen for StatsD on [::1]:0: ")
        return
    with listener, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"coherence.ingress:1|c", listener.address)
        wait_for(lambda: listener.accepted == 1, "one line over IPv6")
    assert listener.address[0] == "::1" and counters[0].value == 1.0


def test_a_port_in_use_is_one_clear_error():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_daemon:
        other_daemon.bind(("127.0.0.1", 0))
        port = other_daemon.getsockname()[1]
        with pytest.raises(StatsdError) as info:
            StatsdListener(port=port)
    assert str(info.value) == f"cannot listen for StatsD on 127.0.0.1:{port}: address already in use"


def test_an_address_not_on_this_host_is_one_clear_error():
    with pytest.raises(StatsdError, match=r"^cannot listen for StatsD on 192\.0\.2\.1:8125: \S"):
        StatsdListener(host="192.0.2.1")   # TEST-NET-1: never a local address


@pytest.mark.parametrize("kwargs, name", [({"port": -1}, "port"), ({"port": 65536}, "port"),
                                          ({"port": "8125"}, "port"), ({"port": True}, "port"),
                                          ({"host": ""}, "host")])
def test_bad_arguments_are_value_errors_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=f"^{name} "):
        StatsdListener(**kwargs)


def test_stop_is_prompt_and_releases_the_port(counters):
    listener = StatsdListener(port=0, ingress=counters[0], egress=counters[1]).start()
    wait_for(lambda: listener.running, "the thread to start")
    started = time.monotonic()
    listener.stop()
    # The thread sleeps in select() on the socket and a wake-up pipe: stop() takes microseconds.
    # The design target is 0.2 s; the bound is looser because these machines are shared.
    assert time.monotonic() - started < 0.5
    assert not listener.running
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(listener.address)   # the port is free again
    listener.stop()   # idempotent
    with pytest.raises(RuntimeError, match="stopped"):
        listener.start()


def test_a_listener_never_started_still_releases_its_port(counters):
    listener = StatsdListener(port=0, ingress=counters[0], egress=counters[1])
    listener.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(listener.address)


# Sent from another process, as a flood would be: in this one, the sender and the listener
# would take turns on the GIL and the test would measure that hand-off instead.
FLOOD = """
import socket, sys
junk = [
    bytes(range(256)),                                   # binary, one line
    b"x\\n" * 20,                                         # 20 malformed lines
    b"coherence.ingress:1|c|#" + b"a" * 5000,            # oversized line
    b"coherence.ingress:nan|c\\ncoherence.ingress:5|g",   # ours, unusable
    b"other.app:1|c",                                    # not ours
]
address = (sys.argv[1], int(sys.argv[2]))
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for i in range(50_000):
        sock.sendto(junk[i % len(junk)], address)
"""


def test_a_flood_of_junk_is_counted_and_does_not_grow_memory(counters, sender):
    ingress, _ = counters
    with StatsdListener(port=0, ingress=ingress, egress=counters[1]) as listener:
        address = listener.address

        def deliver_one_good_packet():
            # Behind a flood the kernel queue may be full and drop it: resend until it is in.
            target = listener.accepted + 1
            deadline = time.monotonic() + WAIT_SECONDS
            while listener.accepted < target:
                assert time.monotonic() < deadline, "the listener stopped taking packets"
                sender.sendto(b"coherence.ingress:1|c", address)
                time.sleep(0.002)

        deliver_one_good_packet()                  # the receive buffer and thread are warm
        gc.collect()
        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            subprocess.run([sys.executable, "-c", FLOOD, address[0], str(address[1])],
                           check=True, timeout=30)
            deliver_one_good_packet()              # everything sent before it is parsed too
            gc.collect()
            current, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    # Read once the thread has ended: a resent good packet may still be in flight before.
    assert listener.packets > 1000 and listener.malformed > 1000
    assert listener.lines == listener.accepted + listener.ignored + listener.malformed
    assert ingress.value == listener.accepted   # no junk leaked into the counter
    # Nothing is kept per packet: what is live after the flood is what was live before it,
    # and at no moment did more than a few packets' worth exist.
    assert current - baseline < 64 * 1024
    assert peak - baseline < 1024 * 1024
