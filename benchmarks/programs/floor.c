/* The floor of benchmarks/run_sampler.py: the cheapest loop that does what the sampler must do
 * at --hz 1000, and nothing else. It wakes on absolute deadlines of CLOCK_MONOTONIC
 * (clock_nanosleep TIMER_ABSTIME), preads one already-open counter file per tick, and keeps the
 * same books as coherence's tick loop (csrc/coherence/_sampler.pyx), so the two compare like
 * for like:
 *   - timer slack 1 us (prctl PR_SET_TIMERSLACK 1000), as the sampler sets it;
 *   - a tick that runs past its deadline skips to the next one (counted as overruns);
 *   - lateness = wake-up time - deadline, in whole us, in 1 us bins up to 2 ms, then powers of 2.
 *
 * Usage: floor_loop HZ COUNTER_FILE MAX_SECONDS [WARMUP_SECONDS]
 * Prints "ready" once it has ticked for WARMUP_SECONDS, runs until SIGTERM/SIGINT (or
 * MAX_SECONDS, a safety net if its parent vanished), then prints one JSON line of its figures.
 * Built by run_sampler.py with `gcc -O2 -std=gnu11` into a temp dir.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL
#define LAT_LINEAR 2048
#define LAT_LOG 24

static volatile sig_atomic_t stop_flag = 0;
static int64_t lat_hist[LAT_LINEAR + LAT_LOG];

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static inline int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static void record_lateness(int64_t us) {   /* as Engine._record_lateness */
    int b = 0;
    if (us < LAT_LINEAR) { lat_hist[us]++; return; }
    us /= LAT_LINEAR;
    while (us > 1 && b < LAT_LOG - 1) { us >>= 1; b++; }
    lat_hist[LAT_LINEAR + b]++;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s HZ COUNTER_FILE MAX_SECONDS [WARMUP_SECONDS]\n", argv[0]);
        return 2;
    }
    double hz = atof(argv[1]);
    const char *path = argv[2];
    double max_s = atof(argv[3]);
    double warmup_s = argc > 4 ? atof(argv[4]) : 0.5;
    if (!(hz >= 1.0 && hz <= 100000.0) || !(max_s > 0.0)) {
        fprintf(stderr, "bad HZ or MAX_SECONDS\n");
        return 2;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "cannot open %s: %s\n", path, strerror(errno));
        return 1;
    }
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;          /* no SA_RESTART: clock_nanosleep returns EINTR */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0UL, 0UL, 0UL);   /* the sampler's slack: 1 us */

    int64_t period = (int64_t)(NS / hz + 0.5);
    char buf[4096];
    int64_t ticks = 0, overruns = 0, read_errors = 0, bytes = 0;
    int64_t start = now_ns(CLOCK_MONOTONIC), last = start, deadline = start;
    int64_t end = start + (int64_t)(max_s * NS);
    int64_t ready_at = start + (int64_t)(warmup_s * NS);
    int ready = 0;
    struct timespec ts;

    while (!stop_flag) {
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);   /* the tick's work: one counter read */
        if (n <= 0) read_errors++; else bytes += n;
        ticks++;
        deadline += period;
        int64_t now = now_ns(CLOCK_MONOTONIC);
        if (now >= deadline) {
            int64_t skipped = (now - deadline) / period + 1;
            overruns += skipped;
            deadline += skipped * period;
        }
        if (!ready && now >= ready_at) {
            ready = 1;
            fputs("ready\n", stdout);
            fflush(stdout);
        }
        if (now >= end) break;
        ts.tv_sec = deadline / NS;
        ts.tv_nsec = deadline % NS;
        if (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) != 0 && stop_flag) {
            last = now_ns(CLOCK_MONOTONIC);
            break;                       /* interrupted: that wake-up is not a tick */
        }
        now = now_ns(CLOCK_MONOTONIC);
        int64_t late = (now - deadline) / 1000;
        record_lateness(late > 0 ? late : 0);
        last = now;
    }
    double elapsed = (double)(last - start) / NS;
    printf("{\"ticks\": %lld, \"ticks_expected\": %lld, \"overruns\": %lld, \"elapsed_s\": %.6f, "
           "\"read_errors\": %lld, \"bytes_per_read\": %.1f, \"timer_slack_ns\": %d, "
           "\"lateness_hist\": [",
           (long long)ticks, (long long)(elapsed * hz) + 1, (long long)overruns, elapsed,
           (long long)read_errors, ticks ? (double)bytes / ticks : 0.0,
           prctl(PR_GET_TIMERSLACK, 0UL, 0UL, 0UL, 0UL));
    int first = 1;
    for (int i = 0; i < LAT_LINEAR + LAT_LOG; i++) {
        if (!lat_hist[i]) continue;
        long long upper = i < LAT_LINEAR ? (long long)i + 1 : (long long)LAT_LINEAR << (i - LAT_LINEAR + 1);
        printf("%s[%lld, %lld]", first ? "" : ", ", upper, (long long)lat_hist[i]);
        first = 0;
    }
    printf("]}\n");
    fflush(stdout);
    close(fd);
    return 0;
}
