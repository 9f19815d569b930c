"""What the Prometheus exporter costs: a scrape every second at --hz 1000, against the same
sentinel left unscraped, measured in the same run (issue 11: at most 0.1 % of a core, and a
scrape never makes the sampler wait).

Usage: python benchmarks/run_exporter.py [--duration S] [--repeats R] [--hz N] [--json [FILE]]
       (always exits 0 when it ran to the end: the targets are informational)

Five cases, each a separate process (programs/exporter_child.py: what `coherence serve` runs,
the exporter on 127.0.0.1), run for --duration seconds after a warm-up, --repeats times, the
cases taking turns (a noisy stretch of this shared VM falls on all of them alike):

  idle        the sentinel with its exporter listening, never scraped
  scraped     scraped once a second, as Prometheus 2.x scrapes it: OpenMetrics asked for, gzip
              accepted, on absolute deadlines of the monotonic clock, over one connection kept
              alive between scrapes (opened again if the server closed it: counted, as
              `reconnections`)
  scraped text the same, asking for the text format (0.0.4), as a Prometheus configured with
              `scrape_protocols: [PrometheusText0.0.4]` does (reference, not a target)
  scraped x10 ten scrapes a second, on the kept connection: the cost per scrape with less
              noise, and the sampler's lateness under ten times the load (reference, not a
              target)
  scraped new connection
              scraped once a second, each scrape on a new connection that it closes
              (`Connection: close`, as curl or a one-off client): what a scrape costs with the
              accept, the hand-over to a thread and the close (reference, not a target)

The exporter's CPU is measured inside the child: the process's CPU time (getrusage, which keeps
the time of threads that have exited) less that of the threads that are not the exporter's
(sampler, runtime poller, main thread; schedstat), each named. It is the accept thread plus
every connection's thread (kept between connections or created for one), thread creation
included, and any other thread of the process. (The child's own `exporter_cpu_s` subtracts
every thread alive at both ends but the accept thread, which would leave out a connection
thread that lives on between scrapes.) The sampler's lateness and
overruns are its own histogram's and counters' deltas over the same interval. Reported: medians
over the repeats, the exporter's CPU as % of one core, and PASS/MISS against the targets.
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import math
import os
import socket
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _machine import write_json
from run_sampler import CaseError, Child, host_cpu_ticks, machine, percentile

HERE = os.path.dirname(os.path.abspath(__file__))
CHILD = os.path.join(HERE, "programs", "exporter_child.py")
CASES = ("idle", "scraped", "scraped text", "scraped x10", "scraped new connection")
SCRAPE_HZ = {"idle": 0.0, "scraped": 1.0, "scraped text": 1.0, "scraped x10": 10.0,
             "scraped new connection": 1.0}
LABELS = {"idle": "idle (listening, not scraped)", "scraped": "scraped every second",
          "scraped text": "scraped every second, text format (reference)",
          "scraped x10": "scraped 10 times a second (reference)",
          "scraped new connection": "scraped every second, a new connection each (reference)"}
# What Prometheus 2.x sends: OpenMetrics first, the text format as a fallback, gzip.
TEXT_HEADERS = {"Accept": "text/plain;version=0.0.4", "Accept-Encoding": "gzip"}
PROMETHEUS_HEADERS = {
    "Accept": "application/openmetrics-text;version=1.0.0,application/openmetrics-text;"
              "version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "Accept-Encoding": "gzip",
    "User-Agent": "Prometheus/2.42.0",
    "X-Prometheus-Scrape-Timeout-Seconds": "10",
}
SCRAPE_TIMEOUT_S = 10.0
# Targets (issue 11, item 6).
ADDED_CPU_MAX_PCT = 0.1            # a scrape a second, % of one core
LATENESS_NOISE_US = 50.0           # "never waits": p99 with scrapes within this of without


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Scraper:
    """Scrapes 127.0.0.1:port/metrics as Prometheus 2.x does: over one connection kept between
    scrapes (its default since 2.0), opened again when the server has closed it, as Go's client
    does; or, with ``keep=False``, on a new connection each time, closed after the answer."""

    def __init__(self, port: int, text: bool = False, keep: bool = True) -> None:
        self.port, self.text, self.keep = port, text, keep
        self.headers = dict(TEXT_HEADERS if text else PROMETHEUS_HEADERS)
        if not keep:
            self.headers["Connection"] = "close"
        self.conn: Optional[http.client.HTTPConnection] = None
        self.opened = 0                 # connections opened: 1 when kept throughout

    def _connection(self) -> http.client.HTTPConnection:
        if self.conn is None or self.conn.sock is None:     # none yet, or closed after an answer
            self.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=SCRAPE_TIMEOUT_S)
            self.conn.connect()
            self.opened += 1
        return self.conn

    def _get(self) -> http.client.HTTPResponse:
        conn = self._connection()
        conn.request("GET", "/metrics", headers=self.headers)
        return conn.getresponse()

    def scrape(self) -> Tuple[int, int]:
        """One scrape: (bytes on the wire, bytes of exposition)."""
        reused = self.conn is not None and self.conn.sock is not None
        try:
            resp = self._get()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            self.close()                 # the server closed the kept connection: a new one
            resp = self._get()
        body = resp.read()
        if resp.status != 200:
            raise CaseError(f"scrape answered {resp.status}: {body[:80]!r}")
        if not self.keep:
            self.close()
        plain = gzip.decompress(body) if resp.getheader("Content-Encoding") == "gzip" else body
        if plain.rstrip().endswith(b"# EOF") == self.text:
            raise CaseError(f"not the format asked for from port {self.port}: {plain[-80:]!r}")
        return len(body), len(plain)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def measure(case: str, hz: float, duration: float, warmup: float) -> Dict[str, Any]:
    port = free_port()
    argv = [sys.executable, CHILD, str(hz), str(port), str(duration + warmup + 120), str(warmup)]
    every = 1.0 / SCRAPE_HZ[case] if SCRAPE_HZ[case] else 0.0
    sizes: List[Tuple[int, int]] = []
    scraper = Scraper(port, text=case == "scraped text", keep=case != "scraped new connection")
    with Child(argv, cwd=HERE) as child:
        child.wait_ready()
        h0 = host_cpu_ticks()
        t0 = time.monotonic()
        end = t0 + duration
        try:
            if every:
                deadline = t0
                while deadline < end:
                    sizes.append(scraper.scrape())
                    deadline += every
                    time.sleep(max(0.0, min(deadline, end) - time.monotonic()))
            else:
                time.sleep(duration)
            h1 = host_cpu_ticks()
            report = child.stop()           # the kept connection still open, as Prometheus's
        finally:
            scraper.close()
    busy, total = h1[0] - h0[0], h1[1] - h0[1]
    report["host_busy_pct"] = 100.0 * busy / total if total > 0 else math.nan
    report["scrapes_sent"] = len(sizes)
    report["connections_opened"] = scraper.opened
    # a kept connection opened again (the server closed it); none expected in a run
    report["reconnections"] = max(0, scraper.opened - 1) if scraper.keep else 0
    report["wire_bytes"] = statistics.median(s[0] for s in sizes) if sizes else 0
    report["exposition_bytes"] = statistics.median(s[1] for s in sizes) if sizes else 0
    if report["scrapes_served"] != len(sizes):
        raise CaseError(f"{case}: sent {len(sizes)} scrapes, the exporter served "
                        f"{report['scrapes_served']}")
    return report


def exporter_cpu_s(r: Dict[str, Any]) -> float:
    """The process's CPU time less that of the threads that are not the exporter's, each named
    (the sampler, the runtime poller, the main thread): everything else is the exporter's,
    its connections' threads included whether they live on between connections or not."""
    return r["process_cpu_s"] - r["sampler_cpu_s"] - r["runtime_cpu_s"] - r["main_cpu_s"]


def figures(r: Dict[str, Any]) -> Dict[str, float]:
    wall = r["wall_s"]
    hist = r["lateness_hist"]
    ticks = sum(n for _, n in hist)
    scrapes = r["scrapes_served"]
    exporter = exporter_cpu_s(r)
    return {
        "process_pct": 100.0 * r["process_cpu_s"] / wall,
        "exporter_pct": 100.0 * exporter / wall,
        "http_threads_pct": 100.0 * r["http_threads_cpu_s"] / wall,
        "sampler_pct": 100.0 * r["sampler_cpu_s"] / wall,
        "per_scrape_ms": 1e3 * exporter / scrapes if scrapes else math.nan,
        "ticks_taken_pct": 100.0 * ticks / (wall * r["hz"]),
        "p50_us": percentile(hist, 0.50), "p99_us": percentile(hist, 0.99),
        "p999_us": percentile(hist, 0.999),
        "max_us": float(hist[-1][0]) if hist else math.nan,
        "overruns": float(r["overruns"]),
        "scrapes": float(scrapes),
        "reconnections": float(r.get("reconnections", 0)),
        "host_busy_pct": r["host_busy_pct"],
    }


def _median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return statistics.median(xs) if xs else math.nan


def summarize(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for case, reports in runs.items():
        ok = [figures(r) for r in reports if "error" not in r]
        if ok:
            med: Dict[str, Any] = {k: _median([f[k] for f in ok]) for k in ok[0]}
            med["n"] = len(ok)
            med["exporter_runs"] = [f["exporter_pct"] for f in ok]
            out[case] = med
    return out


def verdicts(summary: Dict[str, Dict[str, Any]]) -> List[Tuple[str, str, str]]:
    idle, scraped = summary.get("idle"), summary.get("scraped")
    out = []
    label = f"a scrape every second adds <= {ADDED_CPU_MAX_PCT:g} % of a core"
    if idle and scraped:
        added = scraped["exporter_pct"] - idle["exporter_pct"]
        out.append(("PASS" if added <= ADDED_CPU_MAX_PCT else "MISS", label,
                    f"{added:.3f} % ({scraped['per_scrape_ms']:.2f} ms of CPU a scrape; the whole "
                    f"process {scraped['process_pct'] - idle['process_pct']:+.3f} %)"))
        worse = scraped["p99_us"] - idle["p99_us"]
        out.append(("PASS" if worse <= LATENESS_NOISE_US else "MISS",
                    f"the sampler's p99 tick lateness with scrapes within {LATENESS_NOISE_US:g} us "
                    "of without", f"{idle['p99_us']:.0f} -> {scraped['p99_us']:.0f} us; overruns "
                    f"{idle['overruns']:.0f} -> {scraped['overruns']:.0f}"))
    else:
        out.append(("SKIP", label, "needs the idle and scraped rows"))
    return out


def _fmt(x: Optional[float], spec: str) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def table(summary: Dict[str, Dict[str, Any]], runs: Dict[str, List[Dict[str, Any]]]) -> str:
    lines = ["| case | exporter CPU % of a core | CPU ms a scrape | whole process % | sampler thread % "
             "| ticks taken % | p50 / p99 / p99.9 lateness µs | max µs | overruns | exporter % per run |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for case in CASES:
        m = summary.get(case)
        errors = [r["error"] for r in runs.get(case, []) if "error" in r]
        if m is None:
            why = errors[0].splitlines()[0] if errors else "not measured"
            lines.append(f"| {LABELS[case]} | failed: {why} | | | | | | | | |")
            continue
        per_run = ", ".join(f"{v:.3f}" for v in m["exporter_runs"])
        lines.append(
            f"| {LABELS[case]} | {_fmt(m['exporter_pct'], '.3f')} | {_fmt(m['per_scrape_ms'], '.2f')} "
            f"| {_fmt(m['process_pct'], '.2f')} | {_fmt(m['sampler_pct'], '.2f')} "
            f"| {_fmt(m['ticks_taken_pct'], '.2f')} "
            f"| {_fmt(m['p50_us'], '.0f')} / {_fmt(m['p99_us'], '.0f')} / {_fmt(m['p999_us'], '.0f')} "
            f"| {_fmt(m['max_us'], '.0f')} | {_fmt(m['overruns'], '.0f')} | {per_run} |")
    return "\n".join(lines)


def report_text(result: Dict[str, Any]) -> str:
    m, cfg = result["machine"], result["config"]
    out = [f"Machine: {m['cpu_model']}; nproc {m['nproc']}; kernel {m['kernel']}; Python "
           f"{m['python']}; coherence {m['coherence']}",
           f"Each case a separate process (what `coherence serve` runs) at {cfg['hz']:g} Hz, measured "
           f"for {cfg['duration']:g} s after a {cfg['warmup']:g} s warm-up, {cfg['repeats']} repeats, "
           "cases interleaved; medians. Scrapes as Prometheus makes them (OpenMetrics, gzip, one "
           "connection kept alive), but for the new-connection row."]
    sizes = [r for r in result["runs"].get("scraped", []) if "error" not in r]
    if sizes:
        out.append(f"A scrape: {sizes[0]['exposition_bytes']:.0f} bytes of OpenMetrics, "
                   f"{sizes[0]['wire_bytes']:.0f} bytes gzipped.")
    reopened = sum(r.get("reconnections", 0) for rs in result["runs"].values() for r in rs)
    if reopened:
        out.append(f"Kept connections the server closed, opened again: {reopened}.")
    busy = [r["host_busy_pct"] for rs in result["runs"].values() for r in rs
            if "host_busy_pct" in r and not math.isnan(r["host_busy_pct"])]
    if busy:
        out.append(f"Machine busy (all CPUs) during the measured intervals: median "
                   f"{statistics.median(busy):.0f} %, max {max(busy):.0f} %.")
    out += ["", table(result["summary"], result["runs"]), ""]
    out += [f"- {state}: {label} (measured {measured})" for state, label, measured in result["verdicts"]]
    return "\n".join(out)


def run(duration: float = 30.0, repeats: int = 3, hz: float = 1000.0, warmup: float = 3.0,
        cases: Sequence[str] = CASES) -> Dict[str, Any]:
    result: Dict[str, Any] = {"machine": machine(), "config": {
        "duration": duration, "repeats": repeats, "hz": hz, "warmup": warmup, "cases": list(cases)}}
    runs: Dict[str, List[Dict[str, Any]]] = {c: [] for c in cases}
    try:
        for _ in range(repeats):
            for case in cases:
                try:
                    runs[case].append(measure(case, hz, duration, warmup))
                except (CaseError, OSError) as err:
                    runs[case].append({"error": str(err)})
    except KeyboardInterrupt:
        result["interrupted"] = True
    result["runs"] = runs
    result["summary"] = summarize(runs)
    result["verdicts"] = verdicts(result["summary"])
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hz", type=float, default=1000.0)
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, of: {', '.join(CASES)}")
    p.add_argument("--json", nargs="?", const="-", metavar="FILE",
                   help="also write the raw results as JSON (to FILE, or stdout)")
    a = p.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}: choose from {', '.join(CASES)}")
    result = run(a.duration, a.repeats, a.hz, a.warmup, cases)
    print(report_text(result))
    if a.json:
        write_json(result, a.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
