"""The evidence for "averages lie": the e2e fault cases repeated on real load, with the time
coherence took to call CRITICAL, the false CRITICALs of the controls, and when a classic
threshold alert (CPU > 80 %, used memory > 90 %, error rate > 5 %) fired, if ever.

Usage: python benchmarks/run_e2e.py [--repeats N] [--json FILE]   (always exits 0)
Each case starts its own `coherence --live --hz 1000 --json`; the cases run one at a time.
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
from typing import Any, Callable, Dict, List

E2E = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "e2e")
sys.path.insert(0, E2E)

import amplification  # noqa: E402
from _machine import cpu_model  # noqa: E402
import host  # noqa: E402
from harness import tmpdir  # noqa: E402


def machine() -> str:
    model = cpu_model()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model}; {len(os.sched_getaffinity(0))} CPUs; kernel {platform.release()}; "
            f"Python {platform.python_version()}; load average {load}")


def fault_cases(build: str) -> Dict[str, Callable[[], Any]]:
    return {
        "seizure": lambda: host.seizure_fault(build),
        "fever": lambda: host.fever_fault(build),
        "amplification (StatsD)": amplification.storm_via_statsd,
        "amplification (in-process)": amplification.storm_in_process,
    }


def control_cases(build: str) -> List[Callable[[], Any]]:
    return [lambda: host.seizure_controls(build), lambda: host.fever_controls(build),
            amplification.control_fanout3, amplification.control_one_to_one]


def _get(result: Any, *names: str) -> Any:
    for name in names:
        if hasattr(result, name):
            return getattr(result, name)
    return None


def fmt(x: Any) -> str:
    return "never" if x is None else f"{x:.1f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="runs of each fault case [3]")
    ap.add_argument("--json", metavar="FILE", help="also write the raw results as JSON")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    build = tmpdir()
    raw: Dict[str, Any] = {"machine": machine(), "faults": {}, "controls": []}
    try:
        faults: Dict[str, List[Any]] = {name: [] for name in fault_cases(build)}
        for i in range(args.repeats):
            for name, case in fault_cases(build).items():
                t = time.monotonic()
                try:
                    faults[name].append(case())
                except Exception as err:   # one broken run is a row, not the end of the table
                    print(f"  {name} run {i + 1}: error: {err}", file=sys.stderr)
                    continue
                print(f"  {name} run {i + 1}: CRITICAL after "
                      f"{fmt(_get(faults[name][-1], 'time_to_critical'))} "
                      f"({time.monotonic() - t:.0f} s)", file=sys.stderr)
        controls: List[Any] = []
        for case in control_cases(build):
            try:
                out = case()
            except Exception as err:
                print(f"  control: error: {err}", file=sys.stderr)
                continue
            controls += out if isinstance(out, list) else [out]
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        shutil.rmtree(build, ignore_errors=True)

    print(f"Machine: {raw['machine']}")
    print(f"Fault cases, {args.repeats} runs each (`coherence --live --hz 1000 --json`, defaults):\n")
    print("| fault | detector | CRITICAL after (median) | worst | runs in 10 s | CRITICAL before the fault | classic alert |")
    print("|---|---|---:|---:|---:|---:|---|")
    for name, results in faults.items():
        if not results:
            print(f"| {name} | | every run failed | | 0/{args.repeats} | | |")
            continue
        times = [_get(r, "time_to_critical") for r in results]
        got = [t for t in times if t is not None]
        within = sum(1 for t in got if t <= host.DEADLINE_S)
        early = sum(1 for r in results if _get(r, "critical_before_fault"))
        classic = [_get(r, "classic_alert_after") for r in results]
        kind = _get(results[0], "classic_alert") or ""
        classic_txt = ("never fired" if all(c is None for c in classic) else
                       f"after {statistics.median([c for c in classic if c is not None]):.1f} s"
                       f" ({sum(c is not None for c in classic)}/{len(classic)} runs)")
        print(f"| {name} | {_get(results[0], 'detector')} | "
              f"{fmt(statistics.median(got)) if got else 'never'} | "
              f"{fmt(max(got)) if len(got) == len(times) else 'missed'} | {within}/{len(times)} | "
              f"{early} | {kind}: {classic_txt} |")
        raw["faults"][name] = [dataclasses.asdict(r) for r in results]
    print("\n| control | detector | false CRITICAL | states seen | classic alert |")
    print("|---|---|---:|---|---|")
    for r in controls:
        states = sorted(set(_get(r, "states") or []))
        print(f"| {_get(r, 'case')} | {_get(r, 'detector')} | "
              f"{'yes' if _get(r, 'critical_in_control') else 'no'} | "
              f"{', '.join(states)} | {fmt(_get(r, 'classic_alert_after'))} |")
        raw["controls"].append(dataclasses.asdict(r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(raw, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
