"""The live case of benchmarks/run_soak.py: the sentinel `coherence live --json --hz HZ` wires
(sampler, runtime poller, monitor, JSON lines, here to /dev/null) for SECONDS on this host.

Usage: python soak_live.py HZ SECONDS EVERY_S [WINDOW_S]
Prints one JSON sample every EVERY_S (soak_probe.sample, with "t_s", the sampler's ticks and
overruns), then {"done": ...}. The samples that bound the first and the last WINDOW_S (default
60) also carry the sampler's cumulative lateness histogram, taken after the heap and resident
memory are, as every bin's count in one base64 string ("lateness_counts"; "done" has the bins'
bounds): lateness_histogram()'s list of a pair per microsecond bin ever hit (214 at 60 s, 450
at 600 s) grew, and the figures counted its growth as the sentinel's. With SOAK_SNAPSHOTS=DIR
and SOAK_SNAPSHOT_AT=S, also dumps tracemalloc's snapshot to DIR/warm.bin at the first sample
from S seconds on and to DIR/end.bin at the last (run_soak.py --growth).
"""
import sys

import soak_probe

soak_probe.start()

import base64  # noqa: E402 - after tracemalloc, so that everything below is traced
import math  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

from coherence.config import Config  # noqa: E402
from coherence.sentinel import Sentinel  # noqa: E402
from coherence.sinks.jsonl import JsonLinesSink  # noqa: E402


def main() -> None:
    hz, seconds, every = (float(a) for a in sys.argv[1:4])
    window = float(sys.argv[4]) if len(sys.argv) > 4 else 60.0
    first_taken = [False]
    config = Config().with_overrides({"sampler.hz": hz})
    with open(os.devnull, "w") as devnull:
        sentinel = Sentinel.from_config(config, sinks=[JsonLinesSink.from_config(config, devnull)])
        snapshots = os.environ.get("SOAK_SNAPSHOTS")
        snapshot_at = [float(os.environ.get("SOAK_SNAPSHOT_AT", "0"))]
        start = time.monotonic()
        due = [0.0]
        reports = [0]

        def probe(report: object, last: bool = False) -> None:
            reports[0] += not last
            t = time.monotonic() - start
            if t < due[0] and not last:
                return
            due[0] += every
            s = sentinel.sampler.stats()
            record = soak_probe.sample(collect=True, t_s=t, ticks=s.ticks, overruns=s.overruns,
                                       reports=reports[0])
            # the end of the first window, the start of the last (and the sample before it,
            # should this one's clock run a little late), the end
            first = t >= window and not first_taken[0]
            if first or last or seconds - window - 2 * every < t <= seconds - window:
                first_taken[0] = first_taken[0] or first
                # every bin's count as one string (lateness_bounds() in "done" gives the bins)
                record["lateness_counts"] = base64.b64encode(
                    sentinel.sampler.engine.lateness_counts()).decode("ascii")
            soak_probe.emit(record)
            if snapshots and (last or t >= snapshot_at[0]):
                soak_probe.snapshot(os.path.join(snapshots, "end.bin" if last else "warm.bin"))
                snapshot_at[0] = math.inf

        with sentinel:
            sentinel.run(seconds, on_report=probe)
            probe(None, last=True)
    soak_probe.emit({"done": True, "reports": reports[0], "hz": hz,
                     "lateness_bounds": sentinel.sampler.engine.lateness_bounds(),
                     "sources": {f: (c.source.name if c.source else None)
                                 for f, c in sentinel.sampler.chosen.items()}})


if __name__ == "__main__":
    main()
