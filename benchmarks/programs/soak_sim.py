"""The simulated case of benchmarks/run_soak.py: HOURS of simulated host time through the real
detectors and verdict engine (coherence.simulate.play), as fast as it goes; each report also
serialised as its JSON line (coherence.sinks.jsonl), then dropped.

Usage: python soak_sim.py HOURS EVERY_S [SEED]
The timeline is the demo's story (healthy, seizure, fever, retry storm, cascade, leak, recovery;
350 s) played back to back until HOURS are over: an incident about every minute, the verdict
engine's states, cascades and flapping kept all along. Prints one JSON sample every EVERY_S of
simulated time (soak_probe.sample, with "t_s" simulated and "wall_s"), then {"done": ...}.
"""
import sys

import soak_probe

soak_probe.start()

import json  # noqa: E402 - after tracemalloc, so that everything below is traced
import time  # noqa: E402

from coherence import simulate  # noqa: E402
from coherence.config import Config  # noqa: E402
from coherence.sinks.jsonl import report_json  # noqa: E402


def day(hours: float):
    """The story, back to back, for ``hours``."""
    story = simulate.phases("story")
    length = story[-1].end_s
    phases, offset = [], 0.0
    while offset < hours * 3600:
        phases += [simulate.Phase(p.name, offset + p.start_s, p.duration_s, p.faults, p.collapse)
                   for p in story]
        offset += length
    return phases


def main() -> None:
    hours, every = float(sys.argv[1]), float(sys.argv[2])
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    config = Config().validate()
    timeline = day(hours)
    wall0 = time.monotonic()
    due, reports, written, changes = 0.0, 0, 0, 0
    for report, _alerts in simulate.play(config, timeline, seed):
        written += len(json.dumps(report_json(report), allow_nan=False, separators=(",", ":")))
        reports += 1
        changes += report.verdict.changed
        t = report.verdict.now
        if t >= due:
            soak_probe.emit(soak_probe.sample(t_s=t, wall_s=time.monotonic() - wall0, reports=reports))
            due += every
    soak_probe.emit({"done": True, "reports": reports, "json_bytes": written, "state_changes": changes,
                     "simulated_s": timeline[-1].end_s, "wall_s": time.monotonic() - wall0})


if __name__ == "__main__":
    main()
