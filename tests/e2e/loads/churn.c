/* Allocation churn for the fever cases. Usage: churn MODE MB SECONDS
 *   churn  map MB of anonymous memory, touch every page, unmap; again and again (GB/s of
 *          page faults while resident memory stays flat)
 *   hold   map and touch MB once, then hold it (a lot of memory, no churn)
 *   leak   map and touch MB more every second, a tenth every 100 ms, and free none of it
 *          (steady growth: a leak)
 * Stops by itself after SECONDS. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static char *touch(size_t bytes, long page) {
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    madvise(p, bytes, MADV_NOHUGEPAGE);   /* one fault per 4 KiB page, as a heap does */
    for (size_t i = 0; i < bytes; i += page) p[i] = (char)i;
    return p;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: churn churn|hold|leak MB SECONDS\n");
        return 2;
    }
    size_t bytes = (size_t)atol(argv[2]) << 20;
    double end = now() + atof(argv[3]);
    long page = sysconf(_SC_PAGESIZE);
    if (strcmp(argv[1], "hold") == 0) {
        touch(bytes, page);
        while (now() < end) usleep(100000);
        return 0;
    }
    if (strcmp(argv[1], "leak") == 0) {
        size_t step = bytes / 10 / page * page;
        double next = now();
        while (now() < end) {
            if (step) touch(step, page);
            next += 0.1;
            double wait = next - now();
            if (wait > 0) usleep((useconds_t)(wait * 1e6));
        }
        return 0;
    }
    unsigned long rounds = 0;
    while (now() < end) {
        char *p = touch(bytes, page);
        munmap(p, bytes);
        rounds++;
    }
    fprintf(stderr, "%lu rounds of %s MB\n", rounds, argv[2]);
    return 0;
}
