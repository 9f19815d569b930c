"""The sentinel of benchmarks/run_exporter.py: what `coherence serve` runs (sampler, runtime
poller, monitor, the Prometheus exporter on 127.0.0.1:PORT), as its own process, measuring
itself over the interval its parent measures.

Usage: python exporter_child.py HZ PORT MAX_SECONDS WARMUP_SECONDS
Prints "ready" once WARMUP_SECONDS of reports have gone by, and takes its first snapshot then;
on SIGTERM (or after MAX_SECONDS, should its parent vanish) takes the second and prints one JSON
line: the deltas between the two.

CPU: the whole process's (getrusage RUSAGE_SELF: every thread, those that have exited too,
which is where the exporter's per-connection threads go) and each long-lived thread's
(/proc/self/task/<tid>/schedstat). What the exporter costs is the process's CPU less that of
the threads that are not the exporter's (the sampler, the runtime poller, the main thread): the
accept thread and every connection's thread, the creation of those threads included.
"""
import json
import os
import resource
import sys
import threading
import time
import urllib.request

HZ, PORT, MAX_S, WARMUP = float(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])

from coherence import hooks  # noqa: E402
from coherence.config import Config, SamplerConfig  # noqa: E402
from coherence.sentinel import Sentinel, Stop, stop_signals  # noqa: E402
from coherence.sinks.prometheus import PrometheusSink  # noqa: E402


def thread_ns():
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/schedstat", "rb") as f:
                out[int(tid)] = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return out


def snapshot(sentinel, sink):
    ru = resource.getrusage(resource.RUSAGE_SELF)
    stats = sentinel.sampler.stats()
    return {
        "t": time.monotonic(),
        "process_s": ru.ru_utime + ru.ru_stime,
        "threads_ns": thread_ns(),
        "hist": dict(sentinel.sampler.engine.lateness_histogram()),
        "ticks": stats.ticks, "overruns": stats.overruns,
        "http": sink.server.figures(),
    }


def main():
    config = Config(sampler=SamplerConfig(hz=HZ)).validate()
    sink = PrometheusSink(("127.0.0.1", PORT))
    sentinel = Sentinel.from_config(config, sinks=[sink])
    sink.watch(sentinel.sampler, sentinel.listener, sentinel.runtime, (hooks.INGRESS, hooks.EGRESS))
    marks: dict = {}
    start = time.monotonic()

    def warm_up():
        # a Prometheus has scraped a running sentinel long before: the first scrape's imports
        # (the encoders, gzip) are not part of what a scrape costs
        for accept in ("application/openmetrics-text;version=1.0.0", "text/plain;version=0.0.4"):
            req = urllib.request.Request(sink.url + "/metrics",
                                         headers={"Accept": accept, "Accept-Encoding": "gzip"})
            with urllib.request.urlopen(req, timeout=10) as resp:
                resp.read()

    def on_report(report):
        if "warm" not in marks:
            marks["warm"] = True
            threading.Thread(target=warm_up, daemon=True).start()
        if "first" not in marks and time.monotonic() - start >= WARMUP:
            marks["first"] = snapshot(sentinel, sink)
            print("ready", flush=True)
        if time.monotonic() - start > MAX_S:
            raise Stop()

    with stop_signals(), sentinel:
        try:
            sentinel.run(None, on_report=on_report)
        except (Stop, KeyboardInterrupt):
            pass
        last = snapshot(sentinel, sink)
        poller = sentinel.runtime._thread if sentinel.runtime is not None else None
        assert sentinel.sampler._thread is not None and sink.server._thread is not None
        ids = {"sampler": sentinel.sampler._thread.native_id,
               "runtime": poller.native_id if poller is not None else None,
               "main": threading.main_thread().native_id,
               "accept": sink.server._thread.native_id}
    first = marks["first"]
    wall = last["t"] - first["t"]
    threads = {tid: ns - first["threads_ns"][tid] for tid, ns in last["threads_ns"].items()
               if tid in first["threads_ns"]}
    not_exporter = sum(ns for tid, ns in threads.items() if tid != ids["accept"]) / 1e9
    hist = {int(u): n - first["hist"].get(u, 0) for u, n in last["hist"].items()}
    http0, http1 = first["http"], last["http"]
    served = sum(n for (path, code), n in http1["requests"].items() if path == "/metrics") - \
        sum(n for (path, code), n in http0["requests"].items() if path == "/metrics")
    print(json.dumps({
        "wall_s": wall,
        "process_cpu_s": last["process_s"] - first["process_s"],
        "exporter_cpu_s": last["process_s"] - first["process_s"] - not_exporter,
        "http_threads_cpu_s": http1["cpu_s"] - http0["cpu_s"],
        "sampler_cpu_s": threads.get(ids["sampler"], 0) / 1e9,
        "main_cpu_s": threads.get(ids["main"], 0) / 1e9,
        "runtime_cpu_s": threads.get(ids["runtime"], 0) / 1e9 if ids["runtime"] else 0.0,
        "accept_cpu_s": threads.get(ids["accept"], 0) / 1e9,
        "ticks": last["ticks"] - first["ticks"], "overruns": last["overruns"] - first["overruns"],
        "lateness_hist": sorted((u, n) for u, n in hist.items() if n > 0),
        "scrapes_served": served, "hz": HZ,
        "bad_requests": {k: v - http0["bad"].get(k, 0) for k, v in http1["bad"].items() if v},
    }), flush=True)


if __name__ == "__main__":
    main()
