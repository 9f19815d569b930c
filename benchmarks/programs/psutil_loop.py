"""The psutil peer of benchmarks/run_sampler.py: what an SRE would write with psutil to read what
the sampler reads, on the sampler's schedule, run as its own process.

Usage: python psutil_loop.py HZ SLOW_EVERY MAX_SECONDS WARMUP_SECONDS
Every tick (HZ a second, absolute deadlines on the monotonic clock) calls psutil.cpu_percent();
every SLOW_EVERY ticks it calls virtual_memory() and, on another tick, net_io_counters(), as the
sampler spreads its slow sources over different ticks (SLOW_EVERY 1: everything every tick).
A tick that runs past its deadline skips to the next one (counted), as the sampler's does.
Prints "ready" after WARMUP_SECONDS, stops on SIGTERM/SIGINT (or after MAX_SECONDS), then prints
one JSON line of its figures. time.sleep() keeps the default timer slack (50 us).
"""
import json
import signal
import sys
import time

import psutil

HZ, MAX_S, WARMUP = float(sys.argv[1]), float(sys.argv[3]), float(sys.argv[4])
SLOW_EVERY = int(sys.argv[2])
# The sampler reads memory on tick % every == 1 and requests two quarter-periods later
# (coherence.sampler.Sampler._wire); with every == 1 both phases are 0: every tick.
MEM_PHASE = 1 % SLOW_EVERY
NET_PHASE = (1 + 2 * max(1, SLOW_EVERY // 4)) % SLOW_EVERY
LAT_LINEAR, LAT_LOG = 2048, 24                      # the sampler's lateness bins

stop = False


def on_signal(*_):
    global stop
    stop = True


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
hist = [0] * (LAT_LINEAR + LAT_LOG)


def record(us):
    if us < LAT_LINEAR:
        hist[us] += 1
        return
    us //= LAT_LINEAR
    b = 0
    while us > 1 and b < LAT_LOG - 1:
        us >>= 1
        b += 1
    hist[LAT_LINEAR + b] += 1


period = int(1e9 / HZ + 0.5)
psutil.cpu_percent()                                 # prime: the next call is since this one
ticks = overruns = slow_reads = 0
start = last = deadline = time.monotonic_ns()
end, ready_at, ready = start + int(MAX_S * 1e9), start + int(WARMUP * 1e9), False
while not stop:
    psutil.cpu_percent()
    phase = ticks % SLOW_EVERY
    if phase == MEM_PHASE:
        psutil.virtual_memory()
        slow_reads += 1
    if phase == NET_PHASE:
        psutil.net_io_counters()
    ticks += 1
    deadline += period
    now = time.monotonic_ns()
    if now >= deadline:
        skipped = (now - deadline) // period + 1
        overruns += skipped
        deadline += skipped * period
    if not ready and now >= ready_at:
        ready = True
        print("ready", flush=True)
    if now >= end:
        break
    time.sleep(max(0, deadline - time.monotonic_ns()) / 1e9)
    now = time.monotonic_ns()
    record(max(0, (now - deadline) // 1000))
    last = now
elapsed = (last - start) / 1e9
try:
    with open("/proc/self/timerslack_ns") as f:
        slack = int(f.read())
except (OSError, ValueError):
    slack = None
out = [[i + 1 if i < LAT_LINEAR else LAT_LINEAR << (i - LAT_LINEAR + 1), n]
       for i, n in enumerate(hist) if n]
print(json.dumps({"ticks": ticks, "ticks_expected": int(elapsed * HZ) + 1, "overruns": overruns,
                  "elapsed_s": elapsed, "lateness_hist": out, "psutil": psutil.__version__,
                  "slow_every": SLOW_EVERY, "slow_reads": slow_reads,
                  "slow_hz_read": slow_reads / elapsed if elapsed > 0 else None,
                  "timer_slack_ns": slack}), flush=True)
