"""coherence: a read-only sentinel that watches the variance of a host, not its averages.

The compiled core (ring buffers, windowed variance, smoothed rates, ratios) is re-exported
here; Cython code can cimport its C-level API from ``coherence._core`` (see get_include()).
"""
import os as _os

from coherence._core import (
    EwmaRate,
    RateSnapshot,
    RatioSnapshot,
    RatioWindow,
    RingBuffer,
    RollingSnapshot,
    RollingStats,
)

__version__ = "0.1.0"

__all__ = [
    "EwmaRate",
    "RateSnapshot",
    "RatioSnapshot",
    "RatioWindow",
    "RingBuffer",
    "RollingSnapshot",
    "RollingStats",
    "get_include",
    "__version__",
]


def get_include() -> str:
    """The directory to add to Cython's include path for ``from coherence._core cimport ...``.

    >>> import coherence, os
    >>> os.path.exists(os.path.join(coherence.get_include(), "coherence", "_core.pxd"))
    True
    """
    return _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
