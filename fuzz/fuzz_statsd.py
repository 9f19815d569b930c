"""Fuzz the StatsD packet parser (coherence.statsd.parse_packet) with any bytes a UDP socket
can deliver. Run: tools/fuzz.sh statsd [libFuzzer options]; replay a file: python fuzz/fuzz_statsd.py FILE.

What must hold for every packet: it parses without raising; every non-blank line is counted
once (accepted, ignored or malformed); the totals are finite, never negative, and a line adds
at most MAX_INCREMENT; a packet adds exactly what its lines add one by one; and "\\r\\n" line
ends read as "\\n" ones.
"""
import math
import sys

import atheris

with atheris.instrument_imports(include=["coherence"]):
    from coherence.statsd import MAX_INCREMENT, parse_packet

PREFIX = "coherence"


def test_one_input(data: bytes) -> None:
    whole = parse_packet(data, PREFIX)
    ingress, egress, accepted, ignored, malformed = whole
    lines = [line for line in data.split(b"\n") if line.strip()]
    assert accepted + ignored + malformed == len(lines), (whole, len(lines))
    assert math.isfinite(ingress) and math.isfinite(egress), whole
    assert ingress >= 0.0 and egress >= 0.0, whole
    # the packet is the sum of its lines, added in the same order
    one_by_one = [0.0, 0.0, 0, 0, 0]
    for line in lines:
        alone = parse_packet(line, PREFIX)
        assert sum(alone[2:]) == 1, (line, alone)
        assert alone[0] <= MAX_INCREMENT and alone[1] <= MAX_INCREMENT, (line, alone)
        one_by_one = [a + b for a, b in zip(one_by_one, alone)]
    assert tuple(one_by_one) == whole, (tuple(one_by_one), whole)
    assert parse_packet(data.replace(b"\n", b"\r\n"), PREFIX) == whole


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
