"""The in-process request counters: exact totals from many threads, and the decorators."""
import asyncio
import inspect
import threading

import pytest

from coherence import AtomicCounter, hooks

THREADS = 8
CALLS = 5_000


def test_the_counters_are_process_wide_atomic_counters():
    assert isinstance(hooks.INGRESS, AtomicCounter) and isinstance(hooks.EGRESS, AtomicCounter)
    assert hooks.INGRESS is not hooks.EGRESS


def test_ingress_and_egress_add_to_their_own_counter():
    ingress, egress = hooks.INGRESS.value, hooks.EGRESS.value
    hooks.ingress()
    hooks.ingress(4)
    hooks.egress(n=2.5)
    assert hooks.INGRESS.value - ingress == 5.0
    assert hooks.EGRESS.value - egress == 2.5


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf")])
def test_a_count_that_is_not_finite_and_non_negative_is_refused(bad):
    before = hooks.INGRESS.value
    with pytest.raises(ValueError, match="finite and >= 0"):
        hooks.ingress(bad)
    assert hooks.INGRESS.value == before


def test_counts_from_many_threads_add_up_exactly():
    ingress, egress = hooks.INGRESS.value, hooks.EGRESS.value
    start = threading.Barrier(THREADS)

    def worker():
        start.wait()
        for _ in range(CALLS):
            hooks.ingress()
            hooks.egress(0.5)   # exactly representable: any lost update would show

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert hooks.INGRESS.value - ingress == THREADS * CALLS
    assert hooks.EGRESS.value - egress == THREADS * CALLS * 0.5


def test_counts_from_threads_without_the_gil_add_up_exactly(capi):
    # Python threads take turns under the GIL, so they cannot tell an atomic add from `+=`.
    # C threads that release it (as the StatsD listener's or a free-threaded interpreter's
    # would) add at the same instant on both cores: a lost update would show in the total.
    ingress = hooks.INGRESS.value
    adds, step = 2_000_000, 0.5                        # exactly representable sums
    start = threading.Barrier(THREADS)

    def c_worker():
        start.wait()
        capi.counter_add_loop(hooks.INGRESS, adds, step)

    def py_worker():
        start.wait()
        for _ in range(CALLS):
            hooks.ingress()

    threads = [threading.Thread(target=c_worker if k % 2 else py_worker) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    half = THREADS // 2
    assert hooks.INGRESS.value - ingress == half * adds * step + half * CALLS


def test_count_ingress_counts_each_call_and_keeps_the_handler_intact():
    @hooks.count_ingress
    def handle(request, *, verbose=False):
        """Serve one request."""
        return request * 2

    before = hooks.INGRESS.value
    assert handle(21) == 42 and handle(1, verbose=True) == 2
    assert hooks.INGRESS.value - before == 2
    assert handle.__name__ == "handle" and handle.__doc__ == "Serve one request."


def test_a_call_that_raises_still_counts():
    @hooks.count_egress
    def call_downstream():
        raise ConnectionError("refused")

    before = hooks.EGRESS.value
    for _ in range(3):   # a naive retry loop: every attempt is a call downstream
        with pytest.raises(ConnectionError):
            call_downstream()
    assert hooks.EGRESS.value - before == 3


def test_an_async_handler_stays_a_coroutine_function_and_counts_when_awaited():
    @hooks.count_ingress
    async def handle(request):
        await asyncio.sleep(0)
        return request

    assert inspect.iscoroutinefunction(handle)   # what Starlette and aiohttp look at
    before = hooks.INGRESS.value

    async def serve():
        return await asyncio.gather(*(handle(i) for i in range(5)))

    assert asyncio.run(serve()) == [0, 1, 2, 3, 4]
    assert hooks.INGRESS.value - before == 5


def test_watch_gc_counts_this_interpreters_collections_and_their_time():
    import gc

    watcher = hooks.watch_gc()
    try:
        assert hooks.watch_gc() is watcher                  # once per process
        before = watcher.read()
        for _ in range(3):
            gc.collect()
        after = watcher.read()
        assert after["gc_collections_total"] - before["gc_collections_total"] >= 3
        assert after["gc_seconds_total"] > before["gc_seconds_total"]
        assert watcher.collections[2] >= 3                  # gc.collect() is a full collection
        assert watcher.name.startswith("python ") and watcher.runtime == "python"
    finally:
        hooks.unwatch_gc()
    assert watcher._callback not in gc.callbacks
    total = watcher.collections_total
    gc.collect()
    assert watcher.collections_total == total               # no longer watched


def test_the_gc_watcher_is_a_runtime_source_the_poller_reads():
    import gc

    from coherence.runtime import RuntimeBoard, RuntimePoller
    board = RuntimeBoard()
    t = {"now": 0.0}
    poller = RuntimePoller(board, clock=lambda: t["now"])
    watcher = hooks.watch_gc()
    try:
        poller.add(watcher)
        for step in range(1, 9):
            gc.collect()
            t["now"] = step * 0.25
            poller.poll_once()
    finally:
        hooks.unwatch_gc()
    (p,) = board.snapshot()
    assert p.available and p.runtime == "python" and p.collections_per_s > 0
    assert 0.0 < p.gc_share < 1.0
