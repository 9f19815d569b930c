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
from typing import Any, Callable, TypeVar

from coherence._core import AtomicCounter

__all__ = ["EGRESS", "INGRESS", "count_egress", "count_ingress", "egress", "ingress"]

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
