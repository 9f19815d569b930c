# cython: language_level=3
"""C-level API of coherence's compiled core.

Structs, O(1) ``noexcept nogil`` kernels and the extension types that own them, for Cython
code that updates the accumulators without Python objects (``from coherence._core cimport
...``; add ``coherence.get_include()`` to the include path). One writer per accumulator;
any number of readers, each of which takes a consistent snapshot without a lock.
"""
from libc.stdint cimport int64_t, uint64_t
from libc.math cimport NAN, expm1, fabs, sqrt
from libc.string cimport memset

# --------------------------------------------------------------------------------------
# Lock-free reading, two ways; fences as in Boehm, "Can seqlocks get along with programming
# language memory models?" (2012). GCC/Clang builtins: on x86 plain moves + compiler barriers.
#
# seqlock (the ring buffer): the writer makes `seq` odd while it writes and even after; a
#   reader that saw the same even value before and after its reads got a consistent copy.
# latch (the statistics, Linux's seqcount_latch): the writer keeps its state private and
#   publishes a small snapshot into two copies, flipping `seq` before each: readers read the
#   copy the writer is not touching, so they never wait for it, even when it writes
#   continuously. A reader retries when `seq` moved while it copied: the writer began the
#   next publish, and may be writing the very copy it was reading.
#
# Every word that one thread writes while another reads it is accessed atomically, with
# relaxed order (Linux's WRITE_ONCE/READ_ONCE), the seq and fences giving the order: plain
# loads and stores (or memcpy) there would be a data race, undefined behaviour under the C11
# model, and what ThreadSanitizer reports. On x86 and arm64 a relaxed 8-byte access compiles
# to a plain move. Published structs are 8-aligned and copy word by word.
# --------------------------------------------------------------------------------------
cdef extern from "coherence/coh_atomic.h":
    double COH_EWMA_MAX_RATE
    void coh_write_begin(uint64_t *seq) noexcept nogil
    void coh_write_end(uint64_t *seq) noexcept nogil
    uint64_t coh_read_begin(const uint64_t *seq) noexcept nogil
    bint coh_read_retry(const uint64_t *seq, uint64_t start) noexcept nogil
    void coh_store_double(double *p, double v) noexcept nogil
    double coh_load_double(const double *p) noexcept nogil
    void coh_store_ssize(Py_ssize_t *p, Py_ssize_t v) noexcept nogil
    Py_ssize_t coh_load_ssize(const Py_ssize_t *p) noexcept nogil
    void coh_store_i64(int64_t *p, int64_t v) noexcept nogil
    int64_t coh_load_i64(const int64_t *p) noexcept nogil
    void coh_words_store(void *shared, const void *private_, size_t size) noexcept nogil
    void coh_words_load(void *private_, const void *shared, size_t size) noexcept nogil
    void coh_latch_flip(uint64_t *seq) noexcept nogil
    uint64_t coh_latch_begin(const uint64_t *seq) noexcept nogil
    void coh_latch_publish(uint64_t *seq, void *copies, const void *value, size_t size) noexcept nogil
    void coh_latch_read(const uint64_t *seq, const void *copies, void *out, size_t size) noexcept nogil


cdef inline bint is_finite(double x) noexcept nogil:
    # NaN - NaN and inf - inf are both NaN, and NaN != 0: one subtraction, one compare.
    return x - x == 0.0


# --------------------------------------------------------------------------------------
# Ring buffer of float64
# --------------------------------------------------------------------------------------
ctypedef struct ring_t:
    double *data
    Py_ssize_t capacity
    Py_ssize_t head          # slot of the next write
    int64_t total            # values pushed since construction
    uint64_t seq


cdef inline void ring_push(ring_t *r, double x) noexcept nogil:
    # The writer's own fields are read plainly (only it writes them); stores are atomic.
    cdef Py_ssize_t head = r.head
    coh_write_begin(&r.seq)
    coh_store_double(&r.data[head], x)
    coh_store_ssize(&r.head, head + 1 if head + 1 < r.capacity else 0)
    coh_store_i64(&r.total, r.total + 1)
    coh_write_end(&r.seq)


cdef inline Py_ssize_t ring_len(const ring_t *r) noexcept nogil:
    cdef int64_t total = coh_load_i64(&r.total)
    return <Py_ssize_t>total if total < r.capacity else r.capacity


# --------------------------------------------------------------------------------------
# Windowed mean and variance.
#
# Nothing is ever subtracted from an accumulator. The window is cut into blocks of
# B = window // 2 values; every block is summarised by add-only Welford aggregates: forward
# (the block being filled) and backward (suffixes of the last complete block, one step per
# push while the next block fills, so every push is O(1) in the worst case, not only
# amortised). The window statistic is the Chan et al. merge of: a suffix of the oldest block,
# the complete blocks in between, and the current prefix. Without subtraction there is no
# catastrophic cancellation (values of 1e10 leaving a window of 0s and 1s leave no residue)
# and no drift (every aggregate is rebuilt from the ring every B pushes): this is the
# "re-anchor from the ring", done continuously instead of periodically.
#
# Each aggregate accumulates x - shift, where shift is a member of the range it covers (the
# first value of a prefix, the last value of a suffix): on data with a large common offset
# (1e9 + noise) the deviations are exact and the variance keeps its digits.
# --------------------------------------------------------------------------------------
ctypedef struct welford_t:
    int64_t n
    double shift             # a value of the range: aggregated values are x - shift
    double mean              # mean of x - shift
    double m2                # sum of squared deviations from the mean


ctypedef struct moments_t:
    double mean
    double m2


ctypedef struct rolling_snapshot_t:
    int64_t count            # values in the window
    int64_t total            # values accepted since reset: identifies the update
    double mean
    double m2                # variance = m2 / (count - ddof)
    int64_t rejected


ctypedef struct rolling_t:
    # --- the writer's private state
    double *values           # ring of the last `window` values
    double *inv              # inv[k] = 1/k for k <= block: a multiply instead of a divide
    moments_t *suffix        # 2 buffers of `block` entries: suffix i..block-1 of a block
    double suffix_shift[2]
    welford_t blocks[4]      # aggregates of the last complete blocks, by block number % 4
    welford_t prefix         # the block being filled
    welford_t backward       # running aggregate of the backward (suffix) pass
    Py_ssize_t window
    Py_ssize_t block
    Py_ssize_t head          # ring slot of the next write
    Py_ssize_t pos           # values in the current block
    Py_ssize_t pass_left     # backward steps left on the last complete block
    Py_ssize_t pass_slot     # ring slot of the next value of the backward pass
    int64_t nblocks          # complete blocks since reset
    int64_t total            # values accepted since reset
    int64_t rejected         # NaN and +-inf refused since reset
    # --- what readers see: a latch of two published snapshots
    rolling_snapshot_t pub[2]
    uint64_t seq


cdef inline void welford_add(welford_t *a, double y, const double *inv) noexcept nogil:
    cdef double d
    a.n += 1
    d = y - a.mean
    a.mean += d * inv[a.n]
    a.m2 += d * (y - a.mean)


cdef inline void welford_merge(welford_t *acc, const welford_t *b) noexcept nogil:
    # Chan, Golub & LeVeque's pairwise update; acc keeps its shift.
    cdef double delta, f
    if b.n == 0:
        return
    if acc.n == 0:
        acc[0] = b[0]
        return
    f = <double>b.n / <double>(acc.n + b.n)
    delta = (b.shift - acc.shift) + (b.mean - acc.mean)
    acc.mean += delta * f
    acc.m2 += b.m2 + delta * delta * (<double>acc.n * f)
    acc.n += b.n


cdef inline void rolling_backward_step(rolling_t *r) noexcept nogil:
    cdef moments_t *e
    cdef Py_ssize_t buf = <Py_ssize_t>((r.nblocks - 1) & 1)
    welford_add(&r.backward, r.values[r.pass_slot] - r.backward.shift, r.inv)
    r.pass_left -= 1
    # The shift is stored with the entries, not when the pass starts: the buffer may still
    # serve the block two back until this pass writes its first entry.
    r.suffix_shift[buf] = r.backward.shift
    e = &r.suffix[buf * r.block + r.pass_left]
    e.mean = r.backward.mean
    e.m2 = r.backward.m2
    r.pass_slot = (r.pass_slot if r.pass_slot > 0 else r.window) - 1


cdef inline void rolling_step(rolling_t *r, double x) noexcept nogil:
    """Take one finite value into the private state; publish with rolling_publish."""
    r.values[r.head] = x
    r.head += 1
    if r.head == r.window:
        r.head = 0
    if r.pos == 0:
        r.prefix.n = 0
        r.prefix.shift = x
        r.prefix.mean = 0.0
        r.prefix.m2 = 0.0
    welford_add(&r.prefix, x - r.prefix.shift, r.inv)
    r.pos += 1
    if r.pass_left > 0:
        rolling_backward_step(r)
    if r.pos == r.block:
        r.blocks[r.nblocks & 3] = r.prefix
        r.nblocks += 1
        r.pos = 0
        # start the backward pass over the block just completed, from its last value
        r.backward.n = 0
        r.backward.shift = x
        r.backward.mean = 0.0
        r.backward.m2 = 0.0
        r.pass_left = r.block
        r.pass_slot = (r.head if r.head > 0 else r.window) - 1
    r.total += 1


cdef inline void rolling_compute(const rolling_t *r, rolling_snapshot_t *out) noexcept nogil:
    """Assemble the window statistic from the aggregates (writer side)."""
    cdef int64_t start, j, j0
    cdef Py_ssize_t off, count, buf
    cdef welford_t acc, part
    count = <Py_ssize_t>r.total if r.total < r.window else r.window
    out.count = count
    out.total = r.total
    out.rejected = r.rejected
    if count == 0:
        out.mean = NAN
        out.m2 = NAN
        return
    start = r.total - count
    j0 = start // r.block
    off = <Py_ssize_t>(start - j0 * r.block)
    acc.n = 0
    j = j0
    while j < r.nblocks:
        if j == j0 and off > 0:
            buf = <Py_ssize_t>(j & 1)
            part.n = r.block - off
            part.shift = r.suffix_shift[buf]
            part.mean = r.suffix[buf * r.block + off].mean
            part.m2 = r.suffix[buf * r.block + off].m2
            welford_merge(&acc, &part)
        else:
            welford_merge(&acc, &r.blocks[j & 3])
        j += 1
    if r.pos > 0:
        welford_merge(&acc, &r.prefix)
    out.mean = acc.shift + acc.mean
    # A sum of squares: rounding may leave -0.0 or a hair below, never more. NaN (finite
    # values whose deviations overflow, 1e308 beside -1e308) must stay NaN, not read as a
    # calm 0: the comparison below is false for NaN. It clears when those values leave.
    out.m2 = 0.0 if acc.m2 < 0.0 else acc.m2


cdef inline void rolling_publish(rolling_t *r) noexcept nogil:
    cdef rolling_snapshot_t snap
    rolling_compute(r, &snap)
    coh_latch_publish(&r.seq, r.pub, &snap, sizeof(snap))


cdef inline bint rolling_push(rolling_t *r, double x) noexcept nogil:
    """Push one value and publish; NaN and +-inf are counted in `rejected`, nothing else changes."""
    cdef bint ok = is_finite(x)
    if ok:
        rolling_step(r, x)
    else:
        r.rejected += 1
    rolling_publish(r)
    return ok


cdef inline void rolling_read(const rolling_t *r, rolling_snapshot_t *out) noexcept nogil:
    """The last published snapshot, consistent, without a lock (any thread)."""
    coh_latch_read(&r.seq, r.pub, out, sizeof(out[0]))


cdef inline double snapshot_var(const rolling_snapshot_t *snap, Py_ssize_t ddof) noexcept nogil:
    if snap.count - ddof <= 0:
        return NAN
    return snap.m2 / <double>(snap.count - ddof)


# --------------------------------------------------------------------------------------
# Exponentially smoothed rate of a counter, time-aware: alpha = 1 - 2^(-dt / half_life).
# The smoothed variance of the rate follows Finch, "Incremental calculation of weighted mean
# and variance" (2009), eq. 143.
# --------------------------------------------------------------------------------------
cdef enum:
    EWMA_OK = 0              # a rate was computed
    EWMA_FIRST = 1           # first sample: no rate yet
    EWMA_REJECTED = 2        # value NaN or +-inf, or an interval's rate over EWMA_MAX_RATE:
                             # counted; the rate is unchanged
    EWMA_BAD_TIME = -1       # time not finite or not after the previous sample

# COH_EWMA_MAX_RATE (1e150/s): no counter rises that fast; past it the squared difference of
# two rates overflows the variance to inf, and an exponential average never forgets an inf.


ctypedef struct ewma_snapshot_t:
    double t                 # time of the last accepted sample
    double rate              # smoothed rate per second; NaN before two samples
    double var               # smoothed variance of the per-interval rate
    int64_t samples


ctypedef struct ewma_t:
    double half_life         # seconds
    double t_last
    double v_last            # counter value at t_last
    double rate
    double var
    int64_t samples
    int64_t resets           # times the counter went down (restart, wrap); atomic: read by any thread
    int64_t rejected         # atomic: read by any thread
    ewma_snapshot_t pub[2]
    uint64_t seq


cdef inline void ewma_publish(ewma_t *e) noexcept nogil:
    cdef ewma_snapshot_t snap
    snap.t = e.t_last
    snap.rate = e.rate if e.samples > 1 else NAN
    snap.var = e.var if e.samples > 1 else NAN
    snap.samples = e.samples
    coh_latch_publish(&e.seq, e.pub, &snap, sizeof(snap))


cdef inline int ewma_update(ewma_t *e, double t, double v) noexcept nogil:
    cdef double dt, delta, inst, alpha, diff
    if not is_finite(t) or (e.samples > 0 and not t > e.t_last):
        return EWMA_BAD_TIME
    if not is_finite(v):
        coh_store_i64(&e.rejected, e.rejected + 1)
        return EWMA_REJECTED
    if e.samples == 0:
        e.t_last = t
        e.v_last = v
        e.samples = 1
        ewma_publish(e)
        return EWMA_FIRST
    dt = t - e.t_last
    delta = v - e.v_last
    # A counter that went down was reset: it counted from zero up to v since (Prometheus rate()).
    inst = (delta if delta >= 0.0 else v) / dt
    if not fabs(inst) <= COH_EWMA_MAX_RATE:
        # overflowed (1e308 after -1e308) or absurd: measure the next interval from here
        coh_store_i64(&e.rejected, e.rejected + 1)
        e.t_last = t
        e.v_last = v
        return EWMA_REJECTED
    if delta < 0.0:
        coh_store_i64(&e.resets, e.resets + 1)
    if e.samples == 1:
        e.rate = inst
        e.var = 0.0
    else:
        # 1 - 2^(-dt/h) = -expm1(-dt ln2 / h), without cancellation when dt << h
        alpha = -expm1(-dt * (0.6931471805599453 / e.half_life))
        diff = inst - e.rate
        e.rate += alpha * diff
        e.var = (1.0 - alpha) * (e.var + alpha * diff * diff)
    e.t_last = t
    e.v_last = v
    e.samples += 1
    ewma_publish(e)
    return EWMA_OK


cdef inline void ewma_read(const ewma_t *e, ewma_snapshot_t *out) noexcept nogil:
    coh_latch_read(&e.seq, e.pub, out, sizeof(out[0]))


# --------------------------------------------------------------------------------------
# Sliding ratio of two counters' deltas (egress / ingress) over the last `window` updates.
# The sums are built as the window statistic above is: nothing is ever subtracted. Blocks of
# B = window // 2 deltas are summed add-only (Neumaier-compensated); the window's sum is a
# suffix of the oldest block (from a backward pass, one step per update), the complete blocks
# between, and the current prefix. A burst of 1e100 requests leaving a window of small counts
# leaves no residue (a running sum with subtraction reads 0 there, or NaN after inf - inf),
# integer counts stay exact, and a window of zeros sums to exactly 0. A delta above
# max_delta = DBL_MAX / (2 window) is refused and counted: a window of them would overflow.
# --------------------------------------------------------------------------------------
cdef enum:
    RATIO_OK = 0
    RATIO_REJECTED = 2       # a delta NaN, +-inf or over max_delta: counted, state unchanged
    RATIO_NEGATIVE = -1      # a delta below zero: counters' increments cannot be

ctypedef struct ksum_t:
    double s
    double c                 # Neumaier's compensation: what rounding took from s


ctypedef struct pair_sum_t:
    ksum_t num
    ksum_t den


ctypedef struct ratio_snapshot_t:
    double numerator
    double denominator
    Py_ssize_t count         # pairs in the window
    int64_t total            # pairs accepted: identifies the update


ctypedef struct ratio_t:
    # --- the writer's private state
    double *num_ring         # the last `window` deltas
    double *den_ring
    pair_sum_t *suffix       # 2 buffers of `block` entries: sums of suffix i..block-1
    pair_sum_t blocks[4]     # sums of the last complete blocks, by block number % 4
    pair_sum_t prefix        # the block being filled
    pair_sum_t backward      # running sum of the backward (suffix) pass
    Py_ssize_t window
    Py_ssize_t block
    Py_ssize_t head          # ring slot of the next write
    Py_ssize_t pos           # deltas in the current block
    Py_ssize_t pass_left     # backward steps left on the last complete block
    Py_ssize_t pass_slot     # ring slot of the next delta of the backward pass
    int64_t nblocks          # complete blocks
    double min_denominator
    double max_delta         # DBL_MAX / (2 window): the window's sum stays finite
    int64_t total
    int64_t rejected         # atomic: read by any thread
    # --- what readers see: a latch of two published snapshots
    ratio_snapshot_t pub[2]
    uint64_t seq


cdef inline void ksum_add(ksum_t *k, double x) noexcept nogil:
    cdef double t = k.s + x
    if fabs(k.s) >= fabs(x):
        k.c += (k.s - t) + x
    else:
        k.c += (x - t) + k.s
    k.s = t


cdef inline void pair_add(pair_sum_t *p, double num, double den) noexcept nogil:
    ksum_add(&p.num, num)
    ksum_add(&p.den, den)


cdef inline void pair_merge(pair_sum_t *acc, const pair_sum_t *b) noexcept nogil:
    ksum_add(&acc.num, b.num.s)
    acc.num.c += b.num.c
    ksum_add(&acc.den, b.den.s)
    acc.den.c += b.den.c


cdef inline void ratio_step(ratio_t *r, double num_delta, double den_delta) noexcept nogil:
    """Take one pair of deltas into the private state (as rolling_step does for values)."""
    cdef Py_ssize_t buf
    r.num_ring[r.head] = num_delta
    r.den_ring[r.head] = den_delta
    r.head += 1
    if r.head == r.window:
        r.head = 0
    if r.pos == 0:
        memset(&r.prefix, 0, sizeof(pair_sum_t))
    pair_add(&r.prefix, num_delta, den_delta)
    r.pos += 1
    if r.pass_left > 0:
        buf = <Py_ssize_t>((r.nblocks - 1) & 1)
        pair_add(&r.backward, r.num_ring[r.pass_slot], r.den_ring[r.pass_slot])
        r.pass_left -= 1
        r.suffix[buf * r.block + r.pass_left] = r.backward
        r.pass_slot = (r.pass_slot if r.pass_slot > 0 else r.window) - 1
    if r.pos == r.block:
        r.blocks[r.nblocks & 3] = r.prefix
        r.nblocks += 1
        r.pos = 0
        memset(&r.backward, 0, sizeof(pair_sum_t))
        r.pass_left = r.block
        r.pass_slot = (r.head if r.head > 0 else r.window) - 1
    r.total += 1


cdef inline void ratio_compute(const ratio_t *r, ratio_snapshot_t *out) noexcept nogil:
    """The window's sums from the block sums (writer side)."""
    cdef int64_t start, j, j0
    cdef Py_ssize_t off, count
    cdef pair_sum_t acc
    count = <Py_ssize_t>r.total if r.total < r.window else r.window
    start = r.total - count
    j0 = start // r.block
    off = <Py_ssize_t>(start - j0 * r.block)
    memset(&acc, 0, sizeof(pair_sum_t))
    j = j0
    while j < r.nblocks:
        if j == j0 and off > 0:
            pair_merge(&acc, &r.suffix[(j & 1) * r.block + off])
        else:
            pair_merge(&acc, &r.blocks[j & 3])
        j += 1
    if r.pos > 0:
        pair_merge(&acc, &r.prefix)
    out.numerator = acc.num.s + acc.num.c
    out.denominator = acc.den.s + acc.den.c
    out.count = count
    out.total = r.total


cdef inline void ratio_publish(ratio_t *r) noexcept nogil:
    cdef ratio_snapshot_t snap
    ratio_compute(r, &snap)
    coh_latch_publish(&r.seq, r.pub, &snap, sizeof(snap))


cdef inline int ratio_update(ratio_t *r, double num_delta, double den_delta) noexcept nogil:
    if not (is_finite(num_delta) and is_finite(den_delta)):
        coh_store_i64(&r.rejected, r.rejected + 1)
        return RATIO_REJECTED
    if num_delta < 0.0 or den_delta < 0.0:
        return RATIO_NEGATIVE
    if num_delta > r.max_delta or den_delta > r.max_delta:
        coh_store_i64(&r.rejected, r.rejected + 1)
        return RATIO_REJECTED
    ratio_step(r, num_delta, den_delta)
    ratio_publish(r)
    return RATIO_OK


cdef inline void ratio_read(const ratio_t *r, ratio_snapshot_t *out) noexcept nogil:
    coh_latch_read(&r.seq, r.pub, out, sizeof(out[0]))


cdef inline double ratio_of(const ratio_t *r, const ratio_snapshot_t *snap) noexcept nogil:
    """numerator / denominator, NaN while the denominator is under the minimum (or zero)."""
    if snap.denominator >= r.min_denominator and snap.denominator > 0.0:
        return snap.numerator / snap.denominator
    return NAN


# --------------------------------------------------------------------------------------
# A counter many threads add to (a service's request hooks, the StatsD listener) and one
# sampler reads: a double updated by compare-and-swap on its bits, so no lock and no torn
# value; fractional increments are allowed because StatsD sample rates (|@0.1) scale counts.
# --------------------------------------------------------------------------------------
cdef extern from "coherence/coh_atomic.h":
    void coh_atomic_add_double(uint64_t *bits, double v) noexcept nogil
    double coh_atomic_load_double(const uint64_t *bits) noexcept nogil


ctypedef struct counter_t:
    uint64_t bits            # the IEEE-754 bits of a double: the running total


cdef inline bint counter_add(counter_t *c, double n) noexcept nogil:
    """Add n (finite, >= 0) from any thread; False (nothing added) otherwise."""
    if not (is_finite(n) and n >= 0.0):
        return False
    coh_atomic_add_double(&c.bits, n)
    return True


cdef inline double counter_value(const counter_t *c) noexcept nogil:
    return coh_atomic_load_double(&c.bits)


# --------------------------------------------------------------------------------------
# Extension types: each owns its struct and the struct's memory. Cython code reaches the
# struct as `obj.state` and calls the kernels above on `&obj.state`.
# --------------------------------------------------------------------------------------
cdef class RingBuffer:
    cdef ring_t state
    cdef tuple _copy(self)


cdef class RollingStats:
    cdef rolling_t state
    cdef bint _writing       # a push_many is running without the GIL


cdef class EwmaRate:
    cdef ewma_t state


cdef class RatioWindow:
    cdef ratio_t state
    cdef void _free(self) noexcept


cdef class AtomicCounter:
    cdef counter_t state
