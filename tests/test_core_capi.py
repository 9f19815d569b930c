"""The C-level API (.pxd) as another Cython module uses it: cimport, update without the GIL."""
import math

import numpy as np
import pytest

from coherence import EwmaRate, RatioWindow, RollingStats


def test_cimporting_module_updates_rolling_stats_like_python(capi):
    x = np.random.default_rng(0).normal(size=10_000)
    x[::97] = np.nan
    via_c, via_py = RollingStats(64), RollingStats(64)
    assert capi.rolling_push_loop(via_c, x) == np.isfinite(x).sum()
    via_py.push_many(x)
    assert via_c.snapshot() == via_py.snapshot()
    assert via_c.rejected == via_py.rejected == np.isnan(x).sum()
    count, total, mean, var = capi.rolling_read_c(via_c)
    assert (count, total, mean, var) == tuple(via_py.snapshot())


def test_cimporting_module_updates_ewma_and_ratio(capi):
    e = EwmaRate(1.0)
    assert capi.ewma_linear_loop(e, 100, 0.01, 5.0) == 0
    assert e.rate == pytest.approx(500.0, rel=1e-12) and e.samples == 100
    # the C-level API reports a bad time as a code, not an exception
    assert capi.ewma_linear_loop(e, 1, 0.01, 5.0) == -1
    r = RatioWindow(10)
    assert capi.ratio_constant_loop(r, 25, 2.0, 1.0) == 0
    assert (r.ratio(), r.count, r.total) == (2.0, 10, 25)
    assert capi.ratio_constant_loop(r, 1, -1.0, 1.0) == -1
    assert capi.ratio_constant_loop(r, 1, math.nan, 1.0) == 2 and r.rejected == 1
