"""coherence: a read-only sentinel that watches the variance of a host, not its averages.

The compiled core (ring buffers, windowed variance, smoothed rates, ratios) is re-exported
here; Cython code can cimport its C-level API from ``coherence._core`` (see get_include()).
"""
import os as _os

try:
    from coherence._core import (
        AtomicCounter,
        EwmaRate,
        RateSnapshot,
        RatioSnapshot,
        RatioWindow,
        RingBuffer,
        RollingSnapshot,
        RollingStats,
    )
except ModuleNotFoundError as err:  # pragma: no cover - depends on how it was installed
    if err.name != "coherence._core":
        raise
    raise ImportError(
        f"coherence's compiled core is not built in {_os.path.dirname(__file__)}: install the "
        "package with `pip install .` and import it from there (from a source checkout, run "
        "`pytest`, not `python -m pytest`, which puts the source tree first on sys.path)"
    ) from err

__version__ = "0.1.0"

__all__ = [
    "AtomicCounter",
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
    """The directory to add to Cython's include path for ``from coherence._core cimport ...``,
    and to the C compiler's (``include_dirs``) for the header ``coherence/coh_atomic.h``.

    >>> import coherence, os
    >>> os.path.exists(os.path.join(coherence.get_include(), "coherence", "_core.pxd"))
    True
    """
    return _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
