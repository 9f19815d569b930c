"""The live sentinel: a sampler, an optional StatsD listener, the monitor that judges what the
sampler reads, and the sinks that show it, started and stopped together and run on one clock.

    with Sentinel.from_config(config, sinks=[JsonLinesSink(sys.stdout)]) as sentinel:
        sentinel.run(duration=60)        # judge 4 times a second; every report to every sink
"""
from __future__ import annotations

import contextlib
import signal
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from coherence import hooks
from coherence._core import AtomicCounter
from coherence.config import Config
from coherence.monitor import Monitor, Report, sampler_figures
from coherence.runtime import RuntimePoller, RuntimeSource
from coherence.sampler import Sampler
from coherence.sinks.base import Sink, opened
from coherence.sources.jvm import JvmDiscovery, JvmFilesWatch
from coherence.sources.scrape import scrape_runtimes
from coherence.statsd import StatsdListener

EVAL_PERIOD_S = 0.25        # detectors judge 4 times a second; sinks decide what to show


class Stop(Exception):
    """SIGTERM: leave like Ctrl-C."""


class _Stopping:
    """A stop signal (SIGINT or SIGTERM) caught while a run loop polls for it: the loop raises
    it at its next step, where nothing is half done, instead of the signal handler raising it
    wherever the main thread happens to be (inside a lock's `with`, a sink's redraw, a
    collection's stop: an exception there can leave a lock held or a thread unjoined)."""
    signum: Optional[int] = None
    polling = 0          # run loops polling now


def _raise_for(signum: int) -> None:
    raise Stop() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_stop_signal(signum: int, frame: Any) -> None:
    # A second signal before the loop took the first raises at once: the loop may be blocked
    # (a write to a pipe nobody reads), and Ctrl-C twice must still stop it.
    if _Stopping.polling and _Stopping.signum is None:
        _Stopping.signum = signum
    else:
        _Stopping.signum = None
        _raise_for(signum)


def raise_if_stopped() -> None:
    """Raise what a stop signal caught by stop_signals() asked for (Stop for SIGTERM,
    KeyboardInterrupt for SIGINT), if one came; a run loop's safe point."""
    signum, _Stopping.signum = _Stopping.signum, None
    if signum is not None:
        _raise_for(signum)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """SIGTERM and SIGINT (Ctrl-C) stop the block: Stop and KeyboardInterrupt, raised by
    Sentinel.run at its next step while it runs (within EVAL_PERIOD_S), at once elsewhere or
    at a second signal. The previous handlers are restored after it."""
    previous = {sig: signal.signal(sig, _on_stop_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _Stopping.signum = None


class Sentinel:
    """sampler -> monitor -> sinks. ``with`` starts the listener, the sampler and the sinks (the
    dashboard's terminal) and stops them all, in reverse order, however the block is left."""

    def __init__(self, sampler: Sampler, monitor: Monitor, sinks: Sequence[Sink] = (),
                 listener: Optional[StatsdListener] = None,
                 runtime: Optional[RuntimePoller] = None) -> None:
        self.sampler, self.monitor, self.listener = sampler, monitor, listener
        self.runtime = runtime
        self.sinks: List[Sink] = list(sinks)
        self._stack: Optional[contextlib.ExitStack] = None
        self._emit: Callable[[Report], None] = lambda report: None

    @classmethod
    def from_config(cls, config: Config, *, pid: Optional[int] = None,
                    statsd: Optional[Tuple[str, int]] = None, statsd_prefix: str = "coherence",
                    sinks: Sequence[Sink] = (), runtimes: Sequence[RuntimeSource] = (),
                    counters: Optional[Tuple[AtomicCounter, AtomicCounter]] = None) -> "Sentinel":
        """The sentinel the settings describe, watching ``pid`` (None: the host or container),
        listening for StatsD counters on ``statsd`` (host, port) if given, reading every JVM
        found, every scrape target of the settings and ``runtimes`` (for a service embedding
        the sentinel: ``[coherence.hooks.watch_gc()]``, its own interpreter's collections).
        ``counters`` are the (ingress, egress) request counters pushed to; default: the
        process-wide ones of coherence.hooks, which the StatsD listener feeds too."""
        ingress, egress = counters if counters is not None else (hooks.INGRESS, hooks.EGRESS)
        listener = None
        if statsd is not None:
            listener = StatsdListener(host=statsd[0], port=statsd[1], prefix=statsd_prefix,
                                      ingress=ingress, egress=egress)
        try:
            sampler = Sampler.from_config(config, pid=pid, ingress=ingress, egress=egress)
        except BaseException:
            if listener is not None:
                listener.stop()
            raise
        # runtimes' own counters, off the tick: every JVM on the host (only pid's with it)
        runtime = RuntimePoller(sampler.signals.runtime, rate_hz=config.sampler.runtime_hz)
        # at once when a JVM sharing our /tmp starts; every 10 s for those in containers
        runtime.watch(JvmDiscovery(pid), changed=JvmFilesWatch())
        for source in [*scrape_runtimes(config), *runtimes]:
            runtime.add(source)
        return cls(sampler, Monitor(config, sampler.snapshot, sampler_figures(sampler, listener)),
                   sinks, listener, runtime)

    def __enter__(self) -> "Sentinel":
        with contextlib.ExitStack() as stack:
            if self.listener is not None:
                stack.enter_context(self.listener)
            stack.enter_context(self.sampler)
            if self.runtime is not None:
                stack.enter_context(self.runtime)
            self._emit = stack.enter_context(opened(self.sinks))
            self._stack = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            stack.__exit__(*exc)

    def run(self, duration: Optional[float] = None,
            on_report: Optional[Callable[[Report], Any]] = None) -> Report:
        """Judge every EVAL_PERIOD_S until ``duration`` seconds have passed (None: until
        interrupted); every report goes to the sinks, then to ``on_report``. The last report.
        Under stop_signals(), a SIGINT or SIGTERM is raised here, between two steps."""
        start = time.monotonic()
        next_step = start
        _Stopping.polling += 1
        try:
            while True:
                raise_if_stopped()
                now = time.monotonic()
                report = self.monitor.step(now, time.time())
                self._emit(report)
                if on_report is not None:
                    on_report(report)
                if duration is not None and now - start >= duration:
                    return report
                next_step += EVAL_PERIOD_S
                end = start + duration if duration is not None else next_step
                time.sleep(max(0.0, min(next_step, end) - time.monotonic()))
        finally:
            _Stopping.polling -= 1
