"""Record the e2e suite's real faults and a control with `coherence record --json` for the fast
replay tests (tests/test_replay_fixtures.py): each case writes tests/fixtures/recordings/
<case>.jsonl.gz (the recording), <case>.live.jsonl.gz (the JSON lines coherence printed live
while recording) and <case>.json (when the load started, in the recording's seconds).

    flock /tmp/coh-machine.lock python tests/e2e/record_fixtures.py [CASE ...]

Run it on a quiet machine: the seizure cases watch the whole host.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
import time
from typing import Dict, List, Optional, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import COHERENCE, Load, Sentinel, compile_c, tmpdir  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "fixtures", "recordings")
QUIET_S = 6.0          # judged seconds before the load, as the e2e fault cases watch
LOAD_S = 16.0          # the load runs this long (CRITICAL is due within 10 s)
AFTER_S = 2.0

# case -> (detector, the load (tests/e2e/loads/<name>.c), its arguments): as tests/e2e/host.py
CASES: Dict[str, Tuple[str, str, List[str]]] = {
    "seizure_fault": ("seizure", "cpuload", ["flip", "1000", "30"]),
    "seizure_control_steady": ("seizure", "cpuload", ["steady", "0", "30"]),
    "fever_fault": ("fever", "churn", ["churn", "64", "30"]),
}


def record(case: str, build: str) -> None:
    detector, program, args = CASES[case]
    load_cmd = [compile_c(program, build), *args]
    path = os.path.join(OUT, case + ".jsonl.gz")
    cmd = [COHERENCE, "record", "-o", path, "--json", "--hz", "1000", "--duration", "60"]
    with Sentinel(cmd=cmd) as sentinel:
        judged = sentinel.warmed_up(detector, timeout=30).received
        sentinel.wait_for(lambda l: l.received >= judged + QUIET_S, timeout=QUIET_S + 3)
        with Load(*load_cmd) as load:
            sentinel.wait_for(lambda l: l.received >= load.started + LOAD_S, timeout=LOAD_S + 3)
            started = load.started
        sentinel.wait_for(lambda l: l.received >= started + LOAD_S + AFTER_S, timeout=AFTER_S + 3)
        assert sentinel.proc is not None
        sentinel.proc.terminate()          # SIGTERM: the recorder closes its file
        sentinel.proc.wait(10)
        lines = list(sentinel.lines)
    # the load's start in the recording's seconds: a line's elapsed_s, less the time between
    # the load starting and that line arriving
    first = next(l for l in lines if l.received >= started)
    fault_at = first.report["elapsed_s"] - (first.received - started)
    with gzip.open(os.path.join(OUT, case + ".live.jsonl.gz"), "wt") as f:
        for line in lines:
            f.write(json.dumps(line.report) + "\n")
    meta = {"case": case, "detector": detector, "load": " ".join([program, *args]),
            "load_started_s": round(fault_at, 3), "load_s": LOAD_S,
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(os.path.join(OUT, case + ".json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{case}: {len(lines)} lines, load at {fault_at:.2f} s, "
          f"{os.path.getsize(path) / 1e3:.0f} kB", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    cases = (argv if argv is not None else sys.argv[1:]) or list(CASES)
    os.makedirs(OUT, exist_ok=True)
    build = tmpdir()
    for case in cases:
        record(case, build)
    return 0


if __name__ == "__main__":
    sys.exit(main())
