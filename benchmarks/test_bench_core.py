"""Cost of the compiled core's updates beside a floor and peers, one group per operation.

Read the ratios inside a group, not absolute times (shared, noisy VM). No timing is asserted.
Loops of N updates are named "xN" and carry extra_info["updates"]: divide by N for per-op.
"""
import pytest

import _capi_bench as capi   # built into a temp dir by conftest.py
import _cases as cases

# pytest-benchmark sizes its rounds from the first call; a cold first call of a ~0.1-1 us
# function makes it pick 1 iteration per round, and the timer's own cost then inflates the row.
WARM_CALLS = 200


@pytest.mark.benchmark(group="push (per value, from Python)")
@pytest.mark.parametrize("name", list(cases.PUSH))
def test_push(benchmark, name):
    push = cases.PUSH[name](capi)
    for _ in range(WARM_CALLS):
        push(cases.X)
    benchmark(push, cases.X)


@pytest.mark.benchmark(group="push_many 1e6")
@pytest.mark.parametrize("name", list(cases.PUSH_MANY))
def test_push_many(benchmark, name):
    benchmark.extra_info["updates"] = cases.ARRAY.size
    benchmark(cases.PUSH_MANY[name](capi))


@pytest.mark.benchmark(group="EwmaRate.update")
@pytest.mark.parametrize("name", list(cases.EWMA), ids=lambda k: f"{k}-x{cases.N_UPDATES}")
def test_ewma_update(benchmark, name):
    benchmark.extra_info["updates"] = cases.N_UPDATES
    benchmark(cases.EWMA[name](capi))


@pytest.mark.benchmark(group="RatioWindow.update")
@pytest.mark.parametrize("name", list(cases.RATIO), ids=lambda k: f"{k}-x{cases.N_UPDATES}")
def test_ratio_update(benchmark, name):
    benchmark.extra_info["updates"] = cases.N_UPDATES
    benchmark(cases.RATIO[name](capi))
