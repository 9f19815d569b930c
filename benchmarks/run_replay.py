"""How fast `coherence replay` goes, as a multiple of real time: the recorded seconds replayed per
second of wall time, for each committed recording (tests/fixtures/recordings) and for a long
recording made by concatenating one of them, through the same code the command runs (read,
decode, accumulators, detectors, verdicts, a JSON-lines sink into /dev/null), best of --repeats.
The figure README quotes. Take the machine for it: flock /tmp/coh-machine.lock.

Usage: python benchmarks/run_replay.py [--repeats 5] [--minutes 30] [--json FILE]
"""
import argparse
import json
import os
import sys
import tempfile
import time
from typing import Dict, List

from coherence.recording import (Chunk, End, Recording, encode_chunk, end_record,
                                 open_for_writing, write_record)
from coherence.replay import play, replay_config
from coherence.sinks.jsonl import JsonLinesSink

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures", "recordings")


def shifted(chunk: Chunk, by: float) -> Chunk:
    """The chunk ``by`` seconds later (a long recording made of copies of a short one)."""
    series = {name: ([t + by for t in times], values)
              for name, (times, values) in chunk.series.items()}
    return Chunk(chunk.end_s + by, tuple(t + by for t in chunk.steps), series, (),
                 tuple((t + by, i, v, r) for t, i, v, r in chunk.runtime), (), chunk.gaps)


def long_recording(source: str, minutes: float, path: str) -> None:
    """Copies of ``source`` one after the other, counters made to keep growing."""
    rec = Recording(source)
    chunks = [r for r in rec.records() if isinstance(r, Chunk)]
    span = chunks[-1].end_s
    stream = open_for_writing(path)
    write_record(stream, rec.header.as_json())
    offset, copies = 0.0, 0
    last: Dict[str, float] = {}
    while offset < minutes * 60:
        base: Dict[str, float] = {}
        for chunk in chunks:
            moved = shifted(chunk, offset)
            series = {}
            for name, (times, values) in moved.series.items():
                if name.endswith("_total"):       # counters keep growing across copies
                    if name not in base:
                        base[name] = last.get(name, 0.0) - values[0] if copies else 0.0
                    values = [v + base[name] for v in values]
                    last[name] = values[-1]
                series[name] = (times, values)
            write_record(stream, encode_chunk(Chunk(moved.end_s, moved.steps, series)))
        offset += span + 1.0
        copies += 1
    write_record(stream, end_record(End(offset, "duration", 0)))
    stream.close()


def measure(path: str, repeats: int) -> Dict[str, float]:
    best = float("inf")
    duration = 0.0
    steps = 0
    with open(os.devnull, "w") as devnull:
        for _ in range(repeats):
            t0 = time.perf_counter()
            rec = Recording(path)
            config = replay_config(rec.header)
            sink = JsonLinesSink.from_config(config, devnull)
            result = play(rec.header, rec.records(), config, on_report=sink.emit, source=path)
            best = min(best, time.perf_counter() - t0)
            duration, steps = result.duration_s, len(result.steps)
    return {"recorded_s": duration, "wall_s": best, "x_real_time": duration / best,
            "steps": steps, "bytes": os.path.getsize(path)}


def main(argv: List[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args(argv)
    rows = {}
    for name in sorted(os.listdir(FIXTURES)):
        if name.endswith(".jsonl.gz") and not name.endswith(".live.jsonl.gz"):
            rows[name] = measure(os.path.join(FIXTURES, name), args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "long.jsonl.gz")
        long_recording(os.path.join(FIXTURES, "seizure_fault.jsonl.gz"), args.minutes, path)
        rows[f"{args.minutes:g} min (seizure_fault repeated)"] = measure(path, max(1, args.repeats // 2))
    width = max(len(n) for n in rows)
    print(f"{'recording':<{width}}  {'recorded':>9}  {'replayed in':>11}  {'x real time':>11}  "
          f"{'size':>8}  {'per hour':>9}")
    for name, r in rows.items():
        per_hour = r["bytes"] / r["recorded_s"] * 3600 / 1e6
        print(f"{name:<{width}}  {r['recorded_s']:>8.1f}s  {r['wall_s']:>10.3f}s  "
              f"{r['x_real_time']:>10.0f}x  {r['bytes'] / 1e3:>6.0f}kB  {per_hour:>6.2f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
