/* coherence's C helpers: the lock-free publication the compiled core and sampler share.
 *
 * Shipped with the package beside _core.pxd (coherence.get_include() is the directory to add
 * to the C compiler's include path, as to Cython's). Declared to Cython in _core.pxd.
 * See _core.pxd for the seqlock and the latch, and why every shared word is an atomic access.
 */
#ifndef COHERENCE_COH_ATOMIC_H
#define COHERENCE_COH_ATOMIC_H

#include <Python.h>   /* Py_ssize_t */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
/* No counter rises by 1e150 a second; past it the square of a rate difference overflows. */
#define COH_EWMA_MAX_RATE 1e150

static inline void coh_write_begin(uint64_t *seq) {
    uint64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_store_n(seq, s + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}
static inline void coh_write_end(uint64_t *seq) {
    uint64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_store_n(seq, s + 1, __ATOMIC_RELEASE);
}
static inline uint64_t coh_read_begin(const uint64_t *seq) {
    uint64_t s;
    while ((s = __atomic_load_n(seq, __ATOMIC_ACQUIRE)) & 1u) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
    return s;
}
static inline int coh_read_retry(const uint64_t *seq, uint64_t start) {
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    return __atomic_load_n(seq, __ATOMIC_RELAXED) != start;
}
/* one shared double, written by one thread and read by others */
static inline void coh_store_double(double *p, double v) {
    __atomic_store(p, &v, __ATOMIC_RELAXED);
}
static inline double coh_load_double(const double *p) {
    double v;
    __atomic_load((double *)p, &v, __ATOMIC_RELAXED);
    return v;
}
static inline void coh_store_ssize(Py_ssize_t *p, Py_ssize_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline Py_ssize_t coh_load_ssize(const Py_ssize_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
static inline void coh_store_i64(int64_t *p, int64_t v) {
    __atomic_store_n(p, v, __ATOMIC_RELAXED);
}
static inline int64_t coh_load_i64(const int64_t *p) {
    return __atomic_load_n(p, __ATOMIC_RELAXED);
}
/* `size` bytes of an 8-aligned struct, `size` a multiple of 8 (checked when the modules load),
   a word at a time: into shared memory, and out of it. The words alias the struct's doubles
   and ints: may_alias keeps the compiler from assuming they cannot (strict aliasing). */
typedef uint64_t __attribute__((__may_alias__)) coh_word_t;
static inline void coh_words_store(void *shared, const void *private_, size_t size) {
    coh_word_t *dst = (coh_word_t *)shared;
    const coh_word_t *src = (const coh_word_t *)private_;
    for (size_t i = 0; i < size / 8; i++)
        __atomic_store_n(&dst[i], src[i], __ATOMIC_RELAXED);
}
static inline void coh_words_load(void *private_, const void *shared, size_t size) {
    coh_word_t *dst = (coh_word_t *)private_;
    const coh_word_t *src = (const coh_word_t *)shared;
    for (size_t i = 0; i < size / 8; i++)
        dst[i] = __atomic_load_n(&src[i], __ATOMIC_RELAXED);
}
/* latch: flip to the other copy; stores before stay before, stores after stay after */
static inline void coh_latch_flip(uint64_t *seq) {
    uint64_t s = __atomic_load_n(seq, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
    __atomic_store_n(seq, s + 1, __ATOMIC_RELAXED);
    __atomic_thread_fence(__ATOMIC_RELEASE);
}
static inline uint64_t coh_latch_begin(const uint64_t *seq) {
    return __atomic_load_n(seq, __ATOMIC_ACQUIRE);
}
/* publish `size` bytes of `value` into copies[0] and copies[1] (two adjacent copies) */
static inline void coh_latch_publish(uint64_t *seq, void *copies, const void *value, size_t size) {
    coh_latch_flip(seq);                          /* readers move to copy 1 */
    coh_words_store(copies, value, size);
    coh_latch_flip(seq);                          /* readers move to copy 0 */
    coh_words_store((char *)copies + size, value, size);
}
/* the copy the writer is not touching; again if the writer began a publish meanwhile */
static inline void coh_latch_read(const uint64_t *seq, const void *copies, void *out, size_t size) {
    uint64_t s;
    do {
        s = __atomic_load_n(seq, __ATOMIC_ACQUIRE);
        coh_words_load(out, (const char *)copies + (s & 1u) * size, size);
        __atomic_thread_fence(__ATOMIC_ACQUIRE);
    } while (__atomic_load_n(seq, __ATOMIC_RELAXED) != s);
}

/* a monotonic total many threads add to: CAS on the bits of a double */
static inline void coh_atomic_add_double(uint64_t *bits, double v) {
    uint64_t old = __atomic_load_n(bits, __ATOMIC_RELAXED), upd;
    double d;
    do {
        memcpy(&d, &old, sizeof d);
        d += v;
        memcpy(&upd, &d, sizeof d);
    } while (!__atomic_compare_exchange_n(bits, &old, upd, 1, __ATOMIC_RELEASE, __ATOMIC_RELAXED));
}
static inline double coh_atomic_load_double(const uint64_t *bits) {
    uint64_t b = __atomic_load_n(bits, __ATOMIC_ACQUIRE);
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

/* the sampler's flags and counters read by other threads */
static inline int coh_load_flag(const int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void coh_store_flag(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }

#endif /* COHERENCE_COH_ATOMIC_H */
