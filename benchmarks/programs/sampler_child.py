"""The sampler case of benchmarks/run_sampler.py: coherence's Sampler with every source this host
has, run as its own process so that its CPU time can be measured alone.

Usage: python sampler_child.py HZ SLOW_HZ MAX_SECONDS WARMUP_SECONDS [SCRAPE_URL]
With SCRAPE_URL, the runtime poller runs beside the sampler, as `coherence live` runs it: every
JVM on the host discovered, and SCRAPE_URL scraped, at Config's runtime_hz.
Prints "ready" after WARMUP_SECONDS of ticking, stops on SIGTERM/SIGINT (or after MAX_SECONDS,
should its parent vanish), then prints one JSON line of the sampler's own figures.
"""
import json
import signal
import sys
import time

HZ, SLOW_HZ, MAX_S, WARMUP = (float(a) for a in sys.argv[1:5])
SCRAPE = sys.argv[5:6]
# Block SIGTERM before the sampler's thread exists (it inherits the mask), then wait for it
# here: the main thread sleeps in sigtimedwait, as an embedding service's idle thread would.
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
from coherence.sampler import Sampler  # noqa: E402 - after the mask, before the thread

s = Sampler(hz=HZ, slow_hz=SLOW_HZ).start()
poller = None
if SCRAPE:
    from coherence.config import Config
    from coherence.runtime import RuntimePoller
    from coherence.sources.jvm import jvm_runtimes
    from coherence.sources.scrape import ScrapeRuntime, ScrapeTarget
    poller = RuntimePoller(s.signals.runtime, rate_hz=Config().sampler.runtime_hz)
    poller.watch(lambda: jvm_runtimes()[0])
    poller.add(ScrapeRuntime(ScrapeTarget(SCRAPE[0])))
    poller.start()
time.sleep(WARMUP)
print("ready", flush=True)
signal.sigtimedwait({signal.SIGTERM, signal.SIGINT}, MAX_S)
runtime = None
if poller is not None:
    runtime = {"tid": poller._thread.native_id, "rounds": poller.rounds, "skipped": poller.skipped,
               "sources": [(p.name, p.available, p.reason) for p in s.signals.runtime.snapshot()]}
    poller.stop()
st = s.stats()
hist = s.engine.lateness_histogram()
files = s.engine.file_stats()
paths = [r.path for c in s.chosen.values() if c.source is not None for r in c.source.readers]
s.stop()
print(json.dumps({
    "ticks": st.ticks, "ticks_expected": st.ticks_expected, "overruns": st.overruns,
    "elapsed_s": st.elapsed_s, "lateness_hist": hist,
    "sampler_stats": st.__dict__,
    "sources": {f: (c.source.name if c.source is not None else None) for f, c in s.chosen.items()},
    "files": [dict(path=p, **f) for p, f in zip(paths, files)] if len(paths) == len(files) else files,
    # slow_hz: the rate asked for; slow_hz_read: hz / a whole number of ticks, as really read
    "hz": s.hz, "slow_hz": s.slow_hz, "slow_hz_read": s.signals.slow_hz,
    "ncpu": s.ncpu, "notes": s.notes, "runtime": runtime, "tick_tid": s._thread.native_id,
}), flush=True)
