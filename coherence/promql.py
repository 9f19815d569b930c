"""Prometheus data for `coherence replay --mapping`: the JSON of /api/v1/query_range (a matrix),
turned by a mapping file (series -> signals) into the records a recording holds, so that the same
accumulators, detectors and verdicts judge it. A detector whose timescale the data cannot show
(a seizure in 100 ms buckets from 15 s scrapes) is UNAVAILABLE with that reason.

    header, records = load("range.json", "node_exporter.toml")
    play(header, records, replay_config(header), on_report=print)
"""
from __future__ import annotations

import json
import math
import re
import statistics
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, Union

from coherence import __version__
from coherence.config import Config, ConfigError, as_dict, read_file
from coherence.recording import (CPU_SERIES, VERSION, Chunk, End, Header, RecordingError,
                                 Track)
from coherence.runtime import COUNTERS
from coherence.sources.scrape import Selector

CPU_SECONDS = "cpu_seconds_total"      # the one mapped signal that is not a sampler series:
#                                        CPU time in seconds, summed over the CPUs, made buckets
# mapped signal -> family (coherence sources): a family with none of its signals is unavailable;
# every one but CPU_SECONDS is a series of a recording (coherence.recording.SERIES)
FAMILIES = {CPU_SECONDS: "cpu", "minor_faults_total": "memory", "mem_resident_bytes": "memory",
            "mem_total_bytes": "memory", "pgalloc_total": "memory", "pgfree_total": "memory",
            "psi_cpu_some_us_total": "pressure", "psi_memory_some_us_total": "pressure",
            "psi_io_some_us_total": "pressure", "tcp_passive_opens_total": "requests",
            "tcp_active_opens_total": "requests", "ingress_total": "requests",
            "egress_total": "requests"}
# what memory needs to be judged at all (signals.Signals: resident and faults)
MEMORY_NEEDS = ("minor_faults_total", "mem_resident_bytes")
_TERM = re.compile(r"\s*(?P<sign>-)?\s*(?:(?P<scale>[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*\*)?\s*(?P<sel>.+)$")

Term = Tuple[float, Selector]          # coefficient, selector


def _terms(texts: Any, where: str) -> List[Term]:
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise ConfigError(f"{where}: a list of selectors, e.g. ['node_vmstat_pgfault', "
                          "'-node_vmstat_pgmajfault']")
    out = []
    for text in texts:
        m = _TERM.match(text)
        if m is None:
            raise ConfigError(f"{where}: {text!r} is not [-][SCALE*]SELECTOR")
        try:
            selector = Selector.parse(m.group("sel"))
            coef = float(m.group("scale") or 1.0) * (-1.0 if m.group("sign") else 1.0)
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        out.append((coef, selector))
    return out


class SeriesMap:
    """The mapping file: [signals] (host signals), [runtime.NAME] (a runtime's counters), ncpu."""

    def __init__(self, data: Mapping[str, Any], where: str) -> None:
        unknown = set(data) - {"signals", "runtime", "ncpu"}
        if unknown:
            raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: ncpu, "
                              "signals, runtime)")
        signals = data.get("signals", {})
        if not isinstance(signals, dict):
            raise ConfigError(f"{where}: [signals] must be a table")
        self.signals: Dict[str, List[Term]] = {}
        for name, texts in signals.items():
            if name not in FAMILIES:
                raise ConfigError(f"{where}: unknown signal {name!r} (known: "
                                  f"{', '.join(FAMILIES)})")
            self.signals[name] = _terms(texts, f"{where}: signals.{name}")
        self.runtime: Dict[str, Tuple[str, Dict[str, List[Term]]]] = {}
        runtime = data.get("runtime", {})
        if not isinstance(runtime, dict):
            raise ConfigError(f"{where}: [runtime.NAME] tables, one per runtime")
        for track, table in runtime.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{where}: [runtime.{track}] must be a table")
            kind = str(table.get("runtime", "service"))
            counters = {}
            for name, texts in table.items():
                if name == "runtime":
                    continue
                if name not in COUNTERS:
                    raise ConfigError(f"{where}: runtime.{track}: unknown counter {name!r} "
                                      f"(known: {', '.join(COUNTERS)})")
                counters[name] = _terms(texts, f"{where}: runtime.{track}.{name}")
            self.runtime[str(track)] = (kind, counters)
        ncpu = data.get("ncpu")
        if ncpu is not None and (isinstance(ncpu, bool) or not isinstance(ncpu, (int, float))
                                 or not ncpu > 0):
            raise ConfigError(f"{where}: ncpu must be a positive number, got {ncpu!r}")
        self.ncpu: Optional[float] = None if ncpu is None else float(ncpu)
        if not self.signals and not self.runtime:
            raise ConfigError(f"{where}: maps no series ([signals] or [runtime.NAME])")


Series = Tuple[str, Dict[str, str], Dict[float, float]]   # name, labels, {ts: value}


def _matrix(path: str) -> List[Series]:
    try:
        with open(path, "rb") as f:
            doc = json.load(f)
    except OSError as err:
        raise RecordingError(f"{path}: {err.strerror or err}") from None
    except (ValueError, UnicodeDecodeError):
        raise RecordingError(f"{path}: not JSON (the answer of /api/v1/query_range?)") from None
    if not isinstance(doc, dict) or "status" not in doc:
        raise RecordingError(f"{path}: not a Prometheus API answer (no \"status\")")
    if doc.get("status") != "success" or "data" not in doc:
        raise RecordingError(f"{path}: the query failed: {doc.get('error', doc.get('status'))}")
    data = doc["data"]
    if not isinstance(data, dict) or data.get("resultType") != "matrix":
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise RecordingError(f"{path}: a {kind!r} result; replay needs a matrix "
                             "(/api/v1/query_range, not /api/v1/query)")
    out: List[Series] = []
    try:
        for s in data["result"]:
            labels = {str(k): str(v) for k, v in s["metric"].items()}
            name = labels.pop("__name__", "")
            points = {}
            for ts, value in s["values"]:
                v = float(value)
                if math.isfinite(v):
                    points[float(ts)] = v
            out.append((name, labels, points))
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise RecordingError(f"{path}: a malformed matrix ({err})") from None
    return out


def _combine(terms: Sequence[Term], matrix: Sequence[Series], used: Set[int],
             instances: Set[str]) -> Dict[float, float]:
    """Sum of coef x every matching series, at the timestamps where every term has a value."""
    total: Optional[Dict[float, float]] = None
    for coef, selector in terms:
        term: Dict[float, float] = {}
        found = False
        for k, (name, labels, points) in enumerate(matrix):
            if selector.matches(name, labels):
                found = True
                used.add(k)
                if "instance" in labels:
                    instances.add(labels["instance"])
                for ts, v in points.items():
                    term[ts] = term.get(ts, 0.0) + coef * v
        if not found:
            return {}
        total = term if total is None else {ts: total[ts] + v for ts, v in term.items()
                                            if ts in total}
    return total or {}


def _cpu_count(terms: Sequence[Term], matrix: Sequence[Series]) -> Optional[float]:
    cpus = {labels.get("cpu") for _, sel in terms for name, labels, _ in matrix
            if sel.matches(name, labels)}
    cpus.discard(None)
    return float(len(cpus)) if cpus else None


def _one_instance(instances: Set[str], path: str, what: str) -> None:
    if len(instances) > 1:
        raise RecordingError(f"{path}: {what} come from {len(instances)} instances "
                             f"({', '.join(sorted(instances)[:3])}): replay one at a time "
                             "(add instance=\"...\" to the query or the mapping's selectors)")


def load(path: str, mapping_path: str) -> Tuple[Header, Iterator[Union[Chunk, End]]]:
    """The header and records of a Prometheus range query, through the mapping file."""
    mapping = SeriesMap(read_file(mapping_path), f"mapping {mapping_path}")
    matrix = _matrix(path)
    used: Set[int] = set()
    instances: Set[str] = set()
    signals = {name: _combine(terms, matrix, used, instances)
               for name, terms in mapping.signals.items()}
    signals = {name: points for name, points in signals.items() if points}
    _one_instance(instances, path, "the host's signals")
    runtime: Dict[str, Tuple[str, Dict[str, Dict[float, float]]]] = {}
    for track, (kind, terms_of) in mapping.runtime.items():
        theirs: Set[str] = set()
        found = {c: p for c, terms in terms_of.items()
                 if (p := _combine(terms, matrix, used, theirs))}
        _one_instance(theirs, path, f"runtime {track}")
        if found:
            runtime[track] = (kind, found)
    if not signals and not runtime:
        raise RecordingError(f"{path}: no series matches the mapping {mapping_path}")
    stamps = sorted({ts for p in signals.values() for ts in p}
                    | {ts for _, cs in runtime.values() for p in cs.values() for ts in p})
    t0 = stamps[0]
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    step = statistics.median(gaps) if gaps else 1.0
    ncpu = mapping.ncpu
    if CPU_SECONDS in signals and ncpu is None:
        ncpu = _cpu_count(mapping.signals[CPU_SECONDS], matrix)
        if ncpu is None:
            raise RecordingError(f"mapping {mapping_path}: say ncpu = N (the series of "
                                 f"{CPU_SECONDS} have no cpu label to count)")
    series: Dict[str, Tuple[List[float], List[float]]] = {}
    cpu = signals.pop(CPU_SECONDS, None)
    if cpu is not None:
        times, utils = [], []
        ts_sorted = sorted(cpu)
        for a, b in zip(ts_sorted, ts_sorted[1:]):
            du = cpu[b] - cpu[a]
            if du >= 0 and b > a:      # a counter that went down was reset: skip that bucket
                times.append(b - t0)
                utils.append(100.0 * du / ((b - a) * (ncpu or 1.0)))
        series[CPU_SERIES] = (times, utils)
    for name, points in signals.items():
        ts_sorted = sorted(points)
        series[name] = ([ts - t0 for ts in ts_sorted], [points[ts] for ts in ts_sorted])
    tracks: List[Track] = []
    events: List[Tuple[float, int, Optional[Dict[str, float]], str]] = []
    for index, (track, (kind, counters)) in enumerate(runtime.items()):
        tracks.append(Track(index, track, kind, None))
        for ts in sorted({ts for p in counters.values() for ts in p}):
            events.append((ts - t0, index, {c: p[ts] for c, p in counters.items() if ts in p}, ""))
    events.sort(key=lambda e: e[0])
    families = {FAMILIES[n] for n in [*signals, *([CPU_SECONDS] if cpu is not None else [])]}
    if not all(n in signals for n in MEMORY_NEEDS):
        families.discard("memory")
    end_s = stamps[-1] - t0
    header = Header(
        version=VERSION, coherence=__version__, host=next(iter(instances), "prometheus"),
        kernel="", started_at=t0, ncpu=ncpu or 1.0,
        ncpu_reason="the mapping's ncpu" if mapping.ncpu else "cpu labels counted",
        hz=1.0 / step, slow_hz=1.0 / step, runtime_hz=1.0 / step, resolution_s=step, pid=None,
        sources={f: f"prometheus ({path})" for f in families}, available=tuple(sorted(families)),
        settings=as_dict(Config()), origin="prometheus")
    chunk = Chunk(end_s, (), series, tuple(tracks), tuple(events))
    return header, iter([chunk, End(end_s, "prometheus", 0)])


__all__ = ["CPU_SECONDS", "FAMILIES", "load"]
