# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""C-level loops over coherence's core kernels, as the sampler runs them (cimport, no GIL), and
the floors they are measured against. Built by benchmarks/_build.py into a temp dir, never here.
"""
from coherence._core cimport (
    EwmaRate, RatioWindow, RollingStats, ewma_update, ratio_update, rolling_push,
)


def push_loop(RollingStats s, const double[::1] xs):
    """rolling_push on every value: one seqlock write per value (push_many takes one per 1024)."""
    cdef Py_ssize_t i, n = xs.shape[0], accepted = 0
    if s._writing:
        raise RuntimeError("push_loop: a push_many is running on this RollingStats")
    with nogil:
        for i in range(n):
            accepted += rolling_push(&s.state, xs[i])
    return accepted


def ring_loop(double[::1] ring, const double[::1] xs):
    """Floor for push_loop: the same loads and ring stores (with wrap) and no statistic."""
    cdef Py_ssize_t i, head = 0, n = xs.shape[0], cap = ring.shape[0]
    with nogil:
        for i in range(n):
            ring[head] = xs[i]
            head += 1
            if head == cap:
                head = 0
    return n


def ewma_loop(EwmaRate e, const double[::1] ts, const double[::1] values):
    """ewma_update over (t, value) pairs; returns how many produced a rate."""
    cdef Py_ssize_t i, n = min(ts.shape[0], values.shape[0]), ok = 0
    with nogil:
        for i in range(n):
            ok += ewma_update(&e.state, ts[i], values[i]) == 0   # EWMA_OK
    return ok


def ratio_loop(RatioWindow r, const double[::1] num, const double[::1] den):
    """ratio_update over (egress_delta, ingress_delta) pairs; returns how many were accepted."""
    cdef Py_ssize_t i, n = min(num.shape[0], den.shape[0]), ok = 0
    with nogil:
        for i in range(n):
            ok += ratio_update(&r.state, num[i], den[i]) == 0   # RATIO_OK
    return ok


cdef class Floor:
    """Methods with the signatures of push and update that do nothing: what any compiled
    method costs to call from Python (argument parsing, float unboxing, returning)."""

    def noop(self, double x):
        pass

    def noop2(self, double a, double b):
        pass
