// Private: what a kernel does when it cannot get scratch memory. A kernel that skipped its work instead
// would leave stale or uninitialised outputs behind and the model would go on with wrong numbers, so it
// stops the process with a message that says which buffer and how large.
#ifndef DLORA_FATAL_H
#define DLORA_FATAL_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((noreturn, cold)) static inline void dl_fatal_alloc(const char *what, size_t bytes) {
    fprintf(stderr, "dlora kernels: cannot allocate %zu bytes for %s (out of memory); aborting\n", bytes, what);
    fflush(stderr);
    abort();
}

// A thread's scratch buffer of at least `bytes`, 64-byte aligned. When too small it is replaced (contents not
// kept) by one of at least twice the old capacity, so sizes that creep up (a context one token longer each
// step) reallocate a logarithmic number of times, and a warm step not at all.
static inline void *dl_grow_buffer(void **buf, int64_t *cap, int64_t bytes, const char *what) {
    if (bytes > *cap) {
        const int64_t want = bytes > 2 * *cap ? bytes : 2 * *cap;
        const size_t size = (size_t)((want + 63) / 64 * 64);
        free(*buf);
        *buf = aligned_alloc(64, size);
        if (!*buf) dl_fatal_alloc(what, size);
        *cap = (int64_t)size;
    }
    return *buf;
}
#endif
