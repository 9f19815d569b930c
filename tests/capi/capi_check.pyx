# cython: language_level=3, boundscheck=False, wraparound=False
"""Built by the tests against the *installed* package: proves the shipped .pxd files let other
Cython code update the core without Python objects, and drives nogil writers for stress tests."""
from coherence._core cimport (
    AtomicCounter, counter_add,
    EwmaRate, RatioWindow, RingBuffer, RollingStats,
    ewma_update, ratio_update, ring_push, rolling_push,
    rolling_read, rolling_snapshot_t, snapshot_var,
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
