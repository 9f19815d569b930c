"""How figures read to a person, shared by the evidence lines and every sink: numbers to three
significant figures, limits as configured, spans of time as said aloud, clocks, UTC stamps."""
from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Optional

MISSING = "–"               # a figure with no value (yet)


def finite(x: Any) -> Optional[float]:
    """``x`` as a finite float, or None (None, NaN, inf, a bool or not a number)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def num(x: Any, missing: str = MISSING) -> str:
    """Three significant figures or so: 512, 31.2, 1.02."""
    f = finite(x)
    if f is None:
        return missing
    if abs(f) >= 100:
        return f"{f:.0f}"
    if abs(f) >= 10:
        return f"{f:.1f}"
    return f"{f:.2f}"


def setting(x: Any, missing: str = MISSING) -> str:
    """A limit as configured: 20, 512, 1.3 (a computed one as a measured value)."""
    f = finite(x)
    if f is not None and f == round(f, 1) and abs(f) < 1e6:
        return f"{f:.1f}".rstrip("0").rstrip(".")
    return num(x, missing)


def duration(seconds: float) -> str:
    """A span of time as a person says it: 45 s, 12 min, 3.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def clock(seconds: float) -> str:
    """Elapsed time as H:MM:SS."""
    s = int(max(0.0, seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def utc(ts: float) -> str:
    """Unix seconds as an ISO 8601 UTC stamp to the second."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
