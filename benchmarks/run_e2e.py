"""The evidence for "averages lie": the e2e fault cases repeated on real load, with the time
coherence took to call CRITICAL and its margin to the 10 s bar, whether the other detectors stayed
quiet, what each control showed against what it may show, and the classic node_exporter rules
(CPU busy > 80 %, MemAvailable < 10 %) and the service's 5xx rate, computed by the harness itself.

Usage: python benchmarks/run_e2e.py [--repeats N] [--control-repeats M] [--cases WORD,...]
                                   [--json FILE]
Every run is counted and printed, failed ones included with their reason; statistics are over
all runs. The cases run one at a time, each with the machine to itself. Always exits 0.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

E2E = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "e2e")
sys.path.insert(0, E2E)

import amplification  # noqa: E402
import host  # noqa: E402
import runtimes  # noqa: E402
from _machine import cpu_model  # noqa: E402
from harness import tmpdir  # noqa: E402


@dataclass
class Run:
    """One run of one case: its result, or why it failed (an exception is a failed run too)."""
    case: str
    detector: str
    index: int                       # 1-based
    result: Any = None
    error: str = ""                  # the exception, when the run raised
    violations: List[str] = field(default_factory=list)   # what it got wrong, when it ran

    @property
    def passed(self) -> bool:
        return not self.error and not self.violations

    def reason(self) -> str:
        return self.error or "; ".join(self.violations)


def machine() -> str:
    model = cpu_model()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model}; {len(os.sched_getaffinity(0))} CPUs; kernel {platform.release()}; "
            f"Python {platform.python_version()}; load average {load}")


def fault_cases(build: str) -> Dict[str, Tuple[str, Callable[[], Any]]]:
    """{fault: (detector, the function that runs it)}, in the order they run."""
    return {
        "seizure": ("seizure", lambda: host.seizure_fault(build)),
        "fever": ("fever", lambda: host.fever_fault(build)),
        "amplification (StatsD)": ("amplification", amplification.storm_via_statsd),
        "amplification (in-process)": ("amplification", amplification.storm_in_process),
        **{f"fever (JVM {c}, hsperfdata)": ("fever", lambda c=c: runtimes.jvm_spiral(build, c))
           for c in runtimes.JVM_COLLECTORS},
        "amplification (scraped, Micrometer names)": ("amplification", runtimes.storm_scraped),
        "fever (Go, --scrape)": ("fever", lambda: runtimes.go_spiral(build)),
    }


def forecast_cases(build: str) -> Dict[str, Tuple[str, Callable[[], Any]]]:
    """{case: (detector, the function that runs it)}: faults whose bar is a WARNING (a forecast
    never escalates)."""
    return {"fever forecast (a leak of 1/90 of free memory a second)":
            ("fever", lambda: host.fever_leak(build))}


def control_groups(build: str) -> List[Tuple[str, List[str], Callable[[], List[Any]]]]:
    """(detector, the controls' names, the function that runs them): a group runs several
    controls under one sentinel; its names are known beforehand, so that a group that raises
    still counts a failed run for each of them."""
    return [
        ("seizure", list(host.SEIZURE_CONTROLS), lambda: host.seizure_controls(build)),
        ("fever", list(host.FEVER_CONTROLS), lambda: host.fever_controls(build)),
        ("amplification", ["amplification control: steady fan-out x3"],
         lambda: [amplification.control_fanout3()]),
        ("amplification", ["amplification control: steady 1:1"],
         lambda: [amplification.control_one_to_one()]),
        *[("fever", [f"fever control: a healthy JVM allocating 1 GB/s ({c})"],
           lambda c=c: [runtimes.jvm_healthy(build, c)]) for c in runtimes.JVM_COLLECTORS],
        ("fever", ["fever control: a healthy Go program allocating 1 GB/s (--scrape)"],
         lambda: [runtimes.go_healthy(build)]),
        ("amplification", ["amplification control: steady fan-out x3, scraped"],
         lambda: [runtimes.control_fanout3_scraped()]),
    ]


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    where = traceback.extract_tb(err.__traceback__)[-1]
    return (f"{type(err).__name__}: {text[0] if text else ''} "
            f"({os.path.basename(where.filename)}:{where.lineno})")


def fault_violations(result: Any) -> List[str]:
    if isinstance(result, host.CaseResult) and result.forecast:
        return host.forecast_violations(result)
    if isinstance(result, runtimes.RuntimeResult):
        return runtimes.runtime_fault_violations(result)
    if isinstance(result, amplification.CaseResult) and result.counting == "scraped":
        return runtimes.scraped_storm_violations(result)
    if isinstance(result, amplification.CaseResult):
        return amplification.storm_violations(result)
    return host.fault_violations(result)


def chosen(name: str, cases: Optional[List[str]]) -> bool:
    """Whether a case is run: every case, or those whose name holds one of --cases' words."""
    return cases is None or any(word.lower() in name.lower() for word in cases)


def run_faults(build: str, repeats: int, cases: Optional[List[str]] = None,
               table: Callable[[str], Dict[str, Tuple[str, Callable[[], Any]]]] = fault_cases
               ) -> Dict[str, List[Run]]:
    chosen_cases = {n: c for n, c in table(build).items() if chosen(n, cases)}
    runs: Dict[str, List[Run]] = {name: [] for name in chosen_cases}
    for i in range(1, repeats + 1):
        for name, (detector, case) in chosen_cases.items():
            t = time.monotonic()
            run = Run(name, detector, i)
            try:
                run.result = case()
                run.violations = fault_violations(run.result)
            except Exception as err:   # a failed run is a counted row, not the end of the table
                run.error = _error(err)
            runs[name].append(run)
            ttc = None if run.result is None else run.result.time_to_critical
            if ttc is None and run.result is not None:      # a forecast: its WARNING
                ttc = run.result.notes.get("time_to_warning")
            print(f"  {name} run {i}: "
                  f"{f'ok, called after {ttc:.1f} s' if run.passed else 'FAILED: ' + run.reason()} "
                  f"({time.monotonic() - t:.0f} s)", file=sys.stderr, flush=True)
    return runs


def run_controls(build: str, repeats: int,
                 cases: Optional[List[str]] = None) -> Dict[str, List[Run]]:
    runs: Dict[str, List[Run]] = {}
    for i in range(1, repeats + 1):
        for detector, names, group in control_groups(build):
            if not any(chosen(name, cases) for name in names):
                continue
            t = time.monotonic()
            try:
                results = {r.case: r for r in group()}
                done = [Run(name, detector, i, result,
                            violations=host.control_violations(result))
                        for name, result in results.items()]
                done += [Run(name, detector, i, error="not run by its group") for name in names
                         if name not in results]
            except Exception as err:   # a failed group is a failed run of each of its controls
                done = [Run(name, detector, i, error=_error(err)) for name in names]
            for run in done:
                runs.setdefault(run.case, []).append(run)
                print(f"  {run.case} run {i}: {'ok' if run.passed else 'FAILED: ' + run.reason()}"
                      f" ({time.monotonic() - t:.0f} s for its group)", file=sys.stderr,
                      flush=True)
    return runs


def fmt(x: Optional[float]) -> str:
    return "never" if x is None else f"{x:.1f} s"


def _range(values: List[float], unit: str = " %", digits: int = 0) -> str:
    """The median, and the range when the runs differ: "51 % (49–53)"."""
    if not values:
        return "no value"
    lo, hi, mid = (f"{x:.{digits}f}" for x in (min(values), max(values), statistics.median(values)))
    return f"{mid}{unit}" if lo == hi else f"{mid}{unit} ({lo}–{hi})"


def classic_text(runs: List[Run]) -> str:
    """The classic rule beside the fault's detector, over the runs that produced a result."""
    results = [r.result for r in runs if r.result is not None]
    if not results:
        return "no run produced a value"
    first = results[0]
    if isinstance(first, amplification.CaseResult):
        after = [r.classic_alert_after for r in results]
        held = [a for a in after if a is not None]
        return (f"{first.classic_alert}: true after {_range(held, ' s', 1)} in {len(held)} of "
                f"{len(runs)} runs" if held else f"{first.classic_alert}: never true")
    readings = [r.classic_reading for r in results if r.classic_reading is not None]
    values = [c.value for c in readings if c.value is not None]
    held = sum(c.condition_held for c in readings)
    return (f"{readings[0].rule}: {_range(values)}; condition true in {held} of {len(runs)} runs"
            if readings else "no reading")


def print_faults(runs: Dict[str, List[Run]], raw: Dict[str, Any]) -> None:
    print("| fault | detector | CRITICAL within 10 s | median | worst | margin to 10 s | "
          "CRITICAL before the fault | others OK throughout | classic rule over the fault's 10 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for name, rs in runs.items():
        n = len(rs)
        times = [r.result.time_to_critical for r in rs if r.result is not None]
        got = [t for t in times if t is not None]
        within = sum(1 for r in rs if r.result is not None
                     and r.result.time_to_critical is not None
                     and r.result.time_to_critical <= host.DEADLINE_S)
        early = sum(1 for r in rs if r.result is not None and r.result.critical_before_fault)
        quiet = sum(1 for r in rs if r.result is not None and not host.other_violations(r.result))
        detector = rs[0].detector
        every = within == n
        worst = max(got) if got else None
        print(f"| {name} | {detector} | {within} of {n} | "
              f"{fmt(statistics.median(got)) if got else 'none'} | "
              f"{fmt(worst) if every else f'missed in {n - within}'} | "
              f"{f'{host.DEADLINE_S - worst:.1f} s' if every and worst is not None else 'none'} | "
              f"{early} of {n} | {quiet} of {n} | {classic_text(rs)} |")
        raw[name] = [_raw(r) for r in rs]
    times = [None if r.result is None else r.result.time_to_critical
             for rs in runs.values() for r in rs]
    total = len(times)
    passed = sum(r.passed for rs in runs.values() for r in rs)
    within = [t for t in times if t is not None and t <= host.DEADLINE_S]
    print(f"\n{passed} of {total} fault runs passed every bar; {len(within)} of {total} were "
          f"CRITICAL within {host.DEADLINE_S:g} s; margin to the bar over all {total}: "
          + (f"{host.DEADLINE_S - max(within):.1f} s (worst {max(within):.1f} s)"
             if len(within) == total else "none (a run missed it)"))


def print_forecasts(runs: Dict[str, List[Run]], raw: Dict[str, Any]) -> None:
    print(f"| fault | detector | WARNING within {host.FORECAST_DEADLINE_S:g} s | median | worst | "
          "CRITICAL ever | others OK throughout | forecast at the WARNING / free ÷ rate | "
          "leak rate | classic rule over the leak |")
    print("|---|---|---:|---:|---:|---:|---:|---|---|---|")
    for name, rs in runs.items():
        results = [r.result for r in rs if r.result is not None]
        n = len(rs)
        got = [r.notes["time_to_warning"] for r in results if "time_to_warning" in r.notes]
        within = sum(1 for t in got if t <= host.FORECAST_DEADLINE_S)
        critical = sum(1 for r in results if "CRITICAL" in r.states)
        quiet = sum(1 for r in results if not host.other_violations(r))
        ratios = [r.notes["eta_at_warning_s"] / (r.notes["free_mb"] / r.notes["rate_mb_s"])
                  for r in results if "eta_at_warning_s" in r.notes]
        rates = [r.notes["rate_mb_s"] for r in results]
        readings = [c for r in results for c in r.classic if c.rule.startswith("MemAvailable")]
        values = [c.value for c in readings if c.value is not None]
        held = sum(c.condition_held for c in readings)
        print(f"| {name} | {rs[0].detector} | {within} of {n} | "
              f"{fmt(statistics.median(got)) if got else 'none'} | "
              f"{fmt(max(got)) if got else 'none'} | {critical} of {n} | {quiet} of {n} | "
              f"{_range(ratios, unit='', digits=2)} | {_range(rates, unit=' MB/s')} | "
              f"{readings[0].rule if readings else ''}: {_range(values)}; condition true in "
              f"{held} of {n} |")
        raw[name] = [_raw(r) for r in rs]


def print_controls(runs: Dict[str, List[Run]], raw: Dict[str, Any]) -> None:
    print("| control | detector | showed no more than it may | may show | states seen | "
          "WARNING (longest) | classic rule over the control |")
    print("|---|---|---:|---|---|---:|---|")
    for name, rs in runs.items():
        results = [r.result for r in rs if r.result is not None]
        states = sorted({s for r in results for s in r.states})
        may = results[0].may_show if results else None
        may_text = "" if may is None else (
            "OK only" if may.warning_s == 0 else
            f"WARNING raised as {', '.join(may.warning_as)}"
            + ("" if may.warning_s == float("inf") else f", ≤ {may.warning_s:g} s"))
        longest = max((r.warning_s for r in results), default=0.0)
        classic = ""
        readings = [c for r in results for c in getattr(r, "classic", [])
                    if c.rule.startswith("CPU" if r.detector == "seizure" else "MemAvailable")]
        if readings:
            values = [c.value for c in readings if c.value is not None]
            held = sum(c.condition_held for c in readings)
            classic = f"{readings[0].rule}: {_range(values)}; condition true in {held} of {len(rs)}"
        elif results:
            classic = (f"{results[0].classic_alert}: true in "
                       f"{sum(r.classic_alert_after is not None for r in results)} of {len(rs)}")
        print(f"| {name} | {rs[0].detector} | "
              f"{sum(r.passed for r in rs)} of {len(rs)} | {may_text} | {', '.join(states)} | "
              f"{longest:.1f} s | {classic} |")
        raw[name] = [_raw(r) for r in rs]


def print_failures(runs: Dict[str, List[Run]]) -> None:
    failed = [r for rs in runs.values() for r in rs if not r.passed]
    for r in failed:
        print(f"- {r.case}, run {r.index}: {r.reason()}")
    if not failed:
        print("- none")


def _raw(run: Run) -> Dict[str, Any]:
    result = None
    if run.result is not None:
        result = dataclasses.asdict(run.result)
        result.pop("diagnostics", None)
    return {"run": run.index, "passed": run.passed, "error": run.error,
            "violations": run.violations, "result": result}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each fault case [3]")
    ap.add_argument("--control-repeats", type=int, default=1, help="runs of each control [1]")
    ap.add_argument("--cases", metavar="WORD,...", help="only the faults and control groups "
                    "whose name holds one of these words (e.g. JVM,scraped,Go)")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    args = ap.parse_args()
    if args.repeats < 1 or args.control_repeats < 0:
        ap.error("--repeats must be at least 1, --control-repeats at least 0")
    build = tmpdir()
    raw: Dict[str, Any] = {"machine": machine(), "faults": {}, "controls": {}}
    started = time.monotonic()
    try:
        cases = args.cases.split(",") if args.cases else None
        faults = run_faults(build, args.repeats, cases)
        forecasts = run_faults(build, args.repeats, cases, forecast_cases)
        controls = run_controls(build, args.control_repeats, cases)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(build, ignore_errors=True)

    print(f"Machine: {raw['machine']}")
    print(f"Wall time: {time.monotonic() - started:.0f} s\n")
    if faults:
        print(f"Fault cases, {args.repeats} runs each, one at a time "
              "(`coherence --live --hz 1000 --json`, defaults):\n")
        print_faults(faults, raw["faults"])
    if forecasts:
        print(f"\nForecasts, {args.repeats} runs each (a WARNING is the bar; it never "
              "escalates):\n")
        print_forecasts(forecasts, raw.setdefault("forecasts", {}))
    if controls:
        print(f"\nControls, {args.control_repeats} run(s) each:\n")
        print_controls(controls, raw["controls"])
    print("\nFailed runs:\n")
    print_failures({**faults, **forecasts, **controls})
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
