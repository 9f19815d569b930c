"""Fuzz the reading of a scraped exposition (coherence.sources.scrape): parse, recognise, and the
filtering by wanted_lines that a poll applies once a target reads well.
Run: tools/fuzz.sh scrape [libFuzzer options]; replay a file: python fuzz/fuzz_scrape.py FILE.

Every body is parsed both as the Prometheus text format and as OpenMetrics. What must hold: parse
returns families or raises ScrapeError (its reason one line), nothing else; and when the whole
body parses and is valid as the formats define it (see valid), the body filtered to the lines
wanted_lines keeps parses too and is recognised the same (values, the names they came from, the
reasons for what is missing, the clients), with the known names alone and with a user's selectors.
"""
import sys
from typing import Dict, List, Mapping, Pattern, Tuple

import atheris

with atheris.instrument_imports(include=["coherence", "prometheus_client"]):
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import _split_quoted
    from coherence.sources.scrape import Recognised, ScrapeError, check_selectors, parse, recognise, wanted_lines

CONTENT_TYPES = ("text/plain; version=0.0.4; charset=utf-8", "application/openmetrics-text; version=1.0.0")
SELECTORS: Tuple[Mapping[str, str], ...] = (
    {},
    {"ingress": 'http_requests_total{direction="in",code!~"5.."}',
     "egress": "http_requests_total{direction='out'}", "alloc": "app_allocated_bytes_total"},
)
WANTED: List[Tuple[Mapping[str, str], Pattern[str]]] = [
    (selectors, wanted_lines(check_selectors(selectors).values())) for selectors in SELECTORS]


def summary(r: Recognised) -> Dict[str, str]:
    # repr: a derived value may be NaN, which compares unequal to itself
    return {"values": repr(sorted(r.values.items())), "sources": repr(sorted(r.sources.items())),
            "missing": repr(sorted(r.missing.items())), "clients": repr(sorted(r.clients.items()))}


def valid(data: bytes, families: List[Metric]) -> bool:
    """Whether a body prometheus_client parsed is also valid as the formats define it, beyond that
    parser's laxities, which filtering need not reproduce: each metric's lines in one group (else
    the parser gives its later samples a family of their own, untyped, and the lines standing
    between decide their type), and "#" a token of its own before TYPE and HELP (the parser also
    honours "#junk TYPE name gauge")."""
    if len({family.name for family in families}) < len(families):
        return False
    for line in data.decode("utf-8").split("\n"):
        text = line.strip()
        if text.startswith("#"):
            tokens = _split_quoted(text, None, 3)
            if len(tokens) > 2 and tokens[1] in ("TYPE", "HELP") and tokens[0] != "#":
                return False
    return True


def test_one_input(data: bytes) -> None:
    for content_type in CONTENT_TYPES:
        try:
            whole = parse(data, content_type)
        except ScrapeError as err:
            assert str(err) and "\n" not in str(err), repr(str(err))
            continue
        if not valid(data, whole):
            continue
        for selectors, only in WANTED:
            try:
                part = parse(data, content_type, only)
            except ScrapeError as err:
                raise AssertionError(f"{content_type}: the whole body parses, the lines kept do not: {err}") from None
            assert summary(recognise(part, selectors)) == summary(recognise(whole, selectors)), content_type


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
