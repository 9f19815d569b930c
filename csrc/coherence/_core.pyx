# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""coherence's compiled core: ring buffer, windowed variance, smoothed rates and ratios.

Every update is O(1) and allocates nothing; the kernels live in _core.pxd so that other
Cython code (the sampler) runs them without the GIL. Readers never lock: see the latch there.
"""
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memset
from libc.stdint cimport int64_t, uint64_t
from libc.math cimport NAN, sqrt
from libc.float cimport DBL_MAX

from typing import NamedTuple
import operator

import numpy as np

# push_many publishes a snapshot to readers every PUBLISH_CHUNK values (~0.5 us of work): a
# reader is never further behind than that, and assembling the snapshot (~30 ns) costs under
# a tenth of the pushes it follows.
cdef Py_ssize_t PUBLISH_CHUNK = 64

# The latch copies what it publishes a word at a time (coh_atomic.h): whole 8-byte words only.
if (sizeof(rolling_snapshot_t) % 8 or sizeof(ewma_snapshot_t) % 8
        or sizeof(ratio_snapshot_t) % 8):
    raise ImportError("coherence._core: a published struct is not a whole number of 8-byte words")


class RollingSnapshot(NamedTuple):
    """One consistent reading of a RollingStats: all four fields are of the same update."""
    count: int
    total: int
    mean: float
    var: float


class RateSnapshot(NamedTuple):
    """One consistent reading of an EwmaRate."""
    time: float
    rate: float
    rate_var: float
    samples: int


class RatioSnapshot(NamedTuple):
    """One consistent reading of a RatioWindow."""
    numerator: float
    denominator: float
    ratio: float
    count: int
    total: int


cdef Py_ssize_t _positive_size(object value, str name) except -1:
    """A window or capacity argument: an integer of at least 1, else TypeError/ValueError."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        n = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if n < 1:
        raise ValueError(f"{name} must be at least 1, got {n}")
    if n > (1 << 40):
        raise ValueError(f"{name} must be at most 2**40, got {n}")
    return n


cdef double _positive_seconds(object value, str name) except -1.0:
    cdef double v
    try:
        v = value
    except TypeError:
        raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}") from None
    if not (v > 0.0 and v - v == 0.0):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return v


cdef int _concurrent_writer() except -1:
    raise RuntimeError("RollingStats: another thread is in push_many; one writer at a time")


cdef Py_ssize_t _ddof(object ddof) except -1:
    if isinstance(ddof, bool):
        raise TypeError("ddof must be an integer, got bool")
    d = operator.index(ddof)
    if d < 0:
        raise ValueError(f"ddof must be at least 0, got {d}")
    return d


# --------------------------------------------------------------------------------------
cdef class RingBuffer:
    """Fixed-capacity ring of float64 values; the oldest value is overwritten when full.

    >>> r = RingBuffer(3)
    >>> for x in (1, 2, 3, 4): r.push(x)
    >>> r.to_array()
    array([2., 3., 4.])
    """

    def __cinit__(self, capacity):
        cdef Py_ssize_t n = _positive_size(capacity, "capacity")
        memset(&self.state, 0, sizeof(ring_t))
        self.state.data = <double *>calloc(n, sizeof(double))
        if self.state.data == NULL:
            raise MemoryError(f"cannot allocate a RingBuffer of capacity {n}")
        self.state.capacity = n

    def __dealloc__(self):
        free(self.state.data)
        self.state.data = NULL

    @property
    def capacity(self) -> int:
        return self.state.capacity

    @property
    def total(self) -> int:
        """Values pushed since construction, including those overwritten since."""
        return coh_load_i64(&self.state.total)

    def push(self, double x):
        """Append x (any float, NaN included: the ring stores, it does not judge)."""
        ring_push(&self.state, x)

    def __len__(self):
        return ring_len(&self.state)

    def last(self) -> float:
        """The newest value; IndexError when empty."""
        cdef uint64_t s
        cdef double v
        cdef int64_t total
        cdef Py_ssize_t head
        while True:
            s = coh_read_begin(&self.state.seq)
            total = coh_load_i64(&self.state.total)
            head = coh_load_ssize(&self.state.head)
            v = coh_load_double(&self.state.data[(head if head > 0 else self.state.capacity) - 1])
            if not coh_read_retry(&self.state.seq, s):
                break
        if total == 0:
            raise IndexError("last() of an empty RingBuffer")
        return v

    def to_array(self):
        """A numpy copy of the values, oldest to newest."""
        return self._copy()[0]

    def snapshot(self):
        """``(to_array(), total)`` from the same moment: the values, and how many were ever
        pushed when they were the ring's (a reader folding new values by count needs both)."""
        return self._copy()

    cdef tuple _copy(self):
        cdef Py_ssize_t n, head, cap = self.state.capacity, first
        cdef uint64_t s
        cdef int64_t total
        out = np.empty(cap, dtype=np.float64)
        cdef double[::1] dst = out
        while True:
            s = coh_read_begin(&self.state.seq)
            total = coh_load_i64(&self.state.total)
            n = <Py_ssize_t>total if total < cap else cap
            head = coh_load_ssize(&self.state.head)
            first = head - n if head >= n else head - n + cap
            if first + n <= cap:
                coh_words_load(&dst[0], &self.state.data[first], n * sizeof(double))
            else:
                coh_words_load(&dst[0], &self.state.data[first], (cap - first) * sizeof(double))
                coh_words_load(&dst[cap - first], &self.state.data[0],
                               (n - (cap - first)) * sizeof(double))
            if not coh_read_retry(&self.state.seq, s):
                break
        return (out[:n].copy() if n < cap else out), total

    def __repr__(self):
        return f"RingBuffer(capacity={self.state.capacity}, len={len(self)})"


# --------------------------------------------------------------------------------------
cdef int rolling_init(rolling_t *r, Py_ssize_t window) except -1:
    cdef Py_ssize_t block = window // 2 if window >= 2 else 1, k
    memset(r, 0, sizeof(rolling_t))
    r.window = window
    r.block = block
    r.values = <double *>calloc(window, sizeof(double))
    r.inv = <double *>malloc((block + 1) * sizeof(double))
    r.suffix = <moments_t *>calloc(2 * block, sizeof(moments_t))
    if r.values == NULL or r.inv == NULL or r.suffix == NULL:
        rolling_free(r)
        raise MemoryError(f"cannot allocate a RollingStats of window {window}")
    r.inv[0] = 0.0
    for k in range(1, block + 1):
        r.inv[k] = 1.0 / <double>k
    rolling_publish(r)
    return 0


cdef void rolling_free(rolling_t *r) noexcept:
    free(r.values)
    free(r.inv)
    free(r.suffix)
    r.values = NULL
    r.inv = NULL
    r.suffix = NULL


cdef class RollingStats:
    """Mean, variance and standard deviation of the last `window` values.

    Every push is O(1) in the worst case and allocates nothing; NaN and +-inf are refused
    and counted in `rejected`. One writer at a time; readers from any thread, without a lock
    (they read the snapshot the writer published last).

    >>> s = RollingStats(window=4)
    >>> s.push_many([1.0, 2.0, 3.0, 4.0, 5.0])
    5
    >>> s.mean, s.var(), s.count
    (3.5, 1.25, 4)
    """

    def __cinit__(self, window):
        rolling_init(&self.state, _positive_size(window, "window"))
        self._writing = False

    def __dealloc__(self):
        rolling_free(&self.state)

    @property
    def window(self) -> int:
        return self.state.window

    @property
    def count(self) -> int:
        """Values in the window: min(total, window)."""
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return snap.count

    @property
    def total(self) -> int:
        """Values accepted since construction or reset()."""
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return snap.total

    @property
    def rejected(self) -> int:
        """NaN and +-inf values refused since construction or reset()."""
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return snap.rejected

    def push(self, double x) -> bool:
        """Add x to the window, evicting the oldest value when full. False if x was refused."""
        if self._writing:
            _concurrent_writer()
        return rolling_push(&self.state, x)

    def push_many(self, values) -> int:
        """Push every value of a 1-d array-like, in order, without the GIL. Returns how many
        were accepted (the rest were NaN or +-inf, counted in `rejected`)."""
        cdef const double[::1] buf
        cdef Py_ssize_t i = 0, end, n, accepted = 0
        cdef rolling_t *r = &self.state
        cdef double x
        if self._writing:
            _concurrent_writer()
        arr = np.ascontiguousarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"push_many needs a 1-d array, got {arr.ndim} dimensions")
        buf = arr
        n = buf.shape[0]
        self._writing = True
        try:
            with nogil:
                while i < n:
                    end = i + PUBLISH_CHUNK if n - i > PUBLISH_CHUNK else n
                    while i < end:
                        x = buf[i]
                        if is_finite(x):
                            rolling_step(r, x)
                            accepted += 1
                        else:
                            r.rejected += 1
                        i += 1
                    rolling_publish(r)
        finally:
            self._writing = False
        return accepted

    @property
    def mean(self) -> float:
        """Mean of the window; NaN when empty."""
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return snap.mean

    def var(self, ddof=0) -> float:
        """Variance of the window with divisor count - ddof (0: population); NaN if that is <= 0."""
        cdef Py_ssize_t d = _ddof(ddof)
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return snapshot_var(&snap, d)

    def std(self, ddof=0) -> float:
        """Standard deviation of the window: sqrt(var(ddof))."""
        cdef Py_ssize_t d = _ddof(ddof)
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return sqrt(snapshot_var(&snap, d))

    def snapshot(self, ddof=0) -> RollingSnapshot:
        """count, total, mean and var(ddof), all from the same update, without a lock."""
        cdef Py_ssize_t d = _ddof(ddof)
        cdef rolling_snapshot_t snap
        rolling_read(&self.state, &snap)
        return RollingSnapshot(snap.count, snap.total, snap.mean, snapshot_var(&snap, d))

    def reset(self) -> None:
        """Empty the window and zero the counters (total, rejected)."""
        cdef rolling_t *r = &self.state
        if self._writing:
            _concurrent_writer()
        r.head = 0
        r.pos = 0
        r.pass_left = 0
        r.nblocks = 0
        r.total = 0
        r.rejected = 0
        r.prefix.n = 0
        rolling_publish(r)

    def __repr__(self):
        s = self.snapshot()
        return f"RollingStats(window={self.state.window}, count={s.count}, mean={s.mean!r}, var={s.var!r})"


# --------------------------------------------------------------------------------------
cdef class EwmaRate:
    """Smoothed per-second rate of a counter sampled at irregular times.

    The weight of a new interval of dt seconds is alpha = 1 - 2**(-dt / half_life): after
    `half_life` seconds an old rate counts for half. A value lower than the previous one is a
    counter reset (process restart, wrap): the increase is counted from zero, as Prometheus'
    rate() does.

    >>> r = EwmaRate(half_life=1.0)
    >>> r.update(0.0, 100)
    nan
    >>> r.update(0.5, 150)
    100.0
    """

    def __cinit__(self, half_life):
        memset(&self.state, 0, sizeof(ewma_t))
        self.state.half_life = _positive_seconds(half_life, "half_life")
        self.state.rate = NAN
        self.state.var = NAN
        ewma_publish(&self.state)

    @property
    def half_life(self) -> float:
        return self.state.half_life

    def update(self, double t, double value) -> float:
        """Take the counter's value at time t (seconds, increasing); return the smoothed rate
        (NaN after the first sample). NaN or +-inf values are counted in `rejected` and ignored;
        a time that is not after the previous one raises ValueError."""
        cdef int rc = ewma_update(&self.state, t, value)
        if rc == EWMA_BAD_TIME:
            raise ValueError(
                f"EwmaRate.update: time must be finite and increase, got t={t!r} "
                f"after t={self.state.t_last!r}")
        return self.state.rate if self.state.samples > 1 else NAN

    @property
    def rate(self) -> float:
        """Smoothed rate per second; NaN before two samples."""
        cdef ewma_snapshot_t snap
        ewma_read(&self.state, &snap)
        return snap.rate

    @property
    def rate_var(self) -> float:
        """Exponentially weighted variance of the per-interval rate."""
        cdef ewma_snapshot_t snap
        ewma_read(&self.state, &snap)
        return snap.var

    @property
    def rate_std(self) -> float:
        cdef ewma_snapshot_t snap
        ewma_read(&self.state, &snap)
        return sqrt(snap.var)

    @property
    def samples(self) -> int:
        cdef ewma_snapshot_t snap
        ewma_read(&self.state, &snap)
        return snap.samples

    @property
    def resets(self) -> int:
        """Times the counter went down and was counted from zero."""
        return coh_load_i64(&self.state.resets)

    @property
    def rejected(self) -> int:
        """NaN or +-inf values, and intervals whose rate overflowed, refused since construction."""
        return coh_load_i64(&self.state.rejected)

    def snapshot(self) -> RateSnapshot:
        """time, rate, rate_var and samples, all from the same update, without a lock."""
        cdef ewma_snapshot_t snap
        ewma_read(&self.state, &snap)
        return RateSnapshot(snap.t, snap.rate, snap.var, snap.samples)

    def __repr__(self):
        return f"EwmaRate(half_life={self.state.half_life!r}, rate={self.rate!r})"


# --------------------------------------------------------------------------------------
cdef class RatioWindow:
    """Sliding sums of two streams of deltas over the last `window` updates, and their ratio.

    For egress/ingress amplification: `update(egress_delta, ingress_delta)` once per interval;
    `ratio()` is NaN while the ingress sum is under `min_denominator` (too little traffic to
    judge).

    >>> w = RatioWindow(window=3, min_denominator=1)
    >>> for e, i in ((2, 1), (3, 1), (4, 2)): w.update(e, i)
    >>> w.ratio()
    2.25
    """

    def __cinit__(self, window, min_denominator=1.0):
        cdef Py_ssize_t n = _positive_size(window, "window")
        cdef double m
        try:
            m = min_denominator
        except TypeError:
            raise TypeError(f"min_denominator must be a number, got {type(min_denominator).__name__}") from None
        if not (m >= 0.0 and m - m == 0.0):
            raise ValueError(f"min_denominator must be a finite number >= 0, got {min_denominator!r}")
        memset(&self.state, 0, sizeof(ratio_t))
        self.state.window = n
        self.state.block = n // 2 if n >= 2 else 1
        self.state.num_ring = <double *>calloc(n, sizeof(double))
        self.state.den_ring = <double *>calloc(n, sizeof(double))
        self.state.suffix = <pair_sum_t *>calloc(2 * self.state.block, sizeof(pair_sum_t))
        if self.state.num_ring == NULL or self.state.den_ring == NULL or self.state.suffix == NULL:
            self._free()
            raise MemoryError(f"cannot allocate a RatioWindow of window {n}")
        self.state.min_denominator = m
        self.state.max_delta = DBL_MAX / (2.0 * <double>n)
        ratio_publish(&self.state)

    def __dealloc__(self):
        self._free()

    cdef void _free(self) noexcept:
        free(self.state.num_ring)
        free(self.state.den_ring)
        free(self.state.suffix)
        self.state.num_ring = NULL
        self.state.den_ring = NULL
        self.state.suffix = NULL

    @property
    def window(self) -> int:
        return self.state.window

    @property
    def min_denominator(self) -> float:
        return self.state.min_denominator

    @property
    def max_delta(self) -> float:
        """The largest increment taken: DBL_MAX / (2 window), so the window's sum stays finite."""
        return self.state.max_delta

    def update(self, double egress_delta, double ingress_delta) -> None:
        """Add one interval's increments. NaN, inf and increments over `max_delta` are counted
        in `rejected` and ignored; a negative increment raises ValueError (pass increments,
        not counter values)."""
        cdef int rc = ratio_update(&self.state, egress_delta, ingress_delta)
        if rc == RATIO_NEGATIVE:
            raise ValueError(
                f"RatioWindow.update: deltas must be >= 0 (increments of counters), "
                f"got egress_delta={egress_delta!r}, ingress_delta={ingress_delta!r}")

    def ratio(self) -> float:
        """numerator / denominator over the window; NaN while denominator < min_denominator."""
        cdef ratio_snapshot_t snap
        ratio_read(&self.state, &snap)
        return ratio_of(&self.state, &snap)

    @property
    def numerator(self) -> float:
        """Sum of the egress deltas in the window."""
        cdef ratio_snapshot_t snap
        ratio_read(&self.state, &snap)
        return snap.numerator

    @property
    def denominator(self) -> float:
        """Sum of the ingress deltas in the window."""
        cdef ratio_snapshot_t snap
        ratio_read(&self.state, &snap)
        return snap.denominator

    @property
    def count(self) -> int:
        """Updates in the window."""
        cdef ratio_snapshot_t snap
        ratio_read(&self.state, &snap)
        return snap.count

    @property
    def total(self) -> int:
        """Updates accepted since construction."""
        cdef ratio_snapshot_t snap
        ratio_read(&self.state, &snap)
        return snap.total

    @property
    def rejected(self) -> int:
        """Updates refused (NaN, inf, or over max_delta) since construction."""
        return coh_load_i64(&self.state.rejected)

    def snapshot(self) -> RatioSnapshot:
        """numerator, denominator, ratio, count and total from the same update, without a lock."""
        cdef ratio_snapshot_t snap
        ratio_read(&self.state, &snap)
        return RatioSnapshot(snap.numerator, snap.denominator, ratio_of(&self.state, &snap),
                             snap.count, snap.total)

    def __repr__(self):
        return f"RatioWindow(window={self.state.window}, ratio={self.ratio()!r})"


# --------------------------------------------------------------------------------------
cdef class AtomicCounter:
    """A monotonic total that any number of threads add to without a lock.

    What a service embedding coherence increments per request (see coherence.hooks), and what
    the StatsD listener feeds; the sampler reads it and takes deltas.

    >>> c = AtomicCounter()
    >>> c.add(); c.add(2.5)
    >>> c.value
    3.5
    """

    def __cinit__(self):
        self.state.bits = 0     # the bits of +0.0

    def add(self, double n=1.0) -> None:
        """Add n (finite, >= 0); ValueError otherwise: a request counter never goes down."""
        if not counter_add(&self.state, n):
            raise ValueError(f"AtomicCounter.add: n must be finite and >= 0, got {n!r}")

    @property
    def value(self) -> float:
        return counter_value(&self.state)

    def __repr__(self):
        return f"AtomicCounter(value={counter_value(&self.state)!r})"
