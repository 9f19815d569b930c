"""Soak: does anything grow? 24 hours of simulated host time through the real detectors and
verdict engine, and 10 minutes of the live sentinel at --hz 1000 on this host.

Usage: python benchmarks/run_soak.py [--sim-hours H] [--live-s S] [--hz N] [--cases sim,live]
                                     [--growth N] [--json [FILE]]
       (exits 0 when it ran to the end: the figures are for the README, the bounds are the CI
       test's, benchmarks/test_bench_soak.py)

Two cases, each a child process of programs/ that measures itself (programs/soak_probe.py):
resident memory (VmRSS), the Python heap (tracemalloc's traced memory, tracing from before the
first import), open file descriptors and threads, every --every seconds.

  sim   programs/soak_sim.py: the demo's story (350 s: seizure, fever, retry storm, cascade,
        leak, recoveries) back to back for --sim-hours, played by coherence.simulate.play as
        fast as it goes, each report also serialised as its JSON line. Time is simulated.
  live  programs/soak_live.py: the sentinel that `coherence live --json --hz N` wires (sampler,
        runtime poller, monitor, JSON lines to /dev/null) on this host for --live-s seconds.
        Tick lateness is compared between the first minute and the last, from the sampler's
        own lateness histogram (cumulative; a minute is the difference of two samples).

Reported per figure: its value at the start, at the end of the warm-up and at the end, and its
least-squares slope per hour (of simulated time for sim, of wall time for live) after the
warm-up, with the slope's standard error: a slope within about 2 standard errors of 0 is noise.
With --growth N, the live case also names the N allocation sites (whole tracebacks) whose
reachable heap grew most after the warm-up.
"""
from __future__ import annotations

import argparse
import array
import base64
import json
import math
import os
import platform
import selectors
import subprocess
import tempfile
import sys
import time
import tracemalloc
from typing import Any, Dict, List, Optional, Sequence, Tuple

from _machine import cpu_model, write_json

HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS = os.path.join(HERE, "programs")
SIM_CHILD = os.path.join(PROGRAMS, "soak_sim.py")
LIVE_CHILD = os.path.join(PROGRAMS, "soak_live.py")
CASES = ("sim", "live")
FIGURES = (("rss_bytes", "resident memory", "MiB", 1 << 20),
           ("rss_untraced_bytes", "resident memory less tracemalloc's own tables", "MiB", 1 << 20),
           ("heap_bytes", "Python heap (tracemalloc)", "MiB", 1 << 20),
           ("heap_live_bytes", "Python heap after a full collection", "MiB", 1 << 20),
           ("fds", "file descriptors", "", 1), ("threads", "threads", "", 1))
# Warm-up: the histories fill (seizure window 10 s, fever trend 10 s, ratio windows), the runtime
# poller makes its first full scan of /proc (60 s) and the verdict engine meets every state. For
# the story, seven stories (350 simulated s each): one meets every incident once, and CPython's
# per-size tuple free lists, which tracemalloc counts as live, take about seven to fill to the
# story's deepest use (README, "Soak").
LIVE_WARMUP_S = 60.0
SIM_WARMUP_S = 7 * 350.0
LATENESS_WINDOW_S = 60.0       # "the first minute against the last"
GROWTH_FRAMES = 25             # --growth: frames a block, to tell sites apart
GROWTH_SHOWN = 6               # ... and the innermost of them shown in the report
EXIT_TIMEOUT_S = 30.0


class CaseError(RuntimeError):
    pass


# --- running a child -------------------------------------------------------------------------
def run_child(cmd: Sequence[str], timeout_s: float,
              env_extra: Optional[Dict[str, str]] = None) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """Run one child to its end; its samples and its closing record. CaseError if it fails,
    falls silent for ``timeout_s`` or never closes."""
    env = {**os.environ, "PYTHONPATH": PROGRAMS + os.pathsep + os.environ.get("PYTHONPATH", ""),
           **(env_extra or {})}
    proc = subprocess.Popen(list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=PROGRAMS)
    samples: List[Dict[str, Any]] = []
    done: Optional[Dict[str, Any]] = None
    sel = selectors.DefaultSelector()
    assert proc.stdout is not None and proc.stderr is not None
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while done is None:
            if not sel.select(timeout_s):
                raise CaseError(f"{os.path.basename(cmd[1])}: silent for {timeout_s:g} s")
            line = proc.stdout.readline()
            if not line:
                raise CaseError(f"{os.path.basename(cmd[1])} exited ({proc.wait(EXIT_TIMEOUT_S)}): "
                                f"{proc.stderr.read()[-2000:]}")
            record = json.loads(line)
            if record.get("done"):
                done = record
            else:
                samples.append(record)
        proc.wait(EXIT_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(EXIT_TIMEOUT_S)
        sel.close()
    return samples, done


# --- the figures -----------------------------------------------------------------------------
def slope(ts: Sequence[float], ys: Sequence[float]) -> Tuple[float, float]:
    """Least-squares slope of ys over ts and its standard error (NaN under 3 points)."""
    n = len(ts)
    if n < 3:
        return math.nan, math.nan
    mt, my = sum(ts) / n, sum(ys) / n
    sxx = sum((t - mt) ** 2 for t in ts)
    if sxx == 0:
        return math.nan, math.nan
    b = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / sxx
    residual = sum((y - my - b * (t - mt)) ** 2 for t, y in zip(ts, ys))
    return b, math.sqrt(residual / (n - 2) / sxx)


def trends(samples: Sequence[Dict[str, Any]], warmup_s: float) -> Dict[str, Dict[str, float]]:
    """Per figure: at the start, at the end of the warm-up, at the end, its range after the
    warm-up, and its slope per hour after the warm-up with that slope's standard error."""
    after = [s for s in samples if s["t_s"] >= warmup_s]
    out: Dict[str, Dict[str, float]] = {}
    for key, _label, _unit, _scale in FIGURES:
        if not samples or key not in samples[0]:     # heap_live_bytes: the live case's only
            continue
        ts = [s["t_s"] / 3600.0 for s in after]
        ys = [float(s[key]) for s in after]
        b, se = slope(ts, ys)
        out[key] = {"start": samples[0][key], "warm": after[0][key] if after else math.nan,
                    "end": samples[-1][key], "min_after": min(ys) if ys else math.nan,
                    "max_after": max(ys) if ys else math.nan, "slope_per_h": b, "slope_se_per_h": se,
                    "points": len(after)}
    return out


def _percentile(hist: Sequence[Tuple[int, int]], q: float) -> float:
    from coherence.sampler import lateness_percentile
    return lateness_percentile(hist, q)


def _minus(a: Sequence[Sequence[int]], b: Sequence[Sequence[int]]) -> List[Tuple[int, int]]:
    return [(int(x[0]), int(x[1]) - int(y[1])) for x, y in zip(a, b)]


def lateness(samples: Sequence[Dict[str, Any]], window_s: float = LATENESS_WINDOW_S) -> Dict[str, Dict[str, float]]:
    """Tick lateness (p50, p99, max bin) and overruns in the first and the last ``window_s``."""
    with_hist = [s for s in samples if "lateness_hist" in s]     # the child takes it only there
    if not with_hist:
        raise CaseError("no sample has the lateness histogram")
    first_end = next(s for s in with_hist if s["t_s"] >= window_s)
    end = samples[-1]
    last_start = [s for s in with_hist if s["t_s"] <= end["t_s"] - window_s][-1]
    zero = [(b[0], 0) for b in end["lateness_hist"]]
    out = {}
    for name, a, b in (("first", None, first_end), ("last", last_start, end)):
        hist = _minus(b["lateness_hist"], a["lateness_hist"] if a else zero)
        ticks = b["ticks"] - (a["ticks"] if a else 0)
        seconds = b["t_s"] - (a["t_s"] if a else 0.0)
        out[name] = {"from_s": a["t_s"] if a else 0.0, "to_s": b["t_s"], "ticks": ticks,
                     "achieved_hz": ticks / seconds if seconds > 0 else math.nan,
                     "overruns": b["overruns"] - (a["overruns"] if a else 0),
                     "p50_us": _percentile(hist, 0.50), "p99_us": _percentile(hist, 0.99),
                     "max_us": max((u for u, n in hist if n), default=math.nan)}
    return out


# --- the cases -------------------------------------------------------------------------------
def sim(hours: float = 24.0, every_s: float = 600.0, seed: int = 0, timeout_s: float = 600.0,
        warmup_s: float = SIM_WARMUP_S) -> Dict[str, Any]:
    """The simulated case: samples every ``every_s`` simulated seconds."""
    t0 = time.monotonic()
    samples, done = run_child([sys.executable, SIM_CHILD, repr(hours), repr(every_s), str(seed)], timeout_s)
    return {"case": "sim", "hours": hours, "every_s": every_s, "seed": seed, "warmup_s": warmup_s,
            "wall_s": time.monotonic() - t0, "samples": samples, "done": done,
            "trends": trends(samples, warmup_s)}


def _histograms(samples: Sequence[Dict[str, Any]], done: Dict[str, Any]) -> None:
    """The live child's raw lateness counts (base64 of native int64s, one per bin of
    done["lateness_bounds"]) as "lateness_hist": (upper bound in us, count) per non-empty bin."""
    bounds = done["lateness_bounds"]
    for sample in samples:
        raw = sample.pop("lateness_counts", None)
        if raw is not None:
            counts = array.array("q", base64.b64decode(raw))
            sample["lateness_hist"] = [(b, n) for b, n in zip(bounds, counts) if n]


def growth_sites(warm_path: str, end_path: str, top: int) -> Dict[str, Any]:
    """Between two tracemalloc snapshots: the whole traced heap's change, how many allocation
    sites (whole tracebacks) grew and shrank, the files whose blocks grew most, and the ``top``
    sites that grew most, with their growth in bytes and blocks."""
    warm, end = tracemalloc.Snapshot.load(warm_path), tracemalloc.Snapshot.load(end_path)
    stats = end.compare_to(warm, "traceback")
    grew = sorted((s for s in stats if s.size_diff > 0), key=lambda s: -s.size_diff)
    files = sorted((s for s in end.compare_to(warm, "filename") if s.size_diff), key=lambda s: -s.size_diff)
    return {"bytes": sum(s.size_diff for s in stats), "blocks": sum(s.count_diff for s in stats),
            "sites_grew": len(grew), "sites_shrank": sum(1 for s in stats if s.size_diff < 0),
            "grew_bytes": sum(s.size_diff for s in grew),
            "files": [{"file": s.traceback[0].filename if len(s.traceback) else "?",
                       "bytes": s.size_diff, "blocks": s.count_diff} for s in files[:top]],
            "sites": [{"bytes": s.size_diff, "blocks": s.count_diff,
                       "traceback": [f"{f.filename}:{f.lineno}" for f in s.traceback]}
                      for s in grew[:top]]}


def live(hz: float = 1000.0, seconds: float = 600.0, every_s: float = 10.0,
         warmup_s: float = LIVE_WARMUP_S, window_s: float = LATENESS_WINDOW_S,
         growth: int = 0) -> Dict[str, Any]:
    """The live case: samples every ``every_s`` seconds of wall time. A run shorter than three
    warm-ups or lateness windows uses a third of its length for each. ``growth``: also name
    that many sites whose heap grew most from the end of the warm-up to the end (whole
    tracebacks: tracemalloc then costs the sentinel more, so its lateness is not comparable)."""
    warmup_s, window_s = min(warmup_s, seconds / 3), min(window_s, seconds / 3)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="coherence-soak-") as snapshots:
        env = ({"SOAK_TRACE_FRAMES": str(GROWTH_FRAMES), "SOAK_SNAPSHOTS": snapshots,
                "SOAK_SNAPSHOT_AT": repr(warmup_s)} if growth else {})
        samples, done = run_child([sys.executable, LIVE_CHILD, repr(hz), repr(seconds), repr(every_s),
                                   repr(window_s)],
                                  timeout_s=max(60.0, 6 * every_s), env_extra=env)
        _histograms(samples, done)
        sites = (growth_sites(os.path.join(snapshots, "warm.bin"), os.path.join(snapshots, "end.bin"),
                              growth) if growth else {})
    return {"case": "live", "hz": hz, "seconds": seconds, "every_s": every_s, "warmup_s": warmup_s,
            "wall_s": time.monotonic() - t0, "samples": samples, "done": done,
            "window_s": window_s, "trends": trends(samples, warmup_s),
            "lateness": lateness(samples, window_s), "growth": sites,
            "loadavg_end": os.getloadavg()}


def machine() -> Dict[str, Any]:
    try:
        import coherence
        version = coherence.__version__
    except ImportError:
        version = "not importable"
    return {"cpu_model": cpu_model(), "nproc": len(os.sched_getaffinity(0)), "kernel": platform.release(),
            "python": platform.python_version(), "coherence": version, "loadavg_start": os.getloadavg()}


# --- the report ------------------------------------------------------------------------------
def _fmt(value: float, scale: float, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value / scale:.{digits}f}" if scale != 1 else f"{value:g}"


def trend_rows(result: Dict[str, Any], per: str) -> List[str]:
    rows = [f"| figure | start | after warm-up | end | slope per {per} (± s.e.) | t |",
            "|---|---:|---:|---:|---:|---:|"]
    for key, label, unit, scale in FIGURES:
        if key not in result["trends"]:
            continue
        t = result["trends"][key]
        unit_s = f" {unit}" if unit else ""
        b, se = t["slope_per_h"], t["slope_se_per_h"]
        ratio = b / se if se and se > 0 and not math.isnan(se) else (0.0 if b == 0 else math.nan)
        # memory slopes in KiB an hour: a leak worth seeing is a few KiB an hour
        slope_s = (f"{b / 1024:+.1f} KiB (± {se / 1024:.1f})" if not math.isnan(b) else "–")
        if scale == 1 and not math.isnan(b):
            slope_s = f"{b:+.2f} (± {se:.2f})" if se > 0 else f"{b:+.2f}"
        rows.append(f"| {label} | {_fmt(t['start'], scale)}{unit_s} | {_fmt(t['warm'], scale)}{unit_s} | "
                    f"{_fmt(t['end'], scale)}{unit_s} | {slope_s} | "
                    f"{'–' if math.isnan(ratio) else f'{ratio:+.1f}'} |")
    return rows


def report_text(result: Dict[str, Any]) -> str:
    m = result["machine"]
    out = [f"Machine: {m['cpu_model']}, {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']}, "
           f"coherence {m['coherence']}; load average at the start {m['loadavg_start'][0]:.2f}.", ""]
    s = result.get("sim")
    if s:
        d = s["done"]
        out += [f"### Simulated: {s['hours']:g} h of host time in {s['wall_s'] / 60:.1f} min "
                f"({d['reports']} reports, {d['state_changes']} state changes, "
                f"{d['json_bytes'] / 1e6:.0f} MB of JSON lines); slopes over the {s['trends']['heap_bytes']['points']} "
                f"samples after the first {s['warmup_s']:g} simulated s", ""]
        out += trend_rows(s, "simulated hour") + [""]
    live_ = result.get("live")
    if live_:
        out += [f"### Live: {live_['seconds']:g} s at --hz {live_['hz']:g}; slopes over the "
                f"{live_['trends']['heap_bytes']['points']} samples after the first {live_['warmup_s']:g} s", ""]
        out += trend_rows(live_, "hour") + [""]
        lat = live_["lateness"]
        out += ["| tick lateness | achieved Hz | p50 | p99 | worst bin | overruns |", "|---|---:|---:|---:|---:|---:|"]
        for name in ("first", "last"):
            x = lat[name]
            out.append(f"| {name} {live_['window_s']:g} s ({x['from_s']:.0f}–{x['to_s']:.0f} s) | "
                       f"{x['achieved_hz']:.1f} | {x['p50_us']:g} µs | {x['p99_us']:g} µs | "
                       f"{x['max_us']:g} µs | {x['overruns']} |")
        out += ["", f"Load average at the end: {live_['loadavg_end'][0]:.2f}."]
        g = live_.get("growth")
        if g:
            out += ["", f"Reachable heap from the first sample after {live_['warmup_s']:g} s to the end "
                        f"(tracemalloc snapshots): {g['bytes']:+d} bytes in {g['blocks']:+d} blocks; "
                        f"{g['sites_grew']} sites grew ({g['grew_bytes']:+d} bytes), "
                        f"{g['sites_shrank']} shrank. By file (where each block was allocated):"]
            out += [f"- {f['bytes']:+d} bytes in {f['blocks']:+d} blocks: {f['file']}" for f in g["files"]]
            out += ["", "The sites that grew most (innermost frame last):"]
            for site in g["sites"]:
                out += [f"- {site['bytes']:+d} bytes in {site['blocks']:+d} blocks"]
                out += [f"    {frame}" for frame in site["traceback"][-GROWTH_SHOWN:]]
    return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sim-hours", type=float, default=24.0, help="simulated hours (default 24)")
    p.add_argument("--sim-every", type=float, default=600.0, help="simulated seconds between samples")
    p.add_argument("--live-s", type=float, default=600.0, help="seconds of the live run (default 600)")
    p.add_argument("--live-every", type=float, default=10.0, help="seconds between live samples")
    p.add_argument("--hz", type=float, default=1000.0)
    p.add_argument("--cases", default=",".join(CASES), help="sim,live")
    p.add_argument("--growth", type=int, default=0, metavar="N",
                   help="live: also name the N allocation sites whose reachable heap grew most after "
                        "the warm-up (whole tracebacks: costs the sentinel more, lateness not comparable)")
    p.add_argument("--json", nargs="?", const="-", default=None, metavar="FILE",
                   help="also write the raw result as JSON (to FILE, or stdout)")
    args = p.parse_args(argv)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        p.error(f"unknown cases: {', '.join(sorted(unknown))}")
    result: Dict[str, Any] = {"machine": machine(), "argv": sys.argv if argv is None else list(argv)}
    if "sim" in cases:
        result["sim"] = sim(args.sim_hours, args.sim_every, timeout_s=max(600.0, 60 * args.sim_every))
    if "live" in cases:
        result["live"] = live(args.hz, args.live_s, args.live_every, growth=args.growth)
    print(report_text(result))
    if args.json:
        write_json(result, args.json, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
