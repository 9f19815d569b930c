# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The sampler's tick loop, compiled: wake on absolute deadlines, pread the sources' files,
parse their numbers in C and feed the core's accumulators, all without the GIL.

Python (coherence.sampler) chooses the sources and the accumulators; this module only runs
them. Sources without a file (psutil) are called back with the GIL at their own rate.
"""
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memcmp, memcpy, memset
from libc.math cimport INFINITY, NAN, isnan
from posix.unistd cimport pread

from coherence._core cimport (
    AtomicCounter, EwmaRate, RatioWindow, RingBuffer, RollingStats,
    counter_t, ewma_t, ratio_t, ring_t, rolling_t,
    counter_value, ewma_update, ratio_update, ring_push, rolling_push,
    coh_latch_publish, coh_latch_read, coh_load_i64, coh_store_i64,
)

cdef extern from "coherence/coh_atomic.h":
    int coh_load_flag(const int *p) noexcept nogil
    void coh_store_flag(int *p, int v) noexcept nogil

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    ctypedef int clockid_t
    int clock_gettime(clockid_t clk, timespec *ts)
    int clock_nanosleep(clockid_t clk, int flags, const timespec *req, timespec *rem)
    enum: CLOCK_MONOTONIC
    enum: CLOCK_THREAD_CPUTIME_ID
    enum: TIMER_ABSTIME

cdef extern from "<sys/prctl.h>" nogil:
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5)
    enum: PR_SET_TIMERSLACK

cdef extern from "<errno.h>" nogil:
    int errno

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum: POLLIN

# --- signals the engine knows; each source declares which of its fields feed which slot, and
# with what sign and scale, and how a slot's value is bounded (coherence.sources: recipe, rules)
cpdef enum Slot:
    CPU_NS = 0              # CPU time used, ns (counter)
    MINOR_FAULTS = 1        # minor page faults: the allocation-churn evidence (counter)
    PGALLOC = 2             # pages allocated, shown beside (counter)
    PGFREE = 3              # pages freed (counter)
    RESIDENT_BYTES = 4      # resident memory (gauge)
    MEM_TOTAL_BYTES = 5     # memory the host/cgroup may use (gauge)
    PSI_CPU_US = 6          # PSI "some" stall time, us (counters)
    PSI_MEMORY_US = 7
    PSI_IO_US = 8
    INGRESS = 9             # requests pushed by the application (StatsD, hooks)
    EGRESS = 10
    TCP_PASSIVE = 11        # the labelled proxy: TCP PassiveOpens (ingress) ...
    TCP_ACTIVE = 12         # ... and ActiveOpens (egress)
    NSLOTS = 13

cdef enum:
    MAX_FILES = 32
    MAX_FIELDS = 96
    MAX_COUNTERS = 4
    MAX_CLOCKS = 2
    MAX_CALLBACKS = 4
    READ_BUF = 65536        # as coherence.sources.READ_SIZE; /proc/vmstat, the largest, is ~8 KB
    PREFIX_MAX = 40
    AFTER_MAX = 8
    LAT_LINEAR = 2048       # lateness histogram: 1 us bins up to 2 ms ...
    LAT_LOG = 24            # ... then powers of two beyond
    STATS_EVERY = 64        # publish the sampler's own figures every 64 ticks

cdef int64_t NS = 1000000000
cdef int64_t MAX_SLEEP_NS = 100000000   # wake at least every 100 ms to notice stop()


ctypedef struct field_t:
    char prefix[PREFIX_MAX]
    int prefix_len
    char after[AFTER_MAX]
    int after_len
    int index
    int occurrence
    int slot
    double coef              # scale (unit conversion) times sign (derived signals)


ctypedef struct file_t:
    int fd
    int first_field
    int nfields
    int every                # read every `every` ticks ...
    int phase                # ... on ticks where tick % every == phase
    int lost                 # pread failed (process gone, cgroup removed): stop reading
    int64_t reads
    int64_t errors
    int64_t parse_misses


ctypedef struct counter_src_t:
    counter_t *counter       # borrowed: Engine keeps the AtomicCounter alive in _keep
    int slot
    int every
    int phase


ctypedef struct clock_src_t:
    clockid_t clock          # a CPU-time clock (another process's: all its threads, in ns)
    int alive_fd             # a pidfd of that process, readable once it exited (-1: none)
    int slot
    int every
    int phase
    int lost


ctypedef struct slots_t:
    double value[NSLOTS]     # the last complete value of each slot (NaN: never read)
    double t[NSLOTS]         # monotonic seconds of that read
    int lost[NSLOTS]         # its source became unreadable (the process exited)


ctypedef struct stats_t:
    int64_t ticks            # ticks taken
    int64_t overruns         # deadlines skipped because a tick ran past them
    int64_t start_ns
    int64_t last_ns
    int64_t thread_cpu_ns    # the sampler thread's CPU time
    int64_t buckets          # CPU utilization buckets closed


cdef inline int64_t now_ns(int clk) noexcept nogil:
    cdef timespec ts
    clock_gettime(clk, &ts)
    return <int64_t>ts.tv_sec * NS + ts.tv_nsec


cdef inline int64_t lat_upper_us(int i) noexcept nogil:
    """The upper bound (us) of lateness bin i: 1 us bins up to LAT_LINEAR, then powers of two."""
    return i + 1 if i < LAT_LINEAR else (<int64_t>LAT_LINEAR) << (i - LAT_LINEAR + 1)


cdef inline bint exited(int pidfd) noexcept nogil:
    # A pidfd polls readable once its process has exited, and stays so. A failed poll (EINTR)
    # says nothing: the next read asks again.
    cdef pollfd p
    p.fd = pidfd
    p.events = POLLIN
    p.revents = 0
    return poll(&p, 1, 0) > 0


cdef inline bint is_space(char c) noexcept nogil:
    # bytes.split()'s whitespace: space, \t, \n, \v, \f, \r
    return c == 32 or (9 <= c <= 13)


cdef inline bint parse_number(const char *buf, Py_ssize_t pos, Py_ssize_t end, int index,
                              double *out) noexcept nogil:
    """The index-th whitespace-separated token of buf[pos:end] as a number, by the rules of
    coherence.sources.parse_fields: a token key=value stands for its value; a value is 1 to
    20 ASCII digits worth at most 2**64-1. False if absent or not such a number."""
    cdef int tok = -1, digits
    cdef uint64_t v, d
    cdef Py_ssize_t j, eq
    cdef char c
    while pos < end:
        while pos < end and is_space(buf[pos]):
            pos += 1
        if pos >= end:
            return False
        tok += 1
        j = pos
        while j < end and not is_space(buf[j]):
            j += 1
        if tok == index:
            eq = pos
            while eq < j and buf[eq] != 61:      # 61: '=': a key=value token stands for its value
                eq += 1
            if eq < j:
                pos = eq + 1
            digits = <int>(j - pos)
            if digits < 1 or digits > 20:
                return False
            v = 0
            while pos < j:
                c = buf[pos]
                if c < 48 or c > 57:             # not '0'..'9'
                    return False
                d = <uint64_t>(c - 48)
                if v > (0xFFFFFFFFFFFFFFFFULL - d) // 10:   # past 2**64-1: the kernel's u64
                    return False
                v = v * 10 + d
                pos += 1
            out[0] = <double>v
            return True
        pos = j
    return False


cdef inline bint find_field(const char *buf, Py_ssize_t n, const field_t *f, double *out) noexcept nogil:
    """Locate one field as coherence.sources.parse_fields does (tested against it)."""
    cdef Py_ssize_t i, end
    cdef int seen = 0
    if f.after_len > 0:
        # tokens run from after the last occurrence to the end of the file, across lines
        i = n - f.after_len
        while i >= 0 and memcmp(buf + i, f.after, f.after_len) != 0:
            i -= 1
        if i < 0:
            return False
        return parse_number(buf, i + f.after_len, n, f.index, out)
    i = 0
    while i <= n:
        end = i
        while end < n and buf[end] != 10:        # 10: '\n'
            end += 1
        if end - i >= f.prefix_len and memcmp(buf + i, f.prefix, f.prefix_len) == 0:
            if seen == f.occurrence:
                return parse_number(buf, i + f.prefix_len, end, f.index, out)
            seen += 1
        i = end + 1
    return False


def parse_fields_c(bytes data, list fields):
    """Test hook: parse `data` with the C parser. fields: (prefix, index, occurrence, after_last)
    tuples; returns one float per field, None where the field is absent."""
    cdef field_t f
    cdef double v
    out = []
    for prefix, index, occurrence, after in fields:
        _fill_field(&f, prefix, index, occurrence, after, 0, 1.0)
        out.append(v if find_field(data, len(data), &f, &v) else None)
    return out


cdef int _fill_field(field_t *f, bytes prefix, int index, int occurrence, bytes after, int slot,
                     double coef) except -1:
    if len(prefix) > PREFIX_MAX or len(after) > AFTER_MAX:
        raise ValueError(f"field prefix {prefix!r} or after_last {after!r} too long")
    if index < 0 or occurrence < 0:
        raise ValueError("field index and occurrence must be >= 0")
    memset(f, 0, sizeof(field_t))
    memcpy(f.prefix, <const char *>prefix, len(prefix))
    f.prefix_len = len(prefix)
    memcpy(f.after, <const char *>after, len(after))
    f.after_len = len(after)
    f.index = index
    f.occurrence = occurrence
    f.slot = slot
    f.coef = coef
    return 0


cdef int _check_slot(int slot) except -1:
    if not (0 <= slot < NSLOTS):
        raise ValueError(f"bad slot {slot}")
    return 0


# The latch copies what it publishes a word at a time (coh_atomic.h): whole 8-byte words only.
if sizeof(slots_t) % 8 or sizeof(stats_t) % 8:
    raise ImportError("coherence._sampler: a published struct is not a whole number of 8-byte words")


cdef class Gauges:
    """The last value of every slot, when it was read and whether its source was lost: written
    by one writer (the engine's tick loop, or the simulator), read by any thread without a lock
    (a latch). Signals owns one; the engine is fed it, as it is fed the other accumulators."""

    cdef slots_t slots                   # the writer's copy
    cdef slots_t pub[2]
    cdef uint64_t seq
    cdef bint fed                        # an engine writes it: update() from Python may not

    def __cinit__(self):
        cdef int k
        for k in range(<int>NSLOTS):
            self.slots.value[k] = NAN
            self.slots.t[k] = NAN
            self.slots.lost[k] = 0
        self.fed = False
        self.publish()

    cdef void publish(self) noexcept nogil:
        coh_latch_publish(&self.seq, self.pub, &self.slots, sizeof(slots_t))

    cdef void read(self, slots_t *out) noexcept nogil:
        coh_latch_read(&self.seq, self.pub, out, sizeof(slots_t))

    def update(self, dict values, double t=NAN):
        """Write {slot: value}, read at time t, and publish them together: for a writer
        without an engine (the simulator). One writer per Gauges: refused once an engine is
        fed it."""
        if self.fed:
            raise RuntimeError("Gauges: an engine writes these; one writer at a time")
        for slot in values:
            _check_slot(slot)
        for slot, value in values.items():
            self.slots.value[<int>slot] = value
            self.slots.t[<int>slot] = t
        self.publish()

    def lose(self, int slot):
        """Mark the slot's source lost (it became unreadable), for a writer without an engine
        (a replay of a recording in which the watched process exited)."""
        if self.fed:
            raise RuntimeError("Gauges: an engine writes these; one writer at a time")
        _check_slot(slot)
        self.slots.lost[slot] = 1
        self.publish()

    def values(self):
        """The last complete value of each slot (NaN: never read), one consistent copy."""
        cdef slots_t snap
        cdef int k
        self.read(&snap)
        return [snap.value[k] for k in range(<int>NSLOTS)]

    def state(self):
        """(values, monotonic times of the reads, lost flags) per slot, one consistent copy."""
        cdef slots_t snap
        cdef int k
        self.read(&snap)
        return ([snap.value[k] for k in range(<int>NSLOTS)],
                [snap.t[k] for k in range(<int>NSLOTS)],
                [bool(snap.lost[k]) for k in range(<int>NSLOTS)])


cdef class Engine:
    """The tick loop. Configure with add_file/add_counter/add_callback and the feed_* methods,
    then call run() from a dedicated thread; stop() from any thread. One run per Engine."""

    cdef file_t files[MAX_FILES]
    cdef field_t fields[MAX_FIELDS]
    cdef counter_src_t counters[MAX_COUNTERS]
    cdef clock_src_t clocks[MAX_CLOCKS]
    cdef int nfiles, nfields, ncounters, nclocks
    cdef list _keep                      # Python objects the C side points into
    cdef list _callbacks                 # (fn, {signal: [(slot, coef)]}) by index
    cdef int cb_every[MAX_CALLBACKS]
    cdef int cb_phase[MAX_CALLBACKS]
    cdef int ncallbacks
    cdef int64_t period_ns, resolution_ns
    cdef double ncpu
    cdef int stop_flag
    cdef bint ran
    # this tick's work: the sum of coef * field over the fields read, per slot
    cdef double work[NSLOTS]
    cdef double work_t[NSLOTS]           # monotonic seconds of the read
    cdef int fresh[NSLOTS]               # some field of the slot was read this tick
    cdef int missing[NSLOTS]             # ... and one was absent: the sum is not a value
    # each slot's rules, as its source declares them (set_rule)
    cdef double floor[NSLOTS]            # a value under it reads as it (-inf: none)
    cdef int hold[NSLOTS]                # a value under the highest seen reads as that
    cdef int take_min[NSLOTS]            # the smallest field present, not the sum
    cdef double held[NSLOTS]
    # what the slots hold between ticks (published through a latch)
    cdef Gauges gauges
    cdef bint slots_dirty
    # feeds: borrowed pointers into accumulators kept alive in _keep (NULL: not fed)
    cdef rolling_t *cpu_buckets
    cdef ring_t *cpu_history
    cdef ewma_t *rates[NSLOTS]
    cdef ring_t *gauge_history[NSLOTS]
    cdef ratio_t *pushed_ratio
    cdef ratio_t *proxy_ratio
    # a recording's taps (coherence.record): every value a slot takes and the time of its read
    cdef ring_t *tap_value[NSLOTS]
    cdef ring_t *tap_time[NSLOTS]
    # CPU buckets
    cdef int64_t bucket_t0
    cdef double bucket_u0
    cdef bint bucket_open
    # request deltas
    cdef double prev_req[NSLOTS]
    cdef int prev_req_ok[NSLOTS]
    # self-measurement
    cdef int64_t lat_hist[LAT_LINEAR + LAT_LOG]
    cdef int64_t lat_sum_us          # sum of the lateness counted in lat_hist (atomic)
    cdef int64_t last_tick_ns        # when the last tick woke up, monotonic (atomic): a heartbeat
    cdef stats_t stats_priv
    cdef stats_t stats_pub[2]
    cdef uint64_t stats_seq

    def __cinit__(self, double hz, double resolution, double ncpu):
        if not (1.0 <= hz <= 2000.0):
            raise ValueError(f"hz must be between 1 and 2000, got {hz!r}")
        if not (resolution > 0.0):
            raise ValueError(f"resolution must be > 0 seconds, got {resolution!r}")
        if not (ncpu > 0.0):
            raise ValueError(f"ncpu must be > 0, got {ncpu!r}")
        self.period_ns = <int64_t>(NS / hz + 0.5)
        self.resolution_ns = <int64_t>(resolution * NS + 0.5)
        self.ncpu = ncpu
        self._keep = []
        self._callbacks = []
        cdef int k
        for k in range(<int>NSLOTS):
            self.floor[k] = -INFINITY
            self.held[k] = -INFINITY
        self.gauges = Gauges()

    # ------------------------------------------------------------------ configuration
    cdef int _configuring(self) except -1:
        # the loop reads these tables without a lock: they are set before it runs, never after
        if self.ran:
            raise RuntimeError("the engine is configured before it runs, not while or after")
        return 0

    def add_file(self, int fd, int every, int phase, list fields):
        """fields: (prefix, index, occurrence, after_last, slot, coef) tuples."""
        self._configuring()
        cdef file_t *f
        if self.nfiles >= MAX_FILES or self.nfields + len(fields) > MAX_FIELDS:
            raise ValueError("too many files or fields for the sampler")
        if every < 1 or not (0 <= phase < every):
            raise ValueError(f"bad schedule every={every} phase={phase}")
        f = &self.files[self.nfiles]
        memset(f, 0, sizeof(file_t))
        f.fd = fd
        f.every = every
        f.phase = phase
        f.first_field = self.nfields
        for prefix, index, occurrence, after, slot, coef in fields:
            _check_slot(slot)
            _fill_field(&self.fields[self.nfields], prefix, index, occurrence, after, slot, coef)
            self.nfields += 1
            f.nfields += 1
        self.nfiles += 1
        return self.nfiles - 1

    def set_rule(self, int slot, double floor=-INFINITY, bint hold=False, bint take_min=False):
        """How a slot's value is made from its fields, each tick: the sum of coef x field (or,
        with take_min, the smallest field present: a limit beside the host's memory), then
        raised to `floor`, then, with `hold`, never below the highest value seen (a difference
        of counters read at slightly different instants can step back by a few)."""
        self._configuring()
        _check_slot(slot)
        if floor != floor:
            raise ValueError("floor must be a number (-inf: none)")
        self.floor[slot] = floor
        self.hold[slot] = hold
        self.take_min[slot] = take_min

    def add_counter(self, AtomicCounter counter, int slot, int every, int phase):
        self._configuring()
        if self.ncounters >= MAX_COUNTERS:
            raise ValueError("too many counters for the sampler")
        _check_slot(slot)
        if every < 1 or not (0 <= phase < every):
            raise ValueError("bad counter schedule")
        self._keep.append(counter)
        self.counters[self.ncounters].counter = &counter.state
        self.counters[self.ncounters].slot = slot
        self.counters[self.ncounters].every = every
        self.counters[self.ncounters].phase = phase
        self.ncounters += 1

    def add_clock(self, int clock, int slot, int every, int phase, int alive_fd=-1):
        """A clock_gettime clock read as a counter in ns (the CPU time of a process).
        ``alive_fd``: a pidfd of that process, kept open by the caller; a process CPU clock is
        named by a pid number, which another process may take once it exited: a read made
        after the pidfd says it exited is not the watched process's, and the clock is lost."""
        self._configuring()
        _check_slot(slot)
        if self.nclocks >= MAX_CLOCKS or every < 1 or not (0 <= phase < every):
            raise ValueError("too many clocks or a bad schedule")
        self.clocks[self.nclocks].clock = clock
        self.clocks[self.nclocks].alive_fd = alive_fd
        self.clocks[self.nclocks].slot = slot
        self.clocks[self.nclocks].every = every
        self.clocks[self.nclocks].phase = phase
        self.clocks[self.nclocks].lost = 0
        self.nclocks += 1

    def add_callback(self, int every, int phase, fn, dict mapping):
        """fn() -> {signal: value}, called with the GIL when due; mapping: {signal: [(slot, coef)]}.
        A callback that raises or returns junk is skipped for that tick, never fatal."""
        self._configuring()
        if self.ncallbacks >= MAX_CALLBACKS or every < 1 or not (0 <= phase < every):
            raise ValueError("too many callbacks or a bad schedule")
        for targets in mapping.values():
            for slot, coef in targets:
                _check_slot(slot)
        self.cb_every[self.ncallbacks] = every
        self.cb_phase[self.ncallbacks] = phase
        self._callbacks.append((fn, mapping))
        self.ncallbacks += 1

    def feed_cpu(self, RollingStats buckets, RingBuffer history):
        """CPU utilization (% of the CPUs available) per bucket of `resolution` seconds."""
        self._configuring()
        self._keep += [buckets, history]
        self.cpu_buckets = &buckets.state
        self.cpu_history = &history.state

    def feed_rate(self, int slot, EwmaRate rate):
        self._configuring()
        _check_slot(slot)
        self._keep.append(rate)
        self.rates[slot] = &rate.state

    def feed_gauge(self, int slot, RingBuffer history):
        """The gauge's values, one per read, into a ring (the resident-memory trend)."""
        self._configuring()
        _check_slot(slot)
        self._keep.append(history)
        self.gauge_history[slot] = &history.state

    def feed_gauges(self, Gauges gauges):
        """Where each slot's last value, read time and lost flag go (Signals owns it)."""
        self._configuring()
        if gauges.fed:
            raise ValueError("these Gauges are already fed by an engine")
        gauges.fed = True
        self._keep.append(gauges)
        self.gauges = gauges

    def feed_tap(self, int slot, RingBuffer values, RingBuffer times):
        """Every value the slot takes, and the monotonic time of its read, into two rings: what
        a recording (coherence.record) drains. For CPU_NS, every bucket's utilization and the
        time it closed. The time is pushed after its value: a reader that sees n times has n
        values to pair them with."""
        self._configuring()
        _check_slot(slot)
        self._keep += [values, times]
        self.tap_value[slot] = &values.state
        self.tap_time[slot] = &times.state

    def feed_ratios(self, RatioWindow pushed, RatioWindow proxy):
        """Egress/ingress deltas: from pushed counters, and from the TCP proxy."""
        self._configuring()
        self._keep += [pushed, proxy]
        self.pushed_ratio = &pushed.state
        self.proxy_ratio = &proxy.state

    # ------------------------------------------------------------------ the loop
    def run(self):
        """Tick until stop(). Releases the GIL for the whole loop but for callback sources."""
        if self.ran:
            raise RuntimeError("an Engine runs once")
        self.ran = True
        cdef int64_t deadline, now, late, skipped
        cdef int i
        cdef bint due
        cdef int64_t tick = 0
        cdef timespec ts
        with nogil:
            # Timer slack (50 us by default) is added to every wake-up: 1 us keeps the lateness
            # honest at 1000 Hz; the wake-ups themselves are what cost, not their precision.
            prctl(PR_SET_TIMERSLACK, 1000, 0, 0, 0)
            deadline = now_ns(CLOCK_MONOTONIC)
            self.stats_priv.start_ns = deadline
            self.stats_priv.last_ns = deadline
            self._publish_stats()
            while not coh_load_flag(&self.stop_flag):
                self._tick(tick)
                due = False
                for i in range(self.ncallbacks):
                    due = due or tick % self.cb_every[i] == self.cb_phase[i]
                if due:                # the GIL only on the ticks a callback source is due
                    with gil:
                        self._run_callbacks(tick)
                self._after_reads()
                tick += 1
                self.stats_priv.ticks = tick
                if tick % STATS_EVERY == 0:
                    self.stats_priv.thread_cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID)
                    self._publish_stats()
                # next deadline; a tick that ran past it skips ahead (counted), never bursts
                deadline += self.period_ns
                now = now_ns(CLOCK_MONOTONIC)
                if now >= deadline:
                    skipped = (now - deadline) // self.period_ns + 1
                    self.stats_priv.overruns += skipped
                    deadline += skipped * self.period_ns
                while True:
                    now = now_ns(CLOCK_MONOTONIC)
                    if deadline - now > MAX_SLEEP_NS:
                        now += MAX_SLEEP_NS
                        ts.tv_sec = now // NS
                        ts.tv_nsec = now % NS
                        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
                        if coh_load_flag(&self.stop_flag):
                            break
                        continue
                    ts.tv_sec = deadline // NS
                    ts.tv_nsec = deadline % NS
                    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL)
                    break
                now = now_ns(CLOCK_MONOTONIC)
                late = (now - deadline) // 1000
                self._record_lateness(late if late > 0 else 0)
                coh_store_i64(&self.last_tick_ns, now)
                self.stats_priv.last_ns = now
            self.stats_priv.thread_cpu_ns = now_ns(CLOCK_THREAD_CPUTIME_ID)
            self.stats_priv.last_ns = now_ns(CLOCK_MONOTONIC)
            self._publish_stats()

    def stop(self):
        coh_store_flag(&self.stop_flag, 1)

    cdef inline void _take(self, int slot, double v, double t) noexcept nogil:
        if not self.fresh[slot]:
            self.fresh[slot] = 1
            self.work[slot] = v
        elif self.take_min[slot]:
            if v < self.work[slot]:
                self.work[slot] = v
        else:
            self.work[slot] += v
        self.work_t[slot] = t

    cdef inline void _miss(self, int slot) noexcept nogil:
        # a partial sum is a wrong value, not a smaller one; a minimum just has one term less
        if not self.take_min[slot]:
            self.fresh[slot] = 1
            self.missing[slot] = 1

    cdef void _lose(self, int slot) noexcept nogil:
        if not self.gauges.slots.lost[slot]:
            self.gauges.slots.lost[slot] = 1
            self.slots_dirty = True

    cdef void _tick(self, int64_t tick) noexcept nogil:
        cdef char buf[READ_BUF]
        cdef Py_ssize_t n
        cdef int i, k, slot
        cdef file_t *f
        cdef field_t *fld
        cdef double v, t
        cdef timespec ts
        for k in range(<int>NSLOTS):
            self.fresh[k] = 0
            self.missing[k] = 0
        for i in range(self.nfiles):
            f = &self.files[i]
            if tick % f.every != f.phase:
                continue
            if f.lost:
                # what it fed is lost; a sum without its terms would be a wrong value
                for k in range(f.first_field, f.first_field + f.nfields):
                    self._miss(self.fields[k].slot)
                continue
            n = pread(f.fd, buf, READ_BUF, 0)   # as many bytes as Source.read() parses
            t = <double>now_ns(CLOCK_MONOTONIC) / NS
            if n <= 0:
                # The file went away (process exited, cgroup removed): stop reading it, once,
                # and mark what it fed as lost, so that no detector judges frozen data.
                coh_store_i64(&f.errors, f.errors + 1)
                coh_store_flag(&f.lost, 1)
                for k in range(f.first_field, f.first_field + f.nfields):
                    self._lose(self.fields[k].slot)
                continue
            coh_store_i64(&f.reads, f.reads + 1)
            for k in range(f.first_field, f.first_field + f.nfields):
                fld = &self.fields[k]
                if find_field(buf, n, fld, &v):
                    self._take(fld.slot, fld.coef * v, t)
                else:
                    coh_store_i64(&f.parse_misses, f.parse_misses + 1)
                    self._miss(fld.slot)
        for i in range(self.nclocks):
            if self.clocks[i].lost or tick % self.clocks[i].every != self.clocks[i].phase:
                continue
            # read, then ask whether the process had exited by then: alive after the read, it
            # was alive during it, and its pid could not belong to another process
            if clock_gettime(self.clocks[i].clock, &ts) != 0 or (
                    self.clocks[i].alive_fd >= 0 and exited(self.clocks[i].alive_fd)):
                self.clocks[i].lost = 1          # the process exited (its pid may be reused)
                self._lose(self.clocks[i].slot)
                continue
            self._take(self.clocks[i].slot, <double>ts.tv_sec * 1e9 + <double>ts.tv_nsec,
                       <double>now_ns(CLOCK_MONOTONIC) / NS)
        if self.ncounters:
            t = <double>now_ns(CLOCK_MONOTONIC) / NS
            for i in range(self.ncounters):
                if tick % self.counters[i].every == self.counters[i].phase:
                    self._take(self.counters[i].slot, counter_value(self.counters[i].counter), t)

    cdef void _run_callbacks(self, int64_t tick) noexcept:
        cdef double t
        cdef int i
        for i in range(self.ncallbacks):
            if tick % self.cb_every[i] != self.cb_phase[i]:
                continue
            fn, mapping = self._callbacks[i]
            try:
                values = fn()
                t = <double>now_ns(CLOCK_MONOTONIC) / NS
                for signal, targets in mapping.items():
                    v = values.get(signal)
                    for slot, coef in targets:
                        if v is None:
                            self._miss(slot)
                        else:
                            self._take(slot, coef * float(v), t)
            except Exception:
                continue           # the source reports its own failure; the loop goes on

    cdef void _after_reads(self) noexcept nogil:
        cdef int k
        cdef int64_t t_ns
        cdef double util, du, v, t
        for k in range(<int>NSLOTS):
            if not self.fresh[k] or self.missing[k]:
                continue
            v, t = self.work[k], self.work_t[k]
            if v < self.floor[k]:
                v = self.floor[k]
            if self.hold[k]:
                if v < self.held[k]:
                    v = self.held[k]
                self.held[k] = v
            if k != CPU_NS:                      # CPU is published as buckets, not as a value
                self.gauges.slots.value[k] = v
                self.gauges.slots.t[k] = t
                self.slots_dirty = True
            if k == CPU_NS:
                if self.cpu_buckets == NULL:
                    continue
                t_ns = <int64_t>(t * NS)
                if not self.bucket_open:
                    self.bucket_open = True
                    self.bucket_t0 = t_ns
                    self.bucket_u0 = v
                elif t_ns - self.bucket_t0 >= self.resolution_ns:
                    du = v - self.bucket_u0
                    if du >= 0.0:     # a counter that went down was reset: skip that bucket
                        util = 100.0 * du / (<double>(t_ns - self.bucket_t0) * self.ncpu)
                        rolling_push(self.cpu_buckets, util)
                        ring_push(self.cpu_history, util)
                        if self.tap_time[k] != NULL:
                            ring_push(self.tap_value[k], util)
                            ring_push(self.tap_time[k], t)
                        self.stats_priv.buckets += 1
                    self.bucket_t0 = t_ns
                    self.bucket_u0 = v
                continue
            if self.rates[k] != NULL:
                ewma_update(self.rates[k], t, v)
            if self.gauge_history[k] != NULL:
                ring_push(self.gauge_history[k], v)
            if self.tap_time[k] != NULL:
                ring_push(self.tap_value[k], v)
                ring_push(self.tap_time[k], t)
        if self.pushed_ratio != NULL:
            self._feed_ratio(EGRESS, INGRESS, self.pushed_ratio)
            self._feed_ratio(TCP_ACTIVE, TCP_PASSIVE, self.proxy_ratio)
        if self.slots_dirty:
            self.gauges.publish()
            self.slots_dirty = False

    cdef void _feed_ratio(self, int eg, int ing, ratio_t *r) noexcept nogil:
        cdef double de, di
        cdef double e = self.work[eg], i = self.work[ing]
        if not (self.fresh[eg] and self.fresh[ing]) or self.missing[eg] or self.missing[ing]:
            return
        if self.prev_req_ok[eg] and self.prev_req_ok[ing]:
            de = e - self.prev_req[eg]
            di = i - self.prev_req[ing]
            # a counter that went down was reset: count from its new value
            ratio_update(r, de if de >= 0.0 else e, di if di >= 0.0 else i)
        self.prev_req[eg] = e
        self.prev_req[ing] = i
        self.prev_req_ok[eg] = 1
        self.prev_req_ok[ing] = 1

    cdef void _record_lateness(self, int64_t us) noexcept nogil:
        cdef int b = 0
        coh_store_i64(&self.lat_sum_us, self.lat_sum_us + us)
        if us < LAT_LINEAR:
            coh_store_i64(&self.lat_hist[us], self.lat_hist[us] + 1)
            return
        us //= LAT_LINEAR
        while us > 1 and b < LAT_LOG - 1:
            us >>= 1
            b += 1
        coh_store_i64(&self.lat_hist[LAT_LINEAR + b], self.lat_hist[LAT_LINEAR + b] + 1)

    cdef void _publish_stats(self) noexcept nogil:
        coh_latch_publish(&self.stats_seq, self.stats_pub, &self.stats_priv, sizeof(stats_t))

    # ------------------------------------------------------------------ readers
    def stats(self):
        """The sampler's own figures, readable while it runs (no lock). ``last_tick_s`` (the
        monotonic time the last tick woke up, 0 before the first) and ``lateness_sum_us`` (over
        the lateness histogram's ticks) are read live, not through the latch."""
        cdef stats_t s
        coh_latch_read(&self.stats_seq, self.stats_pub, &s, sizeof(stats_t))
        return {
            "last_tick_s": coh_load_i64(&self.last_tick_ns) / 1e9,
            "lateness_sum_us": coh_load_i64(&self.lat_sum_us),
            "ticks": s.ticks,
            "overruns": s.overruns,
            "elapsed_s": (s.last_ns - s.start_ns) / 1e9,
            "thread_cpu_s": s.thread_cpu_ns / 1e9,
            "cpu_buckets": s.buckets,
        }

    def lateness_histogram(self):
        """Counts of tick lateness: (upper bound in us, count) per non-empty bin. Counts only
        grow, so a copy taken while the loop runs is at worst a few ticks behind."""
        cdef int i
        cdef int64_t n
        out = []
        for i in range(LAT_LINEAR + LAT_LOG):
            n = coh_load_i64(&self.lat_hist[i])
            if n:
                out.append((lat_upper_us(i), n))
        return out

    def lateness_counts(self):
        """The histogram's counts, every bin (lateness_bounds() gives their upper bounds, in
        us), as native int64s in one bytes object: one allocation of the same size however
        many bins were ever hit (a soak's probe takes it; lateness_histogram's list grows)."""
        cdef int i
        cdef int64_t counts[LAT_LINEAR + LAT_LOG]
        for i in range(LAT_LINEAR + LAT_LOG):
            counts[i] = coh_load_i64(&self.lat_hist[i])
        return (<char*>counts)[:sizeof(counts)]

    @staticmethod
    def lateness_bounds():
        """The upper bound (us) of each bin of lateness_counts(), in its order."""
        return [lat_upper_us(i) for i in range(LAT_LINEAR + LAT_LOG)]

    def lateness_quantiles(self, qs):
        """What sampler.lateness_percentiles(self.lateness_histogram(), qs) gives, and the
        upper bound of the last non-empty bin after them (NaN each, when empty), without the
        histogram's list: one pass over a copy of the counts. The list has a pair per bin ever
        hit, up to 2 072, and reports take this four times a second. At most 16 qs."""
        cdef int i, j, found = 0, nq = len(qs)
        cdef int64_t total = 0, cum = 0
        cdef int64_t counts[LAT_LINEAR + LAT_LOG]
        cdef double target[16]
        cdef double res[16]
        cdef double bound, last = NAN
        if nq > 16:
            raise ValueError(f"at most 16 quantiles, got {nq}")
        for i in range(LAT_LINEAR + LAT_LOG):
            counts[i] = coh_load_i64(&self.lat_hist[i])
            total += counts[i]
        for j in range(nq):
            target[j] = float(qs[j]) * total
            res[j] = NAN
        if total > 0:
            for i in range(LAT_LINEAR + LAT_LOG):
                if not counts[i]:
                    continue
                cum += counts[i]
                bound = <double>lat_upper_us(i)
                last = bound
                if found < nq:
                    for j in range(nq):
                        # the first non-empty bin whose cumulative count reaches q of the total
                        if isnan(res[j]) and cum >= target[j]:
                            res[j] = bound
                            found += 1
            for j in range(nq):
                if isnan(res[j]):        # q above 1: the last bin (bisect's index, clamped)
                    res[j] = last
        return [res[j] for j in range(nq)] + [last]

    def file_stats(self):
        """Per file added: reads, errors, parse misses, and whether it was lost."""
        return [dict(reads=coh_load_i64(&self.files[i].reads),
                     errors=coh_load_i64(&self.files[i].errors),
                     parse_misses=coh_load_i64(&self.files[i].parse_misses),
                     lost=bool(coh_load_flag(&self.files[i].lost)))
                for i in range(self.nfiles)]
