# cython: language_level=3, boundscheck=False, wraparound=False
"""Built by the tests against the *installed* package: proves the shipped .pxd files let other
Cython code update the core without Python objects, and drives nogil writers for stress tests."""
from libc.math cimport fabs

from coherence._core cimport (
    AtomicCounter, counter_add,
    EwmaRate, RatioWindow, RingBuffer, RollingStats,
    ewma_update, ratio_update, ring_push, rolling_push,
    rolling_read, rolling_snapshot_t, snapshot_var,
    ewma_read, ewma_snapshot_t, ratio_read, ratio_snapshot_t,
)


def rolling_push_loop(RollingStats s, const double[::1] xs):
    """Push xs through the C-level API with the GIL released; returns how many were accepted."""
    cdef Py_ssize_t i, accepted = 0
    with nogil:
        for i in range(xs.shape[0]):
            accepted += rolling_push(&s.state, xs[i])
    return accepted


def rolling_read_c(RollingStats s):
    """(count, total, mean, var) read through the C-level API."""
    cdef rolling_snapshot_t snap
    with nogil:
        rolling_read(&s.state, &snap)
    return snap.count, snap.total, snap.mean, snapshot_var(&snap, 0)


cdef extern from *:
    """
    static inline void capi_spin(long n) { for (volatile long k = 0; k < n; k++) {} }
    """
    void capi_spin(long n) noexcept nogil


def ring_count_loop(RingBuffer r, long n, long spin=0):
    """Push 0, 1, ..., n-1 with the GIL released, idling `spin` iterations between pushes
    (a ring reader copies the whole ring, so a writer that never pauses starves it)."""
    cdef long i
    with nogil:
        for i in range(n):
            ring_push(&r.state, <double>i)
            capi_spin(spin)


def ewma_linear_loop(EwmaRate e, long n, double dt, double per_step):
    """Feed a counter growing by per_step every dt seconds, times 1*dt .. n*dt, without the GIL."""
    cdef long i
    cdef int rc = 0
    with nogil:
        for i in range(1, n + 1):
            rc = ewma_update(&e.state, i * dt, i * per_step)
            if rc < 0:
                break
    return rc


def ratio_constant_loop(RatioWindow r, long n, double egress, double ingress):
    """Add the same (egress, ingress) pair n times without the GIL."""
    cdef long i
    cdef int rc = 0
    with nogil:
        for i in range(n):
            rc = ratio_update(&r.state, egress, ingress)
            if rc < 0:
                break
    return rc


def counter_add_loop(AtomicCounter c, long n, double step):
    """Add step n times without the GIL (several threads at once: the CAS must lose nothing)."""
    cdef long i
    with nogil:
        for i in range(n):
            counter_add(&c.state, step)


def ratio_linear_loop(RatioWindow r, long n):
    """Update k = 1..n with (k, 1) without the GIL: with total t and count c, the window holds
    t-c+1..t, so numerator = c(2t-c+1)/2 and denominator = c: every field cross-checks."""
    cdef long k
    with nogil:
        for k in range(1, n + 1):
            ratio_update(&r.state, <double>k, 1.0)


# ---------------------------------------------------------------- readers without the GIL
# Each spins reading snapshots through the C-level API until the writer's last update is
# visible (and at least min_reads were taken), checking every one; returns (reads, torn,
# distinct totals seen), torn being the snapshots whose fields came from different updates.

def rolling_reader(RollingStats s, long final_total, long min_reads):
    """For a writer pushing 0, 1, 2, ...: a window of c consecutive integers ending at
    total - 1 has mean total - 1 - (c - 1) / 2 and variance (c^2 - 1) / 12."""
    cdef rolling_snapshot_t snap
    cdef long reads = 0, torn = 0, distinct = 0, last = -1
    cdef double c, v
    cdef Py_ssize_t window = s.state.window
    with nogil:
        while True:
            rolling_read(&s.state, &snap)
            reads += 1
            c = <double>snap.count
            if snap.count != (snap.total if snap.total < window else window):
                torn += 1
            elif snap.count > 0:
                v = snapshot_var(&snap, 0)
                if (snap.mean != snap.total - 1 - (c - 1) / 2
                        or fabs(v - (c * c - 1) / 12) > 1e-9 * (c * c if c > 1 else 1.0)):
                    torn += 1
            if snap.total != last:
                distinct += 1
                last = snap.total
            if snap.total >= final_total and reads >= min_reads:
                break
    return reads, torn, distinct


def ratio_reader(RatioWindow r, long final_total, long min_reads):
    """For ratio_linear_loop's writer."""
    cdef ratio_snapshot_t snap
    cdef long reads = 0, torn = 0, distinct = 0, last = -1
    cdef double t, c
    cdef Py_ssize_t window = r.state.window
    with nogil:
        while True:
            ratio_read(&r.state, &snap)
            reads += 1
            t = <double>snap.total
            c = <double>snap.count
            if (snap.count != (snap.total if snap.total < window else window)
                    or snap.denominator != c or snap.numerator != c * (2 * t - c + 1) / 2):
                torn += 1
            if snap.total != last:
                distinct += 1
                last = snap.total
            if snap.total >= final_total and reads >= min_reads:
                break
    return reads, torn, distinct


def ewma_reader(EwmaRate e, long final_samples, long min_reads, double dt, double rate):
    """For ewma_linear_loop's writer: time = samples * dt, and the rate is constant."""
    cdef ewma_snapshot_t snap
    cdef long reads = 0, torn = 0, distinct = 0, last = -1
    with nogil:
        while True:
            ewma_read(&e.state, &snap)
            reads += 1
            if snap.samples > 0 and fabs(snap.t - snap.samples * dt) > 1e-9 * snap.t:
                torn += 1
            elif snap.samples > 1 and fabs(snap.rate - rate) > 1e-6 * rate:
                torn += 1
            if snap.samples != last:
                distinct += 1
                last = snap.samples
            if snap.samples >= final_samples and reads >= min_reads:
                break
    return reads, torn, distinct
