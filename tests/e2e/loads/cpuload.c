/* CPU load for the seizure cases: one thread per allowed CPU, all in step on the monotonic
 * clock. Usage: cpuload MODE PERIOD_MS SECONDS
 *   flip    busy for PERIOD_MS, idle for PERIOD_MS, every CPU at once (a seizure)
 *   steady  every CPU busy (PERIOD_MS unused)
 * Stops by itself after SECONDS. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int flip;
static double period, start, end;

static void *worker(void *arg) {
    (void)arg;
    volatile unsigned long spin = 0;
    while (now() < end) {
        double t = now() - start;
        long phase = (long)(t / period);
        if (!flip || phase % 2 == 0) {
            spin++;                              /* busy */
        } else {                                 /* idle until the next busy phase */
            double wake = start + (phase + 1) * period;
            struct timespec ts = {(time_t)wake, (long)((wake - (time_t)wake) * 1e9)};
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: cpuload flip|steady PERIOD_MS SECONDS\n");
        return 2;
    }
    flip = strcmp(argv[1], "flip") == 0;
    period = atof(argv[2]) / 1000.0;
    if (period <= 0) period = 1.0;
    start = now();
    end = start + atof(argv[3]);
    cpu_set_t set;
    sched_getaffinity(0, sizeof set, &set);
    int n = CPU_COUNT(&set);
    pthread_t threads[1024];
    for (int i = 0; i < n && i < 1024; i++) pthread_create(&threads[i], NULL, worker, NULL);
    for (int i = 0; i < n && i < 1024; i++) pthread_join(threads[i], NULL);
    return 0;
}
