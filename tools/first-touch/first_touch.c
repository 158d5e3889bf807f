// What the first write to newly allocated memory costs: maps MB mebibytes (4 KiB pages, or advised as
// transparent huge pages), writes one byte per 4 KiB, and prints the milliseconds. Before the timed mapping it
// maps, touches and frees the same amount, then sleeps WAIT seconds: with WAIT 0 the timed mapping gets
// memory the kernel has just had back; after a few seconds a VM with free page reporting (virtio-balloon) has
// handed freed memory to the host, and the first write faults it in through the host again.
// Usage: first_touch MB 4k|thp WAIT
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static char *map(size_t n, int huge) {
    char *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("first_touch: mmap"); exit(1); }
    if (huge) madvise(p, n, MADV_HUGEPAGE);
    return p;
}

static void touch(char *p, size_t n) {
    for (size_t i = 0; i < n; i += 4096) p[i] = 1;
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: first_touch MB 4k|thp WAIT\n"); return 2; }
    size_t n = (size_t)atol(argv[1]) << 20;
    int huge = strcmp(argv[2], "thp") == 0;
    int wait = atoi(argv[3]);
    char *prime = map(n, huge);
    touch(prime, n);
    munmap(prime, n);
    if (wait > 0) sleep(wait);
    char *p = map(n, huge);
    double t0 = now();
    touch(p, n);
    double ms = (now() - t0) * 1e3;
    printf("%.1f\n", ms);
    munmap(p, n);
    return 0;
}
