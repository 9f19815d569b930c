"""What the soak children of benchmarks/run_soak.py measure of themselves, one sample at a time:
resident memory, the Python heap (tracemalloc, started before anything else is imported),
open file descriptors and threads."""
from __future__ import annotations

import gc
import json
import os
import sys
import threading
import tracemalloc
from typing import Any, Dict

TRACE_FRAMES = 1            # the least tracemalloc costs: where each block was allocated


def start() -> None:
    """Trace from here on: TRACE_FRAMES frames a block, or SOAK_TRACE_FRAMES (run_soak.py's
    --growth asks for whole tracebacks, to name where the heap grew)."""
    tracemalloc.start(int(os.environ.get("SOAK_TRACE_FRAMES", TRACE_FRAMES)))


def snapshot(path: str) -> None:
    """Dump tracemalloc's snapshot to path (after a full collection: what is reachable)."""
    gc.collect()
    snap = tracemalloc.take_snapshot()
    snap.dump(path)
    del snap
    gc.collect()


def resident_bytes() -> int:
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return -1


def open_fds() -> int:
    """Descriptors open now, less the listing's own; the least of three listings, so that a
    file another thread has open for a few microseconds (a /proc read) is not counted."""
    return min(len(os.listdir("/proc/self/fd")) for _ in range(3)) - 1


def sample(collect: bool = False, **extra: Any) -> Dict[str, Any]:
    """The figures now, with ``extra`` (the time, the sampler's figures). Resident memory comes
    twice: as the kernel counts it, and less tracemalloc's own tables ("rss_untraced_bytes"),
    which double in one step (2 MiB at 100 000-odd blocks traced) when the number of blocks
    crosses a power of two: the probe's cost, not the sentinel's. ``collect``: then
    a full collection, and the heap again ("heap_live_bytes"): what is reachable. tracemalloc
    counts the blocks CPython keeps in its free lists (tuples, lists, dicts, floats kept for
    reuse) as traced; only a full collection, which a quiet process rarely makes, clears them."""
    rss, tables = resident_bytes(), tracemalloc.get_tracemalloc_memory()
    out = {**extra, "rss_bytes": rss, "rss_untraced_bytes": rss - tables,
           "heap_bytes": tracemalloc.get_traced_memory()[0],
           "fds": open_fds(),
           "threads": threading.active_count(), "os_threads": len(os.listdir("/proc/self/task"))}
    if collect:
        gc.collect()
        out["heap_live_bytes"] = tracemalloc.get_traced_memory()[0]
    return out


def emit(record: Dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()
