"""Request counters for a Python service that embeds the sentinel: the amplification detector's input.

Count every request received with ``ingress()`` and every call made downstream (each retry
included: that is what amplification measures) with ``egress()``. Each is one C call on a
process-wide ``AtomicCounter``: no lock, no Python frame, safe from any thread.

>>> from coherence import hooks
>>> before = hooks.INGRESS.value
>>> hooks.ingress()            # a request arrived
>>> hooks.egress(3)            # it made three calls downstream
>>> hooks.INGRESS.value - before
1.0

Or decorate the handler and the downstream call; put ``@count_egress`` under any retry
decorator so that every attempt counts::

    @hooks.count_ingress
    def handle(request): ...

    @retry(stop=stop_after_attempt(3))
    @hooks.count_egress
    def call_inventory(item): ...
"""
from __future__ import annotations

import functools
import inspect
import time
from typing import Any, Callable, Dict, Optional, TypeVar

from coherence._core import AtomicCounter

__all__ = ["EGRESS", "INGRESS", "PythonGC", "count_egress", "count_ingress", "egress", "ingress",
           "unwatch_gc", "watch_gc"]

# The totals the sampler reads (it takes deltas) and the StatsD listener feeds by default.
# Add to them; never rebind them: ingress() and egress() are bound to these objects.
INGRESS = AtomicCounter()
EGRESS = AtomicCounter()

# Bound methods rather than ``def`` wrappers: the call goes straight to C. Both take
# ``n=1.0`` (finite, >= 0) and raise ValueError otherwise.
ingress = INGRESS.add
egress = EGRESS.add

_F = TypeVar("_F", bound=Callable[..., Any])


def _counting(counter: AtomicCounter, what: str) -> Callable[[_F], _F]:
    def decorate(func: _F) -> _F:
        add = counter.add
        # A coroutine function gets a coroutine wrapper, so frameworks that inspect the
        # handler (Starlette, aiohttp) still see an ``async def``; it counts when awaited.
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def counted_async(*args: Any, **kwargs: Any) -> Any:
                add()
                return await func(*args, **kwargs)
            return counted_async  # type: ignore[return-value]

        @functools.wraps(func)
        def counted(*args: Any, **kwargs: Any) -> Any:
            add()
            return func(*args, **kwargs)
        return counted  # type: ignore[return-value]

    decorate.__name__ = decorate.__qualname__ = f"count_{what}"
    decorate.__doc__ = (f"Decorator: add 1 to {what.upper()} on each call of the function, "
                        "before it runs (a call that raises still counts).")
    return decorate


count_ingress = _counting(INGRESS, "ingress")
count_egress = _counting(EGRESS, "egress")


# --- garbage collection of this interpreter ---------------------------------------------------
class PythonGC:
    """This interpreter's garbage collections, watched through ``gc.callbacks``: collections
    and seconds spent, in total and per generation. A runtime source (coherence.runtime) for a
    service that embeds the sentinel; ``watch_gc()`` makes the process-wide one.

    >>> watcher = watch_gc()
    >>> import gc; _ = gc.collect()
    >>> watcher.collections_total >= 1
    True
    """

    runtime = "python"

    def __init__(self) -> None:
        import os
        self.pid: Optional[int] = os.getpid()
        self.name = f"python {self.pid}"
        self.collections = [0, 0, 0]           # per generation
        self.seconds = [0.0, 0.0, 0.0]
        # Written only by the callback, which runs with the GIL held, one collection at a time;
        # no lock: one taken here could be wanted again by a collection its own allocation starts.
        self._started: Optional[float] = None

    def _callback(self, phase: str, info: Dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        started, self._started = self._started, None
        generation = min(max(int(info.get("generation", 0)), 0), 2)
        self.collections[generation] += 1
        if started is not None:
            self.seconds[generation] += time.perf_counter() - started

    @property
    def collections_total(self) -> int:
        return sum(self.collections)

    def read(self) -> Dict[str, float]:
        """gc_collections_total and gc_seconds_total (coherence.sources' runtime counters)."""
        from coherence.sources import GC_COLLECTIONS, GC_SECONDS
        return {GC_COLLECTIONS: float(sum(self.collections)), GC_SECONDS: sum(self.seconds)}

    def close(self) -> None:
        pass                                   # the watch goes on; unwatch_gc() ends it


_GC: Optional[PythonGC] = None


def watch_gc() -> PythonGC:
    """Start watching this interpreter's collections (once per process); the watcher."""
    global _GC
    if _GC is None:
        import gc
        _GC = PythonGC()
        gc.callbacks.append(_GC._callback)
    return _GC


def unwatch_gc() -> None:
    """Stop watching (the totals so far are kept by the watcher returned before)."""
    global _GC
    if _GC is not None:
        import gc
        if _GC._callback in gc.callbacks:
            gc.callbacks.remove(_GC._callback)
        _GC = None
